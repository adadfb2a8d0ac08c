use super::*;

fn guard() -> HeadGuard<()> {
    HeadGuard::new(
        (),
        32 * 1024,
        Duration::from_secs(10),
        Arc::new(Http1State::default()),
    )
}

fn verdicts(guard: &HeadGuard<()>, requests: usize) -> Vec<bool> {
    (0..requests)
        .map(|_| guard.state.next_request().smuggling)
        .collect()
}

#[test]
fn flags_the_request_with_both_lengths_after_pipelined_bodies() {
    let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    // Fed whole and one byte at a time: the same state.
    let mut whole = guard();
    whole.observe(stream);
    assert_eq!(verdicts(&whole, 4), [false, false, false, true]);
    let mut bytewise = guard();
    for byte in stream {
        bytewise.observe(std::slice::from_ref(byte));
    }
    assert_eq!(verdicts(&bytewise, 4), [false, false, false, true]);
}

#[test]
fn body_text_that_looks_like_a_head_is_not_read_as_one() {
    let body = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut stream = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    stream.extend_from_slice(body);
    stream.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut g = guard();
    g.observe(&stream);
    assert_eq!(verdicts(&g, 2), [false, false]);
}

/// A head that has started and stalls ends the connection after the header timeout; an idle
/// connection (no head started) is left to the idle timeout.
#[tokio::test(start_paused = true)]
async fn a_stalled_head_times_out_and_an_idle_connection_does_not() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client, server) = tokio::io::duplex(1024);
    let mut guarded = HeadGuard::new(
        server,
        32 * 1024,
        Duration::from_secs(10),
        Arc::new(Http1State::default()),
    );
    let mut buf = [0u8; 1024];
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(guarded.read(&mut buf).await.unwrap(), 27);
    // Idle for longer than the header timeout: still open.
    let idle = tokio::time::timeout(Duration::from_secs(30), guarded.read(&mut buf)).await;
    assert!(
        idle.is_err(),
        "an idle connection is not the head timer's business"
    );
    client.write_all(b"GET / HT").await.unwrap();
    assert_eq!(guarded.read(&mut buf).await.unwrap(), 8);
    let started = tokio::time::Instant::now();
    let error = guarded.read(&mut buf).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed().as_secs(), 10);
}

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n";
const BOTH_LENGTHS: &[u8] =
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

/// Feeds `bytes` through `poll_read`, as hyper would read them.
async fn read_through(guard: &mut HeadGuard<tokio::io::DuplexStream>, bytes: &[u8]) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; bytes.len()];
    guard.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, bytes);
}

#[tokio::test]
async fn a_refused_upgrade_leaves_the_guard_in_charge() {
    use tokio::io::AsyncWriteExt as _;
    // The request with both lengths pipelined before the answer, or sent after it.
    for pipelined in [true, false] {
        let state = Arc::new(Http1State::default());
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = HeadGuard::new(server, 8192, Duration::from_secs(10), state.clone());
        let mut first = UPGRADE.to_vec();
        if pipelined {
            first.extend_from_slice(BOTH_LENGTHS);
        }
        client.write_all(&first).await.unwrap();
        read_through(&mut g, &first).await;
        let upgrade = state.next_request();
        state.answered(upgrade.index, false);
        if !pipelined {
            client.write_all(BOTH_LENGTHS).await.unwrap();
            read_through(&mut g, BOTH_LENGTHS).await;
        }
        assert!(state.next_request().smuggling, "pipelined: {pipelined}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_switched_connection_is_not_read_as_http() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let state = Arc::new(Http1State::default());
    let (mut client, server) = tokio::io::duplex(1024);
    let mut g = HeadGuard::new(server, 8192, Duration::from_secs(10), state.clone());
    client.write_all(UPGRADE).await.unwrap();
    read_through(&mut g, UPGRADE).await;
    let upgrade = state.next_request();
    // The new protocol's first bytes arrive before the guard learns of the switch.
    client.write_all(b"GET / HT").await.unwrap();
    read_through(&mut g, b"GET / HT").await;
    state.answered(upgrade.index, true);
    // Long past the header timeout: no error, the bytes pass.
    let mut buf = [0u8; 16];
    let idle = tokio::time::timeout(Duration::from_secs(30), g.read(&mut buf)).await;
    assert!(idle.is_err(), "no head timer on a switched connection");
    assert!(state.is_passthrough());
    client.write_all(BOTH_LENGTHS).await.unwrap();
    read_through(&mut g, BOTH_LENGTHS).await;
}

#[test]
fn h2_preface_is_passed_through() {
    let mut h2 = guard();
    h2.observe(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert!(matches!(h2.framing, Framing::Passthrough));
}

#[test]
fn bare_lf_heads_end_where_hyper_ends_them() {
    let stream: &[u8] = b"\r\nGET /a HTTP/1.1\nHost: x\n\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\n\r\nhi\
POST /c HTTP/1.1\nHost: x\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
    let mut whole = guard();
    whole.observe(stream);
    assert_eq!(verdicts(&whole, 3), [false, false, true]);
    let mut bytewise = guard();
    for byte in stream {
        bytewise.observe(std::slice::from_ref(byte));
    }
    assert_eq!(verdicts(&bytewise, 3), [false, false, true]);
}

#[tokio::test]
async fn parking_ends_the_stream_only_between_messages_and_hands_it_back() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client, server) = tokio::io::duplex(1024);
    let state = Arc::new(Http1State::default());
    let (handoff, handed_back) = tokio::sync::oneshot::channel();
    let mut guarded = HeadGuard::resume(
        server,
        8192,
        Duration::from_secs(10),
        state.clone(),
        4,
        Some(handoff),
    );
    let mut buf = [0u8; 256];
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
        .await
        .unwrap();
    assert!(guarded.read(&mut buf).await.unwrap() > 0);
    state.request_started();
    assert_eq!(state.quiet_for(), None, "a request in flight");
    state.set_park(true);
    // In the middle of a body, parking waits: the rest is read as usual.
    client.write_all(b"cd").await.unwrap();
    assert_eq!(guarded.read(&mut buf).await.unwrap(), 2);
    state.request_done();
    assert!(
        state.quiet_for().is_some(),
        "between messages, nothing in flight"
    );
    // Between messages: end-of-stream, and the next request stays in the stream.
    client
        .write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(guarded.read(&mut buf).await.unwrap(), 0);
    // hyper's shutdown flushes but does not close.
    guarded.shutdown().await.unwrap();
    drop(guarded);
    let (mut stream, seen) = handed_back.await.unwrap();
    assert_eq!(seen, 5, "requests seen carry over");
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"GET /next"), "{:?}", &buf[..n]);
    client.write_all(b"more").await.unwrap();
}

#[tokio::test]
async fn a_guard_not_parked_closes_on_shutdown_and_hands_nothing_back() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client, server) = tokio::io::duplex(1024);
    let (handoff, handed_back) = tokio::sync::oneshot::channel();
    let mut guarded = HeadGuard::resume(
        server,
        8192,
        Duration::from_secs(10),
        Arc::new(Http1State::default()),
        0,
        Some(handoff),
    );
    guarded.shutdown().await.unwrap();
    drop(guarded);
    assert!(handed_back.await.is_err());
    let mut buf = [0u8; 8];
    assert_eq!(client.read(&mut buf).await.unwrap(), 0, "closed");
}

/// One request of a fuzzed stream: how its lines end and how its body is framed.
#[derive(Clone, Debug)]
enum FuzzBody {
    None,
    Length(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
    /// Both `Content-Length` and `Transfer-Encoding`: must be flagged.
    Both,
}

fn fuzz_request(bare_lf: bool, body: &FuzzBody) -> Vec<u8> {
    let eol: &[u8] = if bare_lf { b"\n" } else { b"\r\n" };
    let mut out = Vec::new();
    let mut line = |text: &[u8]| {
        out.extend_from_slice(text);
        out.extend_from_slice(eol);
    };
    line(b"POST /x HTTP/1.1");
    line(b"Host: x");
    match body {
        FuzzBody::None => {}
        FuzzBody::Length(bytes) => line(format!("Content-Length: {}", bytes.len()).as_bytes()),
        FuzzBody::Chunked(_) => line(b"Transfer-Encoding: chunked"),
        FuzzBody::Both => {
            line(b"Content-Length: 3");
            line(b"Transfer-Encoding: chunked");
        }
    }
    line(b"");
    match body {
        FuzzBody::None => {}
        // Body bytes that look like heads must not be read as heads.
        FuzzBody::Length(bytes) => out.extend_from_slice(bytes),
        FuzzBody::Chunked(chunks) => {
            for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        FuzzBody::Both => out.extend_from_slice(b"0\r\n\r\n"),
    }
    out
}

fn fuzz_stream() -> impl proptest::strategy::Strategy<Value = Vec<(bool, FuzzBody)>> {
    use proptest::prelude::*;
    let text = prop::collection::vec(
        prop::sample::select(b"GET / HTTP/1.1\r\n:0a".to_vec()),
        0..40,
    );
    let body = prop_oneof![
        Just(FuzzBody::None),
        text.clone().prop_map(FuzzBody::Length),
        prop::collection::vec(text, 0..4).prop_map(FuzzBody::Chunked),
        Just(FuzzBody::Both),
    ];
    prop::collection::vec((proptest::bool::ANY, body), 1..8)
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: 2048,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_0002),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })]

    /// However a stream of requests is cut into reads, the guard flags exactly the first
    /// request with both lengths, and sits between messages at the end when there is none.
    #[test]
    fn verdicts_do_not_depend_on_how_reads_are_cut(
        requests in fuzz_stream(),
        cuts in proptest::collection::vec(0usize..4096, 0..16),
    ) {
        let mut stream = Vec::new();
        for (bare_lf, body) in &requests {
            stream.extend_from_slice(&fuzz_request(*bare_lf, body));
        }
        let first_flagged = requests.iter().position(|(_, b)| matches!(b, FuzzBody::Both));
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut g = guard();
        let mut from = 0;
        for cut in cuts {
            g.observe(&stream[from..cut]);
            from = cut;
        }
        let seen = first_flagged.map_or(requests.len(), |i| i + 1);
        let expected: Vec<bool> = (0..seen).map(|i| Some(i) == first_flagged).collect();
        proptest::prop_assert_eq!(verdicts(&g, seen), expected);
        if first_flagged.is_none() {
            proptest::prop_assert!(g.between_messages(), "{:?}", g.framing);
        }
    }
}
