//! The xvip netns lab: a throwaway network of namespaces on one machine for end-to-end tests, `cargo xtask demo`
//! and `cargo xtask bench`.
//!
//! - [`Lab`] builds the topology from a [`LabSpec`]: a bridge namespace with `br0`, a client, 2..=3 nodes and
//!   backends, each with one `eth0` veth on the bridge; addresses in 10.77.K.0/24, VIP .250. It removes
//!   everything it made when dropped, also during a panic.
//! - `lab-backend` (a binary of this crate) is the HTTP server on the backends; [`Lab::start_backends`] runs it.
//! - [`probe`] measures from the client: outages ([`probe::Probe`]), load distribution
//!   ([`probe::request_many`]) and long-lived connections ([`probe::StreamWatch`]).
//! - [`udp::UdpEcho`]: a UDP echo server in a host's namespace, for UDP services.
//! - [`reach`]: ping, an ARP prober and an IPv6 Neighbor Solicitation prober reporting every responder, the
//!   neighbour table.
//! - [`keepalived`]: keepalived as a VRRPv3 peer.
//! - [`pmtu`]: path MTU discovery through a node: a real TCP packet captured, quoted in an ICMP error sent as a
//!   raw frame, the path MTU the receiving kernel then holds.
//!
//! Everything needs root. Namespaces are named `xvl-<pid>-<counter>-<host>`, so parallel runs never collide, and
//! processes are only ever stopped by their own pid.
//!
//! ```no_run
//! use std::time::Duration;
//! use xvip_tests::{Lab, LabSpec, probe};
//!
//! let lab = Lab::new(LabSpec { nodes: 2, backends: 3, ..LabSpec::default() })?;
//! lab.start_backends(&[8080])?;
//! let target = std::net::SocketAddr::from((lab.backend(1).ip, 8080));
//! let report = probe::run_for(&lab.client().ns, probe::ProbeSpec::http(target), Duration::from_secs(1))?;
//! assert!(report.longest_gap < Duration::from_millis(100), "{}", report.summary());
//! # anyhow::Ok(())
//! ```

pub mod backend;
pub mod capture;
pub mod cmd;
pub mod extra;
pub mod flood;
#[path = "../../lb-user/tests/support/frames.rs"]
pub mod frames;
pub mod http;
pub mod ipv6;
pub mod keepalived;
pub mod netns;
pub mod pmtu;
pub mod probe;
pub mod process;
pub mod reach;
pub mod soak;
pub mod topology;
pub mod udp;
pub mod xdp_pass;
pub mod xvip;

pub use keepalived::{Keepalived, KeepalivedSpec};
pub use process::ChildGuard;
pub use topology::{Host, Lab, LabSpec, MacAddr, Role};

/// What `lab-backend` prints once it listens on every port; [`Lab::start_backend`] waits for it.
pub const READY_LINE: &str = "lab-backend ready";

/// Whether this process can build labs (it runs as root); the demo, the benchmarks and the tests refuse to run without.
pub fn is_root() -> bool {
    // SAFETY: plain syscall without arguments.
    unsafe { libc::geteuid() == 0 }
}
