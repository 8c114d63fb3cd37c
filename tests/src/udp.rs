//! A UDP echo server for the lab, the UDP counterpart of `lab-backend`: it answers every datagram with
//! `<name> <client address:port> <payload>`, so a test sees which backend answered and whom that backend saw as
//! the sender. It runs on a thread of the test process with its socket opened in a host's namespace (a socket
//! stays in the namespace it was created in), and stops when dropped.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::netns;

pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Listens on `0.0.0.0:port` in namespace `ns`, answering as `name`.
    ///
    /// # Errors
    /// When the namespace cannot be entered or the port cannot be bound.
    pub fn start(ns: &str, name: &str, port: u16) -> Result<UdpEcho> {
        Self::start_on(ns, name, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
    }

    /// [`start`](Self::start) on `address` (`[::]:port` for IPv6 clients too).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_on(ns: &str, name: &str, address: SocketAddr) -> Result<UdpEcho> {
        let socket = netns::in_netns(ns, move || {
            let socket = UdpSocket::bind(address).with_context(|| format!("binding UDP {address}"))?;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(socket)
        })
        .with_context(|| format!("UDP echo server {name} in {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (name, flag) = (name.to_owned(), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name(format!("udp echo {name}"))
            .spawn(move || {
                let mut buf = [0u8; 1500];
                while !flag.load(Ordering::Relaxed) {
                    // A timeout (or any error) just comes round to the stop flag again.
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let payload = String::from_utf8_lossy(&buf[..n]);
                        let _ = socket.send_to(format!("{name} {from} {payload}").as_bytes(), from);
                    }
                }
            })
            .context("spawning the UDP echo thread")?;
        Ok(UdpEcho { stop, thread: Some(thread) })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An echo server's answer: (its name, the sender it saw, the payload it echoed).
///
/// # Errors
/// When `reply` is not `<name> <address:port> <payload>`.
pub fn parse_echo(reply: &[u8]) -> Result<(String, SocketAddr, String)> {
    let text = std::str::from_utf8(reply).context("the echo is not UTF-8")?;
    let mut fields = text.splitn(3, ' ');
    let (Some(name), Some(from), Some(payload)) = (fields.next(), fields.next(), fields.next()) else {
        anyhow::bail!("expected `<name> <address:port> <payload>`, found {text:?}");
    };
    let from = from.parse().with_context(|| format!("the sender in the echo {text:?}"))?;
    Ok((name.to_owned(), from, payload.to_owned()))
}
