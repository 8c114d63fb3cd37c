//! xvip nodes in the lab: a config per node, the daemon started in the node's namespace, and its status.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use xvip::status::Status;

use crate::{ChildGuard, Host, Lab};

/// How one xvip node of the lab is configured.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub priority: u8,
    pub vrid: u8,
    pub advert_interval_ms: u32,
    pub preempt: bool,
    pub preempt_delay_ms: u32,
    pub unicast_peers: Vec<Ipv4Addr>,
    pub backend_loss_penalty: u8,
    pub services: Vec<ServiceSpec>,
    /// Run the daemon as this user with only these capabilities instead of as root.
    pub run_as: Option<RunAs>,
    /// `conntrack_entries` (`None`: the default).
    pub conntrack_entries: Option<u32>,
    /// Extra environment for the daemon (`NOTIFY_SOCKET`, `RUST_LOG`), set with `env`.
    pub env: Vec<(String, String)>,
    /// How long [`Lab::start_xvip`] waits for the status socket to answer.
    pub startup_timeout: Duration,
    /// VRRP instances: when not empty, the config is written in the list form (`[[instance]]`), one instance
    /// each, and `vrid`, `priority` and `services` above are not used (the timers and peers above apply to every
    /// instance).
    pub instances: Vec<InstanceSpec>,
    /// `metrics.listen` (`None`: no `[metrics]` table).
    pub metrics_listen: Option<String>,
    /// Mount cgroup v2 at `/sys/fs/cgroup` in the daemon's mount namespace first, as a real node has it (`ip netns
    /// exec` gives the daemon a fresh `/sys` without cgroup mounts, so `local_clients` finds nothing to attach
    /// to). The mount lives and dies with that private mount namespace.
    pub mount_cgroup2: bool,
    /// `local_clients` (`None`: the default).
    pub local_clients: Option<bool>,
    /// IPv6 addresses of the single-form instance, after the lab's IPv4 VIP (unless `vip4` is false).
    pub vip6: Vec<Ipv6Addr>,
    /// Whether the single-form instance has the lab's IPv4 VIP (`false` with `vip6`: an IPv6-only instance).
    pub vip4: bool,
    /// IPv6 entries of `unicast_peers`.
    pub unicast_peers6: Vec<Ipv6Addr>,
    /// An IPv6 `source_address`.
    pub source_address6: Option<Ipv6Addr>,
    /// Run this xvip binary instead of [`binary()`]'s (an older build, for a comparison in the same lab).
    pub binary: Option<PathBuf>,
}

/// One VRRP instance of a node written in the list form.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    pub name: String,
    pub addresses: Vec<Ipv4Addr>,
    pub vrid: u8,
    pub priority: u8,
    pub services: Vec<ServiceSpec>,
}

impl InstanceSpec {
    pub fn new(name: &str, addresses: &[Ipv4Addr], vrid: u8, priority: u8) -> Self {
        InstanceSpec { name: name.into(), addresses: addresses.to_vec(), vrid, priority, services: Vec::new() }
    }

    pub fn service(mut self, service: ServiceSpec) -> Self {
        self.services.push(service);
        self
    }
}

/// A non-root user with a few capabilities, as a systemd unit with `DynamicUser=` and `AmbientCapabilities=`
/// runs the daemon; applied with `setpriv` (util-linux).
#[derive(Clone, Debug)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Capability names as `setpriv` and capabilities(7) spell them, lower case without `cap_`: `net_raw`.
    pub capabilities: Vec<String>,
}

impl RunAs {
    /// The `setpriv` argv that runs what follows as this user with exactly these capabilities (inheritable,
    /// ambient and bounding set) and no way to gain more (`no_new_privs`, as `NoNewPrivileges=yes`).
    pub fn setpriv(&self) -> Vec<String> {
        let caps: String = self.capabilities.iter().map(|c| format!(",+{c}")).collect();
        vec![
            "setpriv".into(),
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".into(),
            format!("--inh-caps=-all{caps}"),
            format!("--ambient-caps=-all{caps}"),
            format!("--bounding-set=-all{caps}"),
            "--no-new-privs".into(),
            "--".into(),
        ]
    }
}

impl NodeSpec {
    pub fn new(priority: u8) -> Self {
        NodeSpec {
            priority,
            vrid: 51,
            advert_interval_ms: 100,
            preempt: true,
            preempt_delay_ms: 0,
            unicast_peers: Vec::new(),
            backend_loss_penalty: 0,
            services: Vec::new(),
            run_as: None,
            conntrack_entries: None,
            env: Vec::new(),
            startup_timeout: Duration::from_secs(10),
            instances: Vec::new(),
            metrics_listen: None,
            mount_cgroup2: false,
            local_clients: None,
            vip6: Vec::new(),
            vip4: true,
            unicast_peers6: Vec::new(),
            source_address6: None,
            binary: None,
        }
    }

    pub fn service(mut self, service: ServiceSpec) -> Self {
        self.services.push(service);
        self
    }

    pub fn instance(mut self, instance: InstanceSpec) -> Self {
        self.instances.push(instance);
        self
    }
}

/// A service over some of the lab's backends.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
    /// "nat" or "dsr".
    pub forwarding: String,
    /// IPv4 backends for the IPv4 VIP, IPv6 ones for IPv6 VIPs.
    pub backends: Vec<(IpAddr, u16)>,
    /// Weights of backends that do not have the default weight 1 (0 drains a backend).
    pub weights: BTreeMap<(IpAddr, u16), u8>,
    /// "tcp", "http" or "none".
    pub check: String,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub rise: u32,
    pub fall: u32,
}

impl ServiceSpec {
    /// An HTTP service on `port` over every backend of the lab (backend port = `backend_port`).
    pub fn http(lab: &Lab, port: u16, backend_port: u16, forwarding: &str) -> Self {
        ServiceSpec {
            name: "web".into(),
            port,
            protocol: "tcp".into(),
            forwarding: forwarding.into(),
            backends: lab.backends().iter().map(|b| (b.ip.into(), backend_port)).collect(),
            weights: BTreeMap::new(),
            check: "http".into(),
            interval_ms: 200,
            timeout_ms: 150,
            rise: 1,
            fall: 2,
        }
    }
}

/// The TOML config of a node.
pub fn config(lab: &Lab, node: &Host, spec: &NodeSpec, socket: &Path) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "interface = \"{}\"", node.iface);
    let _ = writeln!(t, "xdp_mode = \"native\"");
    if let Some(entries) = spec.conntrack_entries {
        let _ = writeln!(t, "conntrack_entries = {entries}");
    }
    if let Some(on) = spec.local_clients {
        let _ = writeln!(t, "local_clients = {on}");
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "[control]\nsocket = \"{}\"\n", socket.display());
    if let Some(listen) = &spec.metrics_listen {
        let _ = writeln!(t, "[metrics]\nlisten = \"{listen}\"\n");
    }
    if spec.instances.is_empty() {
        if spec.vip6.is_empty() {
            let _ = writeln!(t, "[vip]\naddress = \"{}\"\n", lab.vip());
        } else {
            let v4 = spec.vip4.then(|| lab.vip().to_string());
            let all: Vec<String> =
                v4.into_iter().chain(spec.vip6.iter().map(ToString::to_string)).map(|a| format!("\"{a}\"")).collect();
            let _ = writeln!(t, "[vip]\naddresses = [{}]\n", all.join(", "));
        }
        let _ = writeln!(t, "[vrrp]");
        vrrp_keys(&mut t, spec, spec.vrid, spec.priority);
        services(&mut t, "service", &spec.services);
        return t;
    }
    for instance in &spec.instances {
        let _ = writeln!(t, "[[instance]]\nname = \"{}\"", instance.name);
        let addresses: Vec<String> = instance.addresses.iter().map(|a| format!("\"{a}\"")).collect();
        let _ = writeln!(t, "[instance.vip]\naddresses = [{}]", addresses.join(", "));
        let _ = writeln!(t, "[instance.vrrp]");
        vrrp_keys(&mut t, spec, instance.vrid, instance.priority);
        services(&mut t, "instance.service", &instance.services);
    }
    t
}

/// The keys of a `[vrrp]` table.
fn vrrp_keys(t: &mut String, spec: &NodeSpec, vrid: u8, priority: u8) {
    let _ = writeln!(t, "vrid = {vrid}");
    let _ = writeln!(t, "priority = {priority}");
    let _ = writeln!(t, "advert_interval_ms = {}", spec.advert_interval_ms);
    let _ = writeln!(t, "preempt = {}", spec.preempt);
    let _ = writeln!(t, "preempt_delay_ms = {}", spec.preempt_delay_ms);
    let peers: Vec<String> = spec
        .unicast_peers
        .iter()
        .map(ToString::to_string)
        .chain(spec.unicast_peers6.iter().map(ToString::to_string))
        .map(|p| format!("\"{p}\""))
        .collect();
    let _ = writeln!(t, "unicast_peers = [{}]", peers.join(", "));
    if let Some(source) = spec.source_address6 {
        let _ = writeln!(t, "source_address = \"{source}\"");
    }
    let _ = writeln!(t, "garp_repeat_delay_ms = 1000");
    let _ = writeln!(t, "backend_loss_penalty = {}\n", spec.backend_loss_penalty);
}

/// `[[service]]` tables (`table` = `service` or `instance.service`).
fn services(t: &mut String, table: &str, services: &[ServiceSpec]) {
    for s in services {
        let _ = writeln!(t, "[[{table}]]");
        let _ = writeln!(t, "name = \"{}\"\nport = {}\nforwarding = \"{}\"", s.name, s.port, s.forwarding);
        let _ = writeln!(t, "protocol = \"{}\"", s.protocol);
        let backends: Vec<String> = s
            .backends
            .iter()
            .map(|(a, p)| match s.weights.get(&(*a, *p)) {
                Some(w) => format!("{{ address = \"{a}\", port = {p}, weight = {w} }}"),
                None => format!("{{ address = \"{a}\", port = {p} }}"),
            })
            .collect();
        let _ = writeln!(t, "backends = [{}]", backends.join(", "));
        let _ = writeln!(t, "[{table}.health]\ncheck = \"{}\"", s.check);
        if s.check == "http" {
            let _ = writeln!(t, "path = \"/readyz\"");
        }
        let _ = writeln!(
            t,
            "interval_ms = {}\ntimeout_ms = {}\nrise = {}\nfall = {}\n",
            s.interval_ms, s.timeout_ms, s.rise, s.fall
        );
    }
}

/// Where the xvip binary is: `$XVIP_BIN` (set by `cargo xtask test`), else target/release, else target/debug.
pub fn binary() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("XVIP_BIN") {
        candidates.push(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for profile in ["release", "debug"] {
        candidates.push(target.join(profile).join("xvip"));
    }
    match candidates.iter().find(|c| c.is_file()) {
        Some(found) => Ok(found.clone()),
        None => bail!("xvip not found (looked at {candidates:?}); run `cargo xtask build` or set XVIP_BIN"),
    }
}

/// A running xvip daemon in a node's namespace. Dropping it kills the daemon.
pub struct XvipNode {
    pub name: String,
    pub ns: String,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    log_path: PathBuf,
    child: Option<ChildGuard>,
}

impl Lab {
    /// Writes `spec` as the node's config and starts `xvip run` there; waits until its status socket answers.
    ///
    /// # Errors
    /// When the daemon does not start or exits early (its log is in the error).
    pub fn start_xvip(&self, node: &Host, spec: &NodeSpec) -> Result<XvipNode> {
        let mut socket = self.dir().join(format!("{}.sock", node.name));
        let config_path = self.dir().join(format!("{}.toml", node.name));
        let binary = match &spec.binary {
            Some(path) => path.clone(),
            None => binary()?,
        };
        let mut argv: Vec<String> = Vec::new();
        if spec.mount_cgroup2 {
            // `exec` keeps the pid, so the guarded pid is still the daemon's.
            argv.extend(["sh", "-c", "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$@\"", "sh"].map(String::from));
        }
        if !spec.env.is_empty() {
            // `env` execs what follows in place, so the guarded pid is the daemon's.
            argv.push("env".into());
            argv.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        if let Some(user) = &spec.run_as {
            // What systemd's RuntimeDirectory= gives the unit: a directory of its own for the socket.
            let dir = self.dir().join(format!("{}-run", node.name));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
                .with_context(|| format!("chown {}", dir.display()))?;
            socket = dir.join("xvip.sock");
            argv.extend(user.setpriv());
            // The build tree may sit where the user cannot reach (a checkout under /root): run a copy from here.
            let copy = dir.join("xvip");
            std::fs::copy(&binary, &copy).with_context(|| format!("copying xvip to {}", copy.display()))?;
            argv.push(copy.to_string_lossy().into_owned());
        } else {
            argv.push(binary.to_string_lossy().into_owned());
        }
        std::fs::write(&config_path, config(self, node, spec, &socket))
            .with_context(|| format!("writing {}", config_path.display()))?;
        argv.extend(["run".into(), "-c".into(), config_path.to_string_lossy().into_owned()]);
        let child = self.spawn(&node.ns, &argv)?;
        let mut node = XvipNode {
            name: node.name.clone(),
            ns: node.ns.clone(),
            socket,
            config_path,
            log_path: child.log_path().to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + spec.startup_timeout;
        loop {
            if node.status().is_ok() {
                return Ok(node);
            }
            if let Some(child) = node.child.as_mut()
                && !child.is_running()
            {
                bail!("xvip on {} exited during startup:\n{}", node.name, child.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "xvip on {} did not answer on its socket within {:?}:\n{}",
                    node.name,
                    spec.startup_timeout,
                    node.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl XvipNode {
    /// The daemon's status, from its socket.
    pub fn status(&self) -> Result<Status> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
        runtime.block_on(xvip::control::query(&self.socket))
    }

    /// `GET /metrics` on `listen` (an address of the node's namespace): the page.
    ///
    /// # Errors
    /// When the request fails or does not answer 200.
    pub fn metrics(&self, listen: std::net::SocketAddr) -> Result<String> {
        let response = crate::probe::http_get(&self.ns, listen, "/metrics", Duration::from_secs(5))?;
        if response.status != 200 {
            bail!("GET /metrics on {}: {} {}", self.name, response.status, response.text());
        }
        Ok(response.text())
    }

    pub fn role(&self) -> Result<String> {
        Ok(self.status()?.role)
    }

    /// Waits until the node reports `role`; returns how long that took.
    pub fn wait_role(&self, role: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let now = self.role();
            if now.as_deref().ok() == Some(role) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("{} is {:?}, not {role}, after {timeout:?}:\n{}", self.name, now, self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the node reports every backend of every service healthy with a MAC: its Maglev tables are then
    /// the same as every other node's, which a failover relies on.
    pub fn wait_all_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(status) = self.status()
                && !status.services.is_empty()
                && status.services.iter().all(|s| s.backends.iter().all(|b| b.healthy && b.mac.is_some()))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{}: backends never all healthy within {timeout:?}:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// Writes `spec` as this node's config (in `host`, of `lab`) and sends SIGHUP: a reload.
    ///
    /// # Errors
    /// When the file cannot be written or the daemon is not running.
    pub fn reload(&mut self, lab: &Lab, host: &Host, spec: &NodeSpec) -> Result<()> {
        std::fs::write(&self.config_path, config(lab, host, spec, &self.socket))
            .with_context(|| format!("writing {}", self.config_path.display()))?;
        self.signal(libc::SIGHUP)
    }

    /// Whether the daemon is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Sends a signal (SIGHUP for a reload, for instance).
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        match self.child.as_mut() {
            Some(c) => c.signal(signal),
            None => bail!("{} is not running", self.name),
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code and how long it took.
    pub fn terminate(&mut self) -> Result<(Option<i32>, Duration)> {
        let child = self.child.take().context("not running")?;
        let start = Instant::now();
        let status = child.stop()?;
        Ok((status.code(), start.elapsed()))
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) -> Result<()> {
        let child = self.child.take().context("not running")?;
        child.kill()?;
        Ok(())
    }
}
