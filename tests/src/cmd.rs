//! Running external commands (`ip`, `ethtool`, `sysctl`, ...) with their status checked and their stderr kept.
//!
//! The lab drives the kernel through the same tools a person would type, so a failing step can be replayed by
//! hand: every error names the full command line and carries its stderr.

use std::ffi::OsStr;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Renders a command line for error messages and logs.
pub fn display(program: &OsStr, args: &[&OsStr]) -> String {
    let mut line = program.to_string_lossy().into_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

fn describe(command: &Command) -> String {
    let args: Vec<&OsStr> = command.get_args().collect();
    display(command.get_program(), &args)
}

/// Runs `command` to completion and returns its stdout.
///
/// # Errors
/// When the program cannot be started or exits unsuccessfully; the error holds the command line, the exit status
/// and stderr.
pub fn run(command: &mut Command) -> Result<String> {
    let output = output(command)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Like [`run`], but returns the whole [`Output`] (stdout and stderr).
///
/// # Errors
/// As [`run`].
pub fn output(command: &mut Command) -> Result<Output> {
    let line = describe(command);
    let output = command.output().with_context(|| format!("starting `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            if output.stdout.is_empty() {
                String::new()
            } else {
                format!(" (stdout: {})", String::from_utf8_lossy(&output.stdout).trim())
            }
        );
    }
    Ok(output)
}

/// Runs `program args...` to completion and returns its stdout.
///
/// # Errors
/// As [`run`].
pub fn run_args<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new(program).args(args))
}

/// `ip -n NS ARGS...`: iproute2 inside a namespace without an extra `ip netns exec`.
///
/// # Errors
/// As [`run`].
pub fn ip_in<I, S>(ns: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// `ip netns exec NS PROGRAM ARGS...`, checked; returns stdout.
///
/// # Errors
/// As [`run`].
pub fn exec_in<I, S>(ns: &str, program_and_args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("ip").args(["netns", "exec", ns]).args(program_and_args))
}
