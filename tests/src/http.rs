//! A minimal blocking HTTP/1.1 client for probes: enough for `lab-backend`, nginx and haproxy answers.
//!
//! Sockets live in the namespace of the thread that opens them, so call these from inside
//! [`in_netns`](crate::netns::in_netns) or a probe thread. Every call has one overall deadline, so a probe's
//! timeout bounds connect, send and receive together.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
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

/// `GET path` with `Connection: close` from a fixed local port (`SO_REUSEADDR`), waiting for the server to close
/// first so that this side keeps no TIME_WAIT and the next call can reuse the port at once: the same 4-tuple,
/// again and again, as a client that recycles its source ports would produce.
///
/// # Errors
/// Any I/O error (`EADDRINUSE` if the port is still held), a malformed response, or the timeout.
pub fn get_from_port(addr: SocketAddrV4, local_port: u16, path: &str, timeout: Duration) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match connect_from_port(addr, local_port, deadline) {
            // The previous connection on this 4-tuple is still in LAST_ACK (we close second, and the peer's last
            // ACK can be late on a loaded machine): the kernel refuses the same 4-tuple until it has gone.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other?,
        }
    };
    write_request(&mut stream, SocketAddr::V4(addr), path, false, deadline)?;
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, deadline)?;
    loop {
        reader.get_ref().set_read_timeout(Some(left(deadline, "close")?))?;
        let mut rest = [0u8; 512];
        match reader.read(&mut rest) {
            Ok(0) => return Ok(response),
            Ok(_) => {}
            Err(e) => return Err(map_timeout(e, "close")),
        }
    }
}

/// A TCP connection to `addr` from local port `local_port` (`SO_REUSEADDR`), connected by `deadline`.
fn connect_from_port(addr: SocketAddrV4, local_port: u16, deadline: Instant) -> io::Result<TcpStream> {
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    // SAFETY: plain syscall; the result is checked and owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    let one: libc::c_int = 1;
    // The connect timeout: Linux bounds a blocking connect by SO_SNDTIMEO.
    let connect_within = left(deadline, "connect")?;
    let send_timeout = libc::timeval {
        tv_sec: libc::time_t::try_from(connect_within.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(connect_within.subsec_micros()),
    };
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let local = sockaddr(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, local_port));
    let remote = sockaddr(addr);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a valid fd, and pointers to values of the sizes passed.
    unsafe {
        check(libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        check(libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const send_timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        ))?;
        check(libc::bind(raw, (&raw const local).cast(), len))?;
        check(libc::connect(raw, (&raw const remote).cast(), len)).map_err(|e| map_timeout(e, "connect"))?;
    }
    // SAFETY: the fd is a connected TCP socket, handed over whole.
    Ok(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })
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

    /// Connects from local port `local_port` within `timeout` (a client that reuses a source port).
    ///
    /// # Errors
    /// As [`get_from_port`].
    pub fn open_from_port(addr: SocketAddrV4, local_port: u16, timeout: Duration) -> io::Result<Self> {
        let stream = connect_from_port(addr, local_port, Instant::now() + timeout)?;
        Ok(Connection { addr: SocketAddr::V4(addr), reader: BufReader::new(stream) })
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

    /// Turns TCP keepalive on: a probe after `idle` without traffic (whole seconds, at least 1), then every second.
    ///
    /// # Errors
    /// When `setsockopt` fails.
    pub fn set_keepalive(&self, idle: Duration) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.reader.get_ref().as_raw_fd();
        let idle = libc::c_int::try_from(idle.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
        for (level, name, value) in [
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
            (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
            (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1),
            (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 30),
        ] {
            // SAFETY: a valid socket fd and a pointer to a c_int of the size passed.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    name,
                    (&raw const value).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
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
