//! Balancing over endpoints: spread, load and passive health.

use super::*;

fn backend(n: usize) -> Backend {
    let endpoints = (0..n)
        .map(|i| {
            Arc::new(Endpoint::new(SocketAddr::from((
                [192, 0, 2, i as u8 + 1],
                80,
            ))))
        })
        .collect();
    Backend::new(endpoints, None)
}

#[test]
fn spreads_over_endpoints_and_prefers_fewer_outstanding() {
    let b = backend(3);
    let mut seen = [0usize; 3];
    for _ in 0..30 {
        let e = b.pick(None).unwrap();
        seen[b.endpoints.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()] += 1;
    }
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    // Load endpoint 1 and 2: endpoint 3 (idle) wins every comparison it is part of.
    let _busy: Vec<Outstanding> = (0..5)
        .flat_map(|_| {
            [
                b.endpoints[0].start_request(),
                b.endpoints[1].start_request(),
            ]
        })
        .collect();
    let idle_wins = (0..30)
        .filter(|_| Arc::ptr_eq(b.pick(None).unwrap(), &b.endpoints[2]))
        .count();
    assert!(idle_wins >= 20, "{idle_wins}");
}

#[test]
fn skips_endpoints_marked_down_and_the_excluded_one() {
    let b = backend(3);
    b.endpoints[0].mark_down();
    b.endpoints[1].mark_down();
    for _ in 0..10 {
        assert!(Arc::ptr_eq(b.pick(None).unwrap(), &b.endpoints[2]));
    }
    let third = b.endpoints[2].clone();
    let picked = b.pick(Some(&third)).unwrap();
    assert!(
        !Arc::ptr_eq(picked, &third),
        "all down: try another, not the one that failed"
    );
    assert!(backend(0).pick(None).is_none());
}
