//! The parking lot: quiet plain-HTTP/1.1 keep-alive connections wait here for their client's
//! next bytes, each one a file descriptor in one epoll set plus a small slab entry (its peer,
//! port, request count and idle deadline). No task, no hyper state, no tokio registration and no
//! timer per connection, so nothing of theirs is left on the heap between the freed buffers of
//! busier times, which is what kept a parked task at about 5 KiB (nginx keeps an idle
//! connection in well under one).
//!
//! When the client sends (or closes), the connection leaves the lot and `connection` gives it a
//! new connection task. When its idle timeout passes, or the proxy drains, the lot closes it.
//! TLS connections are not parked here: their rustls state has to stay with them.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use slab::Slab;

use super::lifetime::ConnectionSlot;
use tokio::io::{unix::AsyncFd, Interest};

/// A connection waiting in the lot.
#[derive(Debug)]
pub(crate) struct Parked {
    /// The client socket (non-blocking, not registered with tokio).
    pub stream: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's port (for X-Forwarded-Port).
    pub port: u16,
    /// Requests the connection has carried so far.
    pub requests_seen: u64,
    /// Its place on its listener (counted against `--max-connections` while parked too).
    pub slot: ConnectionSlot,
    closes_at: Instant,
    serial: u32,
}

/// Parked connections and the epoll set that watches them.
#[derive(Debug)]
pub(crate) struct ParkingLot {
    epoll: OwnedFd,
    lot: Mutex<Lot>,
}

#[derive(Debug, Default)]
struct Lot {
    parked: Slab<Parked>,
    /// Tells a reused slab slot's events from its previous occupant's.
    next_serial: u32,
    /// Set by `close_all`: later arrivals are closed at once.
    closed: bool,
}

/// Events taken from the epoll set per turn.
const EVENTS_PER_TURN: usize = 64;

impl ParkingLot {
    /// An empty lot with its own epoll set.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: FFI call without pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            lot: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Lot> {
        // The lot's state stays consistent even if a holder panicked: every change is one
        // slab operation.
        self.lot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Parks `stream` until its client sends, for at most `idle_left`. On an error the
    /// connection is closed (an idle keep-alive connection may be closed at any time).
    pub(crate) fn park(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        port: u16,
        requests_seen: u64,
        idle_left: Duration,
        slot: ConnectionSlot,
    ) -> io::Result<()> {
        let stream = stream.into_std()?;
        let mut lot = self.lock();
        if lot.closed {
            return Ok(());
        }
        let serial = lot.next_serial;
        lot.next_serial = serial.wrapping_add(1);
        let entry = lot.parked.vacant_entry();
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token(entry.key(), serial),
        };
        // SAFETY: both descriptors are open; `event` is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                stream.as_raw_fd(),
                &mut event,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        entry.insert(Parked {
            stream,
            peer,
            port,
            requests_seen,
            slot,
            closes_at: Instant::now() + idle_left,
            serial,
        });
        Ok(())
    }

    /// Parked connections now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().parked.len()
    }

    /// True when nothing is parked.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection whose idle timeout has passed; returns how many.
    pub(crate) fn close_expired(&self, now: Instant) -> usize {
        let mut lot = self.lock();
        let before = lot.parked.len();
        // Dropping a stream closes its descriptor, which leaves the epoll set by itself.
        lot.parked.retain(|_, parked| parked.closes_at > now);
        before - lot.parked.len()
    }

    /// Closes the connection of listener `port` (any listener: `None`) closest to its idle
    /// timeout, i.e. the one quiet longest (to make room for a new connection); `false` when
    /// none is parked there. A scan: it runs only when a listener is full.
    pub(crate) fn close_oldest(&self, port: Option<u16>) -> bool {
        let mut lot = self.lock();
        let oldest = lot
            .parked
            .iter()
            .filter(|(_, parked)| port.is_none_or(|port| parked.port == port))
            .min_by_key(|(_, parked)| parked.closes_at)
            .map(|(key, _)| key);
        match oldest {
            Some(key) => {
                // Dropping the stream closes it, and it leaves the epoll set by itself.
                lot.parked.remove(key);
                true
            }
            None => false,
        }
    }

    /// Closes every parked connection, and every one parked later (the drain).
    pub(crate) fn close_all(&self) -> usize {
        let mut lot = self.lock();
        lot.closed = true;
        let closed = lot.parked.len();
        lot.parked.clear();
        closed
    }

    /// Takes out the connections whose client has sent something or closed, waiting for at
    /// least one. Cancel-safe: nothing is taken out before the last await.
    pub(crate) async fn woken(
        &self,
        watch: &AsyncFd<BorrowedFd<'_>>,
        out: &mut Vec<Parked>,
    ) -> io::Result<()> {
        loop {
            let mut ready = watch.readable().await?;
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_TURN];
            // SAFETY: `events` has room for EVENTS_PER_TURN entries; timeout 0 never blocks.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS_PER_TURN as i32,
                    0,
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if n == 0 {
                ready.clear_ready();
                continue;
            }
            let mut lot = self.lock();
            for event in &events[..n as usize] {
                let (key, serial) = untoken(event.u64);
                if lot.parked.get(key).is_none_or(|p| p.serial != serial) {
                    continue;
                }
                let parked = lot.parked.remove(key);
                // SAFETY: both descriptors are open; DEL ignores the event argument.
                unsafe {
                    libc::epoll_ctl(
                        self.epoll.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        parked.stream.as_raw_fd(),
                        std::ptr::null_mut(),
                    );
                }
                out.push(parked);
            }
            return Ok(());
        }
    }

    /// The epoll set registered with tokio's reactor, which then says when it has events.
    pub(crate) fn watch(&self) -> io::Result<AsyncFd<BorrowedFd<'_>>> {
        // SAFETY: the descriptor is the lot's own epoll set, open for as long as the lot, and
        // the borrow keeps the lot alive for as long as the AsyncFd.
        unsafe { AsyncFd::register_with_interest(self.epoll.as_fd(), Interest::READABLE) }
            .map_err(io::Error::from)
    }
}

/// Slab key and serial in one epoll token.
fn token(key: usize, serial: u32) -> u64 {
    ((key as u64) << 32) | u64::from(serial)
}

fn untoken(token: u64) -> (usize, u32) {
    ((token >> 32) as usize, token as u32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    fn slot() -> ConnectionSlot {
        super::super::lifetime::ListenerSlots::new(80, 100).take()
    }

    /// A connected pair on loopback: (client, server side).
    async fn pair() -> io::Result<(TcpStream, TcpStream, SocketAddr)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, peer) = listener.accept().await?;
        Ok((client, server, peer))
    }

    async fn read_eof(client: &mut TcpStream) -> io::Result<bool> {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte)).await;
        Ok(matches!(read, Ok(Ok(0))))
    }

    #[tokio::test]
    async fn a_parked_connection_comes_back_when_its_client_sends() -> io::Result<()> {
        let lot = ParkingLot::new()?;
        let watch = lot.watch()?;
        let (mut client, server, peer) = pair().await?;
        lot.park(server, peer, 8080, 3, Duration::from_secs(60), slot())?;
        let (mut quiet_client, quiet_server, quiet_peer) = pair().await?;
        lot.park(
            quiet_server,
            quiet_peer,
            8080,
            1,
            Duration::from_secs(60),
            slot(),
        )?;
        assert_eq!(lot.len(), 2);

        client.write_all(b"GET").await?;
        let mut woken = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), lot.woken(&watch, &mut woken))
            .await
            .map_err(|_| io::Error::other("nothing woke"))??;
        assert_eq!(woken.len(), 1, "only the connection whose client sent");
        let parked = woken.pop().ok_or_else(|| io::Error::other("empty"))?;
        assert_eq!(
            (parked.peer, parked.port, parked.requests_seen),
            (peer, 8080, 3)
        );
        assert_eq!(lot.len(), 1);
        // The bytes are still there for the next connection task.
        let mut stream = TcpStream::from_std(parked.stream)?;
        let mut buf = [0u8; 3];
        stream.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"GET");

        // The other one is still parked and open.
        let mut byte = [0u8; 1];
        let read =
            tokio::time::timeout(Duration::from_millis(100), quiet_client.read(&mut byte)).await;
        assert!(read.is_err(), "the quiet connection was closed: {read:?}");
        Ok(())
    }

    #[tokio::test]
    async fn expired_and_drained_connections_are_closed() -> io::Result<()> {
        let lot = ParkingLot::new()?;
        let (mut short_client, short, short_peer) = pair().await?;
        let (mut long_client, long, long_peer) = pair().await?;
        lot.park(short, short_peer, 80, 1, Duration::ZERO, slot())?;
        lot.park(long, long_peer, 80, 1, Duration::from_secs(60), slot())?;
        assert_eq!(
            lot.close_expired(Instant::now() + Duration::from_millis(1)),
            1
        );
        assert!(read_eof(&mut short_client).await?, "expired: FIN");
        assert_eq!(lot.len(), 1);

        // The oldest parked connection makes room; the slot it held is free again.
        let slots = super::super::lifetime::ListenerSlots::new(81, 2);
        let (mut old_client, old, old_peer) = pair().await?;
        let (_young_client, young, young_peer) = pair().await?;
        lot.park(old, old_peer, 81, 1, Duration::from_secs(30), slots.take())?;
        lot.park(
            young,
            young_peer,
            81,
            1,
            Duration::from_secs(40),
            slots.take(),
        )?;
        assert!(slots.full());
        assert!(
            !lot.close_oldest(Some(82)),
            "nothing parked from that listener"
        );
        assert!(lot.close_oldest(Some(81)));
        assert!(read_eof(&mut old_client).await?, "the oldest one is closed");
        assert!(!slots.full());
        assert!(lot.close_oldest(None));
        assert_eq!(lot.len(), 1);

        assert_eq!(lot.close_all(), 1);
        assert!(read_eof(&mut long_client).await?, "drained: FIN");
        // Parked after the drain: closed at once.
        let (mut late_client, late, late_peer) = pair().await?;
        lot.park(late, late_peer, 80, 1, Duration::from_secs(60), slot())?;
        assert!(lot.is_empty());
        assert!(
            read_eof(&mut late_client).await?,
            "parked after the drain: FIN"
        );
        Ok(())
    }
}
