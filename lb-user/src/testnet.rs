//! Network namespaces for tests: a thread that `unshare(CLONE_NEWNET)`s runs jobs inside it.
//!
//! A socket keeps the namespace it was created in, so sockets made by a job can be used from any
//! thread. The namespace and its interfaces vanish when the worker thread and its sockets are gone.
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct Netns {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    tid: libc::pid_t,
}

impl Netns {
    pub(crate) fn new() -> Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            // SAFETY: unshare only affects this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            // SAFETY: gettid has no preconditions.
            let _ = ready_tx.send(Ok(unsafe { libc::gettid() }));
            for job in rx {
                job();
            }
        });
        let tid =
            ready_rx.recv().context("netns worker thread died")?.context("unshare(CLONE_NEWNET) (tests need root)")?;
        let ns = Netns { jobs: Some(jobs), thread: Some(thread), tid };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    /// Runs `f` on the namespace's thread and returns its result.
    pub(crate) fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or_else(|| anyhow!("netns worker stopped"))?
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| anyhow!("netns worker stopped"))?;
        rx.recv().context("netns job panicked")
    }

    /// Runs `ip ARGS` inside the namespace.
    pub(crate) fn ip(&self, args: &str) -> Result<()> {
        self.ip_output(args).map(drop)
    }

    /// Runs `ip ARGS` inside the namespace and returns its stdout.
    pub(crate) fn ip_output(&self, args: &str) -> Result<String> {
        let args = args.to_owned();
        self.run(move || {
            let out = Command::new("ip").args(args.split_whitespace()).output().context("running ip")?;
            if !out.status.success() {
                bail!("ip {args}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })?
    }

    /// Waits until `interface` can carry traffic. Linkwatch activates the qdisc asynchronously after
    /// carrier comes up (up to a second later); until then `qdisc noop` drops every frame silently.
    pub(crate) fn wait_running(&self, interface: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let link = self.ip_output(&format!("-o link show dev {interface}"))?;
            if link.contains("state UP") && !link.contains("qdisc noop") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{interface} not running after 5 s: {}", link.trim());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Two namespaces joined by a veth pair, both ends up.
pub(crate) struct VethPair {
    pub(crate) a: Netns,
    pub(crate) b: Netns,
    pub(crate) a_if: String,
    pub(crate) b_if: String,
}

/// `a_setup` / `b_setup` are extra `ip` commands run before the ends go up; `{if}` stands for
/// the end's name.
pub(crate) fn veth_pair(a_setup: &[&str], b_setup: &[&str]) -> Result<VethPair> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // IFNAMSIZ: "xvt" + pid (≤ 7 digits) + n + a/b, plus room for a ":x" label, fits 15 bytes.
    let base = format!("xvt{}{n}", std::process::id());
    let (a_if, b_if) = (format!("{base}a"), format!("{base}b"));
    let a = Netns::new()?;
    let b = Netns::new()?;
    a.ip(&format!("link add {a_if} type veth peer name {b_if} netns {}", b.tid))?;
    for (ns, name, setup) in [(&a, &a_if, a_setup), (&b, &b_if, b_setup)] {
        for cmd in setup {
            ns.ip(&cmd.replace("{if}", name))?;
        }
        ns.ip(&format!("link set {name} up"))?;
    }
    a.wait_running(&a_if)?;
    b.wait_running(&b_if)?;
    Ok(VethPair { a, b, a_if, b_if })
}
