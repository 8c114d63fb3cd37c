//! Logging that cannot block the agent.
//!
//! `env_logger` formats each line (and applies `RUST_LOG`); instead of writing to stderr itself, which blocks when
//! stderr is a full pipe (a stalled journald, a paused terminal), it hands the line to a bounded queue. One
//! writer thread empties the queue into stderr. When the queue is full the line is dropped and counted, and the
//! writer says how many were lost once it can write again: a stalled log reader costs log lines, never an advert.
use std::{
    io::{self, Write},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

/// Lines queued at most; beyond this, lines are dropped.
pub const QUEUE_LINES: usize = 4096;

/// What the writer thread is handed: a line, or a request to say when every line before it is written.
enum Message {
    Line(Vec<u8>),
    Flushed(mpsc::Sender<()>),
}

/// The queue of the logger [`init`] installed, for [`flush`].
static QUEUE: OnceLock<SyncSender<Message>> = OnceLock::new();

/// The writing end handed to `env_logger` (`Target::Pipe`): one `write` call per formatted line.
pub struct QueueWriter {
    queue: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    line: Vec<u8>,
}

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.line);
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            // Full or the writer is gone: the line is lost, the caller is not held up.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Starts the writer thread over `sink` and returns the queue's writing end and the count of dropped lines.
///
/// # Errors
/// When the thread cannot be started.
pub fn spawn<W: Write + Send + 'static>(sink: W, capacity: usize) -> io::Result<(QueueWriter, Arc<AtomicU64>)> {
    let (queue, lines) = mpsc::sync_channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    thread::Builder::new().name("xvip-log".into()).spawn(move || drain(lines, sink, &counter))?;
    Ok((QueueWriter { queue, dropped: dropped.clone(), line: Vec::new() }, dropped))
}

fn drain<W: Write>(lines: Receiver<Message>, mut sink: W, dropped: &AtomicU64) {
    let mut reported = 0;
    for message in lines {
        let line = match message {
            Message::Line(line) => line,
            Message::Flushed(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let lost = dropped.load(Ordering::Relaxed);
        if lost > reported {
            let _ = writeln!(sink, "[xvip] {} log line(s) dropped: the log reader did not keep up", lost - reported);
            reported = lost;
        }
        let _ = sink.write_all(&line);
        let _ = sink.flush();
    }
}

/// Installs the logger: `RUST_LOG` filtering (default `info`), env_logger's format, the non-blocking queue to
/// stderr.
///
/// # Errors
/// When the writer thread cannot be started.
pub fn init() -> io::Result<()> {
    let (writer, _dropped) = spawn(io::stderr(), QUEUE_LINES)?;
    let _ = QUEUE.set(writer.queue.clone());
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format_target(false).format_timestamp_millis().target(env_logger::Target::Pipe(Box::new(writer)));
    // A logger may already be set (tests); that one is kept.
    let _ = builder.try_init();
    Ok(())
}

/// Waits (at most `timeout`) until every line logged so far is written: the process calls this before it exits,
/// or the writer thread dies with the last lines (the reason it stopped) still queued.
pub fn flush(timeout: Duration) {
    if let Some(queue) = QUEUE.get() {
        flush_queue(queue, timeout);
    }
}

fn flush_queue(queue: &SyncSender<Message>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let (done, written) = mpsc::channel();
    let mut message = Message::Flushed(done);
    loop {
        match queue.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                message = m;
                thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Barrier, Mutex},
        time::{Duration, Instant},
    };

    use super::*;

    /// A sink that blocks until released, then records what it gets.
    struct Stalled {
        gate: Arc<Barrier>,
        opened: bool,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.opened {
                self.gate.wait();
                self.opened = true;
            }
            self.got.lock().map_err(|_| io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink that takes its time over every line.
    struct Slow(Arc<Mutex<Vec<u8>>>);

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            thread::sleep(Duration::from_millis(2));
            self.0.lock().map_err(|_| io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn flush_returns_once_every_queued_line_is_written() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (mut writer, _) = spawn(Slow(got.clone()), 128).expect("writer thread");
        for i in 0..50 {
            writer.write_all(format!("line {i}\n").as_bytes()).expect("write");
            writer.flush().expect("flush");
        }
        flush_queue(&writer.queue, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&got.lock().expect("lock")).into_owned();
        assert!(text.ends_with("line 49\n"), "the last line was still queued: {text}");
    }

    #[test]
    fn a_stalled_reader_costs_lines_not_time_and_the_loss_is_reported() {
        let gate = Arc::new(Barrier::new(2));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Stalled { gate: gate.clone(), opened: false, got: got.clone() };
        let (mut writer, dropped) = spawn(sink, 8).expect("writer thread");
        let start = Instant::now();
        for i in 0..10_000 {
            writer.write_all(format!("line {i}\n").as_bytes()).expect("write");
            writer.flush().expect("flush");
        }
        let took = start.elapsed();
        // The writer thread holds one line while blocked, the queue 8 more: the rest are dropped, not waited on.
        assert!(dropped.load(Ordering::Relaxed) >= 10_000 - 9, "{} dropped", dropped.load(Ordering::Relaxed));
        assert!(took < Duration::from_secs(5), "logging waited for the stalled reader: {took:?}");
        gate.wait();
        // After the stall the next line carries the report of the loss. (While the writer empties the queue a line
        // may still be dropped, so it is sent until one gets through.)
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            writer.write_all(b"after\n").expect("write");
            writer.flush().expect("flush");
            let text = String::from_utf8_lossy(&got.lock().expect("lock")).into_owned();
            if text.contains("after") {
                assert!(text.contains("log line(s) dropped: the log reader did not keep up"), "{text}");
                assert!(text.contains("line 0\n"), "the first line got through: {text}");
                break;
            }
            assert!(Instant::now() < deadline, "the writer never caught up: {text}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn each_line_is_one_queue_entry() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Barrier::new(1));
        let sink = Stalled { gate, opened: false, got: got.clone() };
        let (mut writer, dropped) = spawn(sink, 16).expect("writer thread");
        // env_logger writes a line in pieces, then flushes once.
        writer.write_all(b"[INFO] ").expect("write");
        writer.write_all(b"role -> active\n").expect("write");
        writer.flush().expect("flush");
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.lock().expect("lock").is_empty() {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*got.lock().expect("lock"), b"[INFO] role -> active\n");
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
    }
}
