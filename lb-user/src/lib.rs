//! xvip: a highly available virtual IP with an XDP load balancer behind it.
//!
//! See ARCHITECTURE.md for the map of this crate.
pub mod agent;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod engine;
pub mod garp;
pub mod health;
pub mod listener;
pub mod logging;
pub mod maglev;
pub mod metrics;
pub mod neighbour;
pub mod netif;
pub mod services;
pub mod status;
pub mod systemd;
#[cfg(test)]
pub(crate) mod testnet;
pub mod trace;
pub mod verify;
pub mod vrrp;
