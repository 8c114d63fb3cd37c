//! The status socket: a Unix socket (mode 0600) where `xvip status` asks the running daemon for its status.
//!
//! Protocol: the client connects and writes one line, `status`; the daemon answers with one line of JSON and
//! closes. Anything else gets `{"error": ...}`.
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

use crate::status::Status;

/// A request from a client: the agent answers on the oneshot.
pub type StatusRequest = oneshot::Sender<Status>;

/// How long the accept loop pauses after a failed `accept` (EMFILE, ENFILE, ENOMEM): the condition does not clear
/// by retrying at once, and retrying at once would spin a CPU.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
/// A failed `accept` (out of file descriptors, say) is logged at most once per 10 s and followed by a pause of
/// [`ACCEPT_BACKOFF`], so it can neither spin a CPU nor flood the log.
pub async fn serve(listener: impl Accept, agent: mpsc::Sender<StatusRequest>) {
    let mut logged: Option<tokio::time::Instant> = None;
    let mut failures = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                failures += 1;
                let now = tokio::time::Instant::now();
                if logged.is_none_or(|t| now >= t + Duration::from_secs(10)) {
                    logged = Some(now);
                    log::warn!("status socket: accept failed ({failures} so far): {e}; pausing");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, agent).await {
                log::debug!("status client: {e:#}");
            }
        });
    }
}

async fn answer(stream: UnixStream, agent: mpsc::Sender<StatusRequest>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take_line_limit();
    tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line))
        .await
        .context("client sent no request within 2 s")??;
    let reply = if line.trim() == "status" {
        let (tx, rx) = oneshot::channel();
        agent.send(tx).await.map_err(|_| anyhow!("the agent is stopping"))?;
        let status = rx.await.context("the agent dropped the request")?;
        serde_json::to_string(&status).context("encoding the status")?
    } else {
        serde_json::json!({ "error": format!("unknown request {:?}; send \"status\"", line.trim()) }).to_string()
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    Ok(())
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
        tokio::spawn(serve(listener, tx));
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
            tokio::spawn(async move { serve(ArcAccept(acceptor), tx).await })
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
}
