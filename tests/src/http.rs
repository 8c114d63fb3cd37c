//! A minimal blocking HTTP/1.1 client for probes: enough for `lab-backend`, nginx and haproxy answers.
//!
//! Sockets live in the namespace of the thread that opens them, so call these from inside
//! [`in_netns`](crate::netns::in_netns) or a probe thread. Every call has one overall deadline, so a probe's
//! timeout bounds connect, send and receive together.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A parsed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names as sent; look them up with [`header`](Self::header).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text, lossy.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: deadline passed"))
}

fn left(deadline: Instant, what: &str) -> io::Result<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or_else(|| timed_out(what))
}

/// Opens a TCP connection with a deadline (`connect_timeout`, then TCP_NODELAY).
///
/// # Errors
/// Connection refused/reset, unreachable, or the deadline.
pub fn connect(addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, left(deadline, "connect")?)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `GET path` on a new connection with `Connection: close`; the whole exchange must finish within `timeout`.
///
/// # Errors
/// Any I/O error, a malformed response, or the timeout (`ErrorKind::TimedOut`).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addr, deadline)?;
    write_request(&mut stream, addr, path, false, deadline)?;
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, deadline)
}

fn write_request(
    stream: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
    keep_alive: bool,
    deadline: Instant,
) -> io::Result<()> {
    stream.set_write_timeout(Some(left(deadline, "send")?))?;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: xvip-lab\r\nConnection: {connection}\r\n\r\n");
    stream.write_all(request.as_bytes())
}

/// Reads one response. The body is delimited by Content-Length, or by the end of the stream without one.
fn read_response(reader: &mut BufReader<TcpStream>, deadline: Instant) -> io::Result<Response> {
    let status_line = read_line(reader, deadline)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}")));
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, deadline)?;
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let response = Response { status, headers, body: Vec::new() };
    let length = response.header("content-length").map(|v| v.parse::<usize>());
    let mut body = Vec::new();
    match length {
        Some(Ok(n)) => {
            body.resize(n, 0);
            let mut filled = 0;
            while filled < n {
                reader.get_ref().set_read_timeout(Some(left(deadline, "body")?))?;
                match reader.read(&mut body[filled..]) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short")),
                    Ok(k) => filled += k,
                    Err(e) => return Err(map_timeout(e, "body")),
                }
            }
        }
        Some(Err(_)) => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")),
        None => loop {
            reader.get_ref().set_read_timeout(Some(left(deadline, "body")?))?;
            let mut chunk = [0u8; 4096];
            match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => body.extend_from_slice(&chunk[..k]),
                Err(e) => return Err(map_timeout(e, "body")),
            }
        },
    }
    Ok(Response { body, ..response })
}

/// One CRLF- (or LF-) terminated line without its terminator.
pub(crate) fn read_line(reader: &mut BufReader<TcpStream>, deadline: Instant) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        reader.get_ref().set_read_timeout(Some(left(deadline, "header")?))?;
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-response")),
            Ok(_) if line.ends_with(b"\n") => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_timeout(e, "header")),
        }
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Socket read timeouts surface as WouldBlock on Linux; call them what they are.
fn map_timeout(e: io::Error, what: &str) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock { timed_out(what) } else { e }
}

/// A keep-alive connection for several requests in a row (to see that a flow sticks to its backend).
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Connects within `timeout`.
    ///
    /// # Errors
    /// As [`connect`].
    pub fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = connect(addr, Instant::now() + timeout)?;
        Ok(Connection { addr, reader: BufReader::new(stream) })
    }

    /// `GET path` with `Connection: keep-alive` on this connection.
    ///
    /// # Errors
    /// Any I/O error or the timeout; the connection is unusable afterwards.
    pub fn get(&mut self, path: &str, timeout: Duration) -> io::Result<Response> {
        let deadline = Instant::now() + timeout;
        write_request(self.reader.get_mut(), self.addr, path, true, deadline)?;
        read_response(&mut self.reader, deadline)
    }

    /// The local address, to tell connections apart in captures.
    ///
    /// # Errors
    /// When the socket is gone.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.reader.get_ref().local_addr()
    }

    /// The underlying reader (for streaming responses).
    pub(crate) fn into_reader(self) -> BufReader<TcpStream> {
        self.reader
    }

    /// Sends `GET path` without waiting for the answer.
    pub(crate) fn send_get(&mut self, path: &str, deadline: Instant) -> io::Result<()> {
        write_request(self.reader.get_mut(), self.addr, path, false, deadline)
    }
}
