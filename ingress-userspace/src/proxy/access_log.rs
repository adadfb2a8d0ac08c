//! The access log: one JSON line per request, off unless `--access-log`. Lines are handed to a
//! writer thread through a bounded channel, so a slow stdout never holds a request up and no lock
//! is shared between requests; when the channel is full the line is dropped and counted.

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{sync_channel, SyncSender, TrySendError},
        Arc,
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// The sending side of the access log.
#[derive(Debug, Clone)]
pub(crate) struct AccessLog {
    lines: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer thread; lines go to `out` (stdout in the agent).
    pub(crate) fn start(mut out: Box<dyn std::io::Write + Send>) -> std::io::Result<Self> {
        let (lines, queue) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Ok(line) = queue.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // Write what is queued, then flush once: one syscall per burst, not per line.
                    while let Ok(line) = queue.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(Self {
            lines,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Lines dropped because the writer fell behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.lines.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What is known of a request when its response ends.
#[derive(Debug)]
pub(crate) struct AccessRecord {
    /// The log to write to.
    pub log: AccessLog,
    /// When the request arrived.
    pub time: SystemTime,
    /// When the request arrived, for the duration.
    pub started: Instant,
    /// The client.
    pub client: SocketAddr,
    /// Request method.
    pub method: http::Method,
    /// Host as sent.
    pub host: String,
    /// Path and query as sent.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: http::Version,
    /// Response status.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// The endpoint that answered, if one did.
    pub upstream: Option<SocketAddr>,
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let line = serde_json::json!({
            "time": rfc3339(self.time),
            "client": self.client.ip().to_string(),
            "method": self.method.as_str(),
            "host": self.host,
            "path": self.path,
            "protocol": format!("{:?}", self.version),
            "status": self.status,
            "bytes": self.bytes,
            "duration_ms": self.started.elapsed().as_secs_f64() * 1e3,
            "upstream": self.upstream.map(|u| u.to_string()),
        });
        self.log.send(format!("{line}\n"));
    }
}

/// `2026-11-26T18:46:02.123Z`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_time() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_718_762_123);
        assert_eq!(rfc3339(t), "2026-11-26T18:46:02.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
