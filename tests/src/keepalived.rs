//! keepalived as a VRRPv3 peer and oracle for interop tests (vrrp.md §5).
//!
//! Each instance gets its own directory with its config and its own pid files (`-p`, `-r`): with the defaults a
//! second keepalived on the machine finds `/run/keepalived.pid` and refuses to start ("daemon is already
//! running"). No scripts are configured and `script_user root` is set, because Debian has no `keepalived_script`
//! user and keepalived 2.2.7 refuses such configs otherwise.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::cmd;
use crate::process::{self, ChildGuard};
use crate::topology::IFACE;

/// Log line keepalived prints when an instance becomes the active router (with `-l -D`).
pub const MASTER_LINE: &str = "Entering MASTER STATE";
/// Log line when an instance becomes backup.
pub const BACKUP_LINE: &str = "Entering BACKUP STATE";

/// One `vrrp_instance`.
#[derive(Clone, Debug, PartialEq)]
pub struct KeepalivedSpec {
    /// Instance name in logs (`(VI_1) Entering MASTER STATE`).
    pub instance: String,
    pub router_id: String,
    pub interface: String,
    pub vrid: u8,
    /// 1..=254 (255 = address owner).
    pub priority: u8,
    /// Seconds, a multiple of 0.01 in VRRPv3 (0.01..=40.95).
    pub advert_int: f64,
    pub vip: Ipv4Addr,
    /// Prefix length the VIP is added with (keepalived's `virtual_ipaddress`).
    pub vip_prefix_len: u8,
    /// `unicast_src_ip`; only written when there are unicast peers.
    pub unicast_src: Option<Ipv4Addr>,
    /// Empty = multicast to 224.0.0.18.
    pub unicast_peers: Vec<Ipv4Addr>,
    /// `false` writes `nopreempt`.
    pub preempt: bool,
    /// Raw lines added inside the `vrrp_instance` block (an escape hatch, e.g. `"preempt_delay 2"`).
    pub extra: Vec<String>,
    /// More addresses after `vip` in `virtual_ipaddress` (all go in the advert's address list).
    pub more_vips: Vec<Ipv4Addr>,
    /// Further `vrrp_instance` blocks in the same keepalived (their `global_defs` and `more` are not used).
    pub more: Vec<KeepalivedSpec>,
    /// An IPv6 instance: this address (as /64) instead of `vip` and `more_vips`; keepalived then runs VRRPv3 over
    /// IPv6 (ff02::12 from the interface's link-local address, or the IPv6 unicast peers below).
    pub vip6: Option<Ipv6Addr>,
    /// IPv6 `unicast_src_ip` and `unicast_peer`s (with `vip6`).
    pub unicast6: Option<(Ipv6Addr, Vec<Ipv6Addr>)>,
}

impl KeepalivedSpec {
    /// A multicast VRRPv3 instance `VI_1` on `eth0`, 1 s adverts, preempting, VIP as /32.
    pub fn new(vip: Ipv4Addr, vrid: u8, priority: u8) -> Self {
        KeepalivedSpec {
            instance: "VI_1".into(),
            router_id: format!("xvl-prio{priority}"),
            interface: IFACE.into(),
            vrid,
            priority,
            advert_int: 1.0,
            vip,
            vip_prefix_len: 32,
            unicast_src: None,
            unicast_peers: Vec::new(),
            preempt: true,
            extra: Vec::new(),
            more_vips: Vec::new(),
            more: Vec::new(),
            vip6: None,
            unicast6: None,
        }
    }

    /// An IPv6 instance for `vip6` (see [`KeepalivedSpec::vip6`]).
    pub fn ipv6(mut self, vip6: Ipv6Addr) -> Self {
        self.vip6 = Some(vip6);
        self
    }

    /// Switches the IPv6 instance to unicast adverts from `src` to `peers`.
    pub fn unicast6(mut self, src: Ipv6Addr, peers: &[Ipv6Addr]) -> Self {
        self.unicast6 = Some((src, peers.to_vec()));
        self
    }

    /// Adds addresses to this instance's `virtual_ipaddress`.
    pub fn with_vips(mut self, vips: &[Ipv4Addr]) -> Self {
        self.more_vips.extend_from_slice(vips);
        self
    }

    /// Adds another `vrrp_instance` to the same keepalived.
    pub fn with_instance(mut self, other: KeepalivedSpec) -> Self {
        self.more.push(other);
        self
    }

    /// Sets the advert interval in seconds.
    pub fn advert_int(mut self, seconds: f64) -> Self {
        self.advert_int = seconds;
        self
    }

    /// Switches to unicast adverts from `src` to `peers`.
    pub fn unicast(mut self, src: Ipv4Addr, peers: &[Ipv4Addr]) -> Self {
        self.unicast_src = Some(src);
        self.unicast_peers = peers.to_vec();
        self
    }

    /// The keepalived.conf text.
    pub fn config(&self) -> String {
        let mut c = String::new();
        // `writeln!` into a String cannot fail.
        let _ = writeln!(
            c,
            "global_defs {{\n    router_id {}\n    vrrp_version 3\n    script_user root\n}}",
            self.router_id
        );
        self.instance_block(&mut c);
        for other in &self.more {
            other.instance_block(&mut c);
        }
        c
    }

    /// This spec's `vrrp_instance` block.
    fn instance_block(&self, c: &mut String) {
        let _ = writeln!(c, "vrrp_instance {} {{", self.instance);
        let _ = writeln!(c, "    version 3");
        // BACKUP: let the election decide; MASTER is only right for the address owner (priority 255).
        let _ = writeln!(c, "    state {}", if self.priority == 255 { "MASTER" } else { "BACKUP" });
        let _ = writeln!(c, "    interface {}", self.interface);
        let _ = writeln!(c, "    virtual_router_id {}", self.vrid);
        let _ = writeln!(c, "    priority {}", self.priority);
        let _ = writeln!(c, "    advert_int {}", self.advert_int);
        if !self.preempt {
            let _ = writeln!(c, "    nopreempt");
        }
        if !self.unicast_peers.is_empty() {
            if let Some(src) = self.unicast_src {
                let _ = writeln!(c, "    unicast_src_ip {src}");
            }
            let _ = writeln!(c, "    unicast_peer {{");
            for peer in &self.unicast_peers {
                let _ = writeln!(c, "        {peer}");
            }
            let _ = writeln!(c, "    }}");
        }
        if let Some((src, peers)) = &self.unicast6 {
            let _ = writeln!(c, "    unicast_src_ip {src}");
            let _ = writeln!(c, "    unicast_peer {{");
            for peer in peers {
                let _ = writeln!(c, "        {peer}");
            }
            let _ = writeln!(c, "    }}");
        }
        for line in &self.extra {
            let _ = writeln!(c, "    {line}");
        }
        if let Some(vip6) = self.vip6 {
            let _ = writeln!(c, "    virtual_ipaddress {{\n        {vip6}/64 dev {}\n    }}\n}}", self.interface);
            return;
        }
        let _ = writeln!(c, "    virtual_ipaddress {{");
        for vip in std::iter::once(&self.vip).chain(&self.more_vips) {
            let _ = writeln!(c, "        {vip}/{} dev {}", self.vip_prefix_len, self.interface);
        }
        let _ = writeln!(c, "    }}");
        let _ = writeln!(c, "}}");
    }
}

/// A running keepalived (`-P`: VRRP only), stopped on drop.
///
/// keepalived runs as a parent that forks the VRRP child; the guard owns the parent. SIGTERM on the parent is a
/// clean stop (a priority-0 advert first), and the parent stops the child.
#[derive(Debug)]
pub struct Keepalived {
    child: Option<ChildGuard>,
    ns: String,
    dir: PathBuf,
    spec: KeepalivedSpec,
    vrrp_pid_file: PathBuf,
}

impl Keepalived {
    /// Writes the config into `dir` (created), checks it with `keepalived -t`, and starts keepalived in `ns`.
    ///
    /// # Errors
    /// When the config is rejected or keepalived does not start.
    pub fn start(ns: &str, spec: &KeepalivedSpec, dir: &Path) -> Result<Keepalived> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, spec.config()).with_context(|| format!("writing {}", conf.display()))?;
        let pid = dir.join("keepalived.pid");
        let vrrp_pid = dir.join("vrrp.pid");
        cmd::exec_in(ns, [Path::new("keepalived"), Path::new("-t"), Path::new("-f"), &conf])
            .with_context(|| format!("keepalived rejects {}:\n{}", conf.display(), spec.config()))?;
        let argv: Vec<&std::ffi::OsStr> = vec![
            "keepalived".as_ref(),
            "-n".as_ref(), // stay in the foreground: the guard owns the parent
            "-l".as_ref(), // log to the console (the log file)
            "-D".as_ref(),
            "-G".as_ref(), // and not to syslog
            "-P".as_ref(),
            "-f".as_ref(),
            conf.as_os_str(),
            "-p".as_ref(),
            pid.as_os_str(),
            "-r".as_ref(),
            vrrp_pid.as_os_str(),
        ];
        let child = ChildGuard::spawn(ns, argv, &dir.join("keepalived.log"))?;
        Ok(Keepalived {
            child: Some(child),
            ns: ns.to_owned(),
            dir: dir.to_owned(),
            spec: spec.clone(),
            vrrp_pid_file: vrrp_pid,
        })
    }

    fn child(&self) -> &ChildGuard {
        self.child.as_ref().unwrap_or_else(|| unreachable!("the child is only taken on drop"))
    }

    fn child_mut(&mut self) -> &mut ChildGuard {
        self.child.as_mut().unwrap_or_else(|| unreachable!("the child is only taken on drop"))
    }

    pub fn spec(&self) -> &KeepalivedSpec {
        &self.spec
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parent's pid.
    pub fn pid(&self) -> u32 {
        self.child().pid()
    }

    /// keepalived's log so far.
    pub fn log(&self) -> String {
        self.child().log()
    }

    /// Waits until the log contains `needle`.
    ///
    /// # Errors
    /// When keepalived exits first or `timeout` passes.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.child_mut().wait_for_log(needle, timeout)
    }

    /// Waits until this instance has become MASTER (its log says so).
    ///
    /// # Errors
    /// As [`wait_for_log`](Self::wait_for_log).
    pub fn wait_master(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for_log(MASTER_LINE, timeout)
    }

    /// How often the log says `needle`.
    pub fn count_in_log(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Whether the VIP is currently on the instance's interface.
    ///
    /// # Errors
    /// When `ip addr` fails.
    pub fn holds_vip(&self) -> Result<bool> {
        self.holds(self.spec.vip)
    }

    /// Whether `address` is currently on the instance's interface (any instance's address).
    ///
    /// # Errors
    /// When `ip addr` fails.
    pub fn holds(&self, address: Ipv4Addr) -> Result<bool> {
        let out = cmd::ip_in(&self.ns, ["-4", "-o", "addr", "show", "dev", &self.spec.interface])?;
        let needle = format!(" {address}/");
        Ok(out.contains(&needle))
    }

    /// Whether the IPv6 `address` is currently on the instance's interface.
    ///
    /// # Errors
    /// When `ip addr` fails.
    pub fn holds6(&self, address: Ipv6Addr) -> Result<bool> {
        let out = cmd::ip_in(&self.ns, ["-6", "-o", "addr", "show", "dev", &self.spec.interface])?;
        Ok(out.contains(&format!(" {address}/")))
    }

    /// The VRRP child's pid, from its pid file.
    ///
    /// # Errors
    /// When the file is missing (keepalived not up yet) or malformed.
    pub fn vrrp_pid(&self) -> Result<i32> {
        let text = std::fs::read_to_string(&self.vrrp_pid_file)
            .with_context(|| format!("reading {}", self.vrrp_pid_file.display()))?;
        text.trim().parse().with_context(|| format!("pid file {} holds {text:?}", self.vrrp_pid_file.display()))
    }

    /// Freezes the VRRP child (SIGSTOP): a hung master, taken over after 3 × advert + skew.
    ///
    /// # Errors
    /// When the child is not running in this namespace.
    pub fn pause(&self) -> Result<()> {
        process::signal_in_netns(&self.ns, self.vrrp_pid()?, libc::SIGSTOP)
    }

    /// Lets a paused VRRP child continue (SIGCONT); it may briefly be a second master.
    ///
    /// # Errors
    /// When the child is not running in this namespace.
    pub fn resume(&self) -> Result<()> {
        process::signal_in_netns(&self.ns, self.vrrp_pid()?, libc::SIGCONT)
    }

    /// A clean stop (SIGTERM): keepalived sends a priority-0 advert and removes the VIP.
    ///
    /// # Errors
    /// When waiting fails.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown(false)
    }

    /// A crash (SIGKILL to the parent and the VRRP child): no goodbye advert, the VIP stays on the interface.
    ///
    /// # Errors
    /// When waiting fails.
    pub fn kill(mut self) -> Result<()> {
        self.shutdown(true)
    }

    fn shutdown(&mut self, crash: bool) -> Result<()> {
        let Some(child) = self.child.take() else { return Ok(()) };
        let vrrp = self.vrrp_pid().ok();
        if crash {
            if let Some(pid) = vrrp {
                // Best effort: it may be gone already.
                let _ = process::signal_in_netns(&self.ns, pid, libc::SIGKILL);
            }
            child.kill()?;
        } else {
            // A stopped child could not act on the parent's SIGTERM.
            if let Some(pid) = vrrp {
                let _ = process::signal_in_netns(&self.ns, pid, libc::SIGCONT);
            }
            child.stop()?;
        }
        // If the parent was killed before it could stop its child, the child is an orphan in our namespace.
        if let Some(pid) = vrrp
            && crate::netns::pids_in(&self.ns)?.contains(&pid)
        {
            process::signal_in_netns(&self.ns, pid, libc::SIGKILL)?;
        }
        Ok(())
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown(false) {
            eprintln!("xvip-tests: stopping keepalived in {}: {e:#}", self.ns);
        }
    }
}

/// Parses the number out of keepalived's `--signum=NAME` (e.g. JSON), for `kill -s`.
///
/// # Errors
/// When keepalived does not know the name.
pub fn signum(name: &str) -> Result<i32> {
    let out = cmd::run_args("keepalived", [format!("--signum={name}")])?;
    out.trim().parse().map_err(|_| anyhow!("keepalived --signum={name} printed {out:?}"))
}

/// Checks that `keepalived` is installed.
///
/// # Errors
/// When it is not on PATH.
pub fn available() -> Result<()> {
    match cmd::run_args("keepalived", ["-v"]) {
        Ok(_) => Ok(()),
        Err(e) => bail!("keepalived is not usable: {e:#}"),
    }
}
