//! Processes started inside lab namespaces, each owned by a guard that stops it on drop (also during a panic).
//!
//! Processes are stopped by their own pid (SIGTERM, then SIGKILL after a grace period), never by name: other
//! labs and other people's processes share this machine.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// How long a process gets between SIGTERM and SIGKILL by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// A child process started with `ip netns exec NS ...`, its stdout and stderr going to a log file.
///
/// `ip netns exec` execs the command in place, so the guarded pid is the command itself and signals reach it
/// directly. The child also gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies if the test process is killed without
/// unwinding. Linux ties that signal to the *thread* that spawned the child: spawn from a thread that outlives it
/// (the test's own thread, not a short-lived helper thread).
#[derive(Debug)]
pub struct ChildGuard {
    label: String,
    ns: String,
    child: Child,
    status: Option<ExitStatus>,
    log: PathBuf,
    grace: Duration,
}

impl ChildGuard {
    /// Starts `argv` inside namespace `ns`; output goes (appended) to `log`.
    ///
    /// # Errors
    /// When the log file cannot be created or the process cannot be started.
    pub fn spawn<I, S>(ns: &str, argv: I, log: &Path) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<_> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let Some(program) = argv.first() else { bail!("spawn in {ns}: empty command line") };
        let args: Vec<&OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        let line = cmd::display(program, &args[1..]);
        let out = open_log(log)?;
        let err = out.try_clone().with_context(|| format!("duplicating the handle of {}", log.display()))?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).args(&argv).stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("starting `{line}` in {ns}"))?;
        Ok(ChildGuard {
            label: line,
            ns: ns.to_owned(),
            child,
            status: None,
            log: log.to_owned(),
            grace: DEFAULT_GRACE,
        })
    }

    /// Changes the time between SIGTERM and SIGKILL used by [`stop`](Self::stop) and on drop.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn netns(&self) -> &str {
        &self.ns
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.poll().is_none()
    }

    /// The exit status, if the process has exited.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends `signal` to the process.
    ///
    /// # Errors
    /// When the process has already exited (the pid may belong to someone else by now) or `kill` fails.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if let Some(status) = self.poll() {
            bail!("`{}` has already exited ({status})", self.label);
        }
        send(self.child.id(), signal).with_context(|| format!("signalling `{}`", self.label))
    }

    /// Waits until the log contains `needle`.
    ///
    /// # Errors
    /// When the process exits first or `timeout` passes; the error carries the log.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.poll() {
                bail!("`{}` exited ({status}) before logging {needle:?}; log:\n{}", self.label, tail(&log, 40));
            }
            if Instant::now() > deadline {
                bail!("`{}` did not log {needle:?} within {timeout:?}; log:\n{}", self.label, tail(&log, 40));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if the process is still there after the grace period; returns its exit status.
    ///
    /// # Errors
    /// When waiting for the process fails.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    /// SIGKILL at once (a crash, as far as peers can tell); returns its exit status.
    ///
    /// # Errors
    /// When waiting for the process fails.
    pub fn kill(mut self) -> Result<ExitStatus> {
        if let Some(status) = self.poll() {
            return Ok(status);
        }
        send(self.child.id(), libc::SIGKILL)?;
        let status = self.child.wait().with_context(|| format!("waiting for `{}`", self.label))?;
        self.status = Some(status);
        Ok(status)
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.poll() {
            return Ok(status);
        }
        // The pid is still ours: the child is not reaped until we wait for it.
        send(self.child.id(), libc::SIGTERM)?;
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Some(status) = self.poll() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        send(self.child.id(), libc::SIGKILL)?;
        let status = self.child.wait().with_context(|| format!("waiting for `{}`", self.label))?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- xvip-tests: log of `{}` in {} ---\n{}", self.label, self.ns, tail(&self.log(), 40));
        }
        if let Err(e) = self.terminate() {
            eprintln!("xvip-tests: stopping `{}`: {e:#}", self.label);
        }
    }
}

fn send(pid: u32, signal: i32) -> Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    // SAFETY: plain syscall on a pid we own (an unreaped child or one verified to be in a lab namespace).
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("kill({pid}, {signal})"));
    }
    Ok(())
}

/// Sends `signal` to `pid` only if that process lives in lab namespace `ns` (checked with `ip netns pids`),
/// for processes the lab did not spawn directly, such as keepalived's VRRP child.
///
/// # Errors
/// When the pid is not in that namespace or `kill` fails.
pub fn signal_in_netns(ns: &str, pid: i32, signal: i32) -> Result<()> {
    if !crate::netns::pids_in(ns)?.contains(&pid) {
        bail!("pid {pid} is not a process in {ns}");
    }
    send(pid as u32, signal)
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening log {}", path.display()))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
