//! Prometheus metrics: what the page shows, and how it is kept off the advert path.
//!
//! `[metrics] listen = "ADDRESS:PORT"` turns on an HTTP listener ([`http`]) that serves `GET /metrics` in the
//! Prometheus text format (version 0.0.4, encoded by the Prometheus project's `prometheus-client`). Every metric is
//! listed in `docs/metrics.md`; a test renders a full page and fails when a metric is missing there, documented
//! with another type or other labels, or documented without being exported.
//!
//! Nothing here ever calls into the advert thread or the data plane thread on a scrape. The agent's sampler asks
//! the advert thread for the engine's [`View`] (the snapshot `xvip status` uses, O(services) to take) and the data
//! plane thread for its counters once per [`SAMPLE_PERIOD`], and for a walk over the connection and NAT tables
//! once per [`SCAN_PERIOD`]; [`Metrics::render`] turns that sample into the page once, and the listener serves the
//! last page to every scraper. A storm of scrapes costs socket writes, nothing else.
//!
//! Everything about a VRRP instance carries a `vrrp_instance` label (its `name`; the one instance of a config in
//! the single form is [`crate::config::DEFAULT_INSTANCE`]); what the XDP program counts for the whole node (frames by reason, table
//! fill) does not. An instance runs one VRRP router per address family it has addresses of: the `xvip_vrrp_router_*`
//! and `xvip_router_frames_total` families show each with a `family` label (`ipv4`, `ipv6`), while the older
//! per-instance families keep showing the instance's IPv4 router (its only one before IPv6 VIPs), or the IPv6 one
//! of an instance without IPv4 addresses (`InstanceView::election`).

pub mod http;

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use lb_common::Reason;

use crate::{
    config::CheckKind,
    dataplane::{Counters, ServiceId, TableScan},
    engine::{InstanceView, RouterObserved, RouterView},
    vrrp::{Cause, Role},
};

/// How often the sampler takes a new snapshot of the engine and the data plane counters.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// How often the sampler has the data plane thread walk the connection and NAT tables (open flows per backend,
/// table fill): two `bpf()` calls per connection-table entry, so less often than the counters.
pub const SCAN_PERIOD: Duration = Duration::from_secs(5);
/// How long after a table walk that took `took` the next one starts: [`SCAN_PERIOD`], or ten times the walk when
/// that is longer (tables of millions of entries), so walks take at most a tenth of the data plane thread and
/// service updates never wait long behind one.
pub fn scan_period(took: Duration) -> Duration {
    SCAN_PERIOD.max(took.saturating_mul(10))
}

/// The `Content-Type` of the page.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of `xvip_vrrp_takeover_seconds`: from a preemption (under one advert interval) to a take-over
/// after the longest advert interval (3 × 40.95 s plus skew).
const TAKEOVER_BUCKETS: [f64; 18] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 3.5, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 130.0];
/// Upper bounds of `xvip_health_check_duration_seconds` (a check's timeout is at most its interval).
const PROBE_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Every role, so `xvip_vrrp_role` has a series for each (1 for the current one).
const ROLES: [Role; 4] = [Role::Initialize, Role::Backup, Role::Active, Role::Fault];

/// One VRRP instance's state at the moment of the sample.
#[derive(Clone, Debug)]
pub struct Instance {
    /// The `vrrp_instance` label.
    pub name: String,
    pub view: InstanceView,
}

/// What the data plane thread read for a sample.
#[derive(Clone, Debug, Default)]
pub struct DataPlaneSample {
    pub counters: Counters,
    /// The last walk over the connection and NAT tables, and how long it took (`None` before the first one, or
    /// when it failed).
    pub tables: Option<(TableScan, Duration)>,
}

/// Everything one page shows.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub instances: Vec<Instance>,
    /// `None` until the data plane thread answered once.
    pub dataplane: Option<DataPlaneSample>,
    /// Wall-clock time of the sample, seconds since the epoch.
    pub unix_time: f64,
}

/// The sample time of a page made of an engine view taken at `view_at` and, once the data plane thread has
/// answered, its counters taken at `dataplane_at` (seconds since the epoch): the older of the two, so that
/// `xvip_metrics_sample_timestamp_seconds` stops moving when either thread stops answering.
pub fn sample_time(view_at: f64, dataplane_at: Option<f64>) -> f64 {
    dataplane_at.map_or(view_at, |d| view_at.min(d))
}

/// A backend's health checks, recorded by its checker ([`crate::health::spawn`]) as they happen, on the main
/// runtime: how long successful checks took, and how many passed and failed.
#[derive(Clone, Debug)]
pub struct ProbeRecorder {
    latency: Histogram,
    ok: Counter,
    failed: Counter,
}

impl Default for ProbeRecorder {
    fn default() -> Self {
        ProbeRecorder { latency: Histogram::new(PROBE_BUCKETS), ok: Counter::default(), failed: Counter::default() }
    }
}

impl ProbeRecorder {
    /// One check that took `took`: its time goes into the histogram when it passed.
    pub fn record(&self, took: Duration, passed: bool) {
        if passed {
            self.latency.observe(took.as_secs_f64());
            self.ok.inc();
        } else {
            self.failed.inc();
        }
    }

    /// (passed, failed) so far.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u64) {
        (self.ok.get(), self.failed.get())
    }
}

/// (instance, service, backend `address:port`).
type BackendKey = (String, String, String);

/// The checkers' recorders, shared between the agent (which hands one to each checker it starts) and the page.
/// A checker restarted by a reload gets the same recorder back, so its counters keep counting.
#[derive(Clone, Debug, Default)]
pub struct Probes(Arc<Mutex<BTreeMap<BackendKey, ProbeRecorder>>>);

impl Probes {
    /// The recorder of one backend's checks.
    pub fn recorder(&self, instance: &str, service: &str, backend: &str) -> ProbeRecorder {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.entry((instance.to_string(), service.to_string(), backend.to_string())).or_default().clone()
    }

    /// The recorders of the backends in `keep`; the others (backends a reload removed) are forgotten.
    fn retain(&self, keep: &[BackendKey]) -> BTreeMap<BackendKey, ProbeRecorder> {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|k, _| keep.contains(k));
        all.clone()
    }
}

/// A take-over histogram and how many of the instance's take-overs it has seen.
#[derive(Clone, Debug)]
struct Takeovers {
    histogram: Histogram,
    seen: u64,
}

/// The state that outlives one sample (histograms), and the page renderer.
#[derive(Debug, Default)]
pub struct Metrics {
    takeovers: BTreeMap<String, Takeovers>,
    takeovers6: BTreeMap<String, Takeovers>,
    probes: Probes,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Metrics that show the checks recorded through `probes` (a handle of another [`Metrics`]).
    pub fn with_probes(probes: Probes) -> Self {
        Metrics { probes, ..Metrics::default() }
    }

    /// The handle the agent gives health checkers.
    pub fn probes(&self) -> Probes {
        self.probes.clone()
    }

    /// Takes the take-overs that happened since the last sample into the histograms, and renders the page.
    pub fn render(&mut self, sample: Sample) -> String {
        // The IPv4 router's series is there for every instance (as before IPv6 routers), empty without one.
        let none = RouterObserved::default();
        for instance in &sample.instances {
            let v4 = instance.view.ipv4.as_ref().map_or(&none, |r| &r.observed);
            Self::absorb(&mut self.takeovers, &instance.name, "", v4);
            if let Some(v6) = &instance.view.ipv6 {
                Self::absorb(&mut self.takeovers6, &instance.name, "IPv6 ", &v6.observed);
            }
        }
        self.takeovers.retain(|name, _| sample.instances.iter().any(|i| &i.name == name));
        self.takeovers6.retain(|name, _| sample.instances.iter().any(|i| &i.name == name && i.view.ipv6.is_some()));
        let checked: Vec<BackendKey> = sample
            .instances
            .iter()
            .flat_map(|i| {
                i.view.config.services.iter().filter(|s| s.health.check != CheckKind::None).flat_map(move |s| {
                    s.backends
                        .iter()
                        .map(move |b| (i.name.clone(), s.name.clone(), SocketAddr::new(b.address, b.port).to_string()))
                })
            })
            .collect();
        let histograms =
            |all: &BTreeMap<String, Takeovers>| all.iter().map(|(k, t)| (k.clone(), t.histogram.clone())).collect();
        let page = Page {
            takeovers: histograms(&self.takeovers),
            takeovers6: histograms(&self.takeovers6),
            probes: self.probes.retain(&checked),
            sample,
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(page));
        let mut text = String::new();
        // Writing into a String cannot fail, and every name and label here is well formed.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
            log::warn!("rendering the metrics page: {e}");
        }
        text
    }

    /// Takes a router's take-overs that `histograms[name]` has not seen into it.
    fn absorb(histograms: &mut BTreeMap<String, Takeovers>, name: &str, router: &str, observed: &RouterObserved) {
        let (total, recent) = (observed.takeovers, &observed.recent_takeovers);
        let t = histograms
            .entry(name.to_string())
            .or_insert_with(|| Takeovers { histogram: Histogram::new(TAKEOVER_BUCKETS), seen: 0 });
        let new = total.saturating_sub(t.seen);
        if new > recent.len() as u64 {
            log::warn!(
                "metrics: {new} take-over(s) of instance {name}'s {router}router happened between two samples; only \
                 the last {} are in xvip_vrrp_takeover_seconds",
                recent.len()
            );
        }
        let skip = recent.len().saturating_sub(usize::try_from(new).unwrap_or(usize::MAX));
        for took in recent.iter().skip(skip) {
            t.histogram.observe(took.as_secs_f64());
        }
        t.seen = total;
    }
}

/// One sample with the histograms, as the encoder walks it.
#[derive(Debug)]
struct Page {
    sample: Sample,
    /// By instance: its (IPv4) router's take-overs, and its IPv6 router's.
    takeovers: BTreeMap<String, Histogram>,
    takeovers6: BTreeMap<String, Histogram>,
    probes: BTreeMap<BackendKey, ProbeRecorder>,
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its name, help and type once, then each series. Families without a series are left out.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: Vec<(Labels, M)>,
) -> fmt::Result {
    if series.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in &series {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Labels, N)>,
) -> fmt::Result {
    let series = series.into_iter().map(|(l, v)| (l, ConstGauge::new(v))).collect();
    family(encoder, name, help, MetricType::Gauge, series)
}

/// `name` is without `_total`, which the encoder adds.
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, series: Vec<(Labels, u64)>) -> fmt::Result {
    let series = series.into_iter().map(|(l, v)| (l, ConstCounter::new(v))).collect();
    family(encoder, name, help, MetricType::Counter, series)
}

/// One VRRP router of an instance (one per address family it has addresses of), with its labels
/// (`vrrp_instance`, `family`).
struct RouterRow<'a> {
    labels: Labels,
    router: &'a RouterView,
}

/// A backend of a service, with its labels and what the engine and the data plane know of it.
struct BackendRow<'a> {
    labels: Labels,
    key: BackendKey,
    weight: u8,
    healthy: bool,
    traffic: Option<&'a lb_common::Traffic>,
    flows: Option<u64>,
}

impl Page {
    fn instance_labels(instance: &Instance) -> Labels {
        vec![("vrrp_instance", instance.name.clone())]
    }

    fn per_instance<N>(&self, f: impl Fn(&Instance) -> Vec<(Labels, N)>) -> Vec<(Labels, N)> {
        self.sample.instances.iter().flat_map(f).collect()
    }

    /// Every router of every instance, IPv4 first.
    fn routers(&self) -> Vec<RouterRow<'_>> {
        self.sample
            .instances
            .iter()
            .flat_map(|i| {
                i.view.routers().map(|router| RouterRow {
                    labels: vec![("vrrp_instance", i.name.clone()), ("family", router.family().to_string())],
                    router,
                })
            })
            .collect()
    }

    fn backends(&self) -> Vec<BackendRow<'_>> {
        let dataplane = self.sample.dataplane.as_ref();
        let mut rows = Vec::new();
        for instance in &self.sample.instances {
            for svc in &instance.view.config.services {
                for b in &svc.backends {
                    let backend = SocketAddr::new(b.address, b.port).to_string();
                    let state = instance.view.services.backend(&svc.name, (b.address, b.port));
                    let key = (ServiceId::new(&instance.name, &svc.name), b.address, b.port);
                    rows.push(BackendRow {
                        labels: vec![
                            ("vrrp_instance", instance.name.clone()),
                            ("service", svc.name.clone()),
                            ("backend", backend.clone()),
                        ],
                        key: (instance.name.clone(), svc.name.clone(), backend),
                        weight: b.weight,
                        healthy: state.is_some_and(|s| s.healthy),
                        traffic: dataplane.and_then(|d| d.counters.backends.get(&key)),
                        flows: dataplane
                            .and_then(|d| d.tables.as_ref())
                            .map(|(scan, _)| scan.flows.get(&key).copied().unwrap_or(0)),
                    });
                }
            }
        }
        rows
    }

    fn services(&self) -> Vec<(Labels, &lb_common::Traffic)> {
        let Some(dataplane) = &self.sample.dataplane else { return Vec::new() };
        self.sample
            .instances
            .iter()
            .flat_map(|i| {
                i.view.config.services.iter().filter_map(|s| {
                    let traffic = dataplane.counters.services.get(&ServiceId::new(&i.name, &s.name))?;
                    Some((vec![("vrrp_instance", i.name.clone()), ("service", s.name.clone())], traffic))
                })
            })
            .collect()
    }

    fn encode_instances(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        gauge(
            e,
            "xvip_vrrp_info",
            "The instance's VRRP group: its VRID, virtual address and interface (always 1)",
            self.per_instance(|i| {
                let c = &i.view.config;
                let mut labels = Self::instance_labels(i);
                labels.push(("vrid", c.vrrp.vrid.to_string()));
                labels.push(("vip", c.vip.first().to_string()));
                labels.push(("interface", c.interface.clone()));
                vec![(labels, 1i64)]
            }),
        )?;
        gauge(
            e,
            "xvip_vrrp_role",
            "1 for the instance's current VRRP role, 0 for the others",
            self.per_instance(|i| {
                ROLES
                    .iter()
                    .map(|r| {
                        let mut labels = Self::instance_labels(i);
                        labels.push(("role", r.name().to_string()));
                        (labels, i64::from(i.view.election().is_some_and(|e| e.role == *r)))
                    })
                    .collect()
            }),
        )?;
        gauge(
            e,
            "xvip_vrrp_priority",
            "The configured VRRP priority (vrrp.priority)",
            self.per_instance(|i| vec![(Self::instance_labels(i), i64::from(i.view.config.vrrp.priority))]),
        )?;
        gauge(
            e,
            "xvip_vrrp_effective_priority",
            "The priority advertised now: the configured one, lowered by backend_loss_penalty while some service has \
             no usable backend",
            self.per_instance(|i| {
                vec![(Self::instance_labels(i), i64::from(i.view.election().map_or(0, |e| e.priority)))]
            }),
        )?;
        counter(
            e,
            "xvip_vrrp_transitions",
            "Role changes, by reason",
            self.per_instance(|i| {
                Cause::ALL
                    .iter()
                    .map(|c| {
                        let mut labels = Self::instance_labels(i);
                        labels.push(("reason", c.name().to_string()));
                        let n = i.view.election().and_then(|e| e.observed.transitions_by_cause.get(c.name()).copied());
                        (labels, n.unwrap_or(0))
                    })
                    .collect()
            }),
        )?;
        counter(
            e,
            "xvip_vrrp_adverts_sent",
            "VRRP adverts sent (priority-0 adverts on stopping included)",
            self.per_instance(|i| {
                vec![(Self::instance_labels(i), i.view.election().map_or(0, |e| e.observed.adverts_sent))]
            }),
        )?;
        counter(
            e,
            "xvip_vrrp_adverts_received",
            "VRRP adverts from other routers that passed every check and went to the election",
            self.per_instance(|i| {
                vec![(Self::instance_labels(i), i.view.election().map_or(0, |e| e.observed.adverts_received))]
            }),
        )?;
        counter(
            e,
            "xvip_vrrp_adverts_discarded",
            "VRRP packets discarded, by reason (the RFC 5798 section 7.1 checks, address_mismatch, owner)",
            self.per_instance(|i| {
                crate::vrrp::packet::Discard::ALL_NAMES
                    .iter()
                    .chain(&crate::engine::DISCARD_REASONS)
                    .map(|reason| {
                        let mut labels = Self::instance_labels(i);
                        labels.push(("reason", reason.to_string()));
                        let n = i.view.election().and_then(|e| e.observed.discards.get(reason).copied());
                        (labels, n.unwrap_or(0))
                    })
                    .collect()
            }),
        )?;
        counter(
            e,
            "xvip_vrrp_garps_sent",
            "Gratuitous ARPs sent for the virtual address",
            self.per_instance(|i| {
                vec![(Self::instance_labels(i), i.view.ipv4.as_ref().map_or(0, |r| r.observed.announcements))]
            }),
        )?;
        self.encode_routers(e)?;
        family(
            e,
            "xvip_vrrp_takeover_seconds",
            "Time from the last advert heard from another router to this node's first advert as active, per take-over",
            MetricType::Histogram,
            self.per_instance(|i| {
                let v4 = self.takeovers.get(&i.name).map(|h| (Self::instance_labels(i), h.clone()));
                // The IPv6 router's under a `family` label; the IPv4 router's series keeps its labels.
                let v6 = self.takeovers6.get(&i.name).map(|h| {
                    let mut labels = Self::instance_labels(i);
                    labels.push(("family", "ipv6".to_string()));
                    (labels, h.clone())
                });
                v4.into_iter().chain(v6).collect()
            }),
        )
    }

    /// The `xvip_vrrp_router_*` families: each router of each instance, by address family.
    fn encode_routers(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let rows = self.routers();
        let each = |f: &dyn Fn(&RouterRow) -> u64| -> Vec<(Labels, u64)> {
            rows.iter().map(|r| (r.labels.clone(), f(r))).collect()
        };
        gauge(
            e,
            "xvip_vrrp_router_role",
            "1 for the router's current VRRP role, 0 for the others (one router per address family of the instance)",
            rows.iter()
                .flat_map(|r| {
                    ROLES.iter().map(|role| {
                        let mut labels = r.labels.clone();
                        labels.push(("role", role.name().to_string()));
                        (labels, i64::from(*role == r.router.role))
                    })
                })
                .collect(),
        )?;
        gauge(
            e,
            "xvip_vrrp_router_effective_priority",
            "The priority the router advertises now",
            each(&|r| u64::from(r.router.priority)),
        )?;
        counter(
            e,
            "xvip_vrrp_router_transitions",
            "The router's role changes",
            each(&|r| r.router.observed.transitions),
        )?;
        counter(
            e,
            "xvip_vrrp_router_adverts_sent",
            "VRRP adverts the router sent (priority-0 adverts on stopping included)",
            each(&|r| r.router.observed.adverts_sent),
        )?;
        counter(
            e,
            "xvip_vrrp_router_adverts_received",
            "VRRP adverts for the router that passed every check and went to its election",
            each(&|r| r.router.observed.adverts_received),
        )?;
        counter(
            e,
            "xvip_vrrp_router_adverts_discarded",
            "VRRP packets the router discarded, by reason",
            rows.iter()
                .flat_map(|r| {
                    crate::vrrp::packet::Discard::ALL_NAMES.iter().chain(&crate::engine::DISCARD_REASONS).map(
                        |reason| {
                            let mut labels = r.labels.clone();
                            labels.push(("reason", reason.to_string()));
                            (labels, r.router.observed.discards.get(reason).copied().unwrap_or(0))
                        },
                    )
                })
                .collect(),
        )?;
        counter(
            e,
            "xvip_vrrp_router_announcements_sent",
            "Gratuitous ARPs (ipv4) or unsolicited Neighbor Advertisements (ipv6) the router sent for its addresses",
            each(&|r| r.router.observed.announcements),
        )?;
        let Some(dataplane) = &self.sample.dataplane else { return Ok(()) };
        counter(
            e,
            "xvip_router_frames",
            "Frames to the router's addresses (and ARP requests or Neighbor Solicitations for them), by what the XDP \
             program did and why",
            rows.iter()
                .flat_map(|r| {
                    Reason::ALL.iter().map(|reason| {
                        let mut labels = r.labels.clone();
                        labels.push(("reason", reason.name().to_string()));
                        (labels, dataplane.counters.router_reason(r.router.index, *reason))
                    })
                })
                .collect(),
        )
    }

    fn encode_backends(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let rows = self.backends();
        let each = |f: &dyn Fn(&BackendRow) -> Option<u64>| -> Vec<(Labels, u64)> {
            rows.iter().filter_map(|r| Some((r.labels.clone(), f(r)?))).collect()
        };
        gauge(e, "xvip_backend_up", "1 while the backend passes its health checks", each(&|r| Some(r.healthy.into())))?;
        gauge(e, "xvip_backend_weight", "The backend's weight (0 = draining)", each(&|r| Some(r.weight.into())))?;
        gauge(
            e,
            "xvip_backend_draining",
            "1 while the backend drains (weight 0): no new flows, established ones kept",
            each(&|r| Some((r.weight == 0).into())),
        )?;
        counter(
            e,
            "xvip_backend_packets",
            "Packets the data plane sent to the backend (client to backend direction)",
            each(&|r| r.traffic.map(|t| t.packets)),
        )?;
        counter(
            e,
            "xvip_backend_bytes",
            "Bytes of the frames the data plane sent to the backend (client to backend direction)",
            each(&|r| r.traffic.map(|t| t.bytes)),
        )?;
        counter(
            e,
            "xvip_backend_new_flows",
            "Flows this node assigned to the backend (a SYN, a new UDP flow, or a flow without an entry here)",
            each(&|r| r.traffic.map(|t| t.new_flows)),
        )?;
        gauge(
            e,
            "xvip_backend_flows",
            "Open flows to the backend in the connection table, from the last table scan",
            each(&|r| r.flows),
        )?;
        family(
            e,
            "xvip_health_check_duration_seconds",
            "Time of each passed health check",
            MetricType::Histogram,
            rows.iter().filter_map(|r| Some((r.labels.clone(), self.probes.get(&r.key)?.latency.clone()))).collect(),
        )?;
        family(
            e,
            "xvip_health_checks",
            "Health checks done, by result (passed, failed)",
            MetricType::Counter,
            rows.iter()
                .filter_map(|r| self.probes.get(&r.key).map(|p| (r, p)))
                .flat_map(|(r, p)| {
                    [("passed", &p.ok), ("failed", &p.failed)].map(|(result, c)| {
                        let mut labels = r.labels.clone();
                        labels.push(("result", result.to_string()));
                        (labels, c.clone())
                    })
                })
                .collect(),
        )?;
        let services = self.services();
        let each = |f: fn(&lb_common::Traffic) -> u64| -> Vec<(Labels, u64)> {
            services.iter().map(|(l, t)| (l.clone(), f(t))).collect()
        };
        counter(
            e,
            "xvip_service_packets",
            "Packets the data plane sent to the service's backends",
            each(|t| t.packets),
        )?;
        counter(e, "xvip_service_bytes", "Bytes the data plane sent to the service's backends", each(|t| t.bytes))?;
        counter(
            e,
            "xvip_service_new_flows",
            "Flows this node assigned to the service's backends",
            each(|t| t.new_flows),
        )
    }

    fn encode_dataplane(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let Some(dataplane) = &self.sample.dataplane else { return Ok(()) };
        counter(
            e,
            "xvip_dataplane_frames",
            "Frames the XDP program handled, by what it did and why (see docs/metrics.md for each reason)",
            Reason::ALL
                .iter()
                .map(|r| (vec![("reason", r.name().to_string())], dataplane.counters.reason(*r)))
                .collect(),
        )?;
        counter(
            e,
            "xvip_instance_frames",
            "Frames to the instance's addresses (and ARP requests for them), by what the XDP program did and why",
            self.per_instance(|i| {
                Reason::ALL
                    .iter()
                    .map(|r| {
                        let mut labels = Self::instance_labels(i);
                        labels.push(("reason", r.name().to_string()));
                        let n = i.view.routers().map(|router| dataplane.counters.router_reason(router.index, *r)).sum();
                        (labels, n)
                    })
                    .collect()
            }),
        )?;
        let Some((scan, took)) = &dataplane.tables else { return Ok(()) };
        let maps = [("conntrack", scan.conntrack_entries), ("nat", scan.nat_entries)];
        gauge(
            e,
            "xvip_dataplane_map_entries",
            "Entries in the connection table and the NAT table, from the last table scan",
            maps.iter().map(|(m, n)| (vec![("map", m.to_string())], *n)).collect(),
        )?;
        gauge(
            e,
            "xvip_dataplane_map_capacity",
            "Size of the connection table and the NAT table (conntrack_entries); when full, the least recently used \
             entry is evicted",
            maps.iter().map(|(m, _)| (vec![("map", m.to_string())], scan.capacity)).collect(),
        )?;
        gauge(
            e,
            "xvip_dataplane_scan_duration_seconds",
            "How long the last table scan took on the data plane thread",
            vec![(Vec::new(), took.as_secs_f64())],
        )
    }
}

impl Collector for Page {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        gauge(
            &mut e,
            "xvip_build_info",
            "The running xvip's version (always 1)",
            vec![(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1i64)],
        )?;
        gauge(
            &mut e,
            "xvip_metrics_sample_timestamp_seconds",
            "When the numbers on this page were sampled (a page that stops moving means a stuck daemon)",
            vec![(Vec::new(), self.sample.unix_time)],
        )?;
        self.encode_instances(&mut e)?;
        self.encode_backends(&mut e)?;
        self.encode_dataplane(&mut e)
    }
}

#[cfg(test)]
mod tests;
