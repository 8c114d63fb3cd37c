//! The command line of `xvip`: its clap definition, and what is generated from it (the man pages and shell
//! completions the Debian package installs, and `docs/cli.md`), so the three never disagree with `--help`.
use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
};

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::config;

/// Where `run`, `check` and `verify` read the config unless `-c` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/xvip/xvip.toml";

#[derive(Parser, Debug)]
#[command(
    name = "xvip",
    version,
    about = "A highly available virtual IP (VRRPv3) with an XDP load balancer",
    long_about = "A highly available virtual IP (VRRPv3) with an XDP load balancer.\n\n\
                  One daemon per node elects the active node with VRRPv3 (keepalived-compatible on the wire); the \
                  active node answers ARP for the VIP and load-balances its services to healthy backends in XDP \
                  (NAT or DSR). The config is a TOML file, /etc/xvip/xvip.toml by default; its reference is \
                  docs/config.md (/usr/share/doc/xvip/docs/config.md from the Debian package)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground (logs to stderr; RUST_LOG=debug for more).
    ///
    /// SIGTERM or SIGINT stop it gracefully (a priority-0 advert first, so a backup takes over at once); SIGHUP
    /// reloads the config, applying only the difference and keeping the running config if the new one is invalid.
    /// Exit status: 0 after a clean stop, 1 on a runtime failure, 2 on a bad config.
    Run {
        /// The config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config without touching the system: each problem as PATH:LINE:COL: message.
    ///
    /// Exit status: 0 valid, 2 invalid.
    Check {
        /// The config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Ask the running daemon for its status.
    ///
    /// The table shows the role and why it last changed, each backend's health, traffic and drain state, and the
    /// data plane's counters; --json prints the documented JSON document. Exit status: 0, or 1 when no daemon
    /// answers.
    Status {
        /// The daemon's status socket (`control.socket` in its config).
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Check from this node what clients and health checks meet: through the VIP and at each backend.
    ///
    /// For each TCP service: connects through the VIP and to every backend; for https services shows each TLS
    /// certificate's subject and SANs, checks that they include the VIP and vip.hostname, checks the chain against
    /// ca_file (or the system CA bundle when tls_verify is on without ca_file), then asks the health endpoint.
    /// Run it on a node that is not active (or any other host): a node cannot reach the VIP it serves.
    /// Exit status: 0 when every check holds, 1 when one does not, 2 on a bad config.
    Verify {
        /// The config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Follow the data plane's per-packet decisions, one line each, until interrupted.
    ///
    /// For every frame to a VIP that matches the filters: the instance and service, the frame (protocol, source,
    /// destination, TCP flags, interface), what the XDP program did and why (the reasons of `xvip status`), the
    /// backend, the NAT port, and for a backend's reply the client it goes back to. The daemon switches its trace
    /// records on while at least one `xvip trace` is connected and off when the last one leaves; each CPU emits at
    /// most --rate records per second, and lines starting with # say how many were held back. IPv4 and IPv6: a
    /// --client or --vip of one family leaves out the other.
    /// Exit status: 0 when interrupted, 1 when no daemon answers (or it stops).
    Trace {
        /// The daemon's status socket (`control.socket` in its config).
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Only flows of this client address or prefix, IPv4 or IPv6 (ADDR or ADDR/LEN: 10.0.0.0/24,
        /// 2001:db8::/64; for a backend's reply through NAT, the client it goes back to).
        #[arg(long, value_name = "ADDR[/LEN]")]
        client: Option<crate::trace::Prefix>,
        /// Only frames to this VIP (IPv4 or IPv6).
        #[arg(long, value_name = "ADDR")]
        vip: Option<std::net::IpAddr>,
        /// Only flows to this service port on the VIP.
        #[arg(long)]
        port: Option<u16>,
        /// At most this many records per second per CPU (1..=1000; with several clients the highest wins).
        #[arg(long, default_value_t = crate::trace::DEFAULT_RATE,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(lb_common::TRACE_MAX_RATE)))]
        rate: u32,
        /// One JSON object per line (the daemon's events, see docs/trace.md) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the man pages and shell completions generated from this command line into DIR (for packaging).
    #[command(hide = true)]
    Generate {
        /// Receives man8/xvip*.8 and completions/{xvip.bash,_xvip,xvip.fish}.
        dir: PathBuf,
    },
}

/// The clap command, as `--help` shows it.
pub fn command() -> clap::Command {
    Cli::command()
}

/// The command without its hidden subcommands, for the man pages, completions and docs (clap_complete would
/// otherwise complete hidden subcommands too).
fn public_command() -> clap::Command {
    let full = command();
    let visible: Vec<clap::Command> = full.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let mut public = clap::Command::new("xvip").version(env!("CARGO_PKG_VERSION")).subcommand_required(true);
    if let Some(about) = full.get_about() {
        public = public.about(about.clone());
    }
    if let Some(about) = full.get_long_about() {
        public = public.long_about(about.clone());
    }
    public.subcommands(visible)
}

/// Shells whose completions the package installs, with the file name each one looks for.
pub const COMPLETIONS: [(Shell, &str); 3] =
    [(Shell::Bash, "xvip.bash"), (Shell::Zsh, "_xvip"), (Shell::Fish, "xvip.fish")];

/// Writes `man8/xvip.8` and one page per visible subcommand (`xvip-run.8`, ...), section 8 (system
/// administration: it is a daemon), and the completions of [`COMPLETIONS`] into `completions/`.
///
/// # Errors
/// When a directory or file cannot be written.
pub fn generate(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = dir.join("man8");
    std::fs::create_dir_all(&man)?;
    let mut cmd = public_command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![cmd.clone()];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    for page in pages {
        let page = clap_mangen::Man::new(page)
            .section("8")
            .source(format!("xvip {}", env!("CARGO_PKG_VERSION")))
            .manual("System Administration");
        written.push(page.generate_to(&man)?);
    }
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in COMPLETIONS {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut public_command(), "xvip", &mut text);
        let path = completions.join(file);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// `docs/cli.md`: every visible command with its full `--help` text.
pub fn markdown() -> String {
    let mut cmd = public_command();
    cmd.build();
    let mut s = String::new();
    let _ = writeln!(s, "# The `xvip` command line\n");
    let _ = writeln!(
        s,
        "Generated from the clap definitions in `lb-user/src/cli.rs` (the man pages and shell completions of the \
         Debian package come from the same place); `cargo test -p lb-user cli_reference` fails when this file is \
         stale, and `XVIP_UPDATE_DOCS=1 cargo test -p lb-user cli_reference` rewrites it.\n"
    );
    let _ = writeln!(s, "## `xvip`\n\n```text\n{}\n```", render_help(&mut cmd));
    let names: Vec<String> =
        cmd.get_subcommands().filter(|c| !c.is_hide_set()).map(|c| c.get_name().to_owned()).collect();
    for name in names {
        if let Some(sub) = cmd.find_subcommand_mut(&name) {
            let _ = writeln!(s, "\n## `xvip {name}`\n\n```text\n{}\n```", render_help(sub));
        }
    }
    s
}

fn render_help(cmd: &mut clap::Command) -> String {
    cmd.clone().term_width(100).render_long_help().to_string().trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/cli.md is what the command line says.
    #[test]
    fn cli_reference_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
        let wanted = markdown();
        if std::env::var_os("XVIP_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &wanted).expect("write docs/cli.md");
        }
        let found = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            found == wanted,
            "docs/cli.md is stale: run `XVIP_UPDATE_DOCS=1 cargo test -p lb-user cli_reference` and commit it"
        );
    }

    #[test]
    fn every_documented_command_parses_with_its_defaults() {
        for (args, check) in [
            (vec!["xvip", "run"], "run"),
            (vec!["xvip", "check", "-c", "x.toml"], "check"),
            (vec!["xvip", "status", "--json"], "status"),
            (vec!["xvip", "verify"], "verify"),
            (vec!["xvip", "trace"], "trace"),
        ] {
            let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let name = format!("{:?}", cli.command).to_lowercase();
            assert!(name.starts_with(check), "{args:?} parsed as {name}");
        }
        let Command::Verify { config } = Cli::try_parse_from(["xvip", "verify"]).expect("verify").command else {
            panic!("not verify");
        };
        assert_eq!(config, PathBuf::from(DEFAULT_CONFIG));
        let args = ["xvip", "trace", "--client", "10.0.0.0/24", "--vip", "10.0.0.250", "--port", "443", "--rate", "5"];
        let Command::Trace { socket, client, vip, port, rate, json } =
            Cli::try_parse_from(args).expect("trace").command
        else {
            panic!("not trace");
        };
        assert_eq!(socket, PathBuf::from(config::DEFAULT_SOCKET));
        assert_eq!(client.map(|c| c.to_string()).as_deref(), Some("10.0.0.0/24"));
        assert_eq!((vip, port, rate, json), (Some("10.0.0.250".parse().expect("address")), Some(443), 5, false));
        let args = ["xvip", "trace", "--client", "2001:db8::/64", "--vip", "2001:db8:77::250"];
        let Command::Trace { client, vip, .. } = Cli::try_parse_from(args).expect("trace").command else {
            panic!("not trace");
        };
        assert_eq!(client.map(|c| c.to_string()).as_deref(), Some("2001:db8::/64"));
        assert_eq!(vip.map(|v| v.to_string()).as_deref(), Some("2001:db8:77::250"));
        for bad in [
            ["--rate", "0"],
            ["--rate", "1001"],
            ["--client", "10.0.0.1/24"],
            ["--client", "2001:db8::1/64"],
            ["--client", "2001:db8::/129"],
            ["--vip", "2001:db8::/64"],
        ] {
            let e = Cli::try_parse_from(["xvip", "trace", bad[0], bad[1]]).expect_err(&format!("{bad:?}"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: a usage error");
        }
    }

    #[test]
    fn generate_writes_a_man_page_per_command_and_the_completions() {
        let dir = std::env::temp_dir().join(format!("xvip-generate-{}", std::process::id()));
        let written = generate(&dir).expect("generate");
        let names: Vec<String> =
            written.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        for name in [
            "xvip.8",
            "xvip-run.8",
            "xvip-check.8",
            "xvip-status.8",
            "xvip-verify.8",
            "xvip-trace.8",
            "xvip.bash",
            "_xvip",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "the packaging helper stays hidden: {names:?}");
        let page = std::fs::read_to_string(dir.join("man8/xvip-verify.8")).expect("page");
        assert!(page.contains(".TH xvip-verify 8"), "{}", &page[..page.len().min(300)]);
        let bash = std::fs::read_to_string(dir.join("completions/xvip.bash")).expect("bash");
        assert!(bash.contains("verify") && !bash.contains("generate"), "hidden commands are not completed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
