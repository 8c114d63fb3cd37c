//! The status socket: a Unix socket (mode 0600) where `xvip status` asks the running daemon for its status.
//!
//! Protocol: the client connects and writes one line, `status`; the daemon answers with one line of JSON and
//! closes. Anything else gets `{"error": ...}`.
use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::status::Status;

/// A request from a client: the agent answers on the oneshot.
pub type StatusRequest = oneshot::Sender<Status>;

/// Binds the socket. A stale socket file (no daemon answers on it) is replaced; a live one is an error, so two
/// daemons never share a socket.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another xvip is already answering on {}: stop it first, or set [control].socket to another path",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding the status socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    Ok(listener)
}

/// Serves clients until the listener is dropped: each request becomes a message to the agent.
pub async fn serve(listener: UnixListener, agent: mpsc::Sender<StatusRequest>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
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
        assert!(format!("{err:#}").contains("already answering"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
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
