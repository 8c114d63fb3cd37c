//! What the agent knows about each service of one instance and its backends (health from the checkers, MAC from
//! the neighbour table), and what follows from it: the data plane's view of a service, and whether a service has
//! lost every backend.
//!
//! Pure: the agent feeds it events and hands its answers to the data plane.
//!
//! Cheap to clone (each service sits behind an `Arc`, copied only when it changes while a clone is alive): the
//! advert thread hands a snapshot to `xvip status` without copying thousands of backends.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use lb_common::{FORWARD_DSR, FORWARD_NAT};

use crate::{
    config::{self, Forwarding, Service},
    dataplane::{BackendSpec, ServiceSpec},
};

/// A backend of one service.
pub type Endpoint = (IpAddr, u16);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendState {
    pub healthy: bool,
    pub mac: Option<[u8; 6]>,
    pub ifindex: u32,
}

#[derive(Clone, Debug)]
struct ServiceState {
    config: Service,
    backends: BTreeMap<Endpoint, BackendState>,
}

/// Every configured service of an instance with the live state of its backends.
#[derive(Clone, Debug, Default)]
pub struct Services {
    /// The instance's addresses: every service listens on each (IPv4 ones balanced to its IPv4 backends, IPv6 ones
    /// to its IPv6 backends).
    addresses: Vec<IpAddr>,
    services: BTreeMap<String, Arc<ServiceState>>,
    /// The services that have a backend at each address, so a neighbour answer touches only those.
    by_address: HashMap<IpAddr, Vec<String>>,
}

impl Services {
    /// The services of an instance whose addresses are `addresses`.
    pub fn new(services: &[Service], addresses: Vec<IpAddr>) -> Self {
        let mut s = Services { addresses, ..Services::default() };
        s.reconfigure(services);
        s
    }

    /// Takes a new set of services (a reload). Backends that stay keep their health and MAC, so a reload moves no
    /// flow whose backend stays; new backends start unhealthy until their first check.
    pub fn reconfigure(&mut self, services: &[Service]) {
        // Where each address is reached does not depend on the service or port: a new backend at a known address
        // starts with that address's MAC (the neighbour watcher reports only changes).
        let paths = self.paths();
        let mut next = BTreeMap::new();
        for svc in services {
            let old = self.services.remove(&svc.name);
            let old = old.as_deref();
            let backends = svc
                .backends
                .iter()
                .map(|b| {
                    let endpoint = (b.address, b.port);
                    let known = old.as_ref().and_then(|o| o.backends.get(&endpoint).cloned());
                    let mut state = known.unwrap_or_else(|| {
                        let (mac, ifindex) = paths.get(&b.address).copied().unwrap_or((None, 0));
                        BackendState { healthy: false, mac, ifindex }
                    });
                    if svc.health.check == config::CheckKind::None {
                        state.healthy = true;
                    }
                    (endpoint, state)
                })
                .collect();
            next.insert(svc.name.clone(), Arc::new(ServiceState { config: svc.clone(), backends }));
        }
        self.services = next;
        self.by_address.clear();
        for (name, svc) in &self.services {
            for (address, _) in svc.backends.keys() {
                let names = self.by_address.entry(*address).or_default();
                if names.last() != Some(name) {
                    names.push(name.clone());
                }
            }
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    pub fn config(&self, name: &str) -> Option<&Service> {
        self.services.get(name).map(|s| &s.config)
    }

    pub fn backend(&self, service: &str, endpoint: Endpoint) -> Option<&BackendState> {
        self.services.get(service).and_then(|s| s.backends.get(&endpoint))
    }

    /// Records a health result. Returns true when it changed something.
    pub fn set_health(&mut self, service: &str, endpoint: Endpoint, healthy: bool) -> bool {
        let Some(svc) = self.services.get_mut(service) else { return false };
        if svc.backends.get(&endpoint).is_none_or(|b| b.healthy == healthy) {
            return false;
        }
        if let Some(b) = Arc::make_mut(svc).backends.get_mut(&endpoint) {
            b.healthy = healthy;
        }
        true
    }

    /// Records where a backend address is reached. Returns the services whose view changed.
    pub fn set_path(&mut self, address: IpAddr, mac: Option<[u8; 6]>, ifindex: u32) -> Vec<String> {
        let mut changed = Vec::new();
        for name in self.by_address.get(&address).into_iter().flatten() {
            let Some(svc) = self.services.get_mut(name) else { continue };
            let differs = |(a, _): &Endpoint, b: &BackendState| *a == address && (b.mac != mac || b.ifindex != ifindex);
            if !svc.backends.iter().any(|(e, b)| differs(e, b)) {
                continue;
            }
            for (e, b) in Arc::make_mut(svc).backends.iter_mut() {
                if differs(e, b) {
                    b.mac = mac;
                    b.ifindex = ifindex;
                }
            }
            changed.push(name.clone());
        }
        changed
    }

    /// Every distinct backend address, for neighbour resolution.
    pub fn backend_addresses(&self) -> Vec<IpAddr> {
        let mut a: Vec<IpAddr> = self.services.values().flat_map(|s| s.backends.keys().map(|(a, _)| *a)).collect();
        a.sort();
        a.dedup();
        a
    }

    /// Where `address` is reached as far as known: its MAC (if any) and interface, from the first backend with
    /// that address (all backends with one address share the answer).
    pub fn path(&self, address: IpAddr) -> Option<(Option<[u8; 6]>, u32)> {
        let name = self.by_address.get(&address)?.first()?;
        self.services.get(name)?.backends.iter().find(|((a, _), _)| *a == address).map(|(_, b)| (b.mac, b.ifindex))
    }

    /// The data plane's view of every service, in name order.
    pub fn specs(&self) -> Vec<(String, ServiceSpec)> {
        self.services.keys().filter_map(|name| Some((name.clone(), self.spec(name)?))).collect()
    }

    /// Where each backend address is reached, as far as known (for an instance added later, which starts from
    /// what the node already knows: the neighbour watcher reports only changes).
    pub fn paths(&self) -> BTreeMap<IpAddr, (Option<[u8; 6]>, u32)> {
        let mut paths = BTreeMap::new();
        for s in self.services.values() {
            for ((address, _), b) in &s.backends {
                if b.mac.is_some() || !paths.contains_key(address) {
                    paths.insert(*address, (b.mac, b.ifindex));
                }
            }
        }
        paths
    }

    /// Addresses whose MAC is not known yet.
    pub fn unresolved(&self) -> Vec<IpAddr> {
        let mut a: Vec<IpAddr> = self
            .services
            .values()
            .flat_map(|s| s.backends.iter().filter(|(_, b)| b.mac.is_none()).map(|((a, _), _)| *a))
            .collect();
        a.sort();
        a.dedup();
        a
    }

    /// The data plane's view of a service.
    pub fn spec(&self, name: &str) -> Option<ServiceSpec> {
        let svc = self.services.get(name)?;
        let c = &svc.config;
        Some(ServiceSpec {
            addresses: self.addresses.clone(),
            port: c.port,
            protocol: c.protocol.ip_number(),
            forwarding: match c.forwarding {
                Forwarding::Dsr => FORWARD_DSR,
                Forwarding::Nat => FORWARD_NAT,
            },
            backends: c
                .backends
                .iter()
                .map(|b| {
                    let state = svc.backends.get(&(b.address, b.port)).cloned().unwrap_or_default();
                    BackendSpec {
                        address: b.address,
                        port: b.port,
                        weight: b.weight,
                        healthy: state.healthy,
                        mac: state.mac,
                        ifindex: state.ifindex,
                    }
                })
                .collect(),
        })
    }

    /// Services none of whose backends can take new flows, in name order; "usable" is the data plane's one rule
    /// ([`BackendSpec::usable`]: healthy, MAC known, weight above 0).
    pub fn without_usable_backend(&self) -> Vec<&str> {
        self.services
            .keys()
            .filter(|name| !self.spec(name).is_some_and(|spec| spec.backends.iter().any(BackendSpec::usable)))
            .map(String::as_str)
            .collect()
    }
}

/// The priority to advertise: lowered by `penalty` while some service has no usable backend here, so a node that
/// lost its backends hands the VIP to one that has them. Never below 1 (0 means "stopping"); an address owner
/// (255) that is penalised advertises as a normal router.
pub fn effective_priority(priority: u8, penalty: u8, backends_lost: bool) -> u8 {
    if backends_lost && penalty > 0 { priority.saturating_sub(penalty).max(1) } else { priority }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::{BackendCfg, CheckKind, Health, Protocol};

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const VIPS: [IpAddr; 2] = [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 250)), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 251))];

    /// The services of an instance with two addresses.
    fn of(services: &[Service]) -> Services {
        Services::new(services, VIPS.to_vec())
    }

    fn service(name: &str, backends: &[(u8, u16)], check: CheckKind) -> Service {
        Service {
            name: name.into(),
            port: 443,
            protocol: Protocol::Tcp,
            forwarding: Forwarding::Nat,
            backends: backends
                .iter()
                .map(|(last, port)| BackendCfg { address: v4(*last), port: *port, weight: 1 })
                .collect(),
            health: Health { check, ..Health::default() },
        }
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn ep(last: u8, port: u16) -> Endpoint {
        (v4(last), port)
    }

    #[test]
    fn backends_start_unhealthy_until_checked() {
        let s = of(&[service("api", &[(11, 6443)], CheckKind::Tcp)]);
        assert_eq!(s.backend("api", ep(11, 6443)), Some(&BackendState::default()));
        let spec = s.spec("api").expect("spec");
        assert!(!spec.backends[0].usable());
    }

    #[test]
    fn check_none_means_always_healthy() {
        let s = of(&[service("api", &[(11, 6443)], CheckKind::None)]);
        assert!(s.backend("api", ep(11, 6443)).expect("backend").healthy);
    }

    #[test]
    fn a_backend_is_usable_once_healthy_and_resolved() {
        let mut s = of(&[service("api", &[(11, 6443)], CheckKind::Tcp)]);
        assert!(s.set_health("api", ep(11, 6443), true));
        assert!(!s.set_health("api", ep(11, 6443), true), "no change, no work");
        assert_eq!(s.without_usable_backend(), vec!["api"], "healthy but no MAC yet");
        assert_eq!(s.set_path(v4(11), Some(MAC), 3), vec!["api".to_string()]);
        assert!(s.without_usable_backend().is_empty());
        let spec = s.spec("api").expect("spec");
        assert_eq!(spec.backends[0].mac, Some(MAC));
        assert_eq!(spec.backends[0].ifindex, 3);
        assert_eq!(spec.forwarding, FORWARD_NAT);
        assert_eq!(spec.port, 443);
        assert_eq!(spec.addresses, VIPS, "every service listens on every address of its instance");
    }

    #[test]
    fn one_address_in_two_services_is_resolved_for_both() {
        let mut s = of(&[service("a", &[(11, 6443)], CheckKind::None), service("b", &[(11, 8080)], CheckKind::None)]);
        assert_eq!(s.backend_addresses(), vec![v4(11)]);
        assert_eq!(s.set_path(v4(11), Some(MAC), 2).len(), 2);
        assert!(s.unresolved().is_empty());
    }

    #[test]
    fn reload_keeps_the_state_of_backends_that_stay() {
        let mut s = of(&[service("api", &[(11, 6443), (12, 6443)], CheckKind::Tcp)]);
        s.set_health("api", ep(11, 6443), true);
        s.set_path(v4(11), Some(MAC), 2);
        s.reconfigure(&[service("api", &[(11, 6443), (13, 6443)], CheckKind::Tcp)]);
        let kept = s.backend("api", ep(11, 6443)).expect("kept");
        assert!(kept.healthy && kept.mac == Some(MAC));
        assert_eq!(s.backend("api", ep(12, 6443)), None, "removed");
        assert_eq!(s.backend("api", ep(13, 6443)), Some(&BackendState::default()), "new starts unknown");
    }

    #[test]
    fn a_new_backend_at_a_known_address_starts_with_its_mac_but_not_its_health() {
        let mut s = of(&[service("api", &[(11, 6443)], CheckKind::Tcp)]);
        s.set_health("api", ep(11, 6443), true);
        s.set_path(v4(11), Some(MAC), 2);
        // The backend moves to another port, and another service uses the same address.
        s.reconfigure(&[service("api", &[(11, 6444)], CheckKind::Tcp), service("web", &[(11, 80)], CheckKind::Tcp)]);
        let moved = s.backend("api", ep(11, 6444)).expect("moved");
        assert_eq!((moved.healthy, moved.mac, moved.ifindex), (false, Some(MAC), 2));
        assert_eq!(s.backend("web", ep(11, 80)).and_then(|b| b.mac), Some(MAC));
    }

    #[test]
    fn penalty_applies_only_while_backends_are_lost() {
        assert_eq!(effective_priority(150, 60, false), 150);
        assert_eq!(effective_priority(150, 60, true), 90);
        assert_eq!(effective_priority(50, 60, true), 1, "never 0, which would mean stopping");
        assert_eq!(effective_priority(150, 0, true), 150);
    }
}
