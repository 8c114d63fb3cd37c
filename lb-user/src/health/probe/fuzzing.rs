//! The probe's handling of a server's answer, without a network: the entry point of the `http_status` fuzz target
//! (`fuzz/`). Not part of the agent's API.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{check_status, exchange};

/// What [`status_line`] returns: the accepted status line, or the failure as the probe would log it.
pub type Outcome = Result<String, String>;

/// Sends a request to a pretend server that answers `response` in reads of at most `chunk` bytes (at least 1) and
/// then closes, and checks the status line against `expected`, as an http/https probe does.
pub fn status_line(response: &[u8], chunk: usize, expected: u16) -> Outcome {
    thread_local! {
        static RUNTIME: Option<tokio::runtime::Runtime> =
            tokio::runtime::Builder::new_current_thread().enable_time().build().ok();
    }
    RUNTIME.with(|runtime| {
        let Some(runtime) = runtime else {
            return Err("no tokio runtime".to_string());
        };
        runtime.block_on(async {
            let server = Scripted { response, at: 0, chunk: chunk.max(1) };
            let limit = Duration::from_secs(3600);
            let line = exchange(server, b"GET / HTTP/1.1\r\n\r\n", Instant::now() + limit, limit)
                .await
                .map_err(|failure| format!("{failure:?}"))?;
            check_status(&line, expected).map_err(|failure| format!("{failure:?}"))?;
            Ok(line)
        })
    })
}

/// A server that swallows the request and answers with a fixed byte string.
struct Scripted<'a> {
    response: &'a [u8],
    at: usize,
    chunk: usize,
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let rest = &self.response[self.at..];
        let n = rest.len().min(self.chunk).min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_status_line_split_over_many_reads() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(status_line(answer, 1, 200), Ok("HTTP/1.1 200 OK".to_string()));
        let wrong = status_line(answer, 3, 204).expect_err("another status");
        assert!(wrong.contains("Status"), "{wrong}");
        let closed = status_line(b"", 7, 200).expect_err("nothing sent");
        assert_eq!(closed, "Closed");
    }
}
