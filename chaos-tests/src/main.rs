//! `strom-chaos`: a seeded chaos run against a Strom cluster in Docker containers.
//!
//! `cargo run -p strom-chaos-tests -- --profile ci` (a fixed set of faults in a seeded
//! order and a full rolling upgrade; what `.ci/run` runs) or
//! `-- --profile soak --duration 1h` (random faults until the time is up). The seed
//! and the command that reproduces the run are printed first and last; the exit
//! code is 0 when every check passed, 1 otherwise. See docs/reliability.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use strom_chaos_tests::run::{self, Options, Profile};

use strom_testkit::handler as support;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileArg {
    Ci,
    Soak,
    Upgrade,
}

#[derive(Debug, Parser)]
#[command(
    name = "strom-chaos",
    about = "Fault injection against a Strom cluster in Docker containers, with a history checker"
)]
struct Args {
    /// `ci`: each fault once (leader kill, leader isolation, worker kill, pause, 2|3
    /// split, worker cut, follower kill, restart, checkpoint store away, broker
    /// restart, worker cut from the broker) in a seeded order, then a rolling
    /// upgrade of every node. `soak`: random faults until `--duration` is over.
    /// `upgrade`: one rolling upgrade under load (from `--from-binary`, if given).
    #[arg(long, value_enum, default_value = "ci")]
    profile: ProfileArg,
    /// How long the soak injects faults (e.g. `1h`, `20m`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    duration: Duration,
    /// The plan's seed (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Management nodes (at least 3; 5 for a 2|3 split).
    #[arg(long, default_value_t = 5)]
    managers: usize,
    /// Worker nodes (at least 2, so that one can fail while another serves).
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// The `strom` binary to run (default: built now with cargo, same profile).
    #[arg(long)]
    strom_binary: Option<PathBuf>,
    /// An older `strom` binary to start the cluster on; the rolling upgrade moves it
    /// to `--strom-binary`.
    #[arg(long)]
    from_binary: Option<PathBuf>,
    /// Leave the containers running afterwards.
    #[arg(long)]
    keep: bool,
}

fn build_strom() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the harness binary's folder")?;
    let mut cmd = strom_chaos_tests::nested_cargo();
    cmd.args(["build", "-p", "strom-node", "--bin", "strom"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    println!("building strom ({:?})…", cmd);
    if !cmd.status().context("running cargo")?.success() {
        bail!("cargo build of strom failed");
    }
    let strom = dir.join("strom");
    if !strom.is_file() {
        bail!("no {} after cargo build", strom.display());
    }
    Ok(strom)
}

/// `strom-test-handler`, built like `strom` (same profile), for the `mq` app.
fn build_test_handler() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the harness binary's folder")?;
    let mut cmd = strom_chaos_tests::nested_cargo();
    cmd.args(["build", "-p", "strom-node", "--bin", "strom-test-handler"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    if !cmd.status().context("running cargo")?.success() {
        bail!("cargo build of strom-test-handler failed");
    }
    let handler = dir.join("strom-test-handler");
    if !handler.is_file() {
        bail!("no {} after cargo build", handler.display());
    }
    Ok(handler)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match main_inner(args).await {
        Ok(true) => {
            println!("chaos run passed");
            std::process::ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("chaos run FAILED (see the checks above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn main_inner(args: Args) -> anyhow::Result<bool> {
    if args.managers < 3 {
        bail!(
            "--managers {}: at least 3 (a leader must be killable)",
            args.managers
        );
    }
    if args.workers < 2 {
        bail!(
            "--workers {}: at least 2 (one must serve while another fails)",
            args.workers
        );
    }
    if args.managers + args.workers > 40 {
        bail!("--managers + --workers: at most 40 nodes");
    }
    for (flag, path) in [
        ("--strom-binary", &args.strom_binary),
        ("--from-binary", &args.from_binary),
    ] {
        if let Some(p) = path {
            if !p.is_file() {
                bail!("{flag} {}: no such file", p.display());
            }
        }
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_007)
            .unwrap_or(1)
    });
    let strom = match args.strom_binary {
        Some(p) => p,
        None => build_strom()?,
    };
    if let Some(from) = &args.from_binary {
        let same = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?
            == std::fs::read(&strom).with_context(|| format!("reading {}", strom.display()))?;
        if same {
            bail!(
                "--from-binary {} is the same binary as the one being upgraded to ({}): \
                 nothing would be upgraded. If the old one was built from another checkout \
                 with the same CARGO_TARGET_DIR, cargo may now think this checkout is up to \
                 date with the other one's build: touch this checkout's sources and run again, \
                 or build the old binary with its own CARGO_TARGET_DIR",
                from.display(),
                strom.display()
            );
        }
    }
    let work = std::env::temp_dir().join("strom-chaos");
    std::fs::create_dir_all(&work)?;
    let handler = support::handler_binary(&work);
    let echo_handler = build_test_handler()?;
    let options = Options {
        profile: match args.profile {
            ProfileArg::Ci => Profile::Ci,
            ProfileArg::Soak => Profile::Soak,
            ProfileArg::Upgrade => Profile::Upgrade,
        },
        seed,
        duration: args.duration,
        managers: args.managers,
        workers: args.workers,
        strom,
        from: args.from_binary,
        keep: args.keep,
        work,
        handler,
        echo_handler,
    };
    run::run(options).await
}
