//! Finding the `lab-backend` binary (built from `src/bin/lab-backend.rs` of this crate).
//!
//! [`locate`] looks where cargo puts it, next to the test or program running;
//! [`LabSpec::backend_bin`](crate::LabSpec::backend_bin) names another one (the `lab` test passes
//! `env!("CARGO_BIN_EXE_lab-backend")`).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The binary's file name.
pub const BINARY: &str = "lab-backend";

/// Environment variable that overrides where the binary is looked for.
pub const ENV_OVERRIDE: &str = "XVIP_LAB_BACKEND";

/// Finds `lab-backend`: `$XVIP_LAB_BACKEND`, then next to the current executable (and one directory up, where
/// cargo puts binaries relative to `target/*/deps/` test executables), then `$CARGO_TARGET_DIR` or this
/// workspace's `target/`, `debug` before `release`.
///
/// # Errors
/// When none of those exists; the message says how to build it.
pub fn locate() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os(ENV_OVERRIDE) {
        candidates.push(PathBuf::from(path));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(BINARY));
        }
    }
    let workspace_target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(workspace_target);
    for profile in ["debug", "release"] {
        candidates.push(target.join(profile).join(BINARY));
    }
    if let Some(found) = candidates.iter().find(|c| c.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "{BINARY} not found (looked at {candidates:?}); build it with `cargo build -p xvip-tests --bin {BINARY}` \
         or set {ENV_OVERRIDE}"
    )
}
