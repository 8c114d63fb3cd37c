//! The VRRP state machine driven by whatever adverts the network sends, at whatever times.
//!
//! Adverts come as raw packets, which go through `parse_ipv4` first as in the agent, or (so that the fuzzer
//! need not forge checksums) as the fields of an advert that passed those checks: the node's VRID, an interval of
//! 1..=4095 cs, any priority and sender. Properties: no panic; the timer matches the role after every input (Initialize has none,
//! Backup and Active have one); right after the timer was serviced, it lies in the future.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use xvip::vrrp::packet::{Advert, MAX_ADVER_INT_MAX, RxFilter, parse_ipv4};
use xvip::vrrp::{Role, Router, Settings};

#[derive(Arbitrary, Debug)]
struct Input {
    vrid: u8,
    priority: u8,
    advert_interval: u16,
    preempt: bool,
    preempt_delay_ms: u16,
    primary_address: [u8; 4],
    events: Vec<Event>,
}

#[derive(Arbitrary, Debug)]
enum Event {
    /// A packet from the VRRP socket, `after_ms` after the previous event.
    Packet {
        after_ms: u16,
        bytes: Vec<u8>,
    },
    /// An advert that passed the receive checks, `after_ms` after the previous event.
    Advert {
        after_ms: u16,
        sender: [u8; 4],
        priority: u8,
        max_adver_int: u16,
    },
    /// The next timer, if any, fires.
    Timer,
    /// Time passes and the timer is checked, early or late.
    Tick {
        after_ms: u16,
    },
    /// The link went down (FAULT); `Start` brings the router back.
    Fault,
    SetPriority {
        priority: u8,
    },
    Start,
    Shutdown,
}

fuzz_target!(|input: Input| {
    let settings = Settings {
        vrid: input.vrid,
        priority: input.priority,
        advert_interval: input.advert_interval,
        preempt: input.preempt,
        preempt_delay: Duration::from_millis(u64::from(input.preempt_delay_ms)),
        primary_address: Ipv4Addr::from(input.primary_address),
    };
    let Ok(mut router) = Router::new(settings) else {
        return;
    };
    let filter = RxFilter { vrid: input.vrid, unicast_peers: &[] };
    let mut now = Duration::ZERO;
    for event in input.events {
        let serviced = matches!(event, Event::Timer | Event::Tick { .. });
        match event {
            Event::Packet { after_ms, bytes } => {
                now += Duration::from_millis(u64::from(after_ms));
                if let Ok(rx) = parse_ipv4(&bytes, &filter) {
                    router.on_advert(now, rx.src, &rx.advert);
                }
            }
            Event::Advert { after_ms, sender, priority, max_adver_int } => {
                now += Duration::from_millis(u64::from(after_ms));
                let max_adver_int = max_adver_int & MAX_ADVER_INT_MAX;
                if max_adver_int != 0 {
                    let addresses = vec![Ipv4Addr::new(10, 99, 0, 100)];
                    let advert = Advert { vrid: input.vrid, priority, max_adver_int, addresses };
                    router.on_advert(now, Ipv4Addr::from(sender), &advert);
                }
            }
            Event::Timer => {
                if let Some(deadline) = router.next_deadline() {
                    now = now.max(deadline);
                }
                router.on_timer(now);
            }
            Event::Tick { after_ms } => {
                now += Duration::from_millis(u64::from(after_ms));
                router.on_timer(now);
            }
            Event::SetPriority { priority } => {
                router.set_priority(now, priority);
            }
            Event::Start => {
                router.start(now);
            }
            Event::Shutdown => {
                router.shutdown(now);
            }
            Event::Fault => {
                router.fault(now, "link down".into());
            }
        }
        let deadline = router.next_deadline();
        match router.role() {
            Role::Initialize | Role::Fault => assert_eq!(deadline, None),
            Role::Backup | Role::Active => {
                let deadline = deadline.expect("a running router has a timer");
                assert!(!serviced || deadline > now, "deadline {deadline:?} overdue at {now:?} after on_timer");
            }
        }
    }
});
