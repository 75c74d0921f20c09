//! `strom-bench`: Strom's benchmarks, each side by side with its baseline in one run.
//!
//! Gateway overhead (`gateway.rs`): the same handler (`strom-test-handler`) and the
//! same client, at 1 and at 32 concurrent keep-alive connections, called
//! - directly on its port (the baseline),
//! - through nginx as a plain reverse proxy (keep-alive upstream; the industry
//!   baseline; skipped with a note when `nginx` is not installed),
//! - through Strom's gateway in forwarding mode and in JSON mode.
//!
//! Gateway cost (`cost.rs`): the instructions `strom up` executes per request in
//! forwarding and JSON mode, counted by callgrind (deterministic where throughput
//! is noisy; skipped with a note without valgrind).
//!
//! Placement (`placements.rs`): the scheduler's pure `plan` over 1,000 simulated
//! workers, placing 10,000 instances from scratch (5,000 apps × 2 and 1,000 apps ×
//! 10), and one incremental round after 10 workers go Down, against a goal of 5,000
//! placements/s.
//!
//! State fan-out (`fanout.rs`): the bytes, the management node's CPU and the
//! time until the last of 1,000 watching workers has one settings change of a
//! 10,000-app cluster, with whole views per change and with deltas.
//!
//! High availability (`ha/`), with real processes on 127.0.0.1:
//! - commit latency and throughput of a 3-node management group (sequential and 64
//!   concurrent `SetAppSettings` over gRPC, each acknowledged after an fsync'd commit
//!   on a majority) against a 3-member etcd cluster loaded the same way through its
//!   JSON gateway (`/v3/kv/put`; skipped with a note when `etcd` is not installed),
//! - leader failover: `kill -9` of the leader, then the time until a client retrying
//!   through the survivors gets a write acknowledged, over `--trials` trials (etcd
//!   measured the same way as the baseline),
//! - resident memory of an idle management node, an idle worker-only node, and that
//!   worker with one running instance (the handler process counted separately).
//!
//! Instance runtimes (`containers.rs`): cold start and crash → serving of the Docker
//! and process runtimes against a bare container and a bare process, and the
//! worker's memory per instance (skipped with a note without a Docker engine).
//!
//! Checkpoints (`ha/checkpoints.rs`): the time and size of a checkpoint of 100
//! apps to a local store (the first sending every package, the next only the
//! state), and a 3-member group's write throughput with checkpoints running back
//! to back against the same load without them.
//!
//! Timers (`timers.rs`): how late a timer run reaches a warm instance after its
//! tick through `strom up`, against a loop that sleeps until each tick and calls
//! the handler directly.
//!
//! Messaging (`messaging.rs`): messages/s and publish → handler → output
//! latency of RabbitMQ messages through Strom against a plain `lapin` consumer
//! calling the same handler, at prefetch 1 and 30, and scale-from-zero latency
//! (skipped with a note without `STROM_RABBITMQ_URL`).
//!
//! Before and after, in one run: `--before DIR` names the folder of an older build's
//! `strom` binary (e.g. `target/release` of a worktree at the base commit); the
//! gateway and HA sections then measure it too, beside this build and the
//! baselines, with its rows marked "(before)". The gateway section measures each
//! pair A B B A (this build, the older, the older, this build; each half the
//! time) and compares their means, so the order a build runs in cancels;
//! `--before-first` makes it B A A B.
//!
//! Run: `cargo run --release -p strom-chaos-tests --bin strom-bench [-- --seconds N]
//! [--trials N] [--only gateway,gateway-cost,placements,fanout,ha,checkpoints,containers,timers,messaging] [--before DIR [--before-first]]
//! [--no-write] [--perf DIR] [--steady SECONDS]`. `--perf DIR` records CPU profiles
//! of the gateway and commit measurements for flame graphs (`profile.rs`);
//! `--steady SECONDS` adds the counterweight to the HA section: steady writes with
//! two busy loops on the machine, and whether the leader changed (`ha/steady.rs`). The gateway and HA sections build the release `strom` binaries if
//! needed; each section prints Markdown tables (latency, throughput and ratios) after
//! a table of machine facts. A full run (every section, no `--before`) also writes
//! the generated block of `docs/benchmarks.md` and `docs/benchmarks.svg`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strom_control_plane::cluster_state::ClusterState;
use strom_control_plane::scheduler::{self, LiveView};
use strom_proto::command::{
    Command as ClusterCommand, CommandResult, DeployVersion, InitialKeys, WorkerCapacity,
    WorkerInfo,
};
use strom_proto::ids::{AppName, ClusterId, TokenHash, VersionId};
use strom_proto::manifest::{pack_dir, validate_app, AppPackage, ZipLimits};
use strom_testkit::ports::free_port;

#[macro_use]
mod report;

mod containers;
mod cost;
mod fanout;
mod gateway;
mod ha;
mod messaging;
mod placements;
mod profile;
mod timers;

/// The benchmark sections, in the order they run; `--only a,b` picks some.
const SECTIONS: [&str; 9] = [
    "gateway",
    "gateway-cost",
    "placements",
    "fanout",
    "ha",
    "checkpoints",
    "containers",
    "timers",
    "messaging",
];

/// Failover trials unless `--trials` says otherwise.
const FAILOVER_TRIALS: usize = 20;

/// A child process, stopped (SIGTERM) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The `q` quantile of sorted values, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The binaries measured: this build's, and an older build's for comparison.
#[derive(Debug, Clone)]
pub struct Builds {
    /// This build's release binaries (`strom`, `strom-test-handler`).
    pub current: PathBuf,
    /// An older build's folder with its `strom` (`--before`).
    pub before: Option<PathBuf>,
    /// `--before-first`: measure the older build before this one (B A A B in
    /// the gateway section, first at each step elsewhere), to see whether the
    /// order matters.
    pub before_first: bool,
}

/// This build's release binaries, built now.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?.to_path_buf();
    // Always: a `strom` left over from an older tree would be measured silently.
    eprintln!("building the release strom binaries…");
    let status = strom_chaos_tests::nested_cargo()
        .args(["build", "--release", "-p", "strom-node", "--bins"])
        .status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    if !dir.join("strom").is_file() || !dir.join("strom-test-handler").is_file() {
        bail!("no strom binaries in {} after cargo build", dir.display());
    }
    Ok(dir)
}

/// `strom up` of `strom` with `app` on free ports (quiet: errors only), not yet
/// waited for; the process (stopped when dropped), its HTTP port and its
/// control URL.
fn spawn_strom_up(strom: &Path, app: &Path, data: &Path) -> anyhow::Result<(Proc, u16, String)> {
    let (http_port, control) = (free_port(), format!("127.0.0.1:{}", free_port()));
    let proc = Proc(
        Command::new(strom)
            .arg("up")
            .arg(app)
            .arg("--data-dir")
            .arg(data)
            .args(["--control-addr", &control, "--http-addr"])
            .arg(format!("127.0.0.1:{http_port}"))
            .env("STROM_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    Ok((proc, http_port, format!("http://{control}")))
}

/// The test handler on a port of its own (with `env` besides its port), once it
/// listens: the direct baseline.
async fn direct_handler(
    handler: &Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let mut cmd = Command::new(handler);
    cmd.env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Proc(cmd.spawn()?);
    wait_port(([127, 0, 0, 1], port).into()).await?;
    Ok((proc, port))
}

async fn wait_port(addr: SocketAddr) -> anyhow::Result<()> {
    strom_testkit::ports::wait_port(addr)
        .await
        .map_err(anyhow::Error::msg)
}

/// The sections `--only` names (comma-separated), in run order; every problem named.
fn sections(only: Option<&str>) -> anyhow::Result<Vec<&'static str>> {
    let Some(only) = only else {
        return Ok(SECTIONS.to_vec());
    };
    let asked: Vec<&str> = only.split(',').map(str::trim).collect();
    let unknown: Vec<&str> = asked
        .iter()
        .copied()
        .filter(|a| !SECTIONS.contains(a))
        .collect();
    if !unknown.is_empty() || asked.iter().all(|a| a.is_empty()) {
        bail!(
            "--only {only}: unknown section {} (a comma-separated list of {})",
            unknown.join(", "),
            SECTIONS.join(", ")
        );
    }
    Ok(SECTIONS
        .iter()
        .copied()
        .filter(|s| asked.contains(s))
        .collect())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let seconds: f64 = value_of("--seconds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5.0);
    let only = value_of("--only");
    let wanted = sections(only.map(String::as_str))?;
    let trials: usize = value_of("--trials")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(FAILOVER_TRIALS);
    let steady: f64 = value_of("--steady")
        .map(|s| s.parse())
        .transpose()
        .context("--steady SECONDS")?
        .unwrap_or(0.0);
    let before = value_of("--before").map(PathBuf::from);
    if let Some(dir) = &before {
        if !dir.join("strom").is_file() {
            bail!("--before {}: no `strom` binary there", dir.display());
        }
    }
    let perf = value_of("--perf").map(PathBuf::from);
    if let Some(dir) = &perf {
        profile::profile_into(dir.clone())?;
    }
    let write_docs = only.is_none()
        && before.is_none()
        && perf.is_none()
        && !args.iter().any(|a| a == "--no-write");
    machine_facts(before.as_deref());
    let needs_build = wanted
        .iter()
        .any(|s| !matches!(*s, "placements" | "fanout"));
    let builds = Builds {
        current: if needs_build {
            bin_dir()?
        } else {
            PathBuf::new()
        },
        before,
        before_first: args.iter().any(|a| a == "--before-first"),
    };
    for section in wanted {
        out!();
        match section {
            "gateway" => {
                out!("### Gateway overhead: Strom's gateway vs calling the handler directly (and nginx)");
                out!();
                gateway::gateway_overhead(&builds, seconds).await?;
            }
            "gateway-cost" => {
                out!("### Gateway cost: instructions per request (callgrind)");
                out!();
                cost::run(&builds).await?;
            }
            "placements" => {
                out!("### Placements per second: the scheduler over 1,000 simulated workers");
                out!();
                placements::placements()?;
            }
            "fanout" => {
                out!("### State fan-out: one change, 10,000 apps, 1,000 watching workers");
                out!();
                fanout::run().await?;
            }
            "ha" => {
                out!("### Commit latency, throughput, failover and memory: Strom vs etcd");
                out!();
                ha::run(&builds, seconds, trials, steady).await?;
            }
            "checkpoints" => {
                out!("### Checkpoints: time and size for 100 apps, and writes while they run");
                out!();
                ha::checkpoints::run(&builds, seconds).await?;
            }
            "timers" => {
                out!("### Timer dispatch lateness: scheduled tick → handler receives the run");
                out!();
                timers::run(&builds, seconds).await?;
            }
            "messaging" => {
                out!("### RabbitMQ messages: Strom's consumer vs a plain lapin consumer calling the handler");
                out!();
                messaging::run(&builds, seconds).await?;
            }
            _ => containers::run(&builds).await?,
        }
    }
    if write_docs {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        report::write(&docs.join("benchmarks.md"), &docs.join("benchmarks.svg"))?;
    }
    Ok(())
}

/// Cores, memory, date, commit and load: what the numbers below were measured on.
fn machine_facts(before: Option<&Path>) {
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| proc_kb(&m, "MemTotal:"))
        .map_or(0.0, |kb| kb as f64 / 1024.0 / 1024.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    out!("| machine | |");
    out!("|---|---|");
    out!("| cores | {cores} × {model} |");
    out!("| memory | {memory_gib:.1} GiB |");
    out!("| date | {} |", run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    out!(
        "| commit | {} |",
        run("git", &["rev-parse", "--short", "HEAD"])
    );
    out!(
        "| load average (1, 5, 15 min) at start | {} |",
        load.join(", ")
    );
    if let Some(dir) = before {
        out!("| compared with (before) | {} |", dir.display());
    }
}

/// The value in kB of a `/proc` line such as `VmRSS:   1234 kB`.
fn proc_kb(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_takes_a_comma_separated_list_in_run_order() {
        assert_eq!(sections(None).unwrap(), SECTIONS.to_vec());
        assert_eq!(sections(Some("ha,gateway")).unwrap(), vec!["gateway", "ha"]);
        let e = sections(Some("gateway,nope")).unwrap_err().to_string();
        assert!(e.contains("unknown section nope"), "{e}");
        assert!(sections(Some("")).is_err());
    }
}
