//! The status report: the JSON of `xvip status --json` (documented for users in `docs/status.md`; a test checks it
//! names every field) and its table for people.
//!
//! The top-level fields describe the first instance (what a daemon with one VIP always showed), except
//! `counters.dataplane` (every frame the node saw) and `warnings` (every instance's); `instances` holds one
//! [`InstanceStatus`] per instance, the first one included.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// initialize | backup | active | fault
    pub role: String,
    pub vrid: u8,
    pub priority: u8,
    pub effective_priority: u8,
    pub vip: String,
    pub interface: String,
    pub xdp_mode: String,
    /// The node currently active, as far as this node knows.
    pub active_router: Option<String>,
    pub transitions: u64,
    pub role_since_unix_ms: u64,
    /// Why the role last changed (an extension of the contract).
    #[serde(default)]
    pub role_reason: String,
    pub services: Vec<ServiceStatus>,
    pub counters: CounterStatus,
    /// Things an operator should know about now, over every instance (an addition to the contract; empty when
    /// all is well).
    #[serde(default)]
    pub warnings: Vec<Warning>,
    /// Every instance, in config order (an addition to the contract; the first is the one the fields above show).
    #[serde(default)]
    pub instances: Vec<InstanceStatus>,
}

/// One VRRP instance: the top-level fields of [`Status`], for this instance, plus its name and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    /// Every address of the instance (all in its adverts); `vip` is the first.
    pub addresses: Vec<String>,
    pub role: String,
    pub vrid: u8,
    pub priority: u8,
    pub effective_priority: u8,
    pub vip: String,
    pub interface: String,
    pub xdp_mode: String,
    pub active_router: Option<String>,
    pub transitions: u64,
    pub role_since_unix_ms: u64,
    #[serde(default)]
    pub role_reason: String,
    pub services: Vec<ServiceStatus>,
    /// The instance's adverts and GARPs; `dataplane` and `arp_replies` count the frames to its addresses.
    pub counters: CounterStatus,
    #[serde(default)]
    pub warnings: Vec<Warning>,
    /// The instance's IPv6 router, when it has IPv6 addresses (an addition: VRRP runs one router per address
    /// family; the fields above are its IPv4 router's, or, for an instance with only IPv6 addresses, this one's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<RouterStatus>,
}

/// The election of one address family's router of an instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStatus {
    /// initialize | backup | active | fault
    pub role: String,
    /// This node's advert source (the interface's link-local address unless `source_address` is IPv6).
    pub source: String,
    pub active_router: Option<String>,
    pub transitions: u64,
    pub role_since_unix_ms: u64,
    pub role_reason: String,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub adverts_discarded: u64,
    /// The priority this router advertises now (the instance's, lowered by its penalty like the IPv4 router's).
    #[serde(default)]
    pub effective_priority: u8,
    /// Discarded adverts by reason.
    #[serde(default)]
    pub adverts_discarded_by_reason: BTreeMap<String, u64>,
    /// Unsolicited Neighbor Advertisements sent for its addresses (the IPv6 gratuitous ARPs).
    #[serde(default)]
    pub nas_sent: u64,
    /// What the XDP program did with frames to its addresses (and solicitations for them), by reason.
    #[serde(default)]
    pub dataplane: BTreeMap<String, u64>,
}

impl Status {
    /// The document for `instances` (in config order): the top level shows the first.
    pub fn of_instances(instances: Vec<InstanceStatus>) -> Status {
        let first = instances.first().cloned().unwrap_or_default();
        Status {
            role: first.role,
            vrid: first.vrid,
            priority: first.priority,
            effective_priority: first.effective_priority,
            vip: first.vip,
            interface: first.interface,
            xdp_mode: first.xdp_mode,
            active_router: first.active_router,
            transitions: first.transitions,
            role_since_unix_ms: first.role_since_unix_ms,
            role_reason: first.role_reason,
            services: first.services,
            counters: first.counters,
            warnings: instances.iter().flat_map(|i| i.warnings.iter().cloned()).collect(),
            instances,
        }
    }
}

/// Something wrong that the daemon cannot fix by itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// A stable key: `vrid_collision` (an advert with our VRID whose address list differs from ours).
    pub kind: String,
    /// For people: who, what, and what to do.
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub forwarding: String,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: String,
    pub port: u16,
    pub weight: u8,
    pub healthy: bool,
    pub packets: u64,
    pub bytes: u64,
    /// The backend's (or next hop's) MAC once resolved (an extension of the contract).
    #[serde(default)]
    pub mac: Option<String>,
    /// `weight = 0`: no new flows, established ones kept while healthy (an extension of the contract).
    #[serde(default)]
    pub draining: bool,
    /// Flows the data plane still sends to this backend, counted while some backend drains; `null` otherwise
    /// (an extension of the contract; see `DataPlane::flows_per_backend` for what counts).
    #[serde(default)]
    pub flows: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterStatus {
    pub arp_replies: u64,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub adverts_discarded: u64,
    /// Discarded adverts by reason (RFC 5798 §7.1 checks).
    #[serde(default)]
    pub adverts_discarded_by_reason: BTreeMap<String, u64>,
    /// What the XDP program did with frames, by reason (per-CPU counters summed).
    #[serde(default)]
    pub dataplane: BTreeMap<String, u64>,
    #[serde(default)]
    pub garps_sent: u64,
}

impl Status {
    /// Adds what the data plane counted: frames by reason (node-wide at the top, per router in each instance),
    /// ARP replies, traffic per backend. `routers` names each instance's routers (by instance name).
    pub fn add_counters(&mut self, counters: &crate::dataplane::Counters, routers: &BTreeMap<String, Vec<u32>>) {
        use lb_common::Reason;
        for instance in &mut self.instances {
            let mine = routers.get(&instance.name).map(Vec::as_slice).unwrap_or_default();
            let count = |r: Reason| mine.iter().map(|router| counters.router_reason(*router, r)).sum::<u64>();
            instance.counters.arp_replies = count(Reason::ArpReply);
            instance.counters.dataplane = Reason::ALL.iter().map(|r| (r.name().to_string(), count(*r))).collect();
            if let Some(v6) = &mut instance.ipv6 {
                // `router_slot` puts the family in the index's low bit.
                let ipv6 = mine.iter().filter(|r| **r % 2 == lb_common::FAMILY_IPV6);
                v6.dataplane = Reason::ALL
                    .iter()
                    .map(|r| {
                        (r.name().to_string(), ipv6.clone().map(|router| counters.router_reason(*router, *r)).sum())
                    })
                    .collect();
            }
            for svc in &mut instance.services {
                let id = crate::dataplane::ServiceId::new(&instance.name, &svc.name);
                add_traffic(svc, &id, counters);
            }
        }
        if let Some(first) = self.instances.first() {
            self.counters.arp_replies = first.counters.arp_replies;
            self.services = first.services.clone();
        }
        self.counters.dataplane = Reason::ALL.iter().map(|r| (r.name().to_string(), counters.reason(*r))).collect();
    }

    /// Sets the node's XDP mode (what only the data plane knows), at the top and in every instance.
    pub fn set_xdp_mode(&mut self, mode: &str) {
        self.xdp_mode = mode.to_owned();
        for instance in &mut self.instances {
            instance.xdp_mode = mode.to_owned();
        }
    }

    /// The instances, also from the JSON of a daemon that predates them (its top level is its one instance).
    fn instance_list(&self) -> Vec<InstanceStatus> {
        if !self.instances.is_empty() {
            return self.instances.clone();
        }
        vec![InstanceStatus {
            name: String::new(),
            addresses: vec![self.vip.clone()],
            role: self.role.clone(),
            vrid: self.vrid,
            priority: self.priority,
            effective_priority: self.effective_priority,
            vip: self.vip.clone(),
            interface: self.interface.clone(),
            xdp_mode: self.xdp_mode.clone(),
            active_router: self.active_router.clone(),
            transitions: self.transitions,
            role_since_unix_ms: self.role_since_unix_ms,
            role_reason: self.role_reason.clone(),
            services: self.services.clone(),
            counters: self.counters.clone(),
            warnings: Vec::new(),
            ipv6: None,
        }]
    }

    /// A readable table for `xvip status`: the warnings, each instance (named when there are several), then what
    /// the data plane did with every frame.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for w in &self.warnings {
            let _ = writeln!(s, "WARNING     {}: {}", w.kind, w.message);
        }
        let instances = self.instance_list();
        let several = instances.len() > 1;
        for (i, instance) in instances.iter().enumerate() {
            if several {
                let _ = writeln!(s, "{}instance    {}", if i > 0 { "\n" } else { "" }, instance.name);
            }
            render_instance(&mut s, instance, &self.xdp_mode);
        }
        let noteworthy: Vec<String> =
            self.counters.dataplane.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
        if !noteworthy.is_empty() {
            let _ = writeln!(s, "\ndata plane  {}", noteworthy.join(", "));
        }
        s
    }
}

/// One instance's part of the table.
fn render_instance(s: &mut String, i: &InstanceStatus, xdp_mode: &str) {
    let active = i.active_router.as_deref().unwrap_or("unknown");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let _ = writeln!(
        s,
        "role        {} for {}, {} transitions",
        i.role,
        human_duration(now_ms.saturating_sub(i.role_since_unix_ms)),
        i.transitions
    );
    if !i.role_reason.is_empty() {
        let _ = writeln!(s, "why         {}", i.role_reason);
    }
    let _ = writeln!(s, "vip         {} on {} (xdp {xdp_mode})", i.addresses.join(", "), i.interface);
    let _ = writeln!(
        s,
        "vrrp        vrid {}, priority {} (effective {}), active router {active}",
        i.vrid, i.priority, i.effective_priority
    );
    let c = &i.counters;
    let _ = writeln!(
        s,
        "adverts     sent {}, received {}, discarded {}; arp replies {}, garps {}",
        c.adverts_sent, c.adverts_received, c.adverts_discarded, c.arp_replies, c.garps_sent
    );
    let discards: Vec<String> = c.adverts_discarded_by_reason.iter().map(|(k, n)| format!("{k} {n}")).collect();
    if !discards.is_empty() {
        let _ = writeln!(s, "discards    {}", discards.join(", "));
    }
    if let Some(v6) = &i.ipv6 {
        let _ = writeln!(
            s,
            "ipv6        {} for {}, from {}, active router {}; adverts sent {}, received {}, discarded {}",
            v6.role,
            human_duration(now_ms.saturating_sub(v6.role_since_unix_ms)),
            v6.source,
            v6.active_router.as_deref().unwrap_or("unknown"),
            v6.adverts_sent,
            v6.adverts_received,
            v6.adverts_discarded
        );
        let na_replies = v6.dataplane.get(lb_common::Reason::NaReply.name()).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "ipv6        priority {}, {} transitions; na replies {na_replies}, unsolicited nas {}",
            v6.effective_priority, v6.transitions, v6.nas_sent
        );
        let discards: Vec<String> = v6.adverts_discarded_by_reason.iter().map(|(k, n)| format!("{k} {n}")).collect();
        if !discards.is_empty() {
            let _ = writeln!(s, "ipv6        discards {}", discards.join(", "));
        }
    }
    for svc in &i.services {
        let healthy = svc.backends.iter().filter(|b| b.healthy).count();
        let _ = writeln!(
            s,
            "\nservice {} {}/{} ({}), {healthy}/{} backends healthy",
            svc.name,
            svc.port,
            svc.protocol,
            svc.forwarding,
            svc.backends.len()
        );
        let _ =
            writeln!(s, "  {:<22} {:>6} {:<9} {:>12} {:>14}  state", "backend", "weight", "health", "packets", "bytes");
        for b in &svc.backends {
            let health = if b.healthy { "up" } else { "down" };
            let state = match (b.draining, b.flows) {
                (true, Some(flows)) => format!("draining, {flows} flows left"),
                (true, None) => "draining".to_string(),
                (false, _) => String::new(),
            };
            let line = format!(
                "  {:<22} {:>6} {:<9} {:>12} {:>14}  {state}",
                endpoint(&b.address, b.port),
                b.weight,
                health,
                b.packets,
                b.bytes
            );
            let _ = writeln!(s, "{}", line.trim_end());
        }
    }
}

/// Traffic and open flows of each backend of one service.
fn add_traffic(svc: &mut ServiceStatus, id: &crate::dataplane::ServiceId, counters: &crate::dataplane::Counters) {
    for b in &mut svc.backends {
        let Ok(address) = b.address.parse() else { continue };
        let key = (id.clone(), address, b.port);
        let traffic = counters.backends.get(&key).copied().unwrap_or_default();
        b.packets = traffic.packets;
        b.bytes = traffic.bytes;
        if b.draining
            && let Some(flows) = &counters.flows
        {
            b.flows = Some(flows.get(&key).copied().unwrap_or_default());
        }
    }
}

/// `950 ms`, `12.3 s`, `5 min 3 s`, `2 h 5 min`.
fn human_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// `address:port`, with an IPv6 address in brackets (`[fd00::21]:8080`).
fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(super::human_duration(950), "950 ms");
        assert_eq!(super::human_duration(12_345), "12.3 s");
        assert_eq!(super::human_duration(303_000), "5 min 3 s");
        assert_eq!(super::human_duration(7_500_000), "2 h 5 min");
    }

    use super::*;

    #[test]
    fn json_has_every_field_of_the_contract() {
        let status = Status {
            role: "active".into(),
            vrid: 51,
            priority: 150,
            effective_priority: 150,
            vip: "10.10.74.250".into(),
            interface: "eth0".into(),
            xdp_mode: "native".into(),
            active_router: Some("10.0.0.5".into()),
            transitions: 3,
            role_since_unix_ms: 1_764_150_000_000,
            services: vec![ServiceStatus {
                name: "kube-apiserver".into(),
                port: 443,
                protocol: "tcp".into(),
                forwarding: "nat".into(),
                backends: vec![BackendStatus {
                    address: "10.0.0.11".into(),
                    port: 6443,
                    weight: 1,
                    healthy: true,
                    ..BackendStatus::default()
                }],
            }],
            ..Status::default()
        };
        let v: serde_json::Value = serde_json::to_value(&status).expect("json");
        for key in [
            "role",
            "vrid",
            "priority",
            "effective_priority",
            "vip",
            "interface",
            "xdp_mode",
            "active_router",
            "transitions",
            "role_since_unix_ms",
            "services",
            "counters",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let b = &v["services"][0]["backends"][0];
        for key in ["address", "port", "weight", "healthy", "packets", "bytes"] {
            assert!(b.get(key).is_some(), "missing backend {key}");
        }
        for key in ["arp_replies", "adverts_sent", "adverts_received", "adverts_discarded"] {
            assert!(v["counters"].get(key).is_some(), "missing counter {key}");
        }
        assert_eq!(v["active_router"], "10.0.0.5");
        assert_eq!(v["warnings"], serde_json::json!([]), "the second-wave field, empty when all is well");
        let back: Status = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, status);
    }

    /// Every key path of a JSON value: `role`, `services[].backends[].flows`, `counters.dataplane`.
    fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    out.push(path.clone());
                    // Maps keyed by reason name are documented as a whole.
                    if !matches!(key.as_str(), "dataplane" | "adverts_discarded_by_reason") {
                        key_paths(v, &path, out);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    key_paths(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_status_field_is_documented() {
        let service = ServiceStatus {
            backends: vec![BackendStatus {
                mac: Some("02:00:00:00:00:01".into()),
                flows: Some(1),
                ..Default::default()
            }],
            ..Default::default()
        };
        let instance = InstanceStatus {
            active_router: Some("10.0.0.5".into()),
            services: vec![service],
            warnings: vec![Warning::default()],
            ipv6: Some(RouterStatus { active_router: Some("fe80::5".into()), ..Default::default() }),
            ..Default::default()
        };
        let status = Status::of_instances(vec![instance]);
        let mut paths = Vec::new();
        key_paths(&serde_json::to_value(&status).expect("json"), "", &mut paths);
        assert!(paths.iter().any(|p| p == "instances[].services[].backends[].flows"), "{paths:?}");
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/status.md")).expect("docs/status.md");
        let documented = |p: &str| doc.contains(&format!("| `{p}` |"));
        // An instance has the top level's fields (documented once, there) plus its own.
        let missing: Vec<&String> = paths
            .iter()
            .filter(|p| !documented(p) && !p.strip_prefix("instances[].").is_some_and(&documented))
            .collect();
        assert!(missing.is_empty(), "docs/status.md does not describe {missing:?}");
    }

    #[test]
    fn the_top_level_is_the_first_instance_and_warnings_are_everyones() {
        let instance = |name: &str, role: &str, warning: Option<&str>| InstanceStatus {
            name: name.into(),
            addresses: vec![format!("10.0.0.{}", name.len()), "10.0.0.99".into()],
            role: role.into(),
            vip: format!("10.0.0.{}", name.len()),
            vrid: u8::try_from(name.len()).unwrap_or_default(),
            warnings: warning
                .map(|m| Warning { kind: "vrid_collision".into(), message: m.into() })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let mut status =
            Status::of_instances(vec![instance("api", "active", None), instance("ingress", "backup", Some("w"))]);
        assert_eq!((status.role.as_str(), status.vip.as_str(), status.vrid), ("active", "10.0.0.3", 3));
        assert_eq!(status.warnings.len(), 1, "a warning of any instance shows at the top");
        assert_eq!(status.instances[1].role, "backup");
        status.set_xdp_mode("native");
        assert!(status.instances.iter().all(|i| i.xdp_mode == "native"));
        let v = serde_json::to_value(&status).expect("json");
        assert_eq!(v["instances"][1]["name"], "ingress");
        assert_eq!(v["instances"][0]["addresses"], serde_json::json!(["10.0.0.3", "10.0.0.99"]));
        let table = status.render();
        assert!(table.starts_with("WARNING     vrid_collision: w\ninstance    api\nrole        active"), "{table}");
        assert!(table.contains("\ninstance    ingress\nrole        backup"), "{table}");
        assert!(table.contains("vip         10.0.0.3, 10.0.0.99 on  (xdp native)"), "{table}");
    }

    #[test]
    fn counters_are_split_by_router_and_the_top_level_keeps_every_frame() {
        use crate::dataplane::{Counters, ServiceId};
        use lb_common::Reason;
        let mut counters = Counters { reasons: vec![0; lb_common::REASON_COUNT as usize], ..Counters::default() };
        counters.reasons[Reason::ArpReply as usize] = 7;
        counters.reasons[Reason::PassNotVip as usize] = 100;
        let mut router = |r: u32, arp: u64| {
            let mut by_reason = vec![0; lb_common::REASON_COUNT as usize];
            by_reason[Reason::ArpReply as usize] = arp;
            counters.routers.insert(r, by_reason);
        };
        router(0, 5);
        router(2, 2);
        let backend = BackendStatus { address: "10.0.0.21".into(), port: 80, ..Default::default() };
        let svc = ServiceStatus { name: "web".into(), backends: vec![backend], ..Default::default() };
        let instance =
            |name: &str| InstanceStatus { name: name.into(), services: vec![svc.clone()], ..Default::default() };
        counters.backends.insert(
            (ServiceId::new("b", "web"), "10.0.0.21".parse().expect("address"), 80),
            lb_common::Traffic { packets: 3, bytes: 300, new_flows: 0 },
        );
        let mut status = Status::of_instances(vec![instance("a"), instance("b")]);
        let routers = [("a".to_owned(), vec![0]), ("b".to_owned(), vec![2])].into();
        status.add_counters(&counters, &routers);
        assert_eq!(status.counters.arp_replies, 5, "the first instance's");
        assert_eq!(status.counters.dataplane["pass_not_vip"], 100, "the node's frames, every one");
        assert_eq!(status.instances[1].counters.arp_replies, 2);
        assert_eq!(status.instances[1].counters.dataplane["arp_replies"], 2);
        assert_eq!(status.instances[1].counters.dataplane["pass_not_vip"], 0, "no instance's");
        assert_eq!(status.instances[1].services[0].backends[0].packets, 3, "b's web is not a's web");
        assert_eq!(status.instances[0].services[0].backends[0].packets, 0);
    }

    #[test]
    fn backend_endpoints_bracket_ipv6_addresses() {
        assert_eq!(super::endpoint("10.0.0.21", 6443), "10.0.0.21:6443");
        assert_eq!(super::endpoint("fd00:77::21", 8080), "[fd00:77::21]:8080");
    }

    #[test]
    fn table_names_role_vip_and_each_backend() {
        let status = Status {
            role: "backup".into(),
            vip: "10.0.0.250".into(),
            services: vec![ServiceStatus {
                name: "api".into(),
                backends: vec![BackendStatus { address: "10.0.0.11".into(), port: 6443, ..Default::default() }],
                ..Default::default()
            }],
            ..Status::default()
        };
        let t = status.render();
        assert!(t.contains("role        backup"), "{t}");
        assert!(t.contains("10.0.0.250"), "{t}");
        assert!(t.contains("10.0.0.11:6443") && t.contains("down"), "{t}");
        assert!(!t.contains("draining"), "{t}");
        assert!(!t.contains("WARNING"), "{t}");
    }

    #[test]
    fn the_table_shows_an_instances_ipv6_router() {
        let ipv6 = RouterStatus {
            role: "active".into(),
            source: "fe80::5".into(),
            active_router: Some("fe80::5".into()),
            adverts_sent: 7,
            ..Default::default()
        };
        let status = Status::of_instances(vec![InstanceStatus { ipv6: Some(ipv6), ..Default::default() }]);
        let t = status.render();
        assert!(t.contains("ipv6        active for"), "{t}");
        assert!(t.contains("from fe80::5, active router fe80::5; adverts sent 7"), "{t}");
        let plain = Status::of_instances(vec![InstanceStatus::default()]).render();
        assert!(!plain.contains("ipv6"), "{plain}");
    }

    #[test]
    fn the_ipv6_router_gets_the_counters_of_its_own_router() {
        use crate::dataplane::Counters;
        use lb_common::Reason;
        let mut counters = Counters { reasons: vec![0; lb_common::REASON_COUNT as usize], ..Counters::default() };
        for (router, reason, n) in [(0, Reason::ArpReply, 5), (1, Reason::NaReply, 3), (1, Reason::DropNd, 2)] {
            counters.routers.entry(router).or_insert_with(|| vec![0; lb_common::REASON_COUNT as usize])
                [reason as usize] = n;
        }
        let ipv6 = RouterStatus { role: "active".into(), effective_priority: 150, nas_sent: 10, ..Default::default() };
        let mut status = Status::of_instances(vec![InstanceStatus { ipv6: Some(ipv6), ..Default::default() }]);
        status.add_counters(&counters, &[(String::new(), vec![0, 1])].into());
        let v6 = status.instances[0].ipv6.clone().expect("ipv6");
        assert_eq!((v6.dataplane["na_replies"], v6.dataplane["drop_nd"], v6.dataplane["arp_replies"]), (3, 2, 0));
        assert_eq!(status.instances[0].counters.dataplane["na_replies"], 3, "the instance's counts both routers");
        assert_eq!(status.instances[0].counters.arp_replies, 5);
        let t = status.render();
        assert!(t.contains("ipv6        priority 150, 0 transitions; na replies 3, unsolicited nas 10"), "{t}");
    }

    #[test]
    fn a_draining_backend_shows_its_remaining_flows() {
        let backend = |last: u8, draining: bool, flows: Option<u64>| BackendStatus {
            address: format!("10.0.0.{last}"),
            port: 6443,
            weight: u8::from(!draining),
            healthy: true,
            draining,
            flows,
            ..Default::default()
        };
        let status = Status {
            services: vec![ServiceStatus {
                name: "api".into(),
                backends: vec![backend(11, true, Some(3)), backend(12, false, Some(5))],
                ..Default::default()
            }],
            ..Status::default()
        };
        let t = status.render();
        let line = |address: &str| t.lines().find(|l| l.contains(address)).unwrap_or_default().to_string();
        assert!(line("10.0.0.11:6443").ends_with("draining, 3 flows left"), "{t}");
        assert!(!line("10.0.0.12:6443").contains("flows"), "not draining: no state shown: {t}");
        let v = serde_json::to_value(&status).expect("json");
        assert_eq!(v["services"][0]["backends"][0]["draining"], true);
        assert_eq!(v["services"][0]["backends"][0]["flows"], 3);
        assert_eq!(v["services"][0]["backends"][1]["draining"], false);
    }

    #[test]
    fn warnings_come_first_in_the_table_and_round_trip_in_json() {
        let status = Status {
            role: "active".into(),
            warnings: vec![Warning { kind: "vrid_collision".into(), message: "adverts from 10.0.0.9 ...".into() }],
            ..Status::default()
        };
        let t = status.render();
        assert!(t.starts_with("WARNING     vrid_collision: adverts from 10.0.0.9"), "{t}");
        let v = serde_json::to_value(&status).expect("json");
        assert_eq!(v["warnings"][0]["kind"], "vrid_collision");
        assert_eq!(v["warnings"][0]["message"], "adverts from 10.0.0.9 ...");
        let old: Status = serde_json::from_str(
            r#"{"role":"backup","vrid":1,"priority":1,"effective_priority":1,
            "vip":"","interface":"","xdp_mode":"","active_router":null,"transitions":0,"role_since_unix_ms":0,
            "services":[],"counters":{"arp_replies":0,"adverts_sent":0,"adverts_received":0,"adverts_discarded":0}}"#,
        )
        .expect("a status without warnings (an older daemon) still reads");
        assert!(old.warnings.is_empty());
    }
}
