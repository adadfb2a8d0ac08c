//! The lab's own servers and clients, plain threads with std sockets: what each backend runs
//! (a name on TCP, UDP and HTTP, so a test sees who answered) and the client side that asks
//! the VIP and holds connections open. Kept apart from the namespace wiring in the parent
//! module, which only starts them.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{HTTP_PORT, TCP_PORT, UDP_PORT};

/// The backend's server: TCP port 8080 greets every connection with `<name>\n` and answers
/// every line it receives with `<name>\n` (so a test can hold a connection and keep asking who
/// answers), except the line [`PEER_QUESTION`], answered with `<name> <client ip:port>\n` as
/// this end saw it (whether a load balancer kept the client's address or replaced it); UDP
/// port 8053 answers every datagram with `<name>\n`, [`PEER_QUESTION`] with `<name> <client
/// ip:port>\n` the same way; HTTP on 8081 answers every
/// request with `<name> <method> <path>\n` (keep-alive). Bound in the namespace of the thread
/// that starts it; stopped and joined on drop.
#[derive(Debug)]
pub struct BackendServer {
    name: String,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<HashMap<u64, TcpStream>>>,
    threads: Vec<JoinHandle<()>>,
}

/// The question a server answers with its name and the client address it saw.
pub const PEER_QUESTION: &str = "peer?";

/// How often the accept and receive loops look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

impl BackendServer {
    /// Binds 0.0.0.0:8080/tcp, 0.0.0.0:8053/udp and 0.0.0.0:8081/tcp in the current thread's
    /// namespace.
    pub fn start(name: &str) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT))
            .with_context(|| format!("binding TCP port {TCP_PORT}"))?;
        let http_listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, HTTP_PORT))
            .with_context(|| format!("binding TCP port {HTTP_PORT}"))?;
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT))
            .with_context(|| format!("binding UDP port {UDP_PORT}"))?;
        udp.set_read_timeout(Some(STOP_POLL))
            .context("setting the UDP read timeout")?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let answer = format!("{name}\n");
        let tcp_thread = {
            let (stop, connections, answer) = (stop.clone(), connections.clone(), answer.clone());
            std::thread::spawn(move || {
                serve_tcp(listener, &answer, &stop, &connections, serve_connection)
            })
        };
        let http_thread = {
            let (stop, connections, name) = (stop.clone(), connections.clone(), name.to_string());
            std::thread::spawn(move || {
                serve_tcp(http_listener, &name, &stop, &connections, serve_http)
            })
        };
        let udp_thread = {
            let stop = stop.clone();
            std::thread::spawn(move || serve_udp(udp, &answer, &stop))
        };
        Ok(Self {
            name: name.to_string(),
            stop,
            connections,
            threads: vec![tcp_thread, udp_thread, http_thread],
        })
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Serves until the process ends (for `lab-serve`).
    pub fn serve_forever(mut self) {
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
    }
}

impl Drop for BackendServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(connections) = self.connections.lock() {
            for stream in connections.values() {
                // Wakes the connection's blocked read; it then ends.
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
    }
}

fn serve_tcp(
    listener: TcpListener,
    answer: &str,
    stop: &Arc<AtomicBool>,
    connections: &Arc<Mutex<HashMap<u64, TcpStream>>>,
    serve: fn(TcpStream, &str) -> std::io::Result<()>,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        // poll() with a timeout instead of a blocking accept, so the stop flag is seen.
        let mut pollfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pollfd, 1, STOP_POLL.as_millis() as i32) };
        if ready <= 0 {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        handlers.retain(|handler| !handler.is_finished());
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if let (Ok(clone), Ok(mut map)) = (stream.try_clone(), connections.lock()) {
            map.insert(id, clone);
        }
        let (answer, connections) = (answer.to_string(), connections.clone());
        handlers.push(std::thread::spawn(move || {
            let _ = serve(stream, &answer);
            if let Ok(mut map) = connections.lock() {
                map.remove(&id);
            }
        }));
    }
    // Drop has shut down the connections it saw; one accepted since then is only known here.
    if let Ok(connections) = connections.lock() {
        for stream in connections.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
    for handler in handlers {
        let _ = handler.join();
    }
}

fn serve_connection(stream: TcpStream, answer: &str) -> std::io::Result<()> {
    let peer_answer = format!("{} {}\n", answer.trim_end(), stream.peer_addr()?);
    let mut writer = stream.try_clone()?;
    writer.write_all(answer.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim_end() == PEER_QUESTION {
            writer.write_all(peer_answer.as_bytes())?;
        } else {
            writer.write_all(answer.as_bytes())?;
        }
    }
}

/// A minimal HTTP/1.1 responder: reads each request head (and a `Content-Length` body, which it
/// discards) and answers `<name> <method> <path>`, keeping the connection open.
fn serve_http(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut body_length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((field, value)) = header.split_once(':') {
                if field.eq_ignore_ascii_case("content-length") {
                    body_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        std::io::copy(
            &mut std::io::Read::take(&mut reader, body_length as u64),
            &mut std::io::sink(),
        )?;
        let body = format!("{name} {method} {path}\n");
        write!(
            writer,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}

fn serve_udp(socket: UdpSocket, answer: &str, stop: &AtomicBool) {
    let mut buffer = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((len, peer)) = socket.recv_from(&mut buffer) {
            if buffer[..len].trim_ascii_end() == PEER_QUESTION.as_bytes() {
                let _ = socket.send_to(format!("{} {peer}\n", answer.trim_end()).as_bytes(), peer);
            } else {
                let _ = socket.send_to(answer.as_bytes(), peer);
            }
        }
    }
}

/// Connects to `addr`, reads the greeting line and closes: who answered. Call it inside the
/// client's namespace.
pub fn tcp_ask(addr: SocketAddr, timeout: Duration) -> Result<String> {
    Ok(HeldConnection::open(addr, timeout)?.greeting)
}

/// Sends one datagram to `addr` from an unconnected socket, so the reply's source address is
/// seen as it arrived; returns the answer and where it came from.
pub fn udp_ask(addr: SocketAddr, timeout: Duration) -> Result<(String, SocketAddr)> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding a UDP socket")?;
    socket
        .set_read_timeout(Some(timeout))
        .context("setting the UDP read timeout")?;
    socket
        .send_to(b"who?\n", addr)
        .with_context(|| format!("sending to {addr}"))?;
    let mut buffer = [0u8; 512];
    let (len, from) = socket
        .recv_from(&mut buffer)
        .with_context(|| format!("no UDP answer from {addr} within {timeout:?}"))?;
    Ok((
        String::from_utf8_lossy(&buffer[..len]).trim().to_string(),
        from,
    ))
}

/// Like [`udp_ask`], but asks [`PEER_QUESTION`]: returns who answered, the client address it
/// saw, and where the answer came from.
pub fn udp_ask_peer(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(String, SocketAddr, SocketAddr)> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding a UDP socket")?;
    socket
        .set_read_timeout(Some(timeout))
        .context("setting the UDP read timeout")?;
    socket
        .send_to(format!("{PEER_QUESTION}\n").as_bytes(), addr)
        .with_context(|| format!("sending to {addr}"))?;
    let mut buffer = [0u8; 512];
    let (len, from) = socket
        .recv_from(&mut buffer)
        .with_context(|| format!("no UDP answer from {addr} within {timeout:?}"))?;
    let (name, seen) = parse_peer_answer(&String::from_utf8_lossy(&buffer[..len]))?;
    Ok((name, seen, from))
}

/// `<name> <ip:port>` as the servers answer [`PEER_QUESTION`].
fn parse_peer_answer(answer: &str) -> Result<(String, SocketAddr)> {
    let Some((name, seen)) = answer.trim().split_once(' ') else {
        bail!("{answer:?} is not `<name> <client address>`");
    };
    let seen = seen
        .parse()
        .with_context(|| format!("bad client address in {answer:?}"))?;
    Ok((name.to_string(), seen))
}

/// A TCP connection kept open to ask the same backend again and again.
#[derive(Debug)]
pub struct HeldConnection {
    reader: BufReader<TcpStream>,
    greeting: String,
}

impl HeldConnection {
    /// Connects (inside the current thread's namespace) and reads the greeting.
    pub fn open(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .context("setting the read timeout")?;
        let mut reader = BufReader::new(stream);
        let greeting = read_answer(&mut reader).with_context(|| format!("greeting from {addr}"))?;
        Ok(Self { reader, greeting })
    }

    /// The name the server greeted with.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// This end's address (the flow's source).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.reader.get_ref().local_addr()?)
    }

    /// Sends a line and returns the answer.
    pub fn ask(&mut self) -> Result<String> {
        self.reader
            .get_mut()
            .write_all(b"who?\n")
            .context("sending on a held connection")?;
        read_answer(&mut self.reader)
    }

    /// Asks [`PEER_QUESTION`]: who answers, and the client address the server sees for this
    /// connection.
    pub fn ask_peer(&mut self) -> Result<(String, SocketAddr)> {
        self.reader
            .get_mut()
            .write_all(format!("{PEER_QUESTION}\n").as_bytes())
            .context("sending on a held connection")?;
        parse_peer_answer(&read_answer(&mut self.reader)?)
    }
}

fn read_answer(reader: &mut BufReader<TcpStream>) -> Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).context("reading an answer")? == 0 {
        bail!("connection closed before an answer");
    }
    Ok(line.trim().to_string())
}
