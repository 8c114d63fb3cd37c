//! `xvip`: a highly available virtual IP with an XDP load balancer behind it. See `xvip --help`.
use std::{path::Path, process::ExitCode, time::Duration};

use clap::Parser;
use xvip::{
    agent,
    cli::{Cli, Command},
    config, control, verify,
};

fn main() -> ExitCode {
    let code = run();
    // The log writer is a thread of its own: the last lines (why the daemon stopped) must reach stderr first.
    xvip::logging::flush(Duration::from_millis(500));
    code
}

fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not usage errors.
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    if let Command::Run { .. } = cli.command {
        // A SIGHUP (an early `systemctl reload`) before the daemon's handler is installed must not kill it: ignore
        // it until then; the config is read right after anyway.
        // SAFETY: setting a signal disposition; no handler code runs.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    }
    if let Err(e) = xvip::logging::init() {
        eprintln!("xvip: starting the log writer: {e}");
        return ExitCode::from(1);
    }
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in &problems {
                    eprintln!("{p}");
                }
                ExitCode::from(2)
            }
        },
        Command::Generate { dir } => match xvip::cli::generate(&dir) {
            Ok(written) => {
                for path in written {
                    println!("{}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xvip: writing into {}: {e}", dir.display());
                ExitCode::from(1)
            }
        },
        Command::Verify { config: path } => run_verify(&path),
        Command::Trace { socket, client, vip, port, rate, json } => {
            let filter = xvip::trace::Filter { client, vip, port, rate };
            if let Err(e) = filter.check() {
                // A usage error, as clap's own for a bad --client or --rate (exit 2).
                xvip::cli::command().error(clap::error::ErrorKind::ArgumentConflict, e).exit();
            }
            run_trace(&socket, &filter, json)
        }
        Command::Status { socket, json } => {
            let Some(runtime) = current_thread_runtime() else {
                return ExitCode::from(1);
            };
            match runtime.block_on(control::query(&socket)) {
                Ok(status) if json => match serde_json::to_string_pretty(&status) {
                    Ok(text) => {
                        println!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("xvip: {e}");
                        ExitCode::from(1)
                    }
                },
                Ok(status) => {
                    print!("{}", status.render());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("xvip: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run { config: path } => {
            let config = match config::load(&path) {
                Ok(c) => c,
                Err(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!("xvip: {} has {} problem(s); nothing was started", path.display(), problems.len());
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("xvip: starting the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(agent::run(&path, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("xvip: starting the runtime: {e}");
            None
        }
    }
}

/// `xvip trace`: one line per event on stdout until interrupted (SIGINT or SIGTERM: 0, as when stdout's reader
/// goes away), 1 when no daemon answers, it refuses, or it stops.
fn run_trace(socket: &Path, filter: &xvip::trace::Filter, json: bool) -> ExitCode {
    use std::io::Write as _;
    let Some(runtime) = current_thread_runtime() else {
        return ExitCode::from(1);
    };
    let result = runtime.block_on(async {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => return Err(anyhow::anyhow!("installing the SIGTERM handler: {e}")),
        };
        let mut out = std::io::stdout().lock();
        let each = move |event: xvip::trace::Event| -> std::io::Result<()> {
            let line =
                if json { serde_json::to_string(&event).map_err(std::io::Error::other)? } else { event.render() };
            writeln!(out, "{line}")?;
            // Every line at once, also into a pipe (`| grep`).
            out.flush()
        };
        tokio::select! {
            end = control::trace(socket, filter, each) => end.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
            _ = terminate.recv() => Ok(None),
        }
    });
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(control::TraceEnd::Closed)) => {
            eprintln!("xvip: the daemon closed the trace (it stopped?)");
            ExitCode::from(1)
        }
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xvip: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `xvip verify`: 0 when every check holds, 1 when one does not, 2 on a bad config.
fn run_verify(path: &Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = current_thread_runtime() else {
        return ExitCode::from(1);
    };
    let report = runtime.block_on(async {
        // A daemon on this node, if any, says whether each VIP can be reached from here (not while it serves it).
        let roles = tokio::time::timeout(Duration::from_millis(500), control::query(&config.control.socket))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|status| {
                let mut roles: std::collections::BTreeMap<String, String> =
                    status.instances.iter().map(|i| (i.name.clone(), i.role.clone())).collect();
                if roles.is_empty() {
                    // A daemon from before instances: its one instance is the top level.
                    roles.insert(config::DEFAULT_INSTANCE.to_owned(), status.role);
                }
                roles
            });
        verify::verify(path, &config, roles.as_ref()).await
    });
    print!("{}", report.render());
    if report.failures() == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
