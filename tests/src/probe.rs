//! Client-side measurements: a periodic probe that measures outages, a tally of which backend answered, and a
//! watcher for one long-lived connection.
//!
//! Each runs on a thread that entered the client's namespace (`setns` affects only that thread), so the test's
//! own thread keeps its namespace.

use std::collections::BTreeMap;
use std::io::{self, BufRead, ErrorKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::http;
use crate::netns;

/// What one probe attempt does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    /// `GET path` on a new connection; success = any 2xx, and the body (first line) names the backend.
    Http { path: String },
    /// A TCP handshake only; success = connected. No backend name.
    Connect,
}

/// How to probe.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    pub target: SocketAddr,
    /// Time between the starts of two attempts; a slow attempt makes the next start late, never two at once.
    pub interval: Duration,
    /// Deadline of one attempt (connect + request + answer).
    pub timeout: Duration,
    /// With a grace, an attempt that misses `timeout` still counts as failed at `timeout` (the outage figures stay
    /// as sharp), but it goes on in the background until `grace` after its start, and what it finally got is its
    /// [`Sample::late`]: a slow machine's late answer can then be told from a lost request. `ZERO`: no grace.
    pub grace: Duration,
    pub mode: ProbeMode,
}

impl ProbeSpec {
    /// `GET /` every 10 ms with a 50 ms deadline.
    pub fn http(target: SocketAddr) -> Self {
        ProbeSpec {
            target,
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(50),
            grace: Duration::ZERO,
            mode: ProbeMode::Http { path: "/".into() },
        }
    }

    /// A TCP connect every 10 ms with a 50 ms deadline.
    pub fn connect(target: SocketAddr) -> Self {
        ProbeSpec { mode: ProbeMode::Connect, ..Self::http(target) }
    }
}

/// One attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When the attempt started, from the start of the probe.
    pub started: Duration,
    /// When it ended (answer or failure), from the start of the probe.
    pub ended: Duration,
    /// `Ok(backend name)` (empty in connect mode) or `Err(error text)`.
    pub outcome: Result<String, String>,
    /// When the attempt missed its deadline and the spec has a grace: what it got in the end, within the grace of
    /// its start (`Err("timeout")` when nothing came).
    pub late: Option<Result<String, String>>,
}

/// What a probe saw.
#[derive(Clone, Debug, Default)]
pub struct ProbeReport {
    /// How long the probe ran.
    pub duration: Duration,
    pub attempts: usize,
    pub successes: usize,
    pub failures: usize,
    /// The longest time without a successful answer: between two consecutive answers, or from the probe's start
    /// to the first answer, or from the last answer to the probe's end. With no answer at all, the duration.
    pub longest_gap: Duration,
    /// Where that gap started, from the start of the probe.
    pub longest_gap_start: Duration,
    /// Successful answers per backend name.
    pub per_backend: BTreeMap<String, usize>,
    pub samples: Vec<Sample>,
}

impl ProbeReport {
    fn from_samples(samples: Vec<Sample>, duration: Duration) -> Self {
        let mut report = ProbeReport { duration, attempts: samples.len(), ..Default::default() };
        let mut last_answer = Duration::ZERO;
        for sample in &samples {
            match &sample.outcome {
                Ok(name) => {
                    report.successes += 1;
                    *report.per_backend.entry(name.clone()).or_default() += 1;
                    report.note_gap(last_answer, sample.ended);
                    last_answer = sample.ended;
                }
                Err(_) => report.failures += 1,
            }
        }
        report.note_gap(last_answer, duration);
        report.samples = samples;
        report
    }

    fn note_gap(&mut self, from: Duration, to: Duration) {
        let gap = to.saturating_sub(from);
        if gap > self.longest_gap {
            self.longest_gap = gap;
            self.longest_gap_start = from;
        }
    }

    /// The distinct errors seen, with how often each occurred.
    pub fn errors(&self) -> BTreeMap<String, usize> {
        let mut errors = BTreeMap::new();
        for sample in &self.samples {
            if let Err(e) = &sample.outcome {
                *errors.entry(e.clone()).or_default() += 1;
            }
        }
        errors
    }

    /// One line for test output.
    pub fn summary(&self) -> String {
        format!(
            "{} attempts in {:?}: {} ok, {} failed; longest gap {:?} from {:?}; per backend {:?}; errors {:?}",
            self.attempts,
            self.duration,
            self.successes,
            self.failures,
            self.longest_gap,
            self.longest_gap_start,
            self.per_backend,
            self.errors()
        )
    }
}

/// One attempt with deadline `timeout`; the backend's name is the first line of the body.
fn attempt(spec: &ProbeSpec, timeout: Duration) -> Result<String, String> {
    match &spec.mode {
        ProbeMode::Connect => {
            http::connect(spec.target, Instant::now() + timeout).map(|_| String::new()).map_err(|e| brief(&e))
        }
        ProbeMode::Http { path } => match http::get(spec.target, path, timeout) {
            Ok(response) if (200..300).contains(&response.status) => {
                Ok(response.text().lines().next().unwrap_or_default().trim().to_owned())
            }
            Ok(response) => Err(format!("HTTP {}", response.status)),
            Err(e) => Err(brief(&e)),
        },
    }
}

/// An attempt still running past its deadline: the index of its sample and where its outcome will come from.
type Pending = (usize, mpsc::Receiver<Result<String, String>>);

/// One attempt on a thread of its own (it inherits the caller's namespace) with the grace as its deadline; waits
/// for it until the spec's deadline, and past that records a timeout and leaves the attempt pending.
fn attempt_with_grace(
    spec: &ProbeSpec,
    started: Duration,
    start: Instant,
    samples: &mut Vec<Sample>,
    pending: &mut Vec<Pending>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    let (inner, grace) = (spec.clone(), spec.grace);
    std::thread::Builder::new()
        .name("probe attempt".into())
        .spawn(move || {
            let _ = tx.send(attempt(&inner, grace));
        })
        .context("starting a probe attempt")?;
    let remaining = spec.timeout.saturating_sub(start.elapsed().saturating_sub(started));
    match rx.recv_timeout(remaining) {
        Ok(outcome) => samples.push(Sample { started, ended: start.elapsed(), outcome, late: None }),
        Err(_) => {
            samples.push(Sample { started, ended: start.elapsed(), outcome: Err("timeout".into()), late: None });
            pending.push((samples.len() - 1, rx));
        }
    }
    Ok(())
}

/// Records the outcomes of pending attempts that have ended (all of them, waiting, when `wait`).
fn collect_late(samples: &mut [Sample], pending: &mut Vec<Pending>, wait: bool) {
    pending.retain(|(index, rx)| {
        let outcome = if wait {
            rx.recv().unwrap_or_else(|_| Err("the attempt thread died".into()))
        } else {
            match rx.try_recv() {
                Ok(outcome) => outcome,
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => Err("the attempt thread died".into()),
            }
        };
        samples[*index].late = Some(outcome);
        false
    });
}

/// A short, stable error text, so equal failures group together in [`ProbeReport::errors`].
fn brief(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::ConnectionReset => "reset".into(),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable".into(),
        _ => e.to_string(),
    }
}

/// A probe running in the background; [`stop`](Self::stop) it to get the report. Dropping it stops it too.
#[derive(Debug)]
pub struct Probe {
    stop: Arc<AtomicBool>,
    started_at: Instant,
    thread: Option<JoinHandle<Result<ProbeReport>>>,
}

impl Probe {
    /// Starts probing from namespace `ns` until stopped.
    ///
    /// # Errors
    /// When the probe thread cannot be started (entering the namespace fails later, reported by `stop`).
    pub fn start(ns: &str, spec: ProbeSpec) -> Result<Probe> {
        Self::start_bounded(ns, spec, None)
    }

    fn start_bounded(ns: &str, spec: ProbeSpec, limit: Option<Duration>) -> Result<Probe> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let start = Instant::now();
        let thread = netns::spawn_in_netns(ns, move || {
            let mut samples = Vec::new();
            let mut pending = Vec::new();
            let mut next = start;
            loop {
                if flag.load(Ordering::Relaxed) || limit.is_some_and(|l| start.elapsed() >= l) {
                    break;
                }
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                    continue;
                }
                let started = start.elapsed();
                if spec.grace.is_zero() {
                    let outcome = attempt(&spec, spec.timeout);
                    samples.push(Sample { started, ended: start.elapsed(), outcome, late: None });
                } else {
                    attempt_with_grace(&spec, started, start, &mut samples, &mut pending)?;
                }
                collect_late(&mut samples, &mut pending, false);
                // Ticks missed during a slow attempt are skipped, not made up in a burst.
                next += spec.interval;
                let now = Instant::now();
                if next < now {
                    next = now;
                }
            }
            let duration = start.elapsed();
            collect_late(&mut samples, &mut pending, true);
            Ok(ProbeReport::from_samples(samples, duration))
        })?;
        Ok(Probe { stop, started_at: start, thread: Some(thread) })
    }

    /// The instant the samples' `started` and `ended` count from, so a caller can line them up with its own
    /// events.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Stops the probe and returns what it saw.
    ///
    /// # Errors
    /// When the probe thread could not enter the namespace.
    pub fn stop(mut self) -> Result<ProbeReport> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().ok_or_else(|| anyhow!("probe already stopped"))?;
        match thread.join() {
            Ok(report) => report,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Probes from namespace `ns` for `duration` and returns the report.
///
/// # Errors
/// As [`Probe::stop`].
pub fn run_for(ns: &str, spec: ProbeSpec, duration: Duration) -> Result<ProbeReport> {
    let mut probe = Probe::start_bounded(ns, spec, Some(duration))?;
    // Joined while `probe` is alive: dropping it would raise the stop flag early.
    let thread = probe.thread.take().ok_or_else(|| anyhow!("probe thread missing"))?;
    let result = thread.join();
    drop(probe);
    match result {
        Ok(report) => report,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Answers per backend from [`request_many`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub per_backend: BTreeMap<String, usize>,
    pub failures: usize,
    /// Distinct error texts with their counts.
    pub errors: BTreeMap<String, usize>,
}

impl Tally {
    pub fn successes(&self) -> usize {
        self.per_backend.values().sum()
    }
}

/// Sends `n` sequential `GET /` requests from namespace `ns` to `target`, each on a new connection (so each is a
/// new flow for the load balancer, with a new source port), and counts which backend answered.
///
/// # Errors
/// When the namespace cannot be entered. Failed requests are counted, not returned as errors.
pub fn request_many(ns: &str, target: SocketAddr, n: usize, timeout: Duration) -> Result<Tally> {
    netns::in_netns(ns, move || {
        let spec = ProbeSpec { timeout, ..ProbeSpec::http(target) };
        let mut tally = Tally::default();
        for _ in 0..n {
            match attempt(&spec, timeout) {
                Ok(name) => *tally.per_backend.entry(name).or_default() += 1,
                Err(e) => {
                    tally.failures += 1;
                    *tally.errors.entry(e).or_default() += 1;
                }
            }
        }
        Ok(tally)
    })
}

/// One `GET path` from namespace `ns` (new connection, `Connection: close`).
///
/// # Errors
/// When the namespace cannot be entered or the request fails.
pub fn http_get(ns: &str, target: SocketAddr, path: &str, timeout: Duration) -> Result<http::Response> {
    let path = path.to_owned();
    netns::in_netns(ns, move || {
        http::get(target, &path, timeout).with_context(|| format!("GET http://{target}{path} from {ns}"))
    })
}

/// How a watched stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Still delivering when the watch was stopped: the connection survived.
    StillOpen,
    /// The server closed it (FIN).
    Closed,
    /// Reset or another error.
    Failed(String),
}

/// What a [`StreamWatch`] saw.
#[derive(Clone, Debug)]
pub struct StreamReport {
    /// The backend serving the stream (its `X-Backend` header).
    pub backend: String,
    /// Lines received.
    pub lines: usize,
    /// The longest time between two lines (or from the last line to the end of the watch).
    pub longest_gap: Duration,
    pub end: StreamEnd,
    /// How long the watch ran.
    pub duration: Duration,
    /// When the watch started (the response headers had arrived): `started + duration` is when it ended.
    pub started: Instant,
    /// When the last line arrived, from `started`; `None` when none did.
    pub last_line: Option<Duration>,
}

/// Watches one long-lived connection (`GET /stream` on a lab backend: a line every 50 ms): for tests that
/// established connections survive a failover.
#[derive(Debug)]
pub struct StreamWatch {
    stop: Arc<AtomicBool>,
    lines: Arc<AtomicUsize>,
    backend: String,
    thread: Option<JoinHandle<Result<StreamReport>>>,
}

impl StreamWatch {
    /// Connects from namespace `ns` to `target`, requests `/stream` and returns once the response headers have
    /// arrived (so the flow exists before the caller disturbs anything).
    ///
    /// # Errors
    /// When the connection or the response headers do not come within `timeout`.
    pub fn start(ns: &str, target: SocketAddr, timeout: Duration) -> Result<StreamWatch> {
        Self::start_with_keepalive(ns, target, timeout, None)
    }

    /// As [`start`](Self::start), with TCP keepalive on the client socket when `keepalive` is set: after that long
    /// without traffic the client sends a probe every second. That is the only packet a server-push client sends
    /// when nothing reaches it (after a NAT failover, say).
    ///
    /// # Errors
    /// As [`start`](Self::start), or when the socket options cannot be set.
    pub fn start_with_keepalive(
        ns: &str,
        target: SocketAddr,
        timeout: Duration,
        keepalive: Option<Duration>,
    ) -> Result<StreamWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let lines_seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&lines_seen);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let thread = netns::spawn_in_netns(ns, move || {
            let deadline = Instant::now() + timeout;
            let opened = (|| -> io::Result<(std::io::BufReader<std::net::TcpStream>, String)> {
                let mut connection = http::Connection::open(target, timeout)?;
                if let Some(idle) = keepalive {
                    connection.set_keepalive(idle)?;
                }
                connection.send_get("/stream", deadline)?;
                let mut reader = connection.into_reader();
                let status = http::read_line(&mut reader, deadline)?;
                if !status.contains(" 200") {
                    return Err(io::Error::other(format!("stream answered {status:?}")));
                }
                let mut backend = String::new();
                loop {
                    let line = http::read_line(&mut reader, deadline)?;
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.trim().eq_ignore_ascii_case("x-backend")
                    {
                        backend = value.trim().to_owned();
                    }
                }
                Ok((reader, backend))
            })();
            let (mut reader, backend) = match opened {
                Ok(ok) => ok,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(anyhow!("opening the stream to {target}: {e}"));
                }
            };
            let _ = ready_tx.send(Ok(backend.clone()));
            let start = Instant::now();
            let mut last = start;
            let mut longest = Duration::ZERO;
            let mut lines = 0;
            let mut last_line = None;
            let mut buf = Vec::new();
            reader.get_ref().set_read_timeout(Some(Duration::from_millis(20)))?;
            let end = loop {
                if flag.load(Ordering::Relaxed) {
                    break StreamEnd::StillOpen;
                }
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) => break StreamEnd::Closed,
                    Ok(_) if buf.ends_with(b"\n") => {
                        let now = Instant::now();
                        longest = longest.max(now - last);
                        last = now;
                        last_line = Some(now - start);
                        lines += 1;
                        counter.fetch_add(1, Ordering::Relaxed);
                        buf.clear();
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    }
                    Err(e) => break StreamEnd::Failed(brief(&e)),
                }
            };
            longest = longest.max(last.elapsed());
            Ok(StreamReport {
                backend,
                lines,
                longest_gap: longest,
                end,
                duration: start.elapsed(),
                started: start,
                last_line,
            })
        })?;
        let backend = match ready_rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(Ok(backend)) => backend,
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                let _ = thread.join();
                return Err(anyhow!("opening a stream from {ns} to {target}: {e}"));
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return match thread.join() {
                    Ok(Err(e)) => Err(e),
                    _ => Err(anyhow!("opening a stream from {ns} to {target}: no answer")),
                };
            }
        };
        Ok(StreamWatch { stop, lines: lines_seen, backend, thread: Some(thread) })
    }

    /// Lines received so far.
    pub fn lines(&self) -> usize {
        self.lines.load(Ordering::Relaxed)
    }

    /// The backend serving the stream.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Whether the watch has ended by itself (the connection closed or failed).
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops watching (closing the connection) and returns what was seen.
    ///
    /// # Errors
    /// When the watch thread failed.
    pub fn stop(mut self) -> Result<StreamReport> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().ok_or_else(|| anyhow!("stream watch already stopped"))?;
        match thread.join() {
            Ok(report) => report,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a [`RequestLoop`] saw.
#[derive(Clone, Debug)]
pub struct LoopReport {
    /// The backend that answered the first request (the body's first line).
    pub backend: String,
    /// What that backend saw as the client (its `X-Client` header): the VIP and the NAT port under NAT.
    pub client_seen: String,
    /// Requests answered.
    pub answered: usize,
    /// The longest time between two answers (or from the last answer to the end of the watch).
    pub longest_gap: Duration,
    /// Answers from a backend other than the first one: impossible on one TCP connection unless the load balancer
    /// spliced it onto another backend's socket.
    pub wrong_backend: usize,
    /// `StillOpen` if the connection was still answering when stopped.
    pub end: StreamEnd,
    /// When the loop started connecting; the samples count from here.
    pub opened: Instant,
    /// Every request after the first, the last one included when it ended the loop (`Err`); the backend's name as
    /// the outcome of an answer.
    pub samples: Vec<Sample>,
}

/// One long-lived keep-alive connection on which the client sends `GET /` every `interval` and waits for each
/// answer: a connection in which the *client* keeps talking, so after a failover its next request (or its
/// retransmission) rebuilds the NAT translation on the new node. A server-push stream ([`StreamWatch`]) has no
/// such packet: its client only ever ACKs what it receives.
#[derive(Debug)]
pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    backend: String,
    thread: Option<JoinHandle<Result<LoopReport>>>,
}

impl RequestLoop {
    /// Connects from namespace `ns` to `target` and returns once the first answer has arrived. Each later request
    /// may take up to `patience` (TCP retransmissions ride through a failover within it) before the loop counts
    /// the connection as failed.
    ///
    /// # Errors
    /// When the connection or the first answer does not come within `patience`.
    pub fn start(ns: &str, target: SocketAddr, interval: Duration, patience: Duration) -> Result<RequestLoop> {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&answered));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let opened = Instant::now();
        let thread = netns::spawn_in_netns(ns, move || {
            let first = (|| -> io::Result<(http::Connection, http::Response)> {
                let mut connection = http::Connection::open(target, patience)?;
                let response = connection.get("/", patience)?;
                Ok((connection, response))
            })();
            let (mut connection, response) = match first {
                Ok(ok) => ok,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(anyhow!("opening a request loop to {target}: {e}"));
                }
            };
            let name = |r: &http::Response| r.text().lines().next().unwrap_or_default().trim().to_owned();
            let backend = name(&response);
            let client_seen = response.header("x-client").unwrap_or_default().to_owned();
            count.fetch_add(1, Ordering::Relaxed);
            let _ = ready_tx.send(Ok(backend.clone()));
            let (mut last, mut longest, mut wrong_backend) = (Instant::now(), Duration::ZERO, 0);
            let mut samples = Vec::new();
            let end = loop {
                std::thread::sleep(interval);
                if flag.load(Ordering::Relaxed) {
                    break StreamEnd::StillOpen;
                }
                let started = opened.elapsed();
                let (outcome, end) = match connection.get("/", patience) {
                    Ok(r) if (200..300).contains(&r.status) => {
                        if name(&r) != backend {
                            wrong_backend += 1;
                        }
                        longest = longest.max(last.elapsed());
                        last = Instant::now();
                        count.fetch_add(1, Ordering::Relaxed);
                        (Ok(name(&r)), None)
                    }
                    Ok(r) => (Err(format!("HTTP {}", r.status)), Some(StreamEnd::Failed(format!("HTTP {}", r.status)))),
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => (Err("closed".into()), Some(StreamEnd::Closed)),
                    Err(e) => (Err(brief(&e)), Some(StreamEnd::Failed(brief(&e)))),
                };
                samples.push(Sample { started, ended: opened.elapsed(), outcome, late: None });
                if let Some(end) = end {
                    break end;
                }
            };
            longest = longest.max(last.elapsed());
            Ok(LoopReport {
                backend,
                client_seen,
                answered: count.load(Ordering::Relaxed),
                longest_gap: longest,
                wrong_backend,
                end,
                opened,
                samples,
            })
        })?;
        let backend = match ready_rx.recv_timeout(patience + Duration::from_secs(1)) {
            Ok(Ok(backend)) => backend,
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                let _ = thread.join();
                return Err(anyhow!("opening a request loop from {ns} to {target}: {e}"));
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return match thread.join() {
                    Ok(Err(e)) => Err(e),
                    _ => Err(anyhow!("opening a request loop from {ns} to {target}: no answer")),
                };
            }
        };
        Ok(RequestLoop { stop, answered, backend, thread: Some(thread) })
    }

    /// The backend serving the connection.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// Whether the loop's thread has ended (the connection failed or closed).
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the loop (closing the connection) and returns what it saw.
    ///
    /// # Errors
    /// When the loop's thread failed.
    pub fn stop(mut self) -> Result<LoopReport> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().ok_or_else(|| anyhow!("request loop already stopped"))?;
        match thread.join() {
            Ok(report) => report,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for RequestLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, ok: bool) -> Sample {
        let at = Duration::from_millis(ms);
        Sample { started: at, ended: at, outcome: if ok { Ok("b1".into()) } else { Err("refused".into()) }, late: None }
    }

    #[test]
    fn longest_gap_is_between_answers() {
        let samples = vec![sample(0, true), sample(10, true), sample(20, false), sample(30, false), sample(40, true)];
        let report = ProbeReport::from_samples(samples, Duration::from_millis(45));
        assert_eq!(report.longest_gap, Duration::from_millis(30));
        assert_eq!(report.longest_gap_start, Duration::from_millis(10));
        assert_eq!((report.successes, report.failures), (3, 2));
        assert_eq!(report.per_backend["b1"], 3);
    }

    #[test]
    fn an_outage_at_the_end_counts() {
        let samples = vec![sample(0, true), sample(10, false)];
        let report = ProbeReport::from_samples(samples, Duration::from_millis(500));
        assert_eq!(report.longest_gap, Duration::from_millis(500));
    }

    #[test]
    fn no_answer_at_all_is_one_long_gap() {
        let report = ProbeReport::from_samples(vec![sample(0, false)], Duration::from_millis(80));
        assert_eq!(report.longest_gap, Duration::from_millis(80));
        assert_eq!(report.successes, 0);
    }
}
