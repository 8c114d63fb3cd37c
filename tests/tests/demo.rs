//! `cargo xtask demo` works: the demo program runs every step, each behaves as it claims, and it exits 0. Needs
//! root.
use std::process::Command;

#[test]
fn the_demo_runs_every_step_and_exits_zero() {
    assert!(xvip_tests::is_root(), "the demo needs root: run the tests through `cargo xtask test` as root");
    let xvip = xvip_tests::xvip::binary().expect("the xvip binary (cargo xtask build)");
    let output = Command::new(env!("CARGO_BIN_EXE_xvip-demo"))
        .env("XVIP_BIN", &xvip)
        .env("XVIP_LAB_BACKEND", env!("CARGO_BIN_EXE_lab-backend"))
        .output()
        .expect("running xvip-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let all = format!("{stdout}\n--- stderr ---\n{stderr}");
    eprintln!("{all}");
    assert!(output.status.success(), "xvip-demo exited with {}:\n{all}", output.status);
    for step in [
        "[1/6] election",
        "[2/6] load balancing",
        "[3/6] failover",
        "[4/6] backend loss",
        "[5/6] hand-back",
        "[6/6] graceful stop",
        "$ xvip status",
        "ok: exactly one MAC answers for the VIP",
        "demo: 6 steps ok",
    ] {
        assert!(stdout.contains(step), "no {step:?} in the demo's output:\n{all}");
    }
    assert!(!stdout.contains("FAILED"), "a step failed:\n{all}");
}
