//! Random frames through the XDP program (BPF_PROG_TEST_RUN), checked against rules by an independent parser.
//!
//! The node is set up as a real one (`node`): active and backup phases, NAT and DSR services, live flows that
//! earlier frames created, health flaps and a reload while traffic runs. Frames are valid frames of every kind a
//! node meets, or mutations of them, or random bytes (`traffic`). Every frame the program sends out is checked by
//! `check` (etherparse and checksums summed here), and the program's state by `state` (the only module that knows
//! the map layout). The run prints frames per kind and verdict, and each violated rule with a count and an
//! example frame in hex; it fails on any violation.
//!
//! `XVIP_FRAMES` sets the number of frames (default 10^4, what `cargo xtask test` runs; `cargo xtask frames` runs
//! 10^6), `XVIP_FRAMES_SEED` the seed (default 1). Needs root (loads BPF programs); nothing is sent on any interface.
mod check;
mod node;
mod report;
mod state;
#[path = "../support/mod.rs"]
mod support;
mod traffic;

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use check::{Facts, XDP_REDIRECT, XDP_TX};
use node::Node;
use report::{Example, Report};
use traffic::{DsrFlow, Kind, NatFlow, Pool, Rng};

/// Frames per node start: the tables stay far below their size (so the LRU never evicts, which would break the
/// reverse-forward pairing by itself), and a restarted node is a case of its own.
const FRAMES_PER_START: u64 = 50_000;
/// Full scans of the state tables, every this many frames (each frame also gets a check of the entries it can
/// have touched).
const SCAN_EVERY: u64 = 5_000;
/// Recent frames kept to find an example for a finding of a full scan.
const WINDOW: usize = 5_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn facts() -> Facts {
    Facts {
        vip: node::VIP,
        vip6: node::VIP6,
        node_mac: node::NODE_MAC,
        own: vec![node::NODE_IP, node::NODE_IP2],
        subnets: node::SUBNETS.to_vec(),
        backend_macs: node::BACKENDS.iter().chain(&node::FAR_BACKENDS).map(|(_, mac)| *mac).collect(),
        far_mac: node::FAR_MAC,
        backends: node::BACKENDS.iter().chain(&node::FAR_BACKENDS).map(|(address, _)| *address).collect(),
        backend6_macs: node::BACKENDS6.iter().map(|(_, mac)| *mac).collect(),
        services6: node::SERVICES6.to_vec(),
        backends6: node::BACKENDS6.iter().map(|(address, _)| *address).collect(),
        nat6: node::NAT6.to_vec(),
    }
}

#[test]
fn random_frames_keep_every_rule() {
    let count = env_u64("XVIP_FRAMES").unwrap_or(10_000);
    // The short form (`cargo xtask test`) replays the same frames every time, so a failure is never a fluke of the
    // draw; `cargo xtask frames` draws a new seed unless given one.
    let seed = env_u64("XVIP_FRAMES_SEED").unwrap_or(1);
    let interfaces = node::enter_namespace().expect("a network namespace for the node");
    let facts = facts();
    let mut rng = Rng::new(seed);
    let mut report = Report::new(seed);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut epoch = 0u64;
    while sent < count {
        let mut node = Node::start(node::load_options(epoch), interfaces.far).expect("starting the node");
        report.epochs += 1;
        let mut pool = Pool::default();
        let mut reported: HashSet<String> = HashSet::new();
        let mut window: VecDeque<(Kind, Vec<u8>, u32, Vec<u8>)> = VecDeque::with_capacity(WINDOW);
        let first = sent;
        while sent < count && sent - first < FRAMES_PER_START {
            churn(&mut node, &mut rng);
            let kind = traffic::pick_kind(&mut rng);
            let mut input = traffic::frame(kind, &mut rng, &pool);
            let mutations = if rng.below(10) < 3 { Vec::new() } else { traffic::mutate(&mut input, &mut rng) };
            let out = node.dp.test_run_on(&input, interfaces.near).expect("BPF_PROG_TEST_RUN");
            sent += 1;
            report.frame(kind, &mutations, out.action);
            for f in check::frame(&facts, node.active, &input, out.action, &out.frame) {
                report.violation(f.rule, || Example {
                    detail: f.detail,
                    kind,
                    input: input.clone(),
                    output: Some((out.action, out.frame.clone())),
                });
            }
            let sent_out = matches!(out.action, XDP_TX | XDP_REDIRECT);
            let seen_in = check::ip4(&input);
            let seen_out = if sent_out { check::ip4(&out.frame) } else { None };
            if let (Some(i), Some(o)) = (seen_in, seen_out) {
                learn(&facts, &i, &o, &mut pool, &mut rng);
                if matches!(i.protocol, 6 | 17)
                    && !check::l4_ok(i.src.octets(), i.dst.octets(), i.protocol, l4_of(&input))
                {
                    report.bad_l4_passed_on += 1;
                }
            }
            if let Some(i) = seen_in.filter(|i| i.dst == facts.vip || i.src == facts.vip) {
                for f in state::check_frame(&node.dp, &facts, &i, seen_out.as_ref()) {
                    if reported.insert(f.entry.clone()) {
                        report.violation(f.rule, || Example {
                            detail: f.detail,
                            kind,
                            input: input.clone(),
                            output: Some((out.action, out.frame.clone())),
                        });
                    }
                }
            }
            if window.len() == WINDOW {
                window.pop_front();
            }
            window.push_back((kind, input, out.action, out.frame));
            if (sent - first).is_multiple_of(SCAN_EVERY) {
                scan(&node, &facts, &mut report, &mut reported, &window);
            }
        }
        scan(&node, &facts, &mut report, &mut reported, &window);
        let counted: u64 = node.dp.counters().expect("reading the counters").reasons.iter().sum();
        if counted != sent - first {
            report.violation("counter_sum", || Example {
                detail: format!("{} frames since the node started, the Reason counters sum to {counted}", sent - first),
                kind: window.back().map_or(Kind::Random, |w| w.0),
                input: window.back().map(|w| w.1.clone()).unwrap_or_default(),
                output: None,
            });
        }
        epoch += 1;
    }
    let text = report.render(started.elapsed().as_secs_f64());
    println!("{text}");
    assert_eq!(report.frames(), count);
    assert_eq!(
        report.total_violations(),
        0,
        "rules violated: {:?} (the report above says more)",
        report.violation_counts()
    );
}

/// What a real node lives through while traffic flows: it is backup about a fifth of the time, a backend's health
/// changes about every 1500 frames, and about every 2500 a reload drops and re-adds a service (often enough that
/// the 10^4-frame short form sees several).
fn churn(node: &mut Node, rng: &mut Rng) {
    if node.active && rng.one_in(4_000) {
        node.set_active(false).expect("becoming backup");
    } else if !node.active && rng.one_in(1_000) {
        node.set_active(true).expect("becoming active");
    }
    if rng.one_in(1_500) {
        node.flap(rng).expect("a health flap");
    }
    if rng.one_in(2_500) {
        node.reload(rng).expect("a reload");
    }
}

/// Remembers the flow a sent frame shows, so later frames continue it, answer it or report errors about it.
fn learn(facts: &Facts, input: &check::Ip4, output: &check::Ip4, pool: &mut Pool, rng: &mut Rng) {
    if !matches!(input.protocol, 6 | 17) || input.protocol != output.protocol || input.dst != facts.vip {
        return;
    }
    if output.src == facts.vip && output.dst != input.src && input.tcp_flags & 0x04 == 0 {
        pool.add_nat(
            NatFlow {
                client: input.src,
                client_mac: input.eth_src,
                client_port: input.sport,
                service_port: input.dport,
                protocol: input.protocol,
                backend: output.dst,
                backend_port: output.dport,
                nat_port: output.sport,
            },
            rng,
        );
    } else if output.dst == facts.vip && output.src == input.src {
        pool.add_dsr(
            DsrFlow {
                client: input.src,
                client_mac: input.eth_src,
                client_port: input.sport,
                service_port: input.dport,
                protocol: input.protocol,
            },
            rng,
        );
    }
}

/// The TCP/UDP segment of an untagged Ethernet + IPv4 frame that `check::ip4` accepted.
fn l4_of(frame: &[u8]) -> &[u8] {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    frame.get(14 + ihl..14 + total).unwrap_or_default()
}

/// A full scan of the state tables; a finding's example is the latest frame in the window about its flow.
fn scan(
    node: &Node,
    facts: &Facts,
    report: &mut Report,
    reported: &mut HashSet<String>,
    window: &VecDeque<(Kind, Vec<u8>, u32, Vec<u8>)>,
) {
    let (found, entries) = state::check_all(&node.dp, facts);
    report.state_scans += 1;
    report.state_entries_read += entries as u64;
    report.largest_tables = report.largest_tables.max(entries);
    for f in found {
        if !reported.insert(f.entry.clone()) {
            continue;
        }
        let about = |w: &&(Kind, Vec<u8>, u32, Vec<u8>)| {
            check::ip4(&w.1).is_some_and(|i| {
                (i.src, i.sport) == f.client || (i.src, i.sport) == f.backend || (i.dst, i.dport) == f.backend
            })
        };
        let example = window.iter().rev().find(about).or(window.back());
        report.violation(f.rule, || Example {
            detail: format!("{} (found by a full scan; the example is the latest frame about this flow)", f.detail),
            kind: example.map_or(Kind::Random, |w| w.0),
            input: example.map(|w| w.1.clone()).unwrap_or_default(),
            output: example.map(|w| (w.2, w.3.clone())),
        });
    }
}
