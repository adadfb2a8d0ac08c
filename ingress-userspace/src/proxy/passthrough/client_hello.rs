//! The server name a TLS connection asks for, read from its first record without consuming it:
//! the bytes are *peeked* (`MSG_PEEK`), so they stay in the socket for whoever reads next, the
//! passthrough endpoint (spliced from byte 0) or rustls (terminating as if nothing had looked).
//! Only the first record is read (as ingress-nginx's TCP proxy does): a ClientHello that is not
//! whole in it, or anything that is not one, is left to rustls, which accepts or refuses it as
//! it always has.

use std::{io, os::fd::AsRawFd as _};

use tokio::{io::Interest, net::TcpStream};

/// A TLS record header: content type, legacy version, length.
const RECORD_HEADER: usize = 5;
/// The largest plaintext record (RFC 8446 §5.1); a ClientHello record is plaintext.
const MAX_RECORD: usize = 1 << 14;
const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;

/// What the first record says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hello<'a> {
    /// A whole ClientHello with a `server_name` extension naming this host (as sent).
    Sni(&'a [u8]),
    /// A whole ClientHello without a host name.
    NoSni,
    /// Not a ClientHello this reader understands (or not TLS at all): rustls decides.
    Opaque,
}

/// Reads the first record of `bytes`; `Err(n)`: it needs `n` bytes to tell.
pub(super) fn parse(bytes: &[u8]) -> Result<Hello<'_>, usize> {
    let Some(header) = bytes.get(..RECORD_HEADER) else {
        return Err(RECORD_HEADER);
    };
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if header[0] != HANDSHAKE || header[1] != 3 || length == 0 || length > MAX_RECORD {
        return Ok(Hello::Opaque);
    }
    let Some(record) = bytes.get(RECORD_HEADER..RECORD_HEADER + length) else {
        return Err(RECORD_HEADER + length);
    };
    Ok(client_hello(record).unwrap_or(Hello::Opaque))
}

/// A cursor over a byte slice; every read is bounds-checked (`None`: malformed).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `width`-byte length prefix.
    fn vec(&mut self, width: usize) -> Option<Reader<'a>> {
        let len = match width {
            1 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        Some(Reader(self.take(len)?))
    }
}

/// The handshake message of one record, if it is a whole ClientHello.
fn client_hello(record: &[u8]) -> Option<Hello<'_>> {
    let mut r = Reader(record);
    if r.u8()? != CLIENT_HELLO {
        return None;
    }
    let len = r.take(3)?;
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    // The rest of a longer message is in later records: rustls reassembles those.
    let mut body = Reader(r.take(len)?);
    body.take(2 + 32)?; // legacy_version, random
    body.vec(1)?; // legacy_session_id
    body.vec(2)?; // cipher_suites
    body.vec(1)?; // legacy_compression_methods
    if body.0.is_empty() {
        return Some(Hello::NoSni);
    }
    let mut extensions = body.vec(2)?;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vec(2)?;
        if kind != SERVER_NAME {
            continue;
        }
        let mut names = data.vec(2)?;
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec(2)?;
            if name_type == HOST_NAME {
                return Some(Hello::Sni(name.0));
            }
        }
        return Some(Hello::NoSni);
    }
    Some(Hello::NoSni)
}

/// Peeks the first record of `stream` into `buf` (grown to what the record needs, at most one
/// record) and reads it. `Ok(None)`: the client closed before sending a whole record.
pub(super) async fn peek<'b>(
    stream: &TcpStream,
    buf: &'b mut Vec<u8>,
) -> io::Result<Option<Hello<'b>>> {
    let mut want = RECORD_HEADER;
    loop {
        buf.resize(want, 0);
        if !peek_at_least(stream, buf).await? {
            return Ok(None);
        }
        match parse(buf) {
            Ok(_) => break,
            Err(more) => want = more,
        }
    }
    Ok(parse(buf).ok())
}

/// Fills `buf` by peeking, waiting for more bytes while the client sends them; `false`: the
/// client closed (or half-closed) first.
async fn peek_at_least(stream: &TcpStream, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let closed = ready.is_read_closed();
        let peeked = stream.try_io(Interest::READABLE, || {
            let n = peek_now(stream, buf)?;
            if n < buf.len() && n > 0 && !closed {
                // Part of it: report "would block" so tokio clears the readiness and the next
                // `ready` waits for more bytes (a peek leaves the socket readable, so without
                // this the loop would spin).
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match peeked {
            Ok(n) => return Ok(n == buf.len()),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
}

/// One non-blocking `recv(MSG_PEEK)`.
fn peek_now(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call, and
    // the descriptor is the open socket `stream` owns (borrowed for the call).
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests;
