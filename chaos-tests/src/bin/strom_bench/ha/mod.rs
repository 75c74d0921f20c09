//! The high-availability section: commit latency and throughput against etcd, leader
//! failover, and resident memory. Every process it starts is a [`ha::Daemon`], stopped
//! when dropped (also when a step fails); every data dir is in one temp dir.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strom_proto::admin_v1::admin_service_client::AdminServiceClient;
use strom_proto::admin_v1::{GetClusterStatusRequest, GetClusterStatusResponse};
use strom_proto::admin_v1::{ScaleAppRequest, SetAppSettingsRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::{proc_kb, quantile, which, Builds};
use strom_testkit::ports::free_port;

use commit::{commit_load, print_commit_row};
use daemon::Daemon;
use etcd_group::EtcdGroup;
use failover::{failover, print_failover_header, print_failover_row, print_trials, Fault};
use replicated::{http_client, http_post, Replicated, Writer};
use strom_group::StromGroup;

pub mod checkpoints;
mod commit;
mod daemon;
mod etcd_group;
mod failover;
mod replicated;
mod steady;
mod strom_group;

/// The app whose settings the write load changes (scaled to 0: nothing runs).
const WRITE_APP: &str = "bench";
/// The app run with one instance for the worker's memory.
const RUN_APP: &str = "idle";
const CLIENT_COUNTS: [usize; 2] = [1, 64];
/// Measurements start this long after the load does (connections, caches).
const WARMUP: Duration = Duration::from_millis(300);
/// One write attempt during a failover gives up after this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
/// After an attempt that failed at once, the next waits this long (a busy loop
/// would take a core from the election it waits for).
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// A member asked whether it leads and silent this long is taken as "no".
const STATUS_TIMEOUT: Duration = Duration::from_millis(250);
/// How often each survivor is asked whether it leads during a failover.
const ELECTION_POLL: Duration = Duration::from_millis(20);
const FAILOVER_GOAL_MS: f64 = 500.0;
const IDLE_WORKER_GOAL_MIB: f64 = 20.0;
const STROM_LOG: &str = "error,openraft=off";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub async fn run(
    builds: &Builds,
    seconds: f64,
    trials: usize,
    steady_seconds: f64,
) -> anyhow::Result<()> {
    let bins = builds.current.clone();
    let work = tempfile::tempdir()?;
    let handler = bins.join("strom-test-handler");

    let mut strom = StromGroup::start(&bins, work.path(), 3).await?;
    let write_app = work.path().join(WRITE_APP);
    write_app_dir(&write_app, &handler, "set")?;
    strom.deploy(&write_app, WRITE_APP, 0).await?;
    // An older build's group beside it (`--before`), loaded the same way.
    let mut before = match &builds.before {
        Some(dir) => {
            let place = work.path().join("before");
            std::fs::create_dir_all(&place)?;
            let group = StromGroup::start(dir, &place, 3).await?;
            group.deploy(&write_app, WRITE_APP, 0).await?;
            Some(group)
        }
        None => None,
    };

    let mut etcd = match which("etcd") {
        Some(bin) => Some(EtcdGroup::start(&bin, work.path(), 3).await?),
        None => {
            eprintln!(
                "etcd not found (Debian: apt-get install -y etcd-server etcd-client): its rows are skipped"
            );
            None
        }
    };

    // Idle memory of the group, before any load.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut memory = Vec::new();
    let leader = strom.leader().await?;
    for (i, node) in strom.nodes.iter().enumerate() {
        let role = if i == leader { "leader" } else { "follower" };
        memory.push(MemoryRow {
            process: format!("strom management-only node {} ({role})", i + 1),
            state: "idle 3-node group, 1 app at scale 0".into(),
            kib: rss_kib(node.pid()?)?,
        });
    }
    if let Some(etcd) = &etcd {
        let leader = etcd.leader().await?;
        for (i, member) in etcd.members.iter().enumerate() {
            let role = if i == leader { "leader" } else { "follower" };
            memory.push(MemoryRow {
                process: format!("etcd member {} ({role})", i + 1),
                state: "idle 3-member cluster, empty".into(),
                kib: rss_kib(member.pid()?)?,
            });
        }
    }

    // Commit latency and throughput, the two systems taking turns so both see
    // the same background load.
    out!(
        "Commit latency: 3 members on this machine, each write acknowledged after an fsync'd commit on a majority; clients talk to the leader."
    );
    out!();
    out!("| system | clients | writes/s | p50 ms | p99 ms | errors |");
    out!("|---|---:|---:|---:|---:|---:|");
    let mut runs = Vec::new();
    let mut against_before = Vec::new();
    for clients in CLIENT_COUNTS {
        let pids: Vec<u32> = (0..strom.members())
            .map(|m| strom.pid(m))
            .collect::<anyhow::Result<_>>()?;
        let recording = crate::profile::start(&format!("commit-{clients}-clients"), &pids);
        let s = commit_load(&strom, clients, seconds).await?;
        if let Some(recording) = recording {
            recording.finish();
        }
        print_commit_row("strom (SetAppSettings, gRPC)", clients, &s);
        if let Some(b) = &before {
            let b = commit_load(b, clients, seconds).await?;
            print_commit_row("strom before (SetAppSettings, gRPC)", clients, &b);
            against_before.push((
                clients,
                s.writes_per_s / b.writes_per_s,
                s.p50_ms / b.p50_ms,
                s.p99_ms / b.p99_ms,
            ));
        }
        let e = match &etcd {
            Some(etcd) => {
                let e = commit_load(etcd, clients, seconds).await?;
                print_commit_row("etcd (/v3/kv/put, JSON gateway)", clients, &e);
                Some(e)
            }
            None => None,
        };
        runs.push((clients, s, e));
    }
    if etcd.is_some() {
        out!();
        out!(
            "| clients | writes/s strom/etcd (goal ≥ 1) | p50 strom/etcd (goal ≤ 1) | p99 strom/etcd |"
        );
        out!("|---:|---:|---:|---:|");
        for (clients, s, e) in &runs {
            if let Some(e) = e {
                out!(
                    "| {clients} | {:.2}× | {:.2}× | {:.2}× |",
                    s.writes_per_s / e.writes_per_s,
                    s.p50_ms / e.p50_ms,
                    s.p99_ms / e.p99_ms
                );
            }
        }
    }

    if !against_before.is_empty() {
        out!();
        out!("| clients | writes/s now/before | p50 now/before | p99 now/before |");
        out!("|---:|---:|---:|---:|");
        for (clients, w, p50, p99) in &against_before {
            out!("| {clients} | {w:.2}× | {p50:.2}× | {p99:.2}× |");
        }
    }

    // Leader failover.
    out!();
    out!(
        "Leader failover: kill -9 of the leader → first write acknowledged through a survivor ({} ms per attempt, survivors alternating; \"new leader\": a survivor first says it leads, asked every {} ms). The killed member restarts and catches up before the next trial.",
        ATTEMPT_TIMEOUT.as_millis(),
        ELECTION_POLL.as_millis()
    );
    out!();
    let strom_trials = failover(&mut strom, trials, Fault::Kill).await?;
    let before_trials = match &mut before {
        Some(b) => Some(failover(b, trials, Fault::Kill).await?),
        None => None,
    };
    let etcd_trials = match &mut etcd {
        Some(etcd) => Some(failover(etcd, trials, Fault::Kill).await?),
        None => None,
    };
    print_failover_header();
    print_failover_row(
        "strom (heartbeat 100 ms, election timeout 400–800 ms)",
        &strom_trials,
    );
    if let Some(t) = &before_trials {
        print_failover_row("strom before (same settings)", t);
    }
    if let Some(t) = &etcd_trials {
        print_failover_row("etcd (defaults: heartbeat 100 ms, election 1000 ms)", t);
    }
    out!();
    out!(
        "Every trial, ms from the kill: new leader seen / first write acknowledged (killed member → new leader):"
    );
    out!();
    print_trials("strom", &strom_trials);
    crate::report::failover("strom", strom_trials.iter().map(|t| t.ms).collect());
    if let Some(t) = &etcd_trials {
        print_trials("etcd", t);
        crate::report::failover("etcd", t.iter().map(|t| t.ms).collect());
    }

    // The same with the leader frozen (SIGSTOP): what a partition or a frozen host
    // looks like to the others, which no closed connection reveals.
    let frozen = failover(&mut strom, trials, Fault::Freeze).await?;
    let frozen_before = match &mut before {
        Some(b) => Some(failover(b, trials, Fault::Freeze).await?),
        None => None,
    };
    let frozen_etcd = match &mut etcd {
        Some(etcd) => Some(failover(etcd, trials, Fault::Freeze).await?),
        None => None,
    };
    out!();
    out!(
        "Leader frozen (SIGSTOP, as a partition or a frozen host looks to the others; SIGCONT after each trial) → first write acknowledged through a survivor:"
    );
    out!();
    print_failover_header();
    print_failover_row("strom, leader frozen", &frozen);
    if let Some(t) = &frozen_before {
        print_failover_row("strom before, leader frozen", t);
    }
    if let Some(t) = &frozen_etcd {
        print_failover_row("etcd, leader frozen", t);
    }
    out!();
    print_trials("strom, frozen", &frozen);
    if let Some(t) = &frozen_etcd {
        print_trials("etcd, frozen", t);
    }
    if strom.retried_restarts > 0 {
        out!();
        out!(
            "{} of {} restarts of the killed strom node needed more than one start (retried every second); the failed starts exited with:",
            strom.retried_restarts,
            strom_trials.len()
        );
        out!();
        for (reason, count) in &strom.failed_starts {
            out!("- {count}× {reason}");
        }
    }
    drop(etcd);
    drop(before);

    // The counterweight: no leader change under load (`--steady SECONDS`).
    out!();
    if steady_seconds > 0.0 {
        let r = steady::steady(&strom, steady_seconds).await?;
        steady::print_steady(&r);
    } else {
        out!("Steady writes with two busy loops (the counterweight to fast failover): not run; `--steady 600` runs it for the issue's 10 minutes.");
    }

    // A worker-only node: idle, then with one instance.
    let worker = strom.start_worker(4).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    memory.push(MemoryRow {
        process: "strom worker-only node".into(),
        state: "idle, no instances".into(),
        kib: rss_kib(worker.pid()?)?,
    });
    let run_app = work.path().join(RUN_APP);
    write_app_dir(&run_app, &handler, "hello")?;
    strom.deploy(&run_app, RUN_APP, 1).await?;
    let handler_pid = strom.wait_instance(RUN_APP, 4).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    memory.push(MemoryRow {
        process: "strom worker-only node".into(),
        state: "1 running instance (handler not included)".into(),
        kib: rss_kib(worker.pid()?)?,
    });
    memory.push(MemoryRow {
        process: "strom-test-handler (the instance)".into(),
        state: "idle, ready".into(),
        kib: rss_kib(handler_pid)?,
    });
    let leader = strom.leader().await?;
    memory.push(MemoryRow {
        process: format!("strom management-only node {} (leader)", leader + 1),
        state: "after the write load, the failovers and a worker joining".into(),
        kib: rss_kib(strom.nodes[leader].pid()?)?,
    });

    out!();
    out!("| process | state | RSS MiB | goal |");
    out!("|---|---|---:|---|");
    for row in &memory {
        let mib = row.kib as f64 / 1024.0;
        let goal = if row.process == "strom worker-only node" && row.state.starts_with("idle") {
            let met = if mib <= IDLE_WORKER_GOAL_MIB {
                "met"
            } else {
                "missed"
            };
            format!("≤ {IDLE_WORKER_GOAL_MIB:.0} MiB: {met}")
        } else {
            String::new()
        };
        out!("| {} | {} | {mib:.1} | {goal} |", row.process, row.state);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    out!();
    out!(
        "Load average (1, 5, 15 min) at the end: {}.",
        load.join(", ")
    );
    drop(worker);
    drop(strom);
    Ok(())
}

struct MemoryRow {
    process: String,
    state: String,
    kib: u64,
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    proc_kb(&status, "VmRSS:").with_context(|| format!("{path}: no VmRSS"))
}

/// An app whose one HTTP function `function` (route `<app>/<function>`) is served
/// by `strom-test-handler`.
fn write_app_dir(dir: &Path, handler: &Path, function: &str) -> anyhow::Result<()> {
    let name = dir.file_name().context("app dir name")?.to_string_lossy();
    std::fs::create_dir_all(dir.join(function))?;
    std::fs::write(
        dir.join("host.json"),
        format!(
            r#"{{"version":"2.0","customHandler":{{"description":{{"defaultExecutablePath":"{}"}}}}}}"#,
            handler.display()
        ),
    )?;
    std::fs::write(
        dir.join(function).join("function.json"),
        format!(
            r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"{name}/{function}"}},{{"type":"http","direction":"out","name":"res"}}]}}"#
        ),
    )?;
    Ok(())
}
