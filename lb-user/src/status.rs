//! The status report: the JSON of `xvip status --json` (documented for users in `docs/status.md`; a test checks it
//! names every field) and its table for people.
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
    /// Things an operator should know about now (an addition to the contract; empty when all is well).
    #[serde(default)]
    pub warnings: Vec<Warning>,
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
    /// Adds what the data plane counted: frames by reason, ARP replies, traffic per backend.
    pub fn add_counters(&mut self, counters: &crate::dataplane::Counters) {
        use lb_common::Reason;
        self.counters.arp_replies = counters.reason(Reason::ArpReply);
        self.counters.dataplane = Reason::ALL.iter().map(|r| (r.name().to_string(), counters.reason(*r))).collect();
        for svc in &mut self.services {
            for b in &mut svc.backends {
                let Ok(address) = b.address.parse() else { continue };
                let traffic = counters.backends.get(&(svc.name.clone(), address, b.port)).copied().unwrap_or_default();
                b.packets = traffic.packets;
                b.bytes = traffic.bytes;
                if b.draining
                    && let Some(flows) = &counters.flows
                {
                    b.flows = Some(flows.get(&(svc.name.clone(), address, b.port)).copied().unwrap_or_default());
                }
            }
        }
    }

    /// A readable table for `xvip status`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for w in &self.warnings {
            let _ = writeln!(s, "WARNING     {}: {}", w.kind, w.message);
        }
        let active = self.active_router.as_deref().unwrap_or("unknown");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let _ = writeln!(
            s,
            "role        {} for {}, {} transitions",
            self.role,
            human_duration(now_ms.saturating_sub(self.role_since_unix_ms)),
            self.transitions
        );
        if !self.role_reason.is_empty() {
            let _ = writeln!(s, "why         {}", self.role_reason);
        }
        let _ = writeln!(s, "vip         {} on {} (xdp {})", self.vip, self.interface, self.xdp_mode);
        let _ = writeln!(
            s,
            "vrrp        vrid {}, priority {} (effective {}), active router {active}",
            self.vrid, self.priority, self.effective_priority
        );
        let c = &self.counters;
        let _ = writeln!(
            s,
            "adverts     sent {}, received {}, discarded {}; arp replies {}, garps {}",
            c.adverts_sent, c.adverts_received, c.adverts_discarded, c.arp_replies, c.garps_sent
        );
        for svc in &self.services {
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
            let _ = writeln!(
                s,
                "  {:<22} {:>6} {:<9} {:>12} {:>14}  state",
                "backend", "weight", "health", "packets", "bytes"
            );
            for b in &svc.backends {
                let health = if b.healthy { "up" } else { "down" };
                let state = match (b.draining, b.flows) {
                    (true, Some(flows)) => format!("draining, {flows} flows left"),
                    (true, None) => "draining".to_string(),
                    (false, _) => String::new(),
                };
                let line = format!(
                    "  {:<22} {:>6} {:<9} {:>12} {:>14}  {state}",
                    format!("{}:{}", b.address, b.port),
                    b.weight,
                    health,
                    b.packets,
                    b.bytes
                );
                let _ = writeln!(s, "{}", line.trim_end());
            }
        }
        let noteworthy: Vec<String> =
            c.dataplane.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
        if !noteworthy.is_empty() {
            let _ = writeln!(s, "\ndata plane  {}", noteworthy.join(", "));
        }
        let discards: Vec<String> = c.adverts_discarded_by_reason.iter().map(|(k, n)| format!("{k} {n}")).collect();
        if !discards.is_empty() {
            let _ = writeln!(s, "discards    {}", discards.join(", "));
        }
        s
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
        let status = Status {
            active_router: Some("10.0.0.5".into()),
            services: vec![ServiceStatus {
                backends: vec![BackendStatus {
                    mac: Some("02:00:00:00:00:01".into()),
                    flows: Some(1),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Status::default()
        };
        let mut paths = Vec::new();
        key_paths(&serde_json::to_value(&status).expect("json"), "", &mut paths);
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/status.md")).expect("docs/status.md");
        let missing: Vec<&String> = paths.iter().filter(|p| !doc.contains(&format!("| `{p}` |"))).collect();
        assert!(missing.is_empty(), "docs/status.md does not describe {missing:?}");
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
