//! What the BPF_PROG_TEST_RUN fixtures share: the addresses of the pretend network and the run-and-check step.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::Ipv4Addr;

use lb_common::Reason;
use xvip::dataplane::{Counters, DataPlane};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);
pub const VRID: u8 = 51;
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
pub const BACKENDS: [(Ipv4Addr, [u8; 6]); 3] = [
    (Ipv4Addr::new(10, 77, 0, 21), [0x02, 0, 0, 0, 0, 0x21]),
    (Ipv4Addr::new(10, 77, 0, 22), [0x02, 0, 0, 0, 0, 0x22]),
    (Ipv4Addr::new(10, 77, 0, 23), [0x02, 0, 0, 0, 0, 0x23]),
];

/// Runs the frame and checks the verdict and that exactly one frame was counted, under `reason`.
pub fn run(dp: &mut DataPlane, frame: &[u8], action: u32, reason: Reason) -> Vec<u8> {
    let before = dp.counters().expect("counters");
    let out = dp.test_run(frame).expect("test_run");
    let after = dp.counters().expect("counters");
    assert_eq!(out.action, action, "verdict for {reason:?}");
    assert_delta(&before, &after, reason);
    out.frame
}

/// Every counter moved by 0 except `reason`, which moved by 1.
pub fn assert_delta(before: &Counters, after: &Counters, reason: Reason) {
    for r in Reason::ALL {
        let delta = after.reason(r) - before.reason(r);
        let expected = u64::from(r == reason);
        assert_eq!(delta, expected, "counter {} moved by {delta}, expected {expected}", r.name());
    }
}
