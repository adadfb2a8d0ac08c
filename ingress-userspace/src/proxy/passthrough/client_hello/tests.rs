use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// The first flight of a real rustls client asking for `name` (a host name, or an IP address:
/// then no SNI is sent).
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn reads_the_host_name_of_a_real_client_hello() {
    // As sent: rustls keeps the case it was given (the caller lower-cases for the lookup).
    let hello = client_hello("Shop.Example");
    assert_eq!(parse(&hello), Ok(Hello::Sni(b"Shop.Example")));
    assert_eq!(parse(&client_hello("192.0.2.7")), Ok(Hello::NoSni));
}

#[test]
fn asks_for_exactly_the_bytes_of_the_first_record() {
    let hello = client_hello("shop.example");
    let whole = 5 + usize::from(u16::from_be_bytes([hello[3], hello[4]]));
    assert_eq!(parse(&hello[..0]), Err(5));
    assert_eq!(parse(&hello[..4]), Err(5));
    assert_eq!(parse(&hello[..5]), Err(whole));
    assert_eq!(parse(&hello[..whole - 1]), Err(whole));
    assert_eq!(parse(&hello[..whole]), Ok(Hello::Sni(b"shop.example")));
}

#[test]
fn leaves_anything_else_to_rustls() {
    // Plain HTTP on the TLS port, an alert, an SSLv2-style hello, an over-long record.
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Ok(Hello::Opaque));
    assert_eq!(parse(&[0x15, 3, 3, 0, 2, 2, 40]), Ok(Hello::Opaque));
    assert_eq!(parse(&[0x80, 0x2e, 1, 3, 1]), Ok(Hello::Opaque));
    assert_eq!(parse(&[0x16, 3, 1, 0x40, 0x01]), Ok(Hello::Opaque));
    assert_eq!(parse(&[0x16, 3, 1, 0, 0]), Ok(Hello::Opaque));
    // A handshake record that is not a ClientHello, or one cut short inside its record.
    assert_eq!(parse(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]), Ok(Hello::Opaque));
    let mut hello = client_hello("shop.example");
    let len = u16::from_be_bytes([hello[3], hello[4]]);
    hello[3..5].copy_from_slice(&(len - 20).to_be_bytes());
    assert_eq!(parse(&hello), Ok(Hello::Opaque));
}

#[test]
fn a_client_hello_split_over_two_records_is_left_to_rustls() {
    // Legal TLS (rustls reassembles it), but the name may be in the second record: like
    // ingress-nginx, only the first record is read, and the connection is terminated.
    let hello = client_hello("shop.example");
    let body = &hello[5..];
    let (a, b) = body.split_at(40);
    let mut split = Vec::new();
    for part in [a, b] {
        split.extend_from_slice(&[0x16, 3, 1]);
        split.extend_from_slice(&(part.len() as u16).to_be_bytes());
        split.extend_from_slice(part);
    }
    assert_eq!(parse(&split), Ok(Hello::Opaque));
}

#[test]
fn malformed_extensions_are_opaque_not_a_panic() {
    let hello = client_hello("shop.example");
    // Every truncation of the record's contents, re-framed as a record of that length.
    for cut in 0..hello.len() - 5 {
        let mut record = vec![0x16, 3, 1];
        record.extend_from_slice(&(cut as u16).to_be_bytes());
        record.extend_from_slice(&hello[5..5 + cut]);
        let parsed = parse(&record);
        assert!(
            matches!(parsed, Ok(Hello::Opaque | Hello::NoSni)),
            "cut {cut}: {parsed:?}"
        );
    }
    // Every single byte flipped: whatever comes out, it is bounded and does not panic.
    for i in 5..hello.len() {
        let mut flipped = hello.clone();
        flipped[i] ^= 0xff;
        let _ = parse(&flipped);
    }
}

#[tokio::test]
async fn peeks_a_hello_sent_in_pieces_and_leaves_every_byte_in_the_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hello = client_hello("shop.example");
    let sent = hello.clone();
    let client = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        // Header split, then the body in three segments. The pauses only make separate
        // segments likely (there is no event for "the peer has it"); nothing depends on them.
        for piece in [&sent[..3], &sent[3..9], &sent[9..60], &sent[60..]] {
            stream.write_all(piece).await.unwrap();
            stream.flush().await.unwrap();
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        stream
    });
    let (server, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let hello_seen = peek(&server, &mut buf).await.unwrap();
    assert_eq!(hello_seen, Some(Hello::Sni(b"shop.example")));
    let _client = client.await.unwrap();
    // Nothing was consumed: the whole ClientHello is still there to read.
    let mut server = server;
    let mut read = vec![0; hello.len()];
    server.read_exact(&mut read).await.unwrap();
    assert_eq!(read, hello);
}

#[tokio::test]
async fn a_client_that_closes_mid_record_ends_the_peek() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hello = client_hello("shop.example");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    stream.write_all(&hello[..20]).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(peek(&server, &mut buf).await.unwrap(), None);
    drop(stream);
    // And one that closes at once.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    drop(stream);
    assert_eq!(peek(&server, &mut buf).await.unwrap(), None);
}
