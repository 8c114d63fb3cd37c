//! The status socket: a Unix socket (mode 0600) where `xvip status` asks the running daemon for its status and
//! `xvip trace` follows its data plane's decisions.
//!
//! Protocol: the client connects and writes one line.
//! - `status`: the daemon answers with one line of JSON and closes.
//! - `trace` or `trace {FILTER}` (a JSON [`trace::Filter`]): the daemon answers with one JSON [`trace::Event`] per
//!   line until the client closes the connection (or the daemon stops). A client that reads nothing for
//!   [`TRACE_WRITE_TIMEOUT`] is disconnected.
//!
//! Anything else gets `{"error": ...}`.
use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{listener::AcceptFailures, status::Status, trace};

/// A request from a client: the agent answers on the oneshot.
pub type StatusRequest = oneshot::Sender<Status>;

/// How long a trace client may leave a line unread before the daemon closes its connection (and, if it was the
/// last client, switches tracing off).
pub const TRACE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the socket's requests go: status requests to the agent, trace clients to the trace task (`None`: this
/// daemon cannot trace).
#[derive(Clone)]
pub struct Handlers {
    pub status: mpsc::Sender<StatusRequest>,
    pub trace: Option<mpsc::Sender<trace::Subscription>>,
}

/// The status socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("another xvip is already answering on {0}: stop it first, or set [control].socket to another path")]
    InUse(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// Binds the socket. A stale socket file (no daemon answers on it) is replaced; a live one is an error, so two
/// daemons never share a socket.
///
/// # Errors
/// [`Error::InUse`] when a daemon answers there; [`Error::Io`] when a file operation fails.
pub async fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error("creating the socket directory", dir))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(Error::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_error("removing the stale socket", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_error("binding the status socket", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error("setting mode 0600 on", path))?;
    Ok(listener)
}

/// Where connections come from: the listener, or a stand-in in tests.
pub trait Accept {
    fn accept(&self) -> impl Future<Output = io::Result<UnixStream>> + Send;
}

impl Accept for UnixListener {
    async fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// Serves clients until the listener is dropped: each request becomes a message to the agent.
///
/// A failed `accept` (out of file descriptors, say) pauses the loop ([`crate::listener`]).
pub async fn serve(listener: impl Accept, handlers: Handlers) {
    let mut failures = AcceptFailures::new("status socket");
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                failures.pause(&e).await;
                continue;
            }
        };
        let handlers = handlers.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, handlers).await {
                log::debug!("control socket client: {e:#}");
            }
        });
    }
}

async fn answer(stream: UnixStream, handlers: Handlers) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take_line_limit();
    tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line))
        .await
        .context("client sent no request within 2 s")??;
    let request = line.trim();
    let reply = if request == "status" {
        let (tx, rx) = oneshot::channel();
        handlers.status.send(tx).await.map_err(|_| anyhow!("the agent is stopping"))?;
        let status = rx.await.context("the agent dropped the request")?;
        serde_json::to_string(&status).context("encoding the status")?
    } else if let Some(filter) = request.strip_prefix("trace") {
        return trace_session(reader, write, handlers.trace, filter.trim()).await;
    } else {
        serde_json::json!({ "error": format!("unknown request {request:?}; send \"status\" or \"trace\"") }).to_string()
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    Ok(())
}

/// Streams trace events to the client until it closes the connection, stops reading for
/// [`TRACE_WRITE_TIMEOUT`], or the trace task ends. Leaving drops the event queue, which the trace task notices.
async fn trace_session(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    mut write: tokio::net::unix::OwnedWriteHalf,
    hub: Option<mpsc::Sender<trace::Subscription>>,
    filter: &str,
) -> Result<()> {
    let refuse = |message: String| serde_json::to_string(&trace::Event::Error(message));
    let filter = if filter.is_empty() { Ok(trace::Filter::default()) } else { serde_json::from_str(filter) };
    let (events_tx, mut events) = mpsc::channel(trace::QUEUE);
    let refused = match (filter, hub) {
        (Err(e), _) => Some(format!("the trace filter is not valid JSON: {e}")),
        (_, None) => Some("this daemon cannot trace (see its log)".to_string()),
        (Ok(filter), Some(hub)) => hub
            .send(trace::Subscription { filter, events: events_tx })
            .await
            .err()
            .map(|_| "the agent is stopping".into()),
    };
    if let Some(message) = refused {
        write.write_all(refuse(message)?.as_bytes()).await?;
        write.write_all(b"\n").await?;
        return Ok(());
    }
    let mut ignored = [0u8; 256];
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return Ok(()) };
                let last = matches!(event, trace::Event::Error(_));
                let mut line = serde_json::to_string(&event).context("encoding a trace event")?;
                line.push('\n');
                tokio::time::timeout(TRACE_WRITE_TIMEOUT, write.write_all(line.as_bytes()))
                    .await
                    .with_context(|| format!("trace client read nothing for {} s", TRACE_WRITE_TIMEOUT.as_secs()))??;
                if last {
                    return Ok(());
                }
            }
            // The client sends nothing more: end of file (or an error) means it left.
            n = tokio::io::AsyncReadExt::read(&mut reader, &mut ignored) => {
                if n.unwrap_or(0) == 0 {
                    return Ok(());
                }
            }
        }
    }
}

trait TakeLineLimit {
    fn take_line_limit(self) -> tokio::io::Take<Self>
    where
        Self: Sized;
}

impl<R: tokio::io::AsyncRead + Unpin> TakeLineLimit for BufReader<R> {
    /// Requests are one short line; cap what a client can make us buffer.
    fn take_line_limit(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, 4096)
    }
}

/// Asks the daemon behind `path` for its status.
pub async fn query(path: &Path) -> Result<Status> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!("no xvip daemon answers on {} (is `xvip run` running, and are you root?)", path.display())
    })?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"status\n").await.context("sending the request")?;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), BufReader::new(read).read_line(&mut line))
        .await
        .context("the daemon did not answer within 5 s")?
        .context("reading the answer")?;
    serde_json::from_str(&line).with_context(|| format!("the daemon's answer is not a status: {}", line.trim()))
}

/// How a trace ended, when the daemon did not refuse it.
#[derive(Debug, PartialEq, Eq)]
pub enum TraceEnd {
    /// The daemon closed the connection (it stopped, or it stopped serving this client).
    Closed,
}

/// Follows the data plane's decisions on the daemon behind `path`: `each` gets every event but errors, until the
/// daemon closes the connection or `each` fails.
///
/// # Errors
/// When no daemon answers, the daemon refuses the request (an [`trace::Event::Error`], also from a daemon that
/// cannot trace), a line is not an event, or `each` fails.
pub async fn trace(
    path: &Path,
    filter: &trace::Filter,
    mut each: impl FnMut(trace::Event) -> io::Result<()>,
) -> Result<TraceEnd> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!("no xvip daemon answers on {} (is `xvip run` running, and are you root?)", path.display())
    })?;
    let (read, mut write) = stream.into_split();
    let request = format!("trace {}\n", serde_json::to_string(filter).context("encoding the filter")?);
    write.write_all(request.as_bytes()).await.context("sending the request")?;
    // Kept open: closing it tells the daemon this client left.
    let _write = write;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await.context("reading from the daemon")? {
        let event: trace::Event = serde_json::from_str(&line)
            .with_context(|| format!("the daemon's answer is not a trace event: {}", line.trim()))?;
        if let trace::Event::Error(e) = event {
            return Err(anyhow!("the daemon refused to trace: {e}"));
        }
        each(event).context("writing the trace")?;
    }
    Ok(TraceEnd::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_round_trips_over_the_socket_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("xvip-ctl-{}", std::process::id()));
        let path = dir.join("s.sock");
        let listener = bind(&path).await.expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (tx, mut rx) = mpsc::channel::<StatusRequest>(1);
        tokio::spawn(serve(listener, Handlers { status: tx, trace: None }));
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send(Status { role: "active".into(), vrid: 7, ..Status::default() });
            }
        });
        let status = query(&path).await.expect("query");
        assert_eq!((status.role.as_str(), status.vrid), ("active", 7));

        let err = bind(&path).await.expect_err("a live socket is not replaced");
        assert!(matches!(err, Error::InUse(_)), "{err}");
        assert!(err.to_string().contains("already answering"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An acceptor that always fails the way a process out of file descriptors does.
    struct OutOfFiles(std::sync::atomic::AtomicU64);

    impl Accept for OutOfFiles {
        async fn accept(&self) -> io::Result<UnixStream> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    #[tokio::test]
    async fn a_failing_accept_backs_off_instead_of_spinning() {
        let acceptor = std::sync::Arc::new(OutOfFiles(std::sync::atomic::AtomicU64::new(0)));
        let (tx, _rx) = mpsc::channel::<StatusRequest>(1);
        let task = {
            let acceptor = acceptor.clone();
            tokio::spawn(async move { serve(ArcAccept(acceptor), Handlers { status: tx, trace: None }).await })
        };
        tokio::time::sleep(Duration::from_millis(550)).await;
        task.abort();
        let calls = acceptor.0.load(std::sync::atomic::Ordering::Relaxed);
        // One try per ACCEPT_BACKOFF (100 ms): about 6 in 550 ms; a spinning loop makes millions.
        assert!((2..=8).contains(&calls), "{calls} accept calls in 550 ms");
    }

    struct ArcAccept(std::sync::Arc<OutOfFiles>);

    impl Accept for ArcAccept {
        fn accept(&self) -> impl Future<Output = io::Result<UnixStream>> + Send {
            self.0.accept()
        }
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_missing_daemon_is_explained() {
        let dir = std::env::temp_dir().join(format!("xvip-ctl2-{}", std::process::id()));
        let path = dir.join("s.sock");
        drop(bind(&path).await.expect("bind"));
        assert!(path.exists(), "the listener leaves its file behind when dropped");
        let err = query(&path).await.expect_err("nobody answers");
        assert!(format!("{err:#}").contains("no xvip daemon answers"), "{err:#}");
        drop(bind(&path).await.expect("a stale socket is replaced"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A daemon whose trace task hands each client to the test.
    async fn trace_daemon(name: &str) -> (PathBuf, mpsc::Receiver<trace::Subscription>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("xvip-ctl-{name}-{}", std::process::id()));
        let path = dir.join("s.sock");
        let listener = bind(&path).await.expect("bind");
        let (status, _) = mpsc::channel::<StatusRequest>(1);
        let (hub, subscriptions) = mpsc::channel(4);
        tokio::spawn(serve(listener, Handlers { status, trace: Some(hub) }));
        (path, subscriptions, dir)
    }

    fn decision(n: u64) -> trace::Event {
        trace::Event::Decision(Box::new(trace::Decision {
            time_unix_ms: n,
            instance: Some("default".into()),
            service: Some("web".into()),
            from: "192.0.2.7:40000".into(),
            to: "10.0.0.250:80".into(),
            protocol: "tcp".into(),
            tcp_flags: vec!["SYN".into()],
            client: "192.0.2.7:40000".into(),
            vip: "10.0.0.250:80".into(),
            backend: Some("10.0.0.11:80".into()),
            nat_port: None,
            reason: "forward_tx".into(),
            action: "tx".into(),
            interface: "eth0".into(),
        }))
    }

    #[tokio::test]
    async fn a_trace_client_gets_events_with_its_filter_and_leaving_closes_its_queue() {
        let (path, mut subscriptions, dir) = trace_daemon("trace").await;
        let filter = trace::Filter { port: Some(80), rate: 7, ..trace::Filter::default() };
        let client = {
            let (path, filter) = (path.clone(), filter.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                let end = trace(&path, &filter, |e| {
                    got.push(e);
                    // Leave after the second event.
                    if got.len() == 2 { Err(io::Error::from(io::ErrorKind::BrokenPipe)) } else { Ok(()) }
                })
                .await;
                (end, got)
            })
        };
        let sub = subscriptions.recv().await.expect("a subscription");
        assert_eq!(sub.filter, filter, "the client's filter reaches the trace task");
        sub.events.send(decision(1)).await.expect("send");
        sub.events.send(decision(2)).await.expect("send");
        let (end, got) = client.await.expect("client");
        assert!(end.is_err(), "the client stopped by itself");
        assert_eq!(got, vec![decision(1), decision(2)]);
        // The session notices that the client left and drops its queue: the trace task sees it closed.
        tokio::time::timeout(Duration::from_secs(5), sub.events.closed()).await.expect("the queue closes");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trace_client_that_never_reads_is_disconnected() {
        let (path, mut subscriptions, dir) = trace_daemon("stall").await;
        let mut stalled = UnixStream::connect(&path).await.expect("connect");
        stalled.write_all(b"trace\n").await.expect("request");
        let sub = subscriptions.recv().await.expect("a subscription");
        let started = tokio::time::Instant::now();
        // More than the socket buffers hold; the session's writes stall, then time out.
        let mut sent = 0u64;
        while sub.events.send(decision(sent)).await.is_ok() {
            sent += 1;
        }
        assert!(started.elapsed() >= TRACE_WRITE_TIMEOUT, "disconnected after {:?}", started.elapsed());
        assert!(sent > 100, "{sent} events before the queue closed");
        drop(stalled);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn trace_requests_the_daemon_cannot_serve_get_an_error() {
        let dir = std::env::temp_dir().join(format!("xvip-ctl-notrace-{}", std::process::id()));
        let path = dir.join("s.sock");
        let listener = bind(&path).await.expect("bind");
        let (status, _) = mpsc::channel::<StatusRequest>(1);
        tokio::spawn(serve(listener, Handlers { status, trace: None }));
        let err = trace(&path, &trace::Filter::default(), |_| Ok(())).await.expect_err("refused");
        assert!(format!("{err:#}").contains("cannot trace"), "{err:#}");

        let mut raw = UnixStream::connect(&path).await.expect("connect");
        raw.write_all(b"trace {not json\n").await.expect("request");
        let mut line = String::new();
        BufReader::new(raw).read_line(&mut line).await.expect("answer");
        assert!(
            matches!(serde_json::from_str(&line), Ok(trace::Event::Error(e)) if e.contains("not valid JSON")),
            "{line}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
