//! The VRRP receive path: `parse_ipv4` over what a raw protocol-112 socket delivers, then the emitter.
//!
//! Input: `[vrid, mode]` then the IPv4 packet. `mode & 1` turns on unicast mode with the peers of the captures
//! (10.99.0.1 and 10.99.0.2). Properties checked on every accepted advert:
//! - its fields are in range (1..=255 addresses, interval 1..=4095 cs, the filter's VRID);
//! - emitting it and parsing the result gives the same advert, source, destination and TTL;
//! - when the reserved bits were 0, the emitted message is byte for byte the one received.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use xvip::vrrp::packet::{MAX_ADVER_INT_MAX, RxFilter, parse_ipv4};

const PEERS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2)];

fuzz_target!(|data: &[u8]| {
    let [vrid, mode, packet @ ..] = data else {
        return;
    };
    let peers: &[Ipv4Addr] = if mode & 1 == 1 { &PEERS } else { &[] };
    let filter = RxFilter { vrid: *vrid, unicast_peers: peers };
    let Ok(rx) = parse_ipv4(packet, &filter) else {
        return;
    };
    let advert = &rx.advert;
    assert_eq!(advert.vrid, *vrid);
    assert!((1..=255).contains(&advert.addresses.len()), "{} addresses", advert.addresses.len());
    assert!((1..=MAX_ADVER_INT_MAX).contains(&advert.max_adver_int), "interval {}", advert.max_adver_int);
    if !peers.is_empty() {
        assert!(peers.contains(&rx.src));
    }

    let message = advert.to_bytes(rx.src, rx.dst, rx.checksum).expect("an accepted advert can be emitted");
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let mut again = packet[..ihl].to_vec();
    let total = u16::try_from(ihl + message.len()).expect("at most 60 + 8 + 4 * 255 bytes");
    again[2..4].copy_from_slice(&total.to_be_bytes());
    again.extend_from_slice(&message);
    let reparsed = parse_ipv4(&again, &filter).expect("an emitted advert is accepted");
    assert_eq!((&reparsed.advert, reparsed.src, reparsed.dst, reparsed.ttl), (advert, rx.src, rx.dst, rx.ttl));

    let received = &packet[ihl..ihl + message.len()];
    if received[4] & 0xf0 == 0 {
        assert_eq!(message, received, "re-emitted message differs from the received one");
        assert_eq!(reparsed.checksum, rx.checksum);
    }
});
