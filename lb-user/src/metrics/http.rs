//! The metrics listener: a deliberately small HTTP/1.x server. `GET /metrics` (and `HEAD /metrics`) get the last
//! rendered page; any other path is 404, any other method on `/metrics` is 405, a request that is not HTTP is 400.
//!
//! A slow or hostile client holds nothing for long and nothing that others need ([`Limits`]): at most
//! `connections` are served at once, and at most `per_source` of them from one address, so one host's slow or
//! silent connections cannot take the slots a Prometheus server elsewhere needs (one more is told 503 without
//! waiting and closed); a request head larger than
//! `request_bytes` is refused with 431, a client gets `read_timeout` to send its request and `write_timeout` to
//! take the answer, and every connection carries exactly one request (`Connection: close`). The page itself is
//! rendered elsewhere, once per sample ([`super::Metrics::render`]): a request only copies bytes.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    time::timeout,
};

use crate::listener::AcceptFailures;

/// What one client may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub connections: usize,
    /// Connections served at once from one source address.
    pub per_source: usize,
    /// Largest request head (request line and headers).
    pub request_bytes: usize,
    /// Time to send the request head.
    pub read_timeout: Duration,
    /// Time to take the whole answer.
    pub write_timeout: Duration,
}

impl Default for Limits {
    /// Prometheus scrapes with one connection at a time per target, and a page is tens of kilobytes: a few
    /// servers, a few dashboards and a human with curl fit comfortably, and a quarter of the slots is plenty
    /// for any one of them.
    fn default() -> Self {
        Limits {
            connections: 16,
            per_source: 4,
            request_bytes: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// The listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("listening for metrics on {address} (metrics.listen): {source}")]
pub struct BindError {
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Opens the listener (before the daemon touches anything else, so a taken port stops the start cleanly).
///
/// # Errors
/// When the address is taken, not an address of this host, or a privileged port without the capability.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address).await.map_err(|source| BindError { address, source })
}

/// Serves the page in `page` (empty until the first sample is rendered) until the task is aborted.
pub async fn serve(listener: TcpListener, page: watch::Receiver<Bytes>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let sources = Sources::default();
    let mut failures = AcceptFailures::new("metrics listener");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                failures.pause(&e).await;
                continue;
            }
        };
        let (Some(source), Ok(slot)) = (sources.take(peer.ip(), limits.per_source), slots.clone().try_acquire_owned())
        else {
            // Best effort and never waited on: the socket buffer of a fresh connection takes this at once.
            let _ = stream.try_write(&response(Answer::Busy, &Bytes::new()));
            continue;
        };
        let page = page.clone();
        tokio::spawn(async move {
            answer(stream, &page, limits).await;
            drop((slot, source));
        });
    }
}

/// Connections being served, per source address.
#[derive(Clone, Debug, Default)]
struct Sources(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Sources {
    /// One more connection from `ip`, unless it has `limit` already; released when the guard drops.
    fn take(&self, ip: IpAddr, limit: usize) -> Option<SourceGuard> {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = all.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(SourceGuard { sources: self.clone(), ip })
    }
}

/// One connection's share of its source's limit.
#[derive(Debug)]
struct SourceGuard {
    sources: Sources,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut all = self.sources.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = all.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                all.remove(&self.ip);
            }
        }
    }
}

/// What a request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// 200 with the page (`head_only`: without the body).
    Page { head_only: bool },
    /// 404: another path.
    NotFound,
    /// 405: another method on `/metrics`.
    MethodNotAllowed,
    /// 400: not an HTTP/1.x request line.
    BadRequest,
    /// 431: the request head is larger than `Limits::request_bytes`.
    TooLarge,
    /// 503: every connection slot is taken, or there is no page yet.
    Busy,
}

/// Reads one request head, answers it, closes.
async fn answer(mut stream: TcpStream, page: &watch::Receiver<Bytes>, limits: Limits) {
    let answer = match timeout(limits.read_timeout, read_head(&mut stream, limits.request_bytes)).await {
        Ok(Some(head)) => head,
        // Timed out, closed early, or a read error: nobody to answer.
        Err(_) | Ok(None) => return,
    };
    let body = page.borrow().clone();
    let answer = match answer {
        Answer::Page { .. } if body.is_empty() => Answer::Busy,
        other => other,
    };
    let head = response(answer, &body);
    let _ = timeout(limits.write_timeout, async {
        stream.write_all(&head).await?;
        if answer == (Answer::Page { head_only: false }) {
            stream.write_all(&body).await?;
        }
        stream.shutdown().await
    })
    .await;
}

/// Reads until the end of the request head; `None` when the client closed or failed first. A head that does not
/// fit in `limit` bytes is [`Answer::TooLarge`].
async fn read_head(stream: &mut TcpStream, limit: usize) -> Option<Answer> {
    let mut buf = vec![0u8; limit];
    let mut len = 0;
    loop {
        if len == limit {
            return Some(Answer::TooLarge);
        }
        let n = stream.read(&mut buf[len..]).await.ok()?;
        if n == 0 {
            return None;
        }
        // Only the new bytes and the three before them can complete a terminator.
        let from = len.saturating_sub(3);
        len += n;
        let window = &buf[from..len];
        if window.windows(4).any(|w| w == b"\r\n\r\n") || window.windows(2).any(|w| w == b"\n\n") {
            return Some(route(&buf[..len]));
        }
    }
}

/// What the request head `head` asks for: only its request line matters.
fn route(head: &[u8]) -> Answer {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else { return Answer::BadRequest };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Answer::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Answer::NotFound;
    }
    match method {
        "GET" => Answer::Page { head_only: false },
        "HEAD" => Answer::Page { head_only: true },
        _ => Answer::MethodNotAllowed,
    }
}

/// The status line and headers (and for errors the short body) of `answer`; the page follows for a 200.
fn response(answer: Answer, page: &Bytes) -> Vec<u8> {
    let (status, extra, body): (&str, &str, &str) = match answer {
        Answer::Page { .. } => ("200 OK", "", ""),
        Answer::NotFound => ("404 Not Found", "", "not found: the metrics are at /metrics\n"),
        Answer::MethodNotAllowed => {
            ("405 Method Not Allowed", "Allow: GET, HEAD\r\n", "method not allowed: use GET /metrics\n")
        }
        Answer::BadRequest => ("400 Bad Request", "", "bad request: expected an HTTP/1.x request line\n"),
        Answer::TooLarge => ("431 Request Header Fields Too Large", "", "request head too large\n"),
        Answer::Busy => ("503 Service Unavailable", "Retry-After: 1\r\n", "busy, or no sample yet: retry\n"),
    };
    let (content_type, length) = match answer {
        Answer::Page { .. } => (super::CONTENT_TYPE, page.len()),
        _ => ("text/plain; charset=utf-8", body.len()),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\
         {extra}\r\n{body}"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const PAGE: &str = "# HELP xvip_build_info x\n# TYPE xvip_build_info gauge\nxvip_build_info 1\n";

    #[test]
    fn routes_follow_the_request_line_only() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Answer::Page { head_only: false });
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\n\n"), Answer::Page { head_only: false });
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Answer::Page { head_only: true });
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Answer::MethodNotAllowed);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Answer::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Answer::NotFound);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Answer::BadRequest);
        assert_eq!(route(b"GET /metrics HTTP/2\r\n\r\n"), Answer::BadRequest);
        assert_eq!(route(b"GET  /metrics HTTP/1.1\r\n\r\n"), Answer::BadRequest);
        assert_eq!(route(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), Answer::BadRequest);
        assert_eq!(route(b"GET metrics HTTP/1.1\r\n\r\n"), Answer::BadRequest);
    }

    fn limits() -> Limits {
        Limits {
            connections: 2,
            per_source: 2,
            request_bytes: 256,
            read_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_millis(300),
        }
    }

    /// A listener on a free loopback port, serving `PAGE`; the sender keeps the page alive.
    async fn server(limits: Limits) -> (SocketAddr, watch::Sender<Bytes>, tokio::task::JoinHandle<()>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (tx, rx) = watch::channel(Bytes::from_static(PAGE.as_bytes()));
        (address, tx, tokio::spawn(serve(listener, rx, limits)))
    }

    /// Sends `request` and reads until the server closes.
    async fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(request).await.expect("send");
        let mut answer = Vec::new();
        let _ = timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.expect("server closes");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn get_metrics_answers_the_page_and_everything_else_a_clear_error() {
        let (address, _page, task) = server(Limits::default()).await;
        let ok = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{ok}");
        assert!(ok.contains(&format!("Content-Length: {}\r\n", PAGE.len())), "{ok}");
        assert!(ok.ends_with(&format!("\r\n\r\n{PAGE}")), "{ok}");
        let head = exchange(address, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "{head}");
        let post = exchange(address, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{post}");
        assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
        let other = exchange(address, b"GET /debug HTTP/1.1\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
        assert!(other.ends_with("not found: the metrics are at /metrics\n"), "{other}");
        let garbage = exchange(address, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{garbage}");
        task.abort();
    }

    #[tokio::test]
    async fn no_page_yet_is_a_503_with_retry_after() {
        let (address, page, task) = server(Limits::default()).await;
        page.send_replace(Bytes::new());
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
        assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
        task.abort();
    }

    #[tokio::test]
    async fn a_request_head_over_the_limit_is_refused_with_431() {
        let (address, _page, task) = server(limits()).await;
        let mut request = b"GET /metrics HTTP/1.1\r\n".to_vec();
        request.extend(std::iter::repeat_n(b'a', 300));
        let answer = exchange(address, &request).await;
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{answer}");
        task.abort();
    }

    /// Two silent clients hold both slots: a third is told 503 at once, and once the silent ones time out, the
    /// next request gets the page.
    #[tokio::test]
    async fn silent_clients_time_out_and_cannot_hold_more_than_their_slots() {
        let limits = limits();
        let (address, _page, task) = server(limits).await;
        let mut silent = Vec::new();
        for _ in 0..limits.connections {
            silent.push(TcpStream::connect(address).await.expect("connect"));
        }
        // Let the server accept them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // (Nothing sent: a request the server never reads would turn its close into a reset.)
        let busy = exchange(address, b"").await;
        assert!(busy.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{busy}");
        // The silent ones are closed by the server after read_timeout, without an answer.
        let started = Instant::now();
        for stream in &mut silent {
            let mut buf = Vec::new();
            let n = timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await.expect("closed by the server");
            assert_eq!(n.expect("read"), 0, "no answer to a client that sent nothing");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let ok = exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        task.abort();
    }

    /// Connects from `source` (an address of loopback).
    async fn connect_from(source: &str, address: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(format!("{source}:0").parse().unwrap()).expect("bind the source");
        socket.connect(address).await.expect("connect")
    }

    /// One address's silent connections take at most `per_source` slots: its next one is told 503 at once, while
    /// another address still gets the page.
    #[tokio::test]
    async fn one_address_cannot_take_every_slot() {
        let limits = Limits { connections: 4, per_source: 2, ..limits() };
        let (address, _page, task) = server(Limits { read_timeout: Duration::from_secs(30), ..limits }).await;
        let mut silent = Vec::new();
        for _ in 0..limits.per_source {
            silent.push(connect_from("127.0.0.2", address).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = connect_from("127.0.0.2", address).await;
        let mut busy = Vec::new();
        timeout(Duration::from_secs(5), third.read_to_end(&mut busy)).await.expect("closed at once").expect("read");
        let busy = String::from_utf8_lossy(&busy);
        assert!(busy.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{busy}");
        let mut other = connect_from("127.0.0.3", address).await;
        other.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.expect("send");
        let mut ok = Vec::new();
        timeout(Duration::from_secs(5), other.read_to_end(&mut ok)).await.expect("answered").expect("read");
        let ok = String::from_utf8_lossy(&ok);
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        // Closing one of the silent connections frees its address's slot.
        drop(silent.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut again = connect_from("127.0.0.2", address).await;
        again.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.expect("send");
        let mut ok = Vec::new();
        timeout(Duration::from_secs(5), again.read_to_end(&mut ok)).await.expect("answered").expect("read");
        assert!(String::from_utf8_lossy(&ok).starts_with("HTTP/1.1 200 OK\r\n"));
        task.abort();
    }

    /// A client that sends its request a byte at a time, forever, is cut off by read_timeout as a whole, not per
    /// read.
    #[tokio::test]
    async fn a_trickling_client_is_cut_off_after_the_read_timeout() {
        let limits = limits();
        let (address, _page, task) = server(limits).await;
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let started = Instant::now();
        let mut closed = false;
        for b in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle().take(200) {
            if stream.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            let mut probe = [0u8; 1];
            if let Ok(Ok(0)) = timeout(Duration::from_millis(1), stream.read(&mut probe)).await {
                closed = true;
                break;
            }
        }
        // 200 bytes 10 ms apart take over 2 s: a timeout per read would never close.
        assert!(closed, "the server closed the connection after {:?}", started.elapsed());
        task.abort();
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_error() {
        let first = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let address = first.local_addr().expect("address");
        let error = bind(address).await.expect_err("taken");
        assert!(error.to_string().starts_with(&format!("listening for metrics on {address} (metrics.listen): ")));
    }
}
