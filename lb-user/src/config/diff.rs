//! What a SIGHUP reload changes, and what it cannot change without a restart. This is the one place that says
//! which keys a reload may change: the agent applies a [`ReloadPlan`] as it is and refuses a [`RestartNeeded`].

use std::fmt;

use super::{Config, Service};

/// The difference between the running config and a new one that can be applied in place.
///
/// Services are matched by name: a renamed service is one removed and one added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Services only in the new config, in its order.
    pub services_added: Vec<String>,
    /// Services only in the old config, in its order.
    pub services_removed: Vec<String>,
    /// Services in both whose port, protocol, forwarding or backends differ: the data plane entry is rewritten.
    pub services_changed: Vec<String>,
    /// Services in both whose `[service.health]` differs: their checkers restart (a service can be in both lists).
    pub health_changed: Vec<String>,
    /// Changed `[vrrp]` keys; each of them applies in place (`priority`, `checksum`, the GARP settings,
    /// `backend_loss_penalty`).
    pub vrrp_changed: Vec<&'static str>,
    /// `vip.hostname` changed (the default TLS server name of https checks).
    pub hostname_changed: bool,
}

impl ReloadPlan {
    /// True when the new config is the same as the old one in every way that matters.
    pub fn is_empty(&self) -> bool {
        *self == ReloadPlan::default()
    }
}

impl fmt::Display for ReloadPlan {
    /// One line for the log: `services added: web; vrrp changed: priority`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing changed");
        }
        let mut parts = Vec::new();
        for (label, names) in [
            ("services added", &self.services_added),
            ("services removed", &self.services_removed),
            ("services changed", &self.services_changed),
            ("health checks changed", &self.health_changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{label}: {}", names.join(", ")));
            }
        }
        if !self.vrrp_changed.is_empty() {
            parts.push(format!("vrrp changed: {}", self.vrrp_changed.join(", ")));
        }
        if self.hostname_changed {
            parts.push("vip.hostname changed".to_owned());
        }
        f.write_str(&parts.join("; "))
    }
}

/// A reload that changes keys fixed while the daemon runs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} changed, which needs a restart; the running config was kept (reload applies services, health checks and \
     the [vrrp] keys priority, checksum, garp_*, backend_loss_penalty)",
    keys.join(", ")
)]
pub struct RestartNeeded {
    /// The keys, by their path in the file (`vrrp.advert_interval_ms`).
    pub keys: Vec<&'static str>,
}

/// Compares the running config with a new one for a reload.
///
/// # Errors
///
/// [`RestartNeeded`] when a key changed that is fixed while the daemon runs: the interface and XDP mode (the
/// program is attached there), `conntrack_entries` (map sizes are fixed at load), the VIP and VRID (other nodes
/// identify the group by them, and the flow hash seed is derived from them), the VRRP source and peers (the sockets
/// are bound to them), the advert interval (the data plane's dead-man switch and the peers' timers are derived
/// from it), preemption and its delay (the election in progress was started with them), the control socket, and
/// the metrics listener (`[metrics]` added, removed or moved: it is bound at start, before anything else, so a
/// port that is taken stops the start rather than a reload half way).
pub fn diff(old: &Config, new: &Config) -> Result<ReloadPlan, RestartNeeded> {
    let mut fixed = Vec::new();
    let mut check = |key: &'static str, changed: bool| {
        if changed {
            fixed.push(key);
        }
    };
    check("interface", old.interface != new.interface);
    check("xdp_mode", old.xdp_mode != new.xdp_mode);
    check("conntrack_entries", old.conntrack_entries != new.conntrack_entries);
    check("vip.address", old.vip.address != new.vip.address);
    check("vrrp.vrid", old.vrrp.vrid != new.vrrp.vrid);
    check("vrrp.source_address", old.vrrp.source_address != new.vrrp.source_address);
    check("vrrp.unicast_peers", old.vrrp.unicast_peers != new.vrrp.unicast_peers);
    check("vrrp.advert_interval_ms", old.vrrp.advert_interval_ms != new.vrrp.advert_interval_ms);
    check("vrrp.preempt", old.vrrp.preempt != new.vrrp.preempt);
    check("vrrp.preempt_delay_ms", old.vrrp.preempt_delay_ms != new.vrrp.preempt_delay_ms);
    check("control.socket", old.control.socket != new.control.socket);
    check("metrics.listen", old.metrics != new.metrics);
    if !fixed.is_empty() {
        return Err(RestartNeeded { keys: fixed });
    }

    let (o, n) = (&old.vrrp, &new.vrrp);
    let mut vrrp_changed = Vec::new();
    for (key, changed) in [
        ("priority", o.priority != n.priority),
        ("checksum", o.checksum != n.checksum),
        ("garp_count", o.garp_count != n.garp_count),
        ("garp_repeat_delay_ms", o.garp_repeat_delay_ms != n.garp_repeat_delay_ms),
        ("garp_refresh_ms", o.garp_refresh_ms != n.garp_refresh_ms),
        ("backend_loss_penalty", o.backend_loss_penalty != n.backend_loss_penalty),
    ] {
        if changed {
            vrrp_changed.push(key);
        }
    }

    let find = |services: &'_ [Service], name: &str| services.iter().position(|s| s.name == name);
    let mut plan =
        ReloadPlan { vrrp_changed, hostname_changed: old.vip.hostname != new.vip.hostname, ..Default::default() };
    for service in &old.services {
        if find(&new.services, &service.name).is_none() {
            plan.services_removed.push(service.name.clone());
        }
    }
    for service in &new.services {
        let Some(i) = find(&old.services, &service.name) else {
            plan.services_added.push(service.name.clone());
            continue;
        };
        let before = &old.services[i];
        if (before.port, before.protocol, before.forwarding, &before.backends)
            != (service.port, service.protocol, service.forwarding, &service.backends)
        {
            plan.services_changed.push(service.name.clone());
        }
        if before.health != service.health {
            plan.health_changed.push(service.name.clone());
        }
    }
    Ok(plan)
}
