//! Carrying out each step of the schedule, with what it must and must not change: faults to the active node and
//! the take-over they cause, restores (a preemption, or a rejoin that changes nothing), backend flaps, rolling
//! reloads and the spoofed burst. Each step opens the windows it may cost clients and checks the roles and the
//! services once they should have settled.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xvip::status::Status;
use xvip::vrrp::packet::Advert;

use super::report::{BurstFigures, EventRecord};
use super::{BACKEND_PORTS, COMEBACK_TIMEOUT, EXTRA_PORTS, PRIORITIES, Soak, WEB_PORT};
use crate::extra::RawSocket;
use crate::flood::{self, Flood};
use crate::netns;
use crate::soak::bounds::Kind;
use crate::soak::leftovers::Spawned;
use crate::soak::plan::FlapHow;
use crate::soak::timeline::Violation;

/// How long the node that should take over may take to report itself active after a fault (the bounds are a
/// few hundred ms: this only ends the wait when it never happens).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the roles may take to look as expected after a window closed.
const ROLES_TIMEOUT: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A reload's change to the services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    AddService,
    RemoveService,
    AddBackend,
    RemoveBackend,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::AddService => "service added",
            Change::RemoveService => "service removed",
            Change::AddBackend => "backend added",
            Change::RemoveBackend => "backend removed",
        }
    }
}

impl Soak {
    /// Starts the record of a new event; returns its index.
    fn begin(&mut self, kind: Kind, what: String, bound: Option<Duration>) -> usize {
        let index = self.events.len();
        eprintln!("soak: {:>7.1} s  #{index} {}: {what}", self.now().as_secs_f64(), kind.name());
        self.events.push(EventRecord {
            index,
            at_s: self.now().as_secs_f64(),
            kind: Some(kind),
            what,
            bound_ms: bound.map(ms),
            ..EventRecord::default()
        });
        index
    }

    fn note(&mut self, event: usize, note: impl Into<String>) {
        self.events[event].notes.push(note.into());
    }

    fn violation(&mut self, event: usize, what: &str, detail: impl Into<String>) {
        let detail = format!("{}: {}", self.events[event].what, detail.into());
        eprintln!("soak: VIOLATION {what}: {detail}");
        self.violations.push(Violation { event: Some(event), ..Violation::new(Some(self.now()), what, detail) });
    }

    fn status(&self, i: usize) -> Result<Status> {
        self.nodes[i].agent()?.status()
    }

    /// Waits until node `i` reports itself active; returns when it became active (soak time, from its status).
    fn wait_takeover(&self, i: usize, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status(i)
                && s.role == "active"
            {
                return Ok(self.soak_time_of(s.role_since_unix_ms));
            }
            if Instant::now() > deadline {
                bail!("{} is not active after {timeout:?}", self.nodes[i].host.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the window of `event` closes, then checks the roles and records who answers for the VIP from
    /// the window's close on.
    fn settle_window(&mut self, event: usize) {
        let close = self.windows.iter().rev().find(|w| w.event == event).map(|w| w.close);
        if let Some(close) = close {
            let now = self.now();
            if close > now {
                std::thread::sleep(close - now);
            }
        }
        self.check_roles(event, close);
    }

    /// Every running node has the role the model says (the expected active one `active`, a node without link
    /// `fault`, the others `backup`); records the active node as the one ARP must name from `since` on (now when
    /// `None`).
    fn check_roles(&mut self, event: usize, since: Option<Duration>) {
        let expected = self.expected_active();
        let want = |i: usize| -> &'static str {
            if Some(i) == expected {
                "active"
            } else if !self.nodes[i].link_up {
                "fault"
            } else {
                "backup"
            }
        };
        let deadline = Instant::now() + ROLES_TIMEOUT;
        let mismatch = loop {
            let mismatch: Vec<String> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].agent.is_some())
                .filter_map(|i| {
                    let role = self.status(i).map_or_else(|e| format!("no status ({e:#})"), |s| s.role);
                    (role != want(i)).then(|| format!("{} is {role}, expected {}", self.nodes[i].host.name, want(i)))
                })
                .collect();
            if mismatch.is_empty() || Instant::now() > deadline {
                break mismatch;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !mismatch.is_empty() {
            self.violation(event, "roles not as expected", mismatch.join("; "));
        }
        if let Some(a) = expected {
            let mac = self.mac(a);
            if self.owners.last().is_none_or(|(_, m)| *m != mac) {
                let from = since.unwrap_or_else(|| self.now());
                self.owners.push((from, mac));
            }
        }
    }

    /// The active node's role changes so far (to check that an event did not move the VIP).
    fn transitions(&self) -> Option<(usize, u64)> {
        let a = self.expected_active()?;
        Some((a, self.status(a).ok()?.transitions))
    }

    /// The VIP did not move: the node that was active still is, with no role change in between.
    fn check_unmoved(&mut self, event: usize, before: Option<(usize, u64)>) {
        let Some((a, count)) = before else { return };
        match self.status(a) {
            Ok(s) if s.role == "active" && s.transitions == count => {}
            Ok(s) => {
                let detail = format!(
                    "{} was active with {count} role changes, now {} with {} (last: {})",
                    self.nodes[a].host.name, s.role, s.transitions, s.role_reason
                );
                self.violation(event, "the VIP moved", detail);
            }
            Err(e) => self.violation(event, "the VIP moved", format!("no status from the active node: {e:#}")),
        }
        self.check_roles(event, None);
    }

    // ----- failovers -----

    /// `kind` (Kill, Term or LinkDown) to node `i`, the active one.
    pub(super) fn fault(&mut self, kind: Kind, i: usize) -> Result<()> {
        let taker = (0..self.nodes.len())
            .filter(|&n| n != i && self.nodes[n].up())
            .max_by_key(|&n| PRIORITIES[n])
            .context("a fault needs a node to take over")?;
        let bound = self.bound(kind, Some(taker));
        let (name, taker_name) = (self.nodes[i].host.name.clone(), self.nodes[taker].host.name.clone());
        let event = self.begin(kind, format!("{name}: {}; {taker_name} takes over", kind.name()), Some(bound));
        let t0 = self.now();
        match kind {
            Kind::Kill => {
                self.nodes[i].agent.as_mut().context("the active node runs")?.kill()?;
                self.retire_agent(i);
            }
            Kind::Term => {
                let (code, took) = self.nodes[i].agent.as_mut().context("the active node runs")?.terminate()?;
                self.retire_agent(i);
                self.note(event, format!("{name} exited with {code:?} after {:.0} ms", ms(took)));
                if code != Some(0) {
                    self.violation(event, "unclean stop", format!("{name} exited with {code:?} after SIGTERM"));
                }
            }
            Kind::LinkDown => {
                let host = self.nodes[i].host.clone();
                self.lab.cut_link(&host)?;
                self.nodes[i].link_up = false;
            }
            other => bail!("{other:?} is not a fault"),
        }
        self.window(event, kind, t0, bound, Vec::new());
        match self.wait_takeover(taker, TAKEOVER_TIMEOUT) {
            Ok(at) => self.events[event].reaction_ms = Some(ms(at.saturating_sub(t0))),
            Err(e) => self.violation(event, "no take-over", format!("{e:#}")),
        }
        if matches!(kind, Kind::Kill | Kind::Term) {
            // A dead agent's XDP program is gone with it (the kernel releases the link).
            let ns = self.nodes[i].host.ns.clone();
            let link = self.lab.exec(&ns, ["ip", "-d", "link", "show", "eth0"])?;
            if link.contains("prog/xdp") {
                self.violation(event, "XDP program left attached", format!("{name}: {link}"));
            }
        }
        self.settle_window(event);
        self.planner.record(kind);
        Ok(())
    }

    /// Node `i` comes back: its agent restarted, or its link up. Above the active node it takes over (a
    /// preemption, which opens a window when it happens); below, nothing may change.
    pub(super) fn restore(&mut self, i: usize) -> Result<()> {
        let before = self.expected_active();
        let preempt = before.is_none_or(|a| PRIORITIES[i] > PRIORITIES[a]);
        let kind = if preempt { Kind::Preempt } else { Kind::Rejoin };
        let name = self.nodes[i].host.name.clone();
        let how = if self.nodes[i].agent.is_none() { "restarted" } else { "link up" };
        let what = match before {
            Some(a) if preempt => format!("{name} {how}, takes over from {}", self.nodes[a].host.name),
            Some(a) => format!("{name} {how}, below {}", self.nodes[a].host.name),
            None => format!("{name} {how}"),
        };
        let bound = self.timers.bound(kind, PRIORITIES[i]);
        let event = self.begin(kind, what, bound);
        let unmoved = if preempt { None } else { self.transitions() };
        let t0 = self.now();
        if self.nodes[i].agent.is_none() {
            self.start_agent(i)?;
        } else {
            let host = self.nodes[i].host.clone();
            self.lab.restore_link(&host)?;
            self.nodes[i].link_up = true;
        }
        if preempt {
            match self.wait_takeover(i, COMEBACK_TIMEOUT) {
                Ok(at) => {
                    self.events[event].reaction_ms = Some(ms(at.saturating_sub(t0)));
                    self.window(event, Kind::Preempt, at, bound.unwrap_or_default(), Vec::new());
                    self.settle_window(event);
                }
                Err(e) => self.violation(event, "no preemption", format!("{e:#}")),
            }
        }
        if let Err(e) = self.wait_settled(i, COMEBACK_TIMEOUT) {
            self.violation(event, "node did not settle", format!("{e:#}"));
        }
        if !preempt {
            self.check_unmoved(event, unmoved);
        }
        self.planner.record(kind);
        Ok(())
    }

    // ----- backends -----

    /// Backend `b` fails in the way `how` says, stays out a while, and comes back.
    pub(super) fn flap(&mut self, b: usize, how: FlapHow) -> Result<()> {
        let host = self.lab.backends()[b].clone();
        let bound = self.bound(Kind::Flap, None);
        let event = self.begin(Kind::Flap, format!("{}: {how:?}", host.name), Some(bound));
        let unmoved = self.transitions();
        let t0 = self.now();
        match how {
            FlapHow::Killed => self.lab.kill_backend(b + 1)?,
            FlapHow::Unready => self.lab.set_backend_ready(b + 1, false)?,
            FlapHow::LinkDown => self.lab.cut_link(&host)?,
        }
        self.window(event, Kind::Flap, t0, bound, vec![host.name.clone()]);
        match self.wait_backend(b, false, Duration::from_secs(5)) {
            Ok(true) => self.events[event].reaction_ms = Some(ms(self.now().saturating_sub(t0))),
            Ok(false) => self.note(event, format!("{} is in no service now", host.name)),
            Err(e) => self.violation(event, "backend not taken out", format!("{e:#}")),
        }
        if self.services.web.contains(&b) {
            self.note_table(t0, Some(b));
        }
        self.settle_window(event);
        let down = Duration::from_millis(300 + self.planner.rng().below(1200));
        std::thread::sleep(down);
        let restored = self.now();
        match how {
            FlapHow::Killed => {
                self.lab.start_backend(b + 1, &BACKEND_PORTS)?;
                if let Some(pid) = self.lab.backend_pid(b + 1) {
                    self.spawned.extend(Spawned::of(pid, format!("lab-backend of {}", host.name)));
                }
            }
            FlapHow::Unready => self.lab.set_backend_ready(b + 1, true)?,
            FlapHow::LinkDown => self.lab.restore_link(&host)?,
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].agent.is_some()
                && let Err(e) = self.wait_settled(i, Duration::from_secs(15))
            {
                self.violation(event, "backend did not come back", format!("{e:#}"));
            }
        }
        self.note_table(restored, None);
        self.check_unmoved(event, unmoved);
        self.planner.record(Kind::Flap);
        Ok(())
    }

    /// Waits until the active node sees backend `b` as `healthy` (or not) in every service it belongs to; `false`
    /// when it belongs to none (a reload took it out of web, and no extra service has it): nothing to wait for.
    fn wait_backend(&self, b: usize, healthy: bool, timeout: Duration) -> Result<bool> {
        let a = self.expected_active().context("no active node")?;
        let address = self.lab.backends()[b].ip.to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(a)?;
            let seen: Vec<(&str, bool)> = status
                .services
                .iter()
                .flat_map(|s| s.backends.iter().map(move |x| (s.name.as_str(), x)))
                .filter(|(_, x)| x.address == address)
                .map(|(name, x)| (name, x.healthy))
                .collect();
            if seen.is_empty() {
                return Ok(false);
            }
            if seen.iter().all(|(_, h)| *h == healthy) {
                return Ok(true);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still sees {address} as {seen:?} (service, healthy) after {timeout:?}",
                    self.nodes[a].host.name
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Backends a flap may take: those in some service, which every service they are in can do without (each
    /// keeps another backend), so no node loses a whole service (which would lower every node's priority at
    /// slightly different times).
    pub(super) fn flappable(&self) -> Vec<usize> {
        let mut sets: Vec<&BTreeSet<usize>> = vec![&self.services.web];
        sets.extend(self.services.extras.values());
        (0..self.lab.backends().len())
            .filter(|b| sets.iter().any(|s| s.contains(b)) && sets.iter().all(|s| !s.contains(b) || s.len() >= 2))
            .collect()
    }

    // ----- reloads -----

    fn pick_change(&mut self) -> Change {
        let mut possible = Vec::new();
        if self.services.extras.len() < EXTRA_PORTS.len() {
            possible.push(Change::AddService);
        }
        if !self.services.extras.is_empty() {
            possible.push(Change::RemoveService);
        }
        if self.services.web.len() < self.lab.backends().len() {
            possible.push(Change::AddBackend);
        }
        if self.services.web.len() > 2 {
            possible.push(Change::RemoveBackend);
        }
        let count = |c: Change| self.reload_changes.get(c.name()).copied().unwrap_or(0);
        let least = possible.iter().map(|&c| count(c)).min().unwrap_or(0);
        let tied: Vec<Change> = possible.into_iter().filter(|&c| count(c) == least).collect();
        tied[self.planner.rng().below(tied.len() as u64) as usize]
    }

    /// Every node reloads a changed config, one after another in a random order (a rolling change), while
    /// traffic goes on: nothing may fail and the VIP may not move; connections to a removed backend end.
    pub(super) fn reload(&mut self) -> Result<()> {
        let change = self.pick_change();
        let n = self.lab.backends().len() as u64;
        let mut removed_backends = Vec::new();
        let (mut added_port, mut removed_port) = (None, None);
        let detail = match change {
            Change::AddService => {
                let port = EXTRA_PORTS.iter().map(|(p, _)| *p).find(|p| !self.services.extras.contains_key(p));
                let port = port.context("a free extra port")?;
                let mut backends = BTreeSet::new();
                while backends.is_empty() {
                    backends = (0..n as usize).filter(|_| self.planner.rng().below(2) == 0).collect();
                }
                let names: Vec<String> = backends.iter().map(|&b| self.lab.backends()[b].name.clone()).collect();
                self.services.extras.insert(port, backends);
                added_port = Some(port);
                format!("service extra{port} on port {port} added ({})", names.join(", "))
            }
            Change::RemoveService => {
                let ports: Vec<u16> = self.services.extras.keys().copied().collect();
                let port = ports[self.planner.rng().below(ports.len() as u64) as usize];
                self.services.extras.remove(&port);
                removed_port = Some(port);
                format!("service extra{port} removed")
            }
            Change::AddBackend => {
                let b = (0..n as usize).find(|b| !self.services.web.contains(b)).context("a backend to add")?;
                self.services.web.insert(b);
                format!("{} added to web", self.lab.backends()[b].name)
            }
            Change::RemoveBackend => {
                let list: Vec<usize> = self.services.web.iter().copied().collect();
                let b = list[self.planner.rng().below(list.len() as u64) as usize];
                self.services.web.remove(&b);
                removed_backends.push(self.lab.backends()[b].name.clone());
                format!("{} removed from web", self.lab.backends()[b].name)
            }
        };
        *self.reload_changes.entry(change.name()).or_default() += 1;
        let event = self.begin(Kind::Reload, detail, None);
        let unmoved = self.transitions();
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].agent.is_some()).collect();
        for k in (1..order.len()).rev() {
            let j = self.planner.rng().below(k as u64 + 1) as usize;
            order.swap(k, j);
        }
        let first = self.now();
        let active = self.expected_active();
        let mut active_reloaded = first;
        for (k, &i) in order.iter().enumerate() {
            if Some(i) == active {
                active_reloaded = self.now();
            }
            self.nodes[i].spec = self.node_spec(i);
            let (host, spec) = (self.nodes[i].host.clone(), self.nodes[i].spec.clone());
            self.nodes[i].agent.as_mut().context("running")?.reload(&self.lab, &host, &spec)?;
            // A removed backend leaves the active node's table with the reload; an added one joins it only once
            // its first check has passed (noted below).
            if Some(i) == active && change == Change::RemoveBackend {
                self.note_table(active_reloaded, None);
            }
            if k + 1 < order.len() {
                let gap = Duration::from_millis(self.planner.rng().below(300));
                std::thread::sleep(gap);
            }
        }
        let last = self.now();
        if !removed_backends.is_empty() {
            // Connections to a removed backend end (README: a backend removed loses its connections).
            let roll = last.saturating_sub(first);
            self.window(event, Kind::Reload, first, roll, removed_backends);
        }
        // The active node first: when it has checked an added backend, new connections may be sent to it.
        let mut waits = order.clone();
        waits.sort_by_key(|&i| Some(i) != active);
        for &i in &waits {
            if let Err(e) = self.wait_reloaded(i, Duration::from_secs(15)) {
                self.violation(event, "reload not applied", format!("{e:#}"));
            }
            if Some(i) == active && change == Change::AddBackend {
                self.note_table(active_reloaded, None);
            }
        }
        for &i in &order {
            let log = self.nodes[i].agent()?.log();
            if let Some(line) = log.lines().rev().find(|l| l.contains("reload refused")) {
                let detail = format!("{}: {line}", self.nodes[i].host.name);
                self.violation(event, "reload refused", detail);
            }
        }
        if let Some(port) = added_port {
            let tally = self.lab.request_many(self.lab.vip_addr(port), 6)?;
            if tally.failures > 0 {
                let detail = format!("extra{port}: {} of 6 requests failed: {:?}", tally.failures, tally.errors);
                self.violation(event, "added service does not answer", detail);
            }
        }
        if let Some(port) = removed_port {
            let target: SocketAddr = self.lab.vip_addr(port);
            if crate::probe::http_get(&self.lab.client().ns, target, "/", Duration::from_millis(300)).is_ok() {
                self.violation(event, "removed service still answers", format!("port {port}"));
            }
        }
        self.check_unmoved(event, unmoved);
        self.planner.record(Kind::Reload);
        Ok(())
    }

    /// Waits until node `i` runs exactly the configured services (names and backends) and has settled.
    fn wait_reloaded(&self, i: usize, timeout: Duration) -> Result<()> {
        let want: Vec<(String, BTreeSet<String>)> = self.nodes[i]
            .spec
            .services
            .iter()
            .map(|s| (s.name.clone(), s.backends.iter().map(|(a, p)| format!("{a}:{p}")).collect()))
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(i)?;
            let have: Vec<(String, BTreeSet<String>)> = status
                .services
                .iter()
                .map(|s| (s.name.clone(), s.backends.iter().map(|b| format!("{}:{}", b.address, b.port)).collect()))
                .collect();
            if have == want {
                return self.wait_settled(i, deadline.saturating_duration_since(Instant::now()));
            }
            if Instant::now() > deadline {
                bail!("{} runs {have:?}, configured {want:?}", self.nodes[i].host.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // ----- the spoofed burst -----

    /// A burst of spoofed traffic from `edge`: SYNs and bare ACKs from random sources at web, and VRRP adverts a
    /// node must discard (TTL 64, a bad checksum, another VRID, other addresses) or may only answer (priority 1).
    /// Nothing may fail and the VIP may not move.
    pub(super) fn burst(&mut self) -> Result<()> {
        const SYNS: usize = 16_000;
        const ACKS: usize = 4_000;
        const ADVERTS: usize = 250;
        let a = self.expected_active().context("no active node")?;
        let event = self.begin(Kind::Burst, format!("{SYNS} SYNs, {ACKS} ACKs, {ADVERTS} VRRP adverts"), None);
        let unmoved = self.transitions();
        let before = self.status(a)?.counters;
        let discards_before: Vec<u64> =
            (0..self.nodes.len()).map(|i| self.status(i).map_or(0, |s| s.counters.adverts_discarded)).collect();
        let flood = Flood {
            to_mac: self.mac(a).0,
            from_mac: self.edge.host.mac.0,
            vip: self.vip().into(),
            port: WEB_PORT,
            syns: SYNS,
            acks: ACKS,
            // About 10,000 frames per second.
            batch: 100,
            time_limit: Duration::from_secs(20),
            seed: self.options.seed ^ 0xf100d,
        };
        let (edge_mac, edge_ip, vip) = (self.edge.host.mac.0, self.edge.host.ip, self.vip());
        let flooding = netns::spawn_in_netns(&self.edge.host.ns, move || {
            let socket = RawSocket::open("eth0")?;
            flood.send(&socket)
        })?;
        let adverts = netns::spawn_in_netns(&self.edge.host.ns, move || {
            let socket = RawSocket::open("eth0")?;
            let ours = Advert { vrid: 51, priority: 1, max_adver_int: 10, addresses: vec![vip] };
            let kinds: [(Advert, u8, bool); 5] = [
                (ours.clone(), 64, false),
                (ours.clone(), 255, true),
                (Advert { vrid: 52, ..ours.clone() }, 255, false),
                (Advert { addresses: vec![std::net::Ipv4Addr::new(192, 0, 2, 1)], ..ours.clone() }, 255, false),
                (ours.clone(), 255, false),
            ];
            for k in 0..ADVERTS {
                let (advert, ttl, corrupt) = &kinds[k % kinds.len()];
                socket.send(&flood::advert_frame(edge_mac, edge_ip, advert, *ttl, *corrupt)?)?;
                std::thread::sleep(Duration::from_millis(8));
            }
            Ok(ADVERTS)
        })?;
        let sent = flooding.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        let adverts_sent = adverts.join().map_err(|_| anyhow::anyhow!("the advert thread panicked"))??;
        // Let the last frames land before reading the counters.
        std::thread::sleep(Duration::from_millis(500));
        let after = self.status(a)?.counters;
        let delta = |name: &str| {
            after
                .dataplane
                .get(name)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.dataplane.get(name).copied().unwrap_or(0))
        };
        let discards: Vec<u64> = (0..self.nodes.len())
            .map(|i| self.status(i).map_or(0, |s| s.counters.adverts_discarded).saturating_sub(discards_before[i]))
            .collect();
        let figures = BurstFigures {
            frames: sent.frames,
            seconds: sent.took.as_secs_f64(),
            adverts: adverts_sent,
            nat_forward_tx: delta("nat_forward_tx"),
            drop_nat_no_port: delta("drop_nat_no_port"),
            adverts_discarded_per_node: discards,
        };
        self.note(event, format!("{figures:?}"));
        self.burst = Some(figures);
        self.check_unmoved(event, unmoved);
        self.planner.record(Kind::Burst);
        Ok(())
    }
}
