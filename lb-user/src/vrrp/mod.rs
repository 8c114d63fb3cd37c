//! VRRPv3 for IPv4 and IPv6 (RFC 5798, with the changes of RFC 9568), split by concern:
//!
//! - [`packet`]: the wire codec and the receive checks of RFC 5798 §7.1 (pure).
//! - [`machine`]: the state machine of RFC 5798 §6 in sans-IO style (pure, virtual time).
//! - [`socket`]: the raw IPv4 protocol-112 socket (the I/O edge, tokio); [`socket6`]: its IPv6 counterpart.
//!
//! The agent owns the loop: it feeds received packets through [`packet::parse_ipv4`] into
//! [`machine::Router::on_advert`], calls [`machine::Router::on_timer`] at
//! [`machine::Router::next_deadline`], and executes the returned [`machine::Action`]s (adverts through
//! [`socket::VrrpSocket`], gratuitous ARP through [`crate::garp`]).

pub mod machine;
pub mod packet;
pub mod socket;
pub mod socket6;

pub use machine::{Action, Cause, Role, Router, Settings};
pub use packet::{Advert, ChecksumMode, Discard, Received, RxFilter};
pub use socket::{InterfaceInfo, VrrpSocket};
pub use socket6::Vrrp6Socket;
