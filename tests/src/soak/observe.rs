//! The soak's observers, running beside the faults for the whole run: new connections through the VIP every 10 ms
//! (the lab's [`Probe`]), long-lived connections that live 10-40 s each ([`RequestLoop`]s and keepalive
//! [`StreamWatch`]es), an ARP watch from a host of its own, and a sampler of each agent's memory, open files and
//! BPF objects. What they saw comes back in soak time (a `Duration` since the soak's start).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::flood::XorShift;
use crate::probe::{Probe, ProbeSpec, RequestLoop, StreamEnd, StreamWatch};
use crate::reach::ArpWatch;
use crate::soak::leftovers::{self, BpfIds, Spawned};
use crate::soak::timeline::{ArpRound, Connection, Request, ResourceSample};

/// The new-connection probe: a `GET /` every 10 ms, each failed when not answered within this (the same deadline
/// as the failover tests', so the outage figures compare).
pub const PROBE_DEADLINE: Duration = Duration::from_millis(50);
/// A new-connection request that missed the probe's 50 ms deadline still gets this long (from its start) to be
/// answered: less than Linux's initial SYN retransmission timeout (1 s), so a request whose SYN was lost fails,
/// while one that was merely slow on a busy machine counts as late, not failed.
pub const GRACE: Duration = Duration::from_millis(900);
/// How often the ARP watch asks who has the VIP (and how long each request waits for answers).
pub const ARP_PERIOD: Duration = Duration::from_millis(100);
/// Long-lived connections open at any time: request loops and server-push streams.
const LOOPS: usize = 4;
const STREAMS: usize = 2;
/// A request loop asks every this often; a request may take this long (TCP retransmissions ride through a
/// failover) before the connection counts as broken.
const LOOP_INTERVAL: Duration = Duration::from_millis(100);
const PATIENCE: Duration = Duration::from_secs(5);
/// A stream's client sends a TCP keepalive probe after this long without data (docs/nat.md: what server-push
/// clients need across a failover).
const STREAM_KEEPALIVE: Duration = Duration::from_secs(1);
/// Each long-lived connection is closed after a random lifetime in this range and replaced by a new one, so
/// connections of every age meet every kind of fault.
const LIFETIME_MS: (u64, u64) = (10_000, 40_000);
/// How often the sampler reads each agent.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

fn since(epoch: Instant, at: Instant) -> Duration {
    at.saturating_duration_since(epoch)
}

/// The agents running now, by pid: which node and since when (soak time). The driver keeps it current.
pub type Agents = Arc<Mutex<BTreeMap<u32, (usize, Spawned, Duration)>>>;

/// One agent's readings.
#[derive(Clone, Debug)]
pub struct AgentSamples {
    pub node: usize,
    pub pid: u32,
    pub started: Duration,
    pub samples: Vec<ResourceSample>,
}

/// Everything the observers saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// New-connection requests, in start order.
    pub probe: Vec<Request>,
    pub probe_end: Duration,
    pub connections: Vec<Connection>,
    /// Long-lived connections that could not be opened (a new connection that failed).
    pub open_failures: Vec<Request>,
    pub arp: Vec<ArpRound>,
    pub agents: Vec<AgentSamples>,
    /// The BPF objects the agents held.
    pub bpf: BpfIds,
}

/// The running observers; [`stop`](Self::stop) them to get what they saw.
pub struct Observers {
    epoch: Instant,
    probe: Option<Probe>,
    arp: Option<ArpWatch>,
    stop: Arc<AtomicBool>,
    long_lived: Option<JoinHandle<(Vec<Connection>, Vec<Request>)>>,
    sampler: Option<JoinHandle<(Vec<AgentSamples>, BpfIds)>>,
}

impl Observers {
    /// Starts them: the probe and the long-lived connections from `client_ns` to `target`, the ARP watch from
    /// `watch_ns` for `vip`, the sampler over `agents`.
    ///
    /// # Errors
    /// When a thread cannot be started.
    pub fn start(
        epoch: Instant,
        client_ns: &str,
        target: SocketAddr,
        watch_ns: &str,
        vip: Ipv4Addr,
        agents: Agents,
        seed: u64,
    ) -> Result<Observers> {
        let spec = ProbeSpec { timeout: PROBE_DEADLINE, grace: GRACE, ..ProbeSpec::http(target) };
        let probe = Probe::start(client_ns, spec).context("starting the probe")?;
        let arp =
            ArpWatch::start(watch_ns, crate::topology::IFACE, vip, ARP_PERIOD).context("starting the ARP watch")?;
        let stop = Arc::new(AtomicBool::new(false));
        let long_lived = {
            let (stop, ns) = (stop.clone(), client_ns.to_owned());
            std::thread::Builder::new()
                .name("soak long-lived".into())
                .spawn(move || long_lived(epoch, &ns, target, seed, &stop))
                .context("starting the long-lived connections")?
        };
        let sampler = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("soak sampler".into())
                .spawn(move || sample(epoch, &agents, &stop))
                .context("starting the sampler")?
        };
        Ok(Observers {
            epoch,
            probe: Some(probe),
            arp: Some(arp),
            stop,
            long_lived: Some(long_lived),
            sampler: Some(sampler),
        })
    }

    /// Stops every observer and returns what they saw.
    ///
    /// # Errors
    /// When an observer failed (could not enter its namespace, say).
    pub fn stop(mut self) -> Result<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let probe = self.probe.take().ok_or_else(|| anyhow!("the probe already stopped"))?;
        let probe_started = probe.started_at();
        let report = probe.stop().context("the probe")?;
        let offset = since(self.epoch, probe_started);
        let probe: Vec<Request> = report
            .samples
            .iter()
            .map(|s| Request {
                started: offset + s.started,
                ended: offset + s.ended,
                outcome: s.outcome.clone(),
                late: s.late.clone(),
            })
            .collect();
        let arp = self.arp.take().ok_or_else(|| anyhow!("the ARP watch already stopped"))?;
        let arp_started = since(self.epoch, arp.started_at());
        let arp = arp
            .stop()
            .context("the ARP watch")?
            .into_iter()
            .map(|(sent, answers)| ArpRound { sent: arp_started + sent, answers })
            .collect();
        let (connections, open_failures) = self
            .long_lived
            .take()
            .ok_or_else(|| anyhow!("long-lived connections already collected"))?
            .join()
            .map_err(|_| anyhow!("the long-lived connections' thread panicked"))?;
        let (agents, bpf) = self
            .sampler
            .take()
            .ok_or_else(|| anyhow!("samples already collected"))?
            .join()
            .map_err(|_| anyhow!("the sampler panicked"))?;
        Ok(Seen { probe, probe_end: offset + report.duration, connections, open_failures, arp, agents, bpf })
    }
}

impl Drop for Observers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.long_lived.take() {
            let _ = t.join();
        }
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
    }
}

enum Live {
    Loop(RequestLoop),
    Stream(StreamWatch),
}

impl Live {
    fn ended(&self) -> bool {
        match self {
            Live::Loop(l) => l.ended(),
            Live::Stream(s) => s.ended(),
        }
    }

    /// Stops it and describes it in soak time.
    fn finish(self, epoch: Instant) -> Option<Connection> {
        match self {
            Live::Loop(l) => {
                let r = l.stop().ok()?;
                let opened = since(epoch, r.opened);
                let requests: Vec<Request> = r
                    .samples
                    .iter()
                    .map(|s| Request {
                        started: opened + s.started,
                        ended: opened + s.ended,
                        outcome: s.outcome.clone(),
                        late: None,
                    })
                    .collect();
                let ended = requests.last().map_or(opened, |q| q.ended);
                Some(Connection {
                    what: "request loop",
                    backend: r.backend,
                    opened,
                    ended,
                    broken: broken(&r.end),
                    wrong_backend: r.wrong_backend,
                    longest_gap: r.longest_gap,
                    requests,
                })
            }
            Live::Stream(s) => {
                let r = s.stop().ok()?;
                let opened = since(epoch, r.started);
                let last = r.last_line.map_or(opened, |l| opened + l);
                Some(Connection {
                    what: "stream",
                    backend: r.backend,
                    opened,
                    ended: opened + r.duration,
                    broken: broken(&r.end),
                    wrong_backend: 0,
                    longest_gap: r.longest_gap,
                    // The stream's last line stands for its last answer.
                    requests: vec![Request { started: last, ended: last, outcome: Ok(String::new()), late: None }],
                })
            }
        }
    }
}

fn broken(end: &StreamEnd) -> Option<String> {
    match end {
        StreamEnd::StillOpen => None,
        StreamEnd::Closed => Some("closed by the other end".into()),
        StreamEnd::Failed(e) => Some(e.clone()),
    }
}

/// Keeps [`LOOPS`] request loops and [`STREAMS`] streams open until `stop`, each replaced when it ends or its
/// lifetime is over.
fn long_lived(
    epoch: Instant,
    ns: &str,
    target: SocketAddr,
    seed: u64,
    stop: &AtomicBool,
) -> (Vec<Connection>, Vec<Request>) {
    let mut rng = XorShift::new(seed ^ 0x5eed_1099_11fe_d00d);
    let mut slots: Vec<Option<(Live, Instant)>> = (0..LOOPS + STREAMS).map(|_| None).collect();
    let (mut done, mut failed_opens) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        for (i, slot) in slots.iter_mut().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match slot.take() {
                Some((live, until)) if live.ended() || Instant::now() >= until => done.extend(live.finish(epoch)),
                Some(kept) => *slot = Some(kept),
                None => {
                    let lifetime = Duration::from_millis(LIFETIME_MS.0 + rng.below(LIFETIME_MS.1 - LIFETIME_MS.0));
                    let opening = Instant::now();
                    let opened = if i < LOOPS {
                        RequestLoop::start(ns, target, LOOP_INTERVAL, PATIENCE).map(Live::Loop)
                    } else {
                        StreamWatch::start_with_keepalive(ns, target, PATIENCE, Some(STREAM_KEEPALIVE))
                            .map(Live::Stream)
                    };
                    match opened {
                        Ok(live) => *slot = Some((live, Instant::now() + lifetime)),
                        Err(e) => failed_opens.push(Request {
                            started: since(epoch, opening),
                            ended: since(epoch, Instant::now()),
                            outcome: Err(format!("opening a long-lived connection: {e:#}")),
                            late: None,
                        }),
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (live, _) in slots.into_iter().flatten() {
        done.extend(live.finish(epoch));
    }
    done.sort_by_key(|c| c.opened);
    (done, failed_opens)
}

/// Reads every agent in `agents` every [`SAMPLE_EVERY`] until `stop`.
fn sample(epoch: Instant, agents: &Agents, stop: &AtomicBool) -> (Vec<AgentSamples>, BpfIds) {
    let mut by_pid: BTreeMap<u32, AgentSamples> = BTreeMap::new();
    let mut bpf = BpfIds::default();
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let live: Vec<(u32, usize, Spawned, Duration)> = match agents.lock() {
            Ok(a) => a.iter().map(|(pid, (node, s, at))| (*pid, *node, s.clone(), *at)).collect(),
            Err(_) => break,
        };
        for (pid, node, spawned, started) in live {
            let ids = leftovers::bpf_ids_of(pid);
            let reading = read(pid);
            // Read only while it is still this process (a recycled pid would be someone else's).
            if !spawned.alive() {
                continue;
            }
            bpf.extend(&ids);
            if let Some((rss_kib, fds)) = reading {
                let t = since(epoch, Instant::now());
                let entry = by_pid.entry(pid).or_insert(AgentSamples { node, pid, started, samples: Vec::new() });
                entry.samples.push(ResourceSample { t, rss_kib, fds });
            }
        }
        let next = start.elapsed().as_millis() / SAMPLE_EVERY.as_millis() + 1;
        let wait = Duration::from_millis((next * SAMPLE_EVERY.as_millis()) as u64).saturating_sub(start.elapsed());
        let until = Instant::now() + wait;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (by_pid.into_values().collect(), bpf)
}

/// VmRSS (KiB) and the number of open file descriptors of `pid`.
fn read(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}
