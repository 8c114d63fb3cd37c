//! Packet captures on a lab host with tshark: what went over the wire, timed by the receiving kernel.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Host, Lab, process::ChildGuard};

/// One VRRP advert as captured: when (seconds, the capture's clock), from whom, with which priority and VRID.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeenAdvert {
    pub time: f64,
    pub src: Ipv4Addr,
    pub vrid: u8,
    pub priority: u8,
}

/// A running capture of VRRP adverts (IP protocol 112) on a host's `eth0`; stopped on drop.
pub struct AdvertCapture {
    child: Option<ChildGuard>,
}

impl AdvertCapture {
    /// Starts tshark in `host`'s namespace and waits until it captures.
    ///
    /// # Errors
    /// When tshark cannot start or does not report capturing within 10 s.
    pub fn start(lab: &Lab, host: &Host) -> Result<Self> {
        let mut child = lab.spawn(
            &host.ns,
            [
                "tshark",
                "-l",
                "-n",
                "-i",
                "eth0",
                "-f",
                "ip proto 112",
                "-T",
                "fields",
                "-e",
                "frame.time_epoch",
                "-e",
                "ip.src",
                "-e",
                "vrrp.virt_rtr_id",
                "-e",
                "vrrp.prio",
            ],
        )?;
        child.wait_for_log("Capturing on", Duration::from_secs(10)).context("tshark did not start capturing")?;
        Ok(AdvertCapture { child: Some(child) })
    }

    /// What was captured so far.
    pub fn adverts(&self) -> Vec<SeenAdvert> {
        let text = self.child.as_ref().map(ChildGuard::log).unwrap_or_default();
        parse(&text)
    }

    /// Stops the capture (SIGTERM; tshark flushes) and returns everything it saw.
    ///
    /// # Errors
    /// When tshark cannot be stopped.
    pub fn stop(mut self) -> Result<Vec<SeenAdvert>> {
        let Some(child) = self.child.take() else { bail!("capture already stopped") };
        let log = child.log_path().to_path_buf();
        child.stop()?;
        Ok(parse(&std::fs::read_to_string(&log).unwrap_or_default()))
    }
}

fn parse(text: &str) -> Vec<SeenAdvert> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 4 {
                return None;
            }
            Some(SeenAdvert {
                time: f[0].trim().parse().ok()?,
                src: f[1].trim().parse().ok()?,
                vrid: f[2].trim().parse().ok()?,
                priority: f[3].trim().parse().ok()?,
            })
        })
        .collect()
}

/// The largest time between consecutive adverts from `src` with a priority above 0, and where it ended.
pub fn largest_gap(adverts: &[SeenAdvert], src: Ipv4Addr) -> Option<(Duration, f64)> {
    let times: Vec<f64> = adverts.iter().filter(|a| a.src == src && a.priority > 0).map(|a| a.time).collect();
    times.windows(2).map(|w| (Duration::from_secs_f64((w[1] - w[0]).max(0.0)), w[1])).max_by(|a, b| a.0.cmp(&b.0))
}

/// Waits until `f` holds, polling every 20 ms.
///
/// # Errors
/// When it does not within `timeout`; `what` says what was awaited.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tshark_fields_and_finds_the_largest_gap_per_sender() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let text = "Capturing on 'eth0'\n1.000\t10.0.0.1\t51\t150\n1.100\t10.0.0.1\t51\t150\n1.150\t10.0.0.2\t51\t100\n\
                    1.350\t10.0.0.1\t51\t150\n1.360\t10.0.0.1\t51\t0\n2 packets dropped\n";
        let seen = parse(text);
        assert_eq!(seen.len(), 5);
        let (gap, at) = largest_gap(&seen, a).expect("gaps");
        assert_eq!((gap.as_millis(), at), (250, 1.35));
        assert_eq!(largest_gap(&seen, b), None, "one advert has no gap");
    }
}
