//! `cargo xtask setup`: installs what is missing, says what it does, and does nothing on a ready machine.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{run, step};

/// Debian packages: LLVM 22 for bpf-linker, and the tools and peers the tests, the demo and the benchmarks use.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22 (nightly's LLVM)"),
    ("libpolly-22-dev", "bpf-linker's LLVM link needs Polly"),
    ("libzstd-dev", "bpf-linker's LLVM link needs zstd"),
    ("iproute2", "ip netns/link/addr for the netns labs"),
    ("ethtool", "turning off TX checksum offload on lab veths"),
    ("iputils-ping", "ping through the VIP"),
    ("arping", "who answers ARP for the VIP"),
    ("keepalived", "VRRP interop peer (2.2.7)"),
    ("tshark", "decoding xvip's adverts independently"),
    ("tcpdump", "troubleshooting captures"),
    ("bpftool", "inspecting programs and maps"),
    ("nginx", "benchmark backends and the nginx stream proxy baseline"),
    ("libnginx-mod-stream", "nginx stream proxy baseline"),
    ("haproxy", "haproxy mode tcp baseline"),
    ("nftables", "nftables DNAT baseline"),
    ("wrk", "HTTP load generator for benchmarks"),
    ("openssl", "TLS servers with test certificates for the verify test"),
    ("dpkg-dev", "dpkg-shlibdeps for the Debian package's Depends"),
    ("lintian", "checking the Debian package (cargo xtask package)"),
    ("systemd", "systemd-analyze verify on the unit"),
    ("prometheus", "a real Prometheus scraping xvip's metrics, and promtool (the metrics test)"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The newest cargo-fuzz whose dependencies build with the stable toolchain here (installed with `--locked`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"))
}

pub fn all() -> Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    step("setup: everything is in place");
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&(&str, &str)> = PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        step(&format!("setup: {} Debian packages already installed", PACKAGES.len()));
        return Ok(());
    }
    for (p, why) in &missing {
        step(&format!("setup: will install {p} ({why})"));
    }
    if !crate::is_root_user() {
        bail!("installing Debian packages needs root; run as root or install them yourself");
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing.iter().map(|(p, _)| *p)))?;
    Ok(())
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is missing ({}): the eBPF build needs it",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
        step("setup: nightly rust-src already installed");
        return Ok(());
    }
    step("setup: installing rust-src for nightly (for -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    let linker = cargo_home().join("bin/bpf-linker");
    let version = Command::new(&linker).arg("--version").output();
    if let Ok(out) = &version
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        step(&format!("setup: bpf-linker {BPF_LINKER_VERSION} already installed"));
        return Ok(());
    }
    step(&format!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes on 2 cores)"));
    // Debian puts libLLVM under /usr/lib/llvm-22, not /usr/lib64 where the default build looks.
    run(Command::new("cargo")
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"]))
}

/// cargo-fuzz, which `cargo xtask fuzz` (and the short fuzz runs of `cargo xtask test`) drive.
fn cargo_fuzz() -> Result<()> {
    let binary = cargo_home().join("bin/cargo-fuzz");
    if let Ok(out) = Command::new(&binary).arg("--version").output()
        && crate::fuzz::cargo_fuzz_version_ok(&out.stdout, CARGO_FUZZ_VERSION)
    {
        step(&format!("setup: cargo-fuzz {CARGO_FUZZ_VERSION} already installed"));
        return Ok(());
    }
    step(&format!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (about 2 minutes on 2 cores)"));
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked"]))
}
