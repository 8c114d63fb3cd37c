//! One tokio task per backend: sleeps until the [`Checker`] says a probe is due, probes, and reports transitions.
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::{CheckKind, Checker, HealthEvent, Prober, Settings, Tracker, first_probe_delay};
use crate::metrics::ProbeRecorder;

/// Starts health-checking `backend` and returns the task's handle.
///
/// The first probe runs after a jitter of at most 10% of the interval (less when the timeout leaves less, see
/// [`first_probe_delay`]), then one every interval. An event is sent
/// only on a transition; the first result always is one (unknown -> up or down). With [`CheckKind::None`] a single
/// "healthy" event is sent and the task ends.
///
/// The task ends when the receiver of `tx` is dropped (checked while waiting, so it ends promptly even between
/// probes); [`JoinHandle::abort`] stops it at once. It must be called inside a tokio runtime. Every probe's
/// result and time go to `recorder` when there is one (metrics).
pub fn spawn(
    backend: SocketAddr,
    settings: Settings,
    tx: mpsc::Sender<HealthEvent>,
    recorder: Option<ProbeRecorder>,
) -> JoinHandle<()> {
    if settings.kind == CheckKind::None {
        return tokio::spawn(async move {
            let event = HealthEvent { backend, healthy: true, reason: "check = none: always healthy".to_string() };
            // A dropped receiver means nobody is interested any more; there is nothing else to do.
            let _ = tx.send(event).await;
        });
    }
    // The wall clock only seeds the jitter; a clock before 1970 just means less jitter variety.
    let entropy = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let delay = first_probe_delay(backend, settings.interval, settings.timeout, entropy);
    let tracker = Tracker::new(settings.rise, settings.fall);
    let checker = Checker::new(Instant::now().into_std(), settings.interval, delay, tracker);
    tokio::spawn(run(backend, checker, Prober::new(backend, settings), tx, recorder))
}

async fn run(
    backend: SocketAddr,
    mut checker: Checker,
    mut prober: Prober,
    tx: mpsc::Sender<HealthEvent>,
    recorder: Option<ProbeRecorder>,
) {
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = sleep_until(Instant::from_std(checker.next_probe_at())) => {}
        }
        let started = Instant::now();
        let result = tokio::select! {
            _ = tx.closed() => return,
            result = prober.probe() => result,
        };
        if let Some(recorder) = &recorder {
            recorder.record(started.elapsed(), result.is_ok());
        }
        match &result {
            Ok(detail) => log::debug!("health {backend}: ok: {detail}"),
            Err(error) => log::debug!("health {backend}: failed: {error}"),
        }
        if let Some(transition) = checker.on_result(Instant::now().into_std(), &result) {
            let event = HealthEvent { backend, healthy: transition.healthy, reason: transition.reason };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::time::timeout;

    use super::*;

    /// Generous bound for events that should arrive within a few 20 ms intervals; it only stops a hung test.
    const PATIENCE: Duration = Duration::from_secs(20);

    fn tcp_settings() -> Settings {
        Settings {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 2,
            ..Settings::default()
        }
    }

    async fn next(rx: &mut mpsc::Receiver<HealthEvent>) -> HealthEvent {
        timeout(PATIENCE, rx.recv()).await.expect("an event in time").expect("the runner is alive")
    }

    #[tokio::test]
    async fn reports_up_then_down_then_up_on_transitions_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let backend = listener.local_addr().expect("local address");
        let (tx, mut rx) = mpsc::channel(8);
        let recorder = ProbeRecorder::default();
        let task = spawn(backend, tcp_settings(), tx, Some(recorder.clone()));

        let event = next(&mut rx).await;
        assert!(event.healthy, "{event:?}");
        assert_eq!(event.backend, backend);
        assert_eq!(event.reason, format!("first check passed: connected to {backend}"));

        drop(listener);
        let event = next(&mut rx).await;
        assert!(!event.healthy, "{event:?}");
        assert!(event.reason.starts_with(&format!("2 consecutive failures: connect to {backend}: ")), "{event:?}");

        let _listener = TcpListener::bind(backend).await.expect("bind the same port again");
        let event = next(&mut rx).await;
        assert!(event.healthy, "{event:?}");
        assert_eq!(event.reason, format!("2 consecutive successes: connected to {backend}"));

        // Still up, probed every 20 ms: no event at all for many intervals.
        assert!(timeout(Duration::from_millis(300), rx.recv()).await.is_err(), "no event without a transition");
        task.abort();
        // Every probe was recorded: at least the two failures of the fall, and the passes around them.
        let (passed, failed) = recorder.counts();
        assert!(failed >= 2, "{failed} failed");
        assert!(passed >= 3, "{passed} passed");
    }

    #[tokio::test]
    async fn check_none_reports_healthy_once_and_ends() {
        let (tx, mut rx) = mpsc::channel(8);
        let backend = SocketAddr::from(([192, 0, 2, 1], 6443));
        let task = spawn(backend, Settings { kind: CheckKind::None, ..Settings::default() }, tx, None);
        let event = next(&mut rx).await;
        assert_eq!(event, HealthEvent { backend, healthy: true, reason: "check = none: always healthy".into() });
        timeout(PATIENCE, task).await.expect("the task ends").expect("no panic");
        assert!(rx.recv().await.is_none(), "nothing else is sent");
    }

    #[tokio::test]
    async fn the_task_ends_when_the_receiver_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let backend = listener.local_addr().expect("local address");
        let (tx, rx) = mpsc::channel(8);
        // A long interval: the task is asleep between probes when the receiver goes away.
        let settings = Settings { interval: Duration::from_secs(3600), ..tcp_settings() };
        let task = spawn(backend, settings, tx, None);
        drop(rx);
        timeout(PATIENCE, task).await.expect("the task ends").expect("no panic");
    }
}
