//! Embeds the eBPF object built by `cargo xtask build-ebpf`. The path can be overridden with XVIP_EBPF_OBJECT.
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let object = std::env::var_os("XVIP_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/ebpf/bpfel-unknown-none/release/lb-ebpf"));
    println!("cargo:rerun-if-env-changed=XVIP_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "the eBPF object {} does not exist yet: run `cargo xtask build-ebpf` (or `cargo xtask build`) first",
            object.display()
        );
    }
    println!("cargo:rustc-env=XVIP_EBPF_OBJECT_PATH={}", object.display());
}
