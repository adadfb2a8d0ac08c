use std::net::SocketAddr;

use http::HeaderName;

use super::*;
use crate::translate::l7::CookieAffinity;

fn endpoints(n: u8) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| Arc::new(Endpoint::new(SocketAddr::from(([192, 0, 2, i + 1], 8080)))))
        .collect()
}

fn keys<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> RequestKeys<'a> {
    RequestKeys {
        headers,
        uri,
        path: uri.path(),
        host: "Shop.Example:8080",
        client: "198.51.100.7".parse().unwrap(),
        https: false,
    }
}

#[test]
fn a_removed_endpoint_hands_over_only_its_own_keys() {
    let four = endpoints(4);
    let ring = Ring::new(&four);
    let before: Vec<usize> = (0..10_000u64)
        .map(|k| ring.find(hash(&k.to_le_bytes()), |_| true).unwrap())
        .collect();
    let mut share = [0usize; 4];
    before.iter().for_each(|&i| share[i] += 1);
    // 160 points each: every share within 25 % of even.
    assert!(
        share.iter().all(|&s| (1875..=3125).contains(&s)),
        "{share:?}"
    );
    // Endpoint 2 gone: the ring over the other three (indices shift, addresses do not).
    let three: Vec<Arc<Endpoint>> = [0, 1, 3].iter().map(|&i| four[i].clone()).collect();
    let after_ring = Ring::new(&three);
    for (k, &was) in before.iter().enumerate() {
        let now = three[after_ring
            .find(hash(&(k as u64).to_le_bytes()), |_| true)
            .unwrap()]
        .addr;
        if was != 2 {
            assert_eq!(
                now, four[was].addr,
                "key {k} moved though its endpoint stayed"
            );
        }
    }
    // Passing over an unusable endpoint moves only its keys too.
    for (k, &was) in before.iter().enumerate() {
        let now = ring
            .find(hash(&(k as u64).to_le_bytes()), |i| i != 2)
            .unwrap();
        if was != 2 {
            assert_eq!(now, was);
        } else {
            assert_ne!(now, 2);
        }
    }
}

#[test]
fn hash_keys_read_the_request_without_copying_it() {
    let key = |text: &str| Arc::new(HashKey::parse(text).unwrap());
    let of = |text: &str, headers: &HeaderMap, uri: &str| {
        let uri: Uri = uri.parse().unwrap();
        hash_request(&key(text), &keys(headers, &uri))
    };
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static("x-user"), "alice".parse().unwrap());
    headers.insert(http::header::COOKIE, "sid=42; other=1".parse().unwrap());
    let none = HeaderMap::new();
    // A key is the concatenation nginx would build.
    assert_eq!(of("$request_uri", &none, "/a?b=1"), hash(b"/a?b=1"));
    assert_eq!(of("$host", &none, "/"), hash(b"shop.example"));
    assert_eq!(of("$remote_addr", &none, "/"), hash(b"198.51.100.7"));
    assert_eq!(
        of(
            "u=$http_x_user;s=$cookie_sid;q=$arg_Q",
            &headers,
            "/p?x=1&q=v"
        ),
        hash(b"u=alice;s=42;q=v")
    );
    // Missing values are empty.
    assert_eq!(of("u=$http_x_user$arg_q", &none, "/"), hash(b"u="));
}

fn sticky(mode: AffinityMode) -> (Balancer, Vec<Arc<Endpoint>>) {
    let endpoints = endpoints(3);
    let affinity = CookieAffinity {
        mode,
        max_age: Some(3600),
        samesite: Some("None"),
        conditional_samesite_none: true,
        ..CookieAffinity::default()
    };
    let balancer = Balancer::new(
        &Balance::Cookie(Arc::new(affinity)),
        &endpoints,
        "default/web/80",
    );
    (balancer, endpoints)
}

#[test]
fn sessions_get_a_cookie_and_keep_their_endpoint() {
    for mode in [AffinityMode::Balanced, AffinityMode::Persistent] {
        let (balancer, endpoints) = sticky(mode);
        let uri: Uri = "/".parse().unwrap();
        let none = HeaderMap::new();
        let prepared = balancer.prepare(&keys(&none, &uri));
        let (first, session) = balancer
            .choose(&prepared, &endpoints, None, || None)
            .unwrap();
        let session = session.expect("a new session");
        let cookie = balancer
            .set_cookie(&session, Some("/app"), false, &prepared)
            .unwrap();
        let cookie = cookie.to_str().unwrap().to_string();
        let (pair, attributes) = cookie.split_once("; ").unwrap();
        assert_eq!(
            attributes,
            "Max-Age=3600; Path=/app; HttpOnly; SameSite=None"
        );
        let value = pair.strip_prefix("INGRESSCOOKIE=").unwrap();
        assert!(!value.contains("192.0.2."), "{value}: no address in clear");
        // Sent back: the same endpoint, no new cookie, every time.
        let mut headers = HeaderMap::new();
        headers.insert(http::header::COOKIE, pair.parse().unwrap());
        assert!(balancer.is_affinitized(&headers));
        for _ in 0..20 {
            let prepared = balancer.prepare(&keys(&headers, &uri));
            let (again, session) = balancer
                .choose(&prepared, &endpoints, None, || None)
                .unwrap();
            assert!(Arc::ptr_eq(first, again), "{mode:?}");
            assert!(session.is_none());
        }
        // A failure keeps the session there unless change-on-failure.
        let prepared = balancer.prepare(&keys(&headers, &uri));
        let (kept, _) = balancer
            .choose(&prepared, &endpoints, Some(first), || None)
            .unwrap();
        assert!(Arc::ptr_eq(first, kept));
    }
}

#[test]
fn change_on_failure_moves_a_session_off_the_endpoint_that_failed() {
    for mode in [AffinityMode::Balanced, AffinityMode::Persistent] {
        let endpoints = endpoints(3);
        let affinity = CookieAffinity {
            mode,
            change_on_failure: true,
            ..CookieAffinity::default()
        };
        let balancer = Balancer::new(&Balance::Cookie(Arc::new(affinity)), &endpoints, "d/w/80");
        let uri: Uri = "/".parse().unwrap();
        let none = HeaderMap::new();
        let prepared = balancer.prepare(&keys(&none, &uri));
        let (first, session) = balancer
            .choose(&prepared, &endpoints, None, || None)
            .unwrap();
        let cookie = balancer
            .set_cookie(&session.unwrap(), None, false, &prepared)
            .unwrap();
        let pair = cookie
            .to_str()
            .unwrap()
            .split_once("; ")
            .unwrap()
            .0
            .to_string();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::COOKIE, pair.parse().unwrap());
        let prepared = balancer.prepare(&keys(&headers, &uri));
        let (other, session) = balancer
            .choose(&prepared, &endpoints, Some(first), || None)
            .unwrap();
        assert!(!Arc::ptr_eq(first, other), "{mode:?}");
        assert!(
            session.is_some(),
            "{mode:?}: a new cookie for the new endpoint"
        );
    }
}

#[test]
fn a_persistent_session_whose_endpoint_is_gone_gets_a_new_one() {
    let (balancer, endpoints) = sticky(AffinityMode::Persistent);
    let uri: Uri = "/".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        "INGRESSCOOKIE=00000000000000ff|x".parse().unwrap(),
    );
    assert!(!balancer.is_affinitized(&headers), "another backend's key");
    let prepared = balancer.prepare(&keys(&headers, &uri));
    let (_, session) = balancer
        .choose(&prepared, &endpoints, None, || None)
        .unwrap();
    assert!(session.is_some());
}

#[test]
fn samesite_none_is_left_out_for_browsers_that_reject_it() {
    let (balancer, _) = sticky(AffinityMode::Balanced);
    let uri: Uri = "/".parse().unwrap();
    let mut old = HeaderMap::new();
    old.insert(
        http::header::USER_AGENT,
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/63.0.3239.84 Safari/537.36"
            .parse()
            .unwrap(),
    );
    let prepared = balancer.prepare(&keys(&old, &uri));
    let session = NewSession { key: "k".into() };
    let cookie = balancer
        .set_cookie(&session, None, true, &prepared)
        .unwrap();
    assert!(
        cookie.to_str().unwrap().ends_with("; Secure; HttpOnly"),
        "{cookie:?}"
    );
}

#[test]
fn cookie_times_as_nginx_writes_them() {
    assert_eq!(cookie_time(1_290_079_655), "Thu, 18-Nov-10 11:27:35 GMT");
    assert_eq!(cookie_time(0), "Thu, 01-Jan-70 00:00:00 GMT");
    assert_eq!(cookie_time(2_208_988_800), "Sun, 01-Jan-2040 00:00:00 GMT");
}
