//! What a SIGHUP reload changes, and what it cannot change without a restart. This is the one place that says
//! which keys a reload may change: the agent applies a [`ReloadPlan`] as it is and refuses a [`RestartNeeded`].
//!
//! Instances are matched by name. An instance only in the new config is added, one only in the old config removed;
//! one whose identity changed (its addresses, VRID, interface, advert source or peers, advert interval, preemption)
//! is *replaced*: it gives up its addresses as on a stop and starts again as a backup, while every other instance
//! and its flows carry on. Everything else of an instance (services, health checks, priority, checksum, GARP
//! settings, penalty, hostname) changes in place.

use std::fmt;

use super::{Config, Instance, Service};

/// The difference between the running config and a new one that can be applied in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Instances only in the new config, in its order.
    pub instances_added: Vec<String>,
    /// Instances only in the old config, in its order.
    pub instances_removed: Vec<String>,
    /// Instances in both whose identity changed, with the keys that did: stopped and started again.
    pub instances_replaced: Vec<(String, Vec<&'static str>)>,
    /// Instances in both that change in place (only those with a change).
    pub instances_changed: Vec<InstancePlan>,
}

/// What changes in place in one instance. Services are matched by name: a renamed service is one removed and one
/// added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstancePlan {
    pub name: String,
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

impl InstancePlan {
    fn is_empty(&self) -> bool {
        *self == InstancePlan { name: self.name.clone(), ..InstancePlan::default() }
    }
}

impl ReloadPlan {
    /// True when the new config is the same as the old one in every way that matters.
    pub fn is_empty(&self) -> bool {
        *self == ReloadPlan::default()
    }

    /// The in-place changes of instance `name`, if it has any.
    pub fn changed(&self, name: &str) -> Option<&InstancePlan> {
        self.instances_changed.iter().find(|p| p.name == name)
    }

    /// Whether instance `name` is replaced.
    pub fn replaced(&self, name: &str) -> bool {
        self.instances_replaced.iter().any(|(n, _)| n == name)
    }
}

impl fmt::Display for InstancePlan {
    /// `services added: web; vrrp changed: priority`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

impl fmt::Display for ReloadPlan {
    /// One line for the log: `instances added: web; instance api replaced (vrrp.vrid changed); instance default:
    /// services added: web; vrrp changed: priority`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing changed");
        }
        let mut parts = Vec::new();
        if !self.instances_added.is_empty() {
            parts.push(format!("instances added: {}", self.instances_added.join(", ")));
        }
        if !self.instances_removed.is_empty() {
            parts.push(format!("instances removed: {}", self.instances_removed.join(", ")));
        }
        for (name, keys) in &self.instances_replaced {
            parts.push(format!("instance {name} replaced ({} changed)", keys.join(", ")));
        }
        for plan in &self.instances_changed {
            parts.push(format!("instance {}: {plan}", plan.name));
        }
        f.write_str(&parts.join("; "))
    }
}

/// A reload that changes keys fixed while the daemon runs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} changed, which needs a restart; the running config was kept (a reload adds, removes and replaces \
     instances, and applies services, health checks and the [vrrp] keys priority, checksum, garp_*, \
     backend_loss_penalty in place)",
    keys.join(", ")
)]
pub struct RestartNeeded {
    /// The keys, by their path in the file (`conntrack_entries`).
    pub keys: Vec<&'static str>,
}

/// Compares the running config with a new one for a reload.
///
/// # Errors
/// [`RestartNeeded`] when a key changed that is fixed while the daemon runs: the top-level interface and the XDP
/// mode (the program is attached there), `conntrack_entries` (map sizes are fixed at load), `local_clients` (the
/// socket load balancer is attached at start), the control socket,
/// and the metrics listener (`[metrics]` added, removed or moved: it is bound at start, before anything else, so a
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
    check("local_clients", old.local_clients != new.local_clients);
    check("control.socket", old.control.socket != new.control.socket);
    check("metrics.listen", old.metrics != new.metrics);
    if !fixed.is_empty() {
        return Err(RestartNeeded { keys: fixed });
    }

    let mut plan = ReloadPlan::default();
    for instance in &old.instances {
        if new.instance(&instance.name).is_none() {
            plan.instances_removed.push(instance.name.clone());
        }
    }
    for instance in &new.instances {
        let Some(before) = old.instance(&instance.name) else {
            plan.instances_added.push(instance.name.clone());
            continue;
        };
        let identity = identity_changes(before, instance);
        if !identity.is_empty() {
            plan.instances_replaced.push((instance.name.clone(), identity));
            continue;
        }
        let changes = in_place(before, instance);
        if !changes.is_empty() {
            plan.instances_changed.push(changes);
        }
    }
    Ok(plan)
}

/// The keys that make an instance another VRRP router: its group (addresses, VRID), where and how it talks
/// (interface, source, peers), and the timers and preemption its election in progress was started with (the data
/// plane's dead-man switch follows the advert interval too).
fn identity_changes(old: &Instance, new: &Instance) -> Vec<&'static str> {
    let (o, n) = (&old.vrrp, &new.vrrp);
    [
        ("interface", old.interface != new.interface),
        ("vip.addresses", old.vip.addresses != new.vip.addresses),
        ("vrrp.vrid", o.vrid != n.vrid),
        ("vrrp.source_address", o.source_address != n.source_address || o.source_address6 != n.source_address6),
        ("vrrp.unicast_peers", o.unicast_peers != n.unicast_peers || o.unicast_peers6 != n.unicast_peers6),
        ("vrrp.advert_interval_ms", o.advert_interval_ms != n.advert_interval_ms),
        ("vrrp.preempt", o.preempt != n.preempt),
        ("vrrp.preempt_delay_ms", o.preempt_delay_ms != n.preempt_delay_ms),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

fn in_place(old: &Instance, new: &Instance) -> InstancePlan {
    let (o, n) = (&old.vrrp, &new.vrrp);
    let vrrp_changed = [
        ("priority", o.priority != n.priority),
        ("checksum", o.checksum != n.checksum),
        ("garp_count", o.garp_count != n.garp_count),
        ("garp_repeat_delay_ms", o.garp_repeat_delay_ms != n.garp_repeat_delay_ms),
        ("garp_refresh_ms", o.garp_refresh_ms != n.garp_refresh_ms),
        ("backend_loss_penalty", o.backend_loss_penalty != n.backend_loss_penalty),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect();
    let find = |services: &'_ [Service], name: &str| services.iter().position(|s| s.name == name);
    let mut plan = InstancePlan {
        name: new.name.clone(),
        vrrp_changed,
        hostname_changed: old.vip.hostname != new.vip.hostname,
        ..InstancePlan::default()
    };
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
    plan
}
