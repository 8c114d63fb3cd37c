//! `cargo xtask demo` works: the demo program runs every step, each behaves as it claims, and it exits 0; so does
//! its stacked variant (`cargo xtask demo --stacked`). Needs root.
use std::process::Command;

/// Runs `xvip-demo` with `args`; asserts that it exited 0, printed every line of `expected` and no failure.
fn demo(args: &[&str], expected: &[&str]) {
    assert!(xvip_tests::is_root(), "the demo needs root: run the tests through `cargo xtask test` as root");
    let xvip = xvip_tests::xvip::binary().expect("the xvip binary (cargo xtask build)");
    let output = Command::new(env!("CARGO_BIN_EXE_xvip-demo"))
        .args(args)
        .env("XVIP_BIN", &xvip)
        .env("XVIP_LAB_BACKEND", env!("CARGO_BIN_EXE_lab-backend"))
        .output()
        .expect("running xvip-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let all = format!("{stdout}\n--- stderr ---\n{stderr}");
    eprintln!("{all}");
    assert!(output.status.success(), "xvip-demo {args:?} exited with {}:\n{all}", output.status);
    for line in expected {
        assert!(stdout.contains(line), "no {line:?} in the demo's output:\n{all}");
    }
    assert!(!stdout.contains("FAILED"), "a step failed:\n{all}");
}

#[test]
fn the_demo_runs_every_step_and_exits_zero() {
    demo(
        &[],
        &[
            "[1/6] election",
            "[2/6] load balancing",
            "[3/6] failover",
            "[4/6] backend loss",
            "[5/6] hand-back",
            "[6/6] graceful stop",
            "$ xvip status",
            "ok: exactly one MAC answers for the VIP",
            "demo: 6 steps ok",
        ],
    );
}

#[test]
fn the_stacked_demo_runs_every_step_from_both_clients_and_exits_zero() {
    demo(
        &["--stacked"],
        &[
            "[1/6] election",
            "ok: the node with the highest priority is active, the other two backups and agree",
            "[2/6] load balancing",
            // Both clients reach all three nodes' own backends; the local one straight, by the socket balancer.
            "client: 30 requests, each on a new connection: node1 ",
            "client on node2: 30 requests, each on a new connection: node1 ",
            "ok: outside flows are translated by node1 (the backend sees the VIP); node2's connect went straight",
            "[3/6] failover",
            "ok: the outage of the client on node2 (",
            "ok: node1's xvip is dead but its web server is not",
            "[4/6] backend loss: node2's own backend",
            "client on node2: 30 requests, each on a new connection: node1 ",
            "[5/6] hand-back",
            "ok: the hand-back outage of the client on node2",
            "[6/6] graceful stop",
            "$ xvip status",
            "ok: exactly one MAC answers for the VIP",
            "demo: 6 steps ok",
        ],
    );
}
