//! The program's own state, read from user space: the only part of the harness that knows the map layout
//! (`lb_common`'s keys and values of the connection table `CONNTRACK`, the reverse NAT table `NAT`, and the backend
//! array `BACKENDS`). When the layout changes, this module changes and nothing else.
//!
//! Rules: every NAT reverse entry has its forward entry, which names the same backend and NAT port; a client packet forwarded to a backend goes where its live forward entry names; no connection or NAT entry
//! exists for a martian or self-addressed client.
//!
//! A forward entry is *live* while the backend slot it names still holds the backend (address and port) the flow
//! was pinned to. After a reload frees the slot (or gives it to another backend), the entry is stale: the agent cannot find
//! and rewrite every connection entry when a backend leaves, so stale entries are expected; the rule is that the
//! program never follows one (the flow takes a fresh pick at its next packet, and that packet is checked by
//! `forwarded_off_pin`).
use std::{collections::HashMap, net::Ipv4Addr};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use lb_common::{Backend, FlowKey, FlowValue, NatKey, NatValue, names};
use xvip::dataplane::DataPlane;

use crate::check::{Facts, Ip4};

/// One broken state rule, and the flow it is about (to find an example frame).
pub struct StateFinding {
    pub rule: &'static str,
    /// Identifies the broken entry, so the same entry is reported once.
    pub entry: String,
    pub detail: String,
    /// The client and the backend side of the entry, to match frames against.
    pub client: (Ipv4Addr, u16),
    pub backend: (Ipv4Addr, u16),
}

struct Tables<'a> {
    conntrack: BpfHashMap<&'a MapData, FlowKey, FlowValue>,
    nat: BpfHashMap<&'a MapData, NatKey, NatValue>,
    backends: Array<&'a MapData, Backend>,
}

impl<'a> Tables<'a> {
    fn open(dp: &'a DataPlane) -> Self {
        let map = |name: &str| dp.map(name).unwrap_or_else(|| panic!("the object has no map {name}"));
        Tables {
            conntrack: BpfHashMap::try_from(map(names::CONNTRACK)).expect("CONNTRACK is a hash map of FlowKey"),
            nat: BpfHashMap::try_from(map(names::NAT)).expect("NAT is a hash map of NatKey"),
            backends: Array::try_from(map(names::BACKENDS)).expect("BACKENDS is an array of Backend"),
        }
    }

    fn backend(&self, slot: u32, cache: &mut HashMap<u32, Option<Backend>>) -> Option<Backend> {
        *cache.entry(slot).or_insert_with(|| self.backends.get(&slot, 0).ok())
    }

    /// The backend a forward entry names, if the entry is live: its slot still holds the backend the flow was pinned
    /// to (a freed slot is all zero).
    fn live(&self, forward: &FlowValue, cache: &mut HashMap<u32, Option<Backend>>) -> Option<Backend> {
        self.backend(forward.backend, cache).filter(|b| {
            *b != Backend::default() && b.address == forward.backend_address && b.port == forward.backend_port
        })
    }

    /// The reverse-entry rules for one NAT entry.
    fn check_nat(
        &self,
        facts: &Facts,
        key: &NatKey,
        value: &NatValue,
        cache: &mut HashMap<u32, Option<Backend>>,
    ) -> Vec<StateFinding> {
        let client = Ipv4Addr::from(value.client);
        let backend = Ipv4Addr::from(key.backend);
        let (cport, bport, nport) = (
            u16::from_be_bytes(value.client_port),
            u16::from_be_bytes(key.backend_port),
            u16::from_be_bytes(key.nat_port),
        );
        let entry = format!("NAT[{backend}:{bport} nat port {nport} proto {}]", key.protocol);
        let make = |rule, detail: String| StateFinding {
            rule,
            entry: entry.clone(),
            detail,
            client: (client, cport),
            backend: (backend, bport),
        };
        let mut found = Vec::new();
        if facts.martian(client) || client == facts.vip || facts.own.contains(&client) {
            found.push(make("state_for_martian_client", format!("{entry} is for client {client}:{cport}")));
        }
        let flow = FlowKey::new(value.client, key.vip, value.client_port, value.service_port, key.protocol);
        let svc = u16::from_be_bytes(value.service_port);
        match self.conntrack.get(&flow, 0) {
            Err(_) => found.push(make(
                "nat_reverse_without_forward",
                format!("{entry} -> client {client}:{cport} service port {svc}: no CONNTRACK entry"),
            )),
            Ok(forward) => {
                // The forward entry records the backend and NAT port it was translated to, whatever became of its
                // slot since, so it names exactly this translation: a flow that moved to another backend took its
                // old reverse entry with it.
                if forward.nat_port != key.nat_port
                    || forward.backend_address != key.backend
                    || forward.backend_port != key.backend_port
                {
                    found.push(make(
                        "nat_reverse_forward_mismatch",
                        format!(
                            "{entry} -> client {client}:{cport} service port {svc}, whose CONNTRACK entry names backend \
                             {}:{} (slot {}, {}) and nat port {}",
                            Ipv4Addr::from(forward.backend_address),
                            u16::from_be_bytes(forward.backend_port),
                            forward.backend,
                            if self.live(&forward, cache).is_some() { "live" } else { "stale" },
                            u16::from_be_bytes(forward.nat_port)
                        ),
                    ));
                }
            }
        }
        found
    }
}

/// The state a frame can have touched: the flow it belongs to as a client packet, the NAT entry it addresses as a
/// reply, and the translation its output shows. Cheap enough for every frame to the VIP.
pub fn check_frame(dp: &DataPlane, facts: &Facts, input: &Ip4, output: Option<&Ip4>) -> Vec<StateFinding> {
    if !matches!(input.protocol, 6 | 17) {
        return Vec::new();
    }
    let t = Tables::open(dp);
    let mut cache = HashMap::new();
    let mut found = Vec::new();
    let mut nat_keys = Vec::new();
    let key = |backend: Ipv4Addr, backend_port: u16, nat_port: u16| {
        NatKey::new(
            backend.octets(),
            input.dst.octets(),
            backend_port.to_be_bytes(),
            nat_port.to_be_bytes(),
            input.protocol,
        )
    };
    // As a reply: the entry it addresses.
    nat_keys.push(key(input.src, input.sport, input.dport));
    // As a client packet: its flow and the translation the flow names.
    let flow = FlowKey::new(
        input.src.octets(),
        input.dst.octets(),
        input.sport.to_be_bytes(),
        input.dport.to_be_bytes(),
        input.protocol,
    );
    // A backend's reply (its source is the key of a NAT entry) is no client packet.
    let reply = t.nat.get(&key(input.src, input.sport, input.dport), 0).is_ok();
    let forwarded = output.filter(|_| !reply).and_then(|out| forwarded(facts, input, out));
    let pinned = t.conntrack.get(&flow, 0).ok();
    if let Some((out, nat)) = forwarded {
        let live = pinned.and_then(|f| t.live(&f, &mut cache).map(|b| (f, b)));
        let follows = live.is_some_and(|(f, b)| {
            if nat {
                b.address == out.dst.octets()
                    && b.port == out.dport.to_be_bytes()
                    && f.nat_port == out.sport.to_be_bytes()
            } else {
                b.mac == out.eth_dst
            }
        });
        if !follows {
            let named = live.map(|(f, b)| {
                format!(
                    "slot {} ({}:{} {}, nat port {})",
                    f.backend,
                    Ipv4Addr::from(b.address),
                    u16::from_be_bytes(b.port),
                    crate::check::mac_of(&b.mac),
                    u16::from_be_bytes(f.nat_port)
                )
            });
            found.push(StateFinding {
                rule: "forwarded_off_pin",
                entry: format!(
                    "forward of {}:{} -> port {} to {}:{}",
                    input.src, input.sport, input.dport, out.dst, out.dport
                ),
                detail: format!(
                    "{}:{} -> VIP:{} went to {}:{} ({}) from port {}; its live forward entry: {}",
                    input.src,
                    input.sport,
                    input.dport,
                    out.dst,
                    out.dport,
                    crate::check::mac_of(&out.eth_dst),
                    out.sport,
                    named.unwrap_or_else(|| "none".into())
                ),
                client: (input.src, input.sport),
                backend: (out.dst, out.dport),
            });
        }
    }
    if let Some(forward) = pinned {
        if facts.martian(input.src) || input.src == facts.vip || facts.own.contains(&input.src) {
            found.push(StateFinding {
                rule: "state_for_martian_client",
                entry: format!(
                    "CONNTRACK[{}:{} -> port {} proto {}]",
                    input.src, input.sport, input.dport, input.protocol
                ),
                detail: format!("connection entry for client {}:{}", input.src, input.sport),
                client: (input.src, input.sport),
                backend: (Ipv4Addr::UNSPECIFIED, 0),
            });
        }
        if forward.nat_port != [0, 0]
            && let Some(b) = t.backend(forward.backend, &mut cache)
        {
            nat_keys.push(key(
                Ipv4Addr::from(b.address),
                u16::from_be_bytes(b.port),
                u16::from_be_bytes(forward.nat_port),
            ));
        }
    }
    // The translation the output shows (VIP:nat port -> backend).
    if let Some(out) = output.filter(|o| o.src == facts.vip && o.protocol == input.protocol) {
        nat_keys.push(key(out.dst, out.dport, out.sport));
    }
    for k in nat_keys {
        if let Ok(v) = t.nat.get(&k, 0) {
            found.extend(t.check_nat(facts, &k, &v, &mut cache));
        }
    }
    found
}

/// Whether `out` is `input`, a client's packet to a service, forwarded to a backend: NAT (from the VIP to a
/// backend's address, `true`) or DSR (unchanged addresses, to a backend's MAC, `false`). The caller has ruled out
/// a backend's reply.
fn forwarded(facts: &Facts, input: &Ip4, out: &Ip4) -> Option<(Ip4, bool)> {
    if input.dst != facts.vip || out.protocol != input.protocol {
        return None;
    }
    if out.src == facts.vip && facts.backends.contains(&out.dst) && out.dst != input.src {
        return Some((*out, true));
    }
    if out.dst == facts.vip && out.src == input.src && facts.backend_macs.contains(&out.eth_dst) {
        return Some((*out, false));
    }
    None
}

/// Every entry of the NAT and connection tables; returns the findings and how many entries were read.
pub fn check_all(dp: &DataPlane, facts: &Facts) -> (Vec<StateFinding>, usize) {
    let t = Tables::open(dp);
    let mut cache = HashMap::new();
    let mut found = Vec::new();
    let mut entries = 0;
    for item in t.nat.iter() {
        let Ok((k, v)) = item else { continue };
        entries += 1;
        found.extend(t.check_nat(facts, &k, &v, &mut cache));
    }
    for key in t.conntrack.keys() {
        let Ok(k) = key else { continue };
        entries += 1;
        let client = Ipv4Addr::from(k.client);
        if facts.martian(client) || client == facts.vip || facts.own.contains(&client) {
            let (cport, svc) = (u16::from_be_bytes(k.client_port), u16::from_be_bytes(k.service_port));
            found.push(StateFinding {
                rule: "state_for_martian_client",
                entry: format!("CONNTRACK[{client}:{cport} -> port {svc} proto {}]", k.protocol),
                detail: format!("connection entry for client {client}:{cport}"),
                client: (client, cport),
                backend: (Ipv4Addr::UNSPECIFIED, 0),
            });
        }
    }
    (found, entries)
}
