//! Network namespaces: creating and removing them, and running code inside one from a dedicated thread.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only, so lab code enters a namespace on a
//! fresh thread and never touches the main thread's namespace: sockets created there stay bound to that namespace
//! after the thread ends. Commands run through `ip netns exec`, which enters the namespace before `exec`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Every namespace the lab creates starts with this, followed by the run id: `xvl-<pid>-<counter>-<role>`.
pub const PREFIX: &str = "xvl-";

/// Where `ip netns add` mounts namespace handles.
const NETNS_DIR: &str = "/run/netns";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short id unique among all labs alive on this machine: the process id plus a per-process counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunId {
    pub pid: u32,
    pub counter: u32,
}

impl RunId {
    /// Takes the next id of this process.
    pub fn next() -> Self {
        RunId { pid: std::process::id(), counter: COUNTER.fetch_add(1, Ordering::Relaxed) }
    }

    /// A number in 1..=254 derived from the id, used as the third octet of the lab subnet so that concurrent labs
    /// use different addresses (they are isolated anyway; this keeps captures and logs unambiguous).
    pub fn subnet_octet(&self) -> u8 {
        let mixed = u64::from(self.pid).wrapping_mul(31).wrapping_add(u64::from(self.counter));
        // 1..=254: never the .0 or .255 network.
        (mixed % 254 + 1) as u8
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.pid, self.counter)
    }
}

/// A network namespace created by the lab; deleting it on drop, after killing every process still inside.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME` and bring its loopback up (services bound to 127.0.0.1 and the VIP on `lo` need it).
    ///
    /// # Errors
    /// When the namespace exists already or `ip` fails.
    pub fn create(name: &str) -> Result<Self> {
        if !name.starts_with(PREFIX) {
            bail!("lab namespace names must start with {PREFIX:?}, got {name:?}");
        }
        cmd::run_args("ip", ["netns", "add", name]).with_context(|| format!("creating namespace {name}"))?;
        let ns = Netns { name: name.to_owned() };
        cmd::ip_in(name, ["link", "set", "lo", "up"]).with_context(|| format!("bringing up lo in {name}"))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills (SIGKILL) every process whose network namespace is this one, except this process.
    ///
    /// # Errors
    /// When `ip netns pids` fails.
    pub fn kill_all(&self) -> Result<()> {
        kill_all_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A process left inside would keep the namespace (and its veths) alive after the handle is unmounted,
        // invisibly: kill first, delete after.
        if let Err(e) = self.kill_all() {
            eprintln!("xvip-tests: cleaning {}: {e:#}", self.name);
        }
        if let Err(e) = cmd::run_args("ip", ["netns", "del", &self.name]) {
            eprintln!("xvip-tests: deleting namespace {}: {e:#}", self.name);
        }
    }
}

/// The pids `ip netns pids NS` reports (processes whose `/proc/PID/ns/net` is that namespace), without our own.
///
/// # Errors
/// When `ip netns pids` fails.
pub fn pids_in(ns: &str) -> Result<Vec<i32>> {
    let out = cmd::run_args("ip", ["netns", "pids", ns])?;
    let me = std::process::id() as i32;
    Ok(out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).filter(|&p| p > 1 && p != me).collect())
}

/// SIGKILLs every process in `ns` (never this process) and waits up to 2 s for them to be gone.
///
/// # Errors
/// When `ip netns pids` fails or a process survives.
pub fn kill_all_in(ns: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = pids_in(ns)?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes {pids:?} in {ns} survived SIGKILL");
        }
        for pid in pids {
            // SAFETY: plain syscall; the pid was just read as living in a namespace this lab owns.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens the handle of namespace `ns` (`/run/netns/NS`).
fn open(ns: &str) -> Result<File> {
    let path = Path::new(NETNS_DIR).join(ns);
    File::open(&path).with_context(|| format!("opening {}", path.display()))
}

/// Moves the calling thread into the namespace behind `handle`.
fn enter(handle: &File, ns: &str) -> Result<()> {
    // SAFETY: setns on a valid fd; it only changes this thread's network namespace.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {ns}"));
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns` and waits for it. A panic in `f` is resumed on the caller.
///
/// # Errors
/// When the namespace cannot be entered, or what `f` returns.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let handle = open(ns)?;
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn_scoped(scope, move || {
                enter(&handle, ns)?;
                f()
            })
            .context("spawning a thread")?;
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Starts `f` on a new thread inside namespace `ns`, returning at once.
///
/// # Errors
/// When the namespace handle cannot be opened or the thread cannot be spawned. Entering the namespace happens on
/// the thread; its failure comes back from `join`.
pub fn spawn_in_netns<T, F>(ns: &str, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let handle = open(ns)?;
    let name = ns.to_owned();
    std::thread::Builder::new()
        .name(format!("netns {ns}"))
        .spawn(move || {
            enter(&handle, &name)?;
            drop(handle);
            f()
        })
        .context("spawning a thread")
}

/// Lists the lab namespaces on this machine (any run), sorted.
///
/// # Errors
/// When `/run/netns` exists but cannot be read.
pub fn list_lab_namespaces() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("reading /run/netns"),
    };
    let mut names = Vec::new();
    for entry in dir {
        let name = entry.context("reading /run/netns")?.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes lab namespaces left behind by runs whose process is gone (a test binary killed with SIGKILL cannot run
/// its `Drop` guards). A namespace is only touched when the pid in its name no longer exists.
///
/// Returns the names removed.
///
/// # Errors
/// When `/run/netns` cannot be read. Failures on single namespaces are reported on stderr and skipped.
pub fn reap_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list_lab_namespaces()? {
        let Some(pid) = name[PREFIX.len()..].split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == 0 || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Err(e) = kill_all_in(&name).and_then(|()| cmd::run_args("ip", ["netns", "del", &name]).map(drop)) {
            eprintln!("xvip-tests: removing stale namespace {name}: {e:#}");
            continue;
        }
        removed.push(name);
    }
    Ok(removed)
}
