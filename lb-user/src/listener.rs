//! What every listener of the agent (the status socket, the metrics listener) does when `accept` fails.
//!
//! A failed `accept` (EMFILE, ENFILE, ENOMEM) does not clear by retrying at once, and retrying at once would spin a
//! CPU and flood the log: the loop pauses [`ACCEPT_BACKOFF`] and logs at most one line per [`LOG_EVERY`].
use std::time::Duration;

use tokio::time::Instant;

/// How long an accept loop pauses after a failed `accept`.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this period about failed accepts.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The failed accepts of one listener, named `what` in its log lines.
#[derive(Debug)]
pub struct AcceptFailures {
    what: &'static str,
    failures: u64,
    logged: Option<Instant>,
}

impl AcceptFailures {
    #[must_use]
    pub fn new(what: &'static str) -> Self {
        AcceptFailures { what, failures: 0, logged: None }
    }

    /// Counts `error`, logs it unless a line went out within [`LOG_EVERY`], and pauses [`ACCEPT_BACKOFF`].
    pub async fn pause(&mut self, error: &std::io::Error) {
        self.failures += 1;
        let now = Instant::now();
        if self.logged.is_none_or(|t| now >= t + LOG_EVERY) {
            self.logged = Some(now);
            log::warn!("{}: accept failed ({} so far): {error}; pausing", self.what, self.failures);
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}
