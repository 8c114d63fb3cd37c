//! lab-backend: the HTTP/1.1 server each lab backend runs.
//!
//! ```text
//! lab-backend --name backend2 --port 8080 [--port 443 ...] [--stream-interval-ms 50] [--ipv6]
//! ```
//! - Listens on 0.0.0.0, or with `--ipv6` on `[::]` (IPv6 and, as IPv4-mapped addresses, IPv4).
//! - `GET /` answers `<name>\n`, with headers `X-Backend: <name>` and `X-Client: <peer ip:port>` (what the backend
//!   sees as the client: the real client under DSR, a node under SNAT).
//! - `GET /readyz`, `/healthz`, `/livez`: 200 `ok`, or 503 while unready. SIGUSR1 makes it unready, SIGUSR2 ready
//!   again; it keeps serving `GET /` either way.
//! - `GET /stream`: a line `<name> <n>` every 50 ms until the client goes away (connection-survival tests).
//! - Keep-alive by default in HTTP/1.1; `Connection: close` is honoured.
//!
//! Prints `lab-backend ready` once every port is bound (the lab waits for it). Plain std + threads: one thread
//! per listener and per connection is plenty for tests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static UNREADY: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    UNREADY.store(signal == libc::SIGUSR1, Ordering::SeqCst);
}

struct Options {
    name: String,
    ports: Vec<u16>,
    stream_interval: Duration,
    /// Listen on `[::]` instead of 0.0.0.0.
    ipv6: bool,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "lab-backend: {problem}\nusage: lab-backend --name NAME --port PORT [--port PORT ...] [--stream-interval-ms MS] [--ipv6]"
    );
    std::process::exit(2);
}

fn parse_args() -> Options {
    let mut name = None;
    let mut ports = Vec::new();
    let mut stream_interval = Duration::from_millis(50);
    let mut ipv6 = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--name" => name = Some(value()),
            "--port" => {
                let v = value();
                ports.push(v.parse().unwrap_or_else(|_| usage(&format!("bad port {v:?}"))));
            }
            "--stream-interval-ms" => {
                let v = value();
                stream_interval =
                    Duration::from_millis(v.parse().unwrap_or_else(|_| usage(&format!("bad interval {v:?}"))));
            }
            "--ipv6" => ipv6 = true,
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let name = name.unwrap_or_else(|| usage("--name is required"));
    if ports.is_empty() {
        usage("at least one --port is required");
    }
    Options { name, ports, stream_interval, ipv6 }
}

fn main() {
    let options = Arc::new(parse_args());
    // SAFETY: installing a handler that only stores to an atomic. glibc's signal() has BSD semantics
    // (SA_RESTART), so blocking accept/read calls are restarted rather than failing with EINTR.
    unsafe {
        libc::signal(libc::SIGUSR1, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGUSR2, on_signal as *const () as libc::sighandler_t);
    }
    let mut listeners = Vec::new();
    for &port in &options.ports {
        let any = if options.ipv6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        let address = SocketAddr::new(any, port);
        match TcpListener::bind(address) {
            Ok(listener) => listeners.push(listener),
            Err(e) => {
                eprintln!("lab-backend {}: binding {address}: {e}", options.name);
                std::process::exit(1);
            }
        }
    }
    println!("{}: {} on ports {:?}", xvip_tests::READY_LINE, options.name, options.ports);
    let _ = io::stdout().flush();
    let mut threads = Vec::new();
    for listener in listeners {
        let options = Arc::clone(&options);
        threads.push(std::thread::spawn(move || accept_loop(&listener, &options)));
    }
    for thread in threads {
        let _ = thread.join();
    }
}

fn accept_loop(listener: &TcpListener, options: &Arc<Options>) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let options = Arc::clone(options);
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, peer, &options) {
                        // Resets and broken pipes are expected when tests kill clients or cut links.
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
                        ) {
                            eprintln!("lab-backend {}: connection from {peer}: {e}", options.name);
                        }
                    }
                });
            }
            Err(e) => {
                eprintln!("lab-backend {}: accept: {e}", options.name);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

struct Request {
    path: String,
    keep_alive: bool,
}

/// Reads one request head (and discards a body with Content-Length). `None` at a clean end of the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(path), Some(version)) = (method, path, version) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad request line {line:?}")));
    };
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length = 0u64;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the headers"));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                if value.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            }
        }
    }
    io::copy(&mut reader.by_ref().take(content_length), &mut io::sink())?;
    let path = if method == "GET" || method == "HEAD" { path.to_owned() } else { format!("!{method}") };
    Ok(Some(Request { path, keep_alive }))
}

fn serve(stream: TcpStream, peer: SocketAddr, options: &Options) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Idle keep-alive connections are dropped eventually, so threads do not pile up over a long bench.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    // A client behind a cut link never acknowledges: give up instead of blocking until TCP's own timeout.
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader)? {
        let (status, body) = match request.path.split('?').next().unwrap_or_default() {
            "/" => ("200 OK", format!("{}\n", options.name)),
            "/readyz" | "/healthz" | "/livez" => {
                if UNREADY.load(Ordering::SeqCst) {
                    ("503 Service Unavailable", "not ready\n".to_owned())
                } else {
                    ("200 OK", "ok\n".to_owned())
                }
            }
            "/stream" => return stream_lines(&mut writer, peer, options),
            path if path.starts_with('!') => ("405 Method Not Allowed", "only GET\n".to_owned()),
            _ => ("404 Not Found", "not found\n".to_owned()),
        };
        let connection = if request.keep_alive { "keep-alive" } else { "close" };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {}\r\n\
             X-Client: {peer}\r\nConnection: {connection}\r\n\r\n{body}",
            body.len(),
            options.name
        );
        writer.write_all(response.as_bytes())?;
        if !request.keep_alive {
            break;
        }
    }
    Ok(())
}

/// The body has no length: it ends when the connection closes, which is valid HTTP/1.1 with `Connection: close`.
fn stream_lines(writer: &mut TcpStream, peer: SocketAddr, options: &Options) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: {}\r\nX-Client: {peer}\r\nConnection: close\r\n\r\n",
        options.name
    );
    writer.write_all(head.as_bytes())?;
    for n in 0u64.. {
        writer.write_all(format!("{} {n}\n", options.name).as_bytes())?;
        std::thread::sleep(options.stream_interval);
    }
    Ok(())
}
