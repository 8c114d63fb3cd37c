//! systemd's readiness and watchdog protocol (`sd_notify(3)`): one datagram per message to the socket named by
//! `$NOTIFY_SOCKET`. Small enough to keep here rather than take a dependency.
//!
//! - `READY=1` once the first role is decided (`Type=notify` waits for it),
//! - `WATCHDOG=1` from the advert thread, at half of `$WATCHDOG_USEC` (`WatchdogSec=`): an agent that hangs stops
//!   sending it and systemd restarts it,
//! - `STATUS=...` with the role, `STOPPING=1` on the way out.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd) every call does nothing.
use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
    path::{Path, PathBuf},
    time::Duration,
};

/// Where notifications go, if anywhere.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd sets: `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) and
    /// `$WATCHDOG_USEC` (only when `$WATCHDOG_PID` is unset or ours).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let for_us = std::env::var("WATCHDOG_PID").ok().is_none_or(|pid| pid == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .filter(|_| for_us)
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0)
            .map(Duration::from_micros);
        match socket.map(|path| Notifier::new(&path, watchdog)) {
            Some(Ok(notifier)) => notifier,
            Some(Err(e)) => {
                log::warn!("systemd notification socket unusable: {e}; running without readiness notification");
                Notifier::none()
            }
            None => Notifier::none(),
        }
    }

    /// A notifier that sends nothing.
    pub fn none() -> Self {
        Notifier { target: None, watchdog: None }
    }

    /// Notifications to `path` (`@name` = the abstract socket `name`), with the watchdog period systemd expects.
    ///
    /// # Errors
    /// When the datagram socket cannot be created or the abstract name is invalid.
    pub fn new(path: &Path, watchdog: Option<Duration>) -> io::Result<Self> {
        use std::os::linux::net::SocketAddrExt;
        let text = path.as_os_str().as_encoded_bytes();
        let address = match text.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(path)?,
        };
        Ok(Notifier { target: Some((UnixDatagram::unbound()?, address)), watchdog })
    }

    /// How often to send `WATCHDOG=1`: half the period systemd watches, so one late ping is not fatal.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.target {
            // Never blocks for long: a datagram to a local socket; a failure only costs the notification.
            if let Err(e) = socket.send_to_addr(message.as_bytes(), address) {
                log::debug!("systemd notification {message:?}: {e}");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(tag: &str) -> (UnixDatagram, PathBuf) {
        let path = std::env::temp_dir().join(format!("xvip-notify-{}-{tag}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        (socket, path)
    }

    fn next(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_ready_watchdog_status_and_stopping_as_datagrams() {
        let (socket, path) = receiver("dg");
        let n = Notifier::new(&path, Some(Duration::from_secs(10))).expect("notifier");
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        n.ready("backup, priority 100");
        assert_eq!(next(&socket), "READY=1\nSTATUS=backup, priority 100");
        n.watchdog();
        assert_eq!(next(&socket), "WATCHDOG=1");
        n.status("active");
        assert_eq!(next(&socket), "STATUS=active");
        n.stopping();
        assert_eq!(next(&socket), "STOPPING=1");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn abstract_socket_names_start_with_at() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("xvip-notify-test-{}", std::process::id());
        let socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).expect("name")).expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let n = Notifier::new(Path::new(&format!("@{name}")), None).expect("notifier");
        assert_eq!(n.watchdog_interval(), None);
        n.watchdog();
        assert_eq!(next(&socket), "WATCHDOG=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::none();
        n.ready("x");
        n.watchdog();
        assert_eq!(n.watchdog_interval(), None);
    }
}
