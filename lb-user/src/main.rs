//! `xvip`: a highly available virtual IP with an XDP load balancer behind it. See `xvip --help`.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use xvip::{agent, config, control};

#[derive(Parser)]
#[command(name = "xvip", version, about = "A highly available virtual IP (VRRPv3) with an XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr; RUST_LOG=debug for more).
    Run {
        #[arg(short, long, default_value = "/etc/xvip/xvip.toml")]
        config: PathBuf,
    },
    /// Validate a config without touching the system: each problem as PATH:LINE:COL: message.
    Check {
        #[arg(short, long, default_value = "/etc/xvip/xvip.toml")]
        config: PathBuf,
    },
    /// Ask the running daemon for its status.
    Status {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
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
        Command::Status { socket, json } => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("xvip: starting the runtime: {e}");
                    return ExitCode::from(1);
                }
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
                    // Give the log writer a moment to write the last line before the process exits.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    ExitCode::from(1)
                }
            }
        }
    }
}
