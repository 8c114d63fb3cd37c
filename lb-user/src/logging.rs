//! Logging that cannot block the agent.
//!
//! `env_logger` formats each line (and applies `RUST_LOG`); instead of writing to stderr itself, which blocks when
//! stderr is a full pipe (a stalled journald, a paused terminal), it hands the line to a bounded queue. One
//! writer thread empties the queue into stderr. When the queue is full the line is dropped and counted, and the
//! writer says how many were lost once it can write again: a stalled log reader costs log lines, never an advert.
use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread,
};

/// Lines queued at most; beyond this, lines are dropped.
pub const QUEUE_LINES: usize = 4096;

/// The writing end handed to `env_logger` (`Target::Pipe`): one `write` call per formatted line.
pub struct QueueWriter {
    queue: SyncSender<Vec<u8>>,
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
        match self.queue.try_send(line) {
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

fn drain<W: Write>(lines: Receiver<Vec<u8>>, mut sink: W, dropped: &AtomicU64) {
    let mut reported = 0;
    for line in lines {
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
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format_target(false).target(env_logger::Target::Pipe(Box::new(writer)));
    // A logger may already be set (tests); that one is kept.
    let _ = builder.try_init();
    Ok(())
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
