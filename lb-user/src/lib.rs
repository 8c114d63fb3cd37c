//! xvip: a highly available virtual IP with an XDP load balancer behind it.
//!
//! See ARCHITECTURE.md for the map of this crate.
pub mod config;
pub mod dataplane;
pub mod garp;
pub mod health;
pub mod maglev;
pub mod neighbour;
pub mod vrrp;
