//! `strom-bench`: Strom's benchmarks, each side by side with its baseline in one run.
//!
//! Gateway overhead: the same handler (`strom-test-handler`) and the same client, at
//! 1 and at 32 concurrent keep-alive connections, called
//! - directly on its port (the baseline),
//! - through nginx as a plain reverse proxy (keep-alive upstream; the industry
//!   baseline; skipped with a note when `nginx` is not installed),
//! - through Strom's gateway in forwarding mode and in JSON mode.
//!
//! Placement: the scheduler's pure `plan` over 1,000 simulated workers, placing
//! 10,000 instances from scratch (5,000 apps × 2 and 1,000 apps × 10), and one
//! incremental round after 10 workers go Down, against a goal of 5,000 placements/s.
//!
//! High availability, with real processes on 127.0.0.1:
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
//! Instance runtimes (`containers`): cold start and crash → serving of the Docker
//! and process runtimes against a bare container and a bare process, and the
//! worker's memory per instance (see `strom_bench/containers.rs`; skipped with a
//! note without a Docker engine).
//!
//! Run: `cargo run --release -p strom-chaos-tests --bin strom-bench [-- --seconds N]
//! [--trials N] [--only gateway|placements|ha|containers]`. The gateway and HA sections build the
//! release `strom` binaries if needed; each section prints Markdown tables (latency,
//! throughput and ratios) after a table of machine facts, and nothing else is written.

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

/// The benchmark sections, in the order they run; `--only NAME` picks one.
const SECTIONS: [&str; 4] = ["gateway", "placements", "ha", "containers"];

#[path = "strom_bench/report.rs"]
#[macro_use]
mod report;

#[path = "strom_bench/containers.rs"]
mod containers;
#[path = "../../../actors/tests/support/mod.rs"]
mod support;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A free port on 127.0.0.1, never one handed out before in this run (the OS may
/// offer a just-released port again before its first user binds it).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

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

async fn wait_port(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{addr} did not open")
}

#[derive(Clone)]
struct Target {
    name: &'static str,
    method: &'static str,
    url: String,
    body: Bytes,
    content_type: Option<&'static str>,
}

struct Result {
    /// (quantile, µs) at [`report::QUANTILES`].
    quantiles: Vec<(f64, f64)>,
    p50_us: f64,
    p99_us: f64,
    rps: f64,
    errors: u64,
}

async fn load(target: &Target, connections: usize, seconds: f64) -> anyhow::Result<Result> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build(connector);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let warmup = Instant::now() + Duration::from_millis(300);
    let target = Arc::new(target.clone());
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, target) = (client.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let mut errors = 0u64;
            let mut count = 0u64;
            while Instant::now() < deadline {
                let mut req = hyper::Request::builder()
                    .method(target.method)
                    .uri(&target.url);
                if let Some(ct) = target.content_type {
                    req = req.header("content-type", ct);
                }
                let req = req.body(Full::new(target.body.clone())).unwrap();
                let start = Instant::now();
                let ok = match client.request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        ok && resp.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                let took = start.elapsed();
                if start < warmup {
                    continue;
                }
                if ok {
                    hist.record(took.as_nanos() as u64).unwrap();
                    count += 1;
                } else {
                    errors += 1;
                }
            }
            (hist, errors, count)
        }));
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let (mut errors, mut count) = (0, 0);
    for t in tasks {
        let (h, e, c) = t.await?;
        hist.add(h).unwrap();
        errors += e;
        count += c;
    }
    let measured = seconds - 0.3;
    Ok(Result {
        quantiles: report::QUANTILES
            .iter()
            .map(|&q| (q, hist.value_at_quantile(q) as f64 / 1000.0))
            .collect(),
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
        rps: count as f64 / measured,
        errors,
    })
}

fn write_app(dir: &Path, handler: &Path) -> anyhow::Result<()> {
    let host = format!(
        r#"{{"version":"2.0","customHandler":{{"description":{{"defaultExecutablePath":"{}"}},"enableForwardingHttpRequest":true}}}}"#,
        handler.display()
    );
    std::fs::create_dir_all(dir.join("fwd"))?;
    std::fs::create_dir_all(dir.join("echo"))?;
    std::fs::write(dir.join("host.json"), host)?;
    std::fs::write(
        dir.join("fwd/function.json"),
        r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"fwd/{*rest}"},{"type":"http","direction":"out","name":"res"}]}"#,
    )?;
    // Two outputs: not eligible for forwarding, so it runs in JSON mode.
    std::fs::write(
        dir.join("echo/function.json"),
        r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"echo"},{"type":"http","direction":"out","name":"res"},{"type":"queue","direction":"out","name":"q","queueName":"unused"}]}"#,
    )?;
    Ok(())
}

fn nginx_conf(dir: &Path, listen: u16, upstream: u16) -> anyhow::Result<PathBuf> {
    let conf = format!(
        r#"worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  upstream handler {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{listen};
    location / {{
      proxy_pass http://handler;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
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
    if let Some(name) = only {
        if !SECTIONS.contains(&name.as_str()) {
            bail!(
                "--only {name}: unknown section (one of {})",
                SECTIONS.join(", ")
            );
        }
    }
    let trials: usize = value_of("--trials")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(FAILOVER_TRIALS);
    let wanted = |section: &str| only.is_none_or(|o| o == section);
    let write_docs = only.is_none() && !args.iter().any(|a| a == "--no-write");
    machine_facts();
    if wanted("gateway") {
        out!();
        out!("### Gateway overhead: Strom's gateway vs calling the handler directly (and nginx)");
        out!();
        gateway_overhead(seconds).await?;
    }
    if wanted("placements") {
        out!();
        out!("### Placements per second: the scheduler over 1,000 simulated workers");
        out!();
        placements()?;
    }
    if wanted("ha") {
        out!();
        out!("### Commit latency, throughput, failover and memory: Strom vs etcd");
        out!();
        ha::run(seconds, trials).await?;
    }
    if wanted("containers") {
        out!();
        containers::run(&bin_dir()?).await?;
    }
    if write_docs {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        report::write(&docs.join("benchmarks.md"), &docs.join("benchmarks.svg"))?;
    }
    Ok(())
}

/// Cores, memory, date, commit and load: what the numbers below were measured on.
fn machine_facts() {
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
}

/// The value in kB of a `/proc` line such as `VmRSS:   1234 kB`.
fn proc_kb(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

async fn gateway_overhead(seconds: f64) -> anyhow::Result<()> {
    let bins = bin_dir()?;
    let handler = bins.join("strom-test-handler");
    let work = tempfile::tempdir()?;

    // The handler on its own port: the direct baseline and nginx's upstream.
    let direct_port = free_port();
    let _direct = Proc(
        Command::new(&handler)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", direct_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_port(([127, 0, 0, 1], direct_port).into()).await?;

    let nginx_port = free_port();
    let nginx = match which("nginx") {
        Some(bin) => {
            let dir = work.path().join("nginx");
            std::fs::create_dir_all(&dir)?;
            let conf = nginx_conf(&dir, nginx_port, direct_port)?;
            let child = Command::new(bin)
                .args([
                    "-c",
                    conf.to_str().unwrap(),
                    "-p",
                    dir.to_str().unwrap(),
                    "-g",
                    "daemon off;",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            wait_port(([127, 0, 0, 1], nginx_port).into()).await?;
            Some(Proc(child))
        }
        None => {
            eprintln!(
                "nginx not found (Debian: apt-get install nginx-light): its rows are skipped"
            );
            None
        }
    };

    let app = work.path().join("bench");
    write_app(&app, &handler)?;
    let http_port = free_port();
    let _strom = Proc(
        Command::new(bins.join("strom"))
            .arg("up")
            .arg(&app)
            .arg("--data-dir")
            .arg(work.path().join("data"))
            .args(["--control-addr", "127.0.0.1:0", "--http-addr"])
            .arg(format!("127.0.0.1:{http_port}"))
            .env("STROM_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_port(([127, 0, 0, 1], http_port).into()).await?;
    // Wait for the first instance.
    for _ in 0..400 {
        if reqwest_like_get(&format!("http://127.0.0.1:{http_port}/api/fwd/ready")).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let json_payload = Bytes::from(
        serde_json::json!({"Data":{"req":{"Url":"http://127.0.0.1/api/echo","Method":"GET","Query":{},"Headers":{},"Params":{},"Identities":[]}},"Metadata":{}})
            .to_string(),
    );
    let mut targets = vec![Target {
        name: "direct (forwarding shape)",
        method: "GET",
        url: format!("http://127.0.0.1:{direct_port}/api/fwd/bench"),
        body: Bytes::new(),
        content_type: None,
    }];
    if nginx.is_some() {
        targets.push(Target {
            name: "nginx reverse proxy",
            method: "GET",
            url: format!("http://127.0.0.1:{nginx_port}/api/fwd/bench"),
            body: Bytes::new(),
            content_type: None,
        });
    }
    targets.push(Target {
        name: "strom gateway, forwarding mode",
        method: "GET",
        url: format!("http://127.0.0.1:{http_port}/api/fwd/bench"),
        body: Bytes::new(),
        content_type: None,
    });
    targets.push(Target {
        name: "direct (JSON-mode shape)",
        method: "POST",
        url: format!("http://127.0.0.1:{direct_port}/echo"),
        body: json_payload,
        content_type: Some("application/json"),
    });
    targets.push(Target {
        name: "strom gateway, JSON mode",
        method: "GET",
        url: format!("http://127.0.0.1:{http_port}/api/echo"),
        body: Bytes::new(),
        content_type: None,
    });

    out!("| target | connections | p50 µs | p99 µs | req/s | errors |");
    out!("|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for connections in [1usize, 32] {
        for t in &targets {
            let r = load(t, connections, seconds).await?;
            out!(
                "| {} | {connections} | {:.0} | {:.0} | {:.0} | {} |",
                t.name,
                r.p50_us,
                r.p99_us,
                r.rps,
                r.errors
            );
            report::latency(t.name, connections, r.quantiles.clone());
            rows.push((t.name, connections, r));
        }
    }
    out!();
    out!("| comparison | connections | added p50 µs | throughput ratio |");
    out!("|---|---:|---:|---:|");
    for connections in [1usize, 32] {
        let find = |name: &str| {
            rows.iter()
                .find(|(n, c, _)| *n == name && *c == connections)
                .map(|(_, _, r)| r)
        };
        let pairs = [
            (
                "nginx vs direct",
                "nginx reverse proxy",
                "direct (forwarding shape)",
            ),
            (
                "strom forwarding vs direct",
                "strom gateway, forwarding mode",
                "direct (forwarding shape)",
            ),
            (
                "strom JSON mode vs direct",
                "strom gateway, JSON mode",
                "direct (JSON-mode shape)",
            ),
        ];
        for (label, a, b) in pairs {
            if let (Some(x), Some(y)) = (find(a), find(b)) {
                out!(
                    "| {label} | {connections} | {:.0} | {:.2}× |",
                    x.p50_us - y.p50_us,
                    x.rps / y.rps
                );
            }
        }
    }
    Ok(())
}

/// Simulated workers in the placement section, and the instances they must take.
const BENCH_WORKERS: u64 = 1_000;
const BENCH_INSTANCES: u32 = 10_000;
const PLACEMENTS_GOAL_PER_S: f64 = 5_000.0;
const REPETITIONS: usize = 9;

fn placements() -> anyhow::Result<()> {
    out!(
        "| placement scenario | workers | instances placed | best ms | median ms | placements/s | vs {PLACEMENTS_GOAL_PER_S:.0}/s goal |"
    );
    out!("|---|---:|---:|---:|---:|---:|---:|");
    for apps in [5_000u32, 1_000] {
        let scale = BENCH_INSTANCES / apps;
        let mut state = bench_cluster(apps, scale)?;
        let live = LiveView::default();

        let (changes, times) = time_plan(&state, &live);
        let placed: u32 = changes.iter().map(|c| c.instances).sum();
        if placed != BENCH_INSTANCES {
            bail!("{apps} apps × {scale}: placed {placed} of {BENCH_INSTANCES} instances");
        }
        print_placement_row(
            &format!("from scratch, {apps} apps × {scale}"),
            placed,
            &times,
        );

        apply(&mut state, ClusterCommand::Place { changes, at_ms: 2 })?;
        for node in 1..=10 {
            apply(
                &mut state,
                ClusterCommand::SetWorkerLiveness {
                    node,
                    up: false,
                    at_ms: 3,
                },
            )?;
        }
        let (changes, times) = time_plan(&state, &live);
        let (mut added, mut removed) = (0u32, 0u32);
        for c in &changes {
            let before = state.placed(&c.app, c.node);
            added += c.instances.saturating_sub(before);
            removed += before.saturating_sub(c.instances);
        }
        if added != removed || added == 0 {
            bail!("10 workers Down: {removed} instances removed but {added} re-placed");
        }
        print_placement_row(
            &format!("10 of {BENCH_WORKERS} workers Down, {apps} apps × {scale}"),
            added,
            &times,
        );
    }
    Ok(())
}

/// `plan` timed `REPETITIONS` times (it is pure: every run does the same work);
/// the changes of the last run and the sorted times in ms.
fn time_plan(
    state: &ClusterState,
    live: &LiveView,
) -> (Vec<strom_proto::command::PlacementChange>, Vec<f64>) {
    let mut times = Vec::with_capacity(REPETITIONS);
    let mut changes = Vec::new();
    for _ in 0..REPETITIONS {
        let start = Instant::now();
        changes = std::hint::black_box(scheduler::plan(state, live));
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (changes, times)
}

fn print_placement_row(scenario: &str, placed: u32, sorted_ms: &[f64]) {
    let best = sorted_ms[0];
    let median = sorted_ms[sorted_ms.len() / 2];
    let per_s = f64::from(placed) / (median / 1000.0);
    out!(
        "| {scenario} | {BENCH_WORKERS} | {placed} | {best:.2} | {median:.2} | {per_s:.0} | {:.1}× |",
        per_s / PLACEMENTS_GOAL_PER_S
    );
}

fn apply(state: &mut ClusterState, command: ClusterCommand) -> anyhow::Result<()> {
    match state.apply(&command) {
        CommandResult::Rejected(r) => bail!("{command:?} was rejected: {r}"),
        _ => Ok(()),
    }
}

/// `BENCH_WORKERS` Up workers (64 instances each, memory not limited) and `apps`
/// apps of `scale` instances each, nothing placed yet. One app is deployed through
/// `apply`; the rest are copies of it under other names, inserted directly, because
/// deploying thousands of apps one by one checks every pair of routes and would time
/// the set-up rather than the scheduler.
fn bench_cluster(apps: u32, scale: u32) -> anyhow::Result<ClusterState> {
    let mut state = ClusterState::default();
    apply(
        &mut state,
        ClusterCommand::InitCluster {
            cluster_id: ClusterId::new_random(),
            admin_token_hash: TokenHash::of("bench"),
            join_token_hash: TokenHash::of("bench"),
            at_ms: 1,
        },
    )?;
    for node in 1..=BENCH_WORKERS {
        apply(
            &mut state,
            ClusterCommand::RegisterWorker(Box::new(WorkerInfo {
                node,
                http_addr: format!("10.0.{}.{}:7071", node / 256, node % 256),
                capacity: WorkerCapacity {
                    instances: 64,
                    memory_mb: 0,
                },
                labels: Default::default(),
                build: "bench".into(),
                at_ms: 1,
            })),
        )?;
    }
    let template = AppName::parse("app-00000")?;
    apply(
        &mut state,
        ClusterCommand::DeployVersion(Box::new(DeployVersion {
            app: template.clone(),
            version: VersionId::of_bytes(b"bench"),
            size_bytes: 1,
            manifest: bench_manifest()?,
            at_ms: 1,
            initial_keys: InitialKeys {
                master: "m".into(),
                host_default: "h".into(),
                function_defaults: Default::default(),
            },
            settings: Default::default(),
        })),
    )?;
    apply(
        &mut state,
        ClusterCommand::SetScale {
            app: template.clone(),
            instances: scale,
            at_ms: 1,
        },
    )?;
    let app = state.apps[&template].clone();
    for i in 1..apps {
        let name = AppName::parse(&format!("app-{i:05}"))?;
        let mut copy = app.clone();
        copy.name = name.clone();
        state.apps.insert(name, copy);
    }
    Ok(state)
}

fn bench_manifest() -> anyhow::Result<strom_proto::manifest::AppManifest> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("host.json"),
        r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"sh"}}}"#,
    )?;
    std::fs::create_dir(dir.path().join("f"))?;
    std::fs::write(
        dir.path().join("f/function.json"),
        r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","route":"f"},{"type":"http","direction":"out","name":"res"}]}"#,
    )?;
    let zip = pack_dir(dir.path())?;
    let pkg = AppPackage::from_zip_bytes(&zip, &ZipLimits::default())?;
    validate_app(&pkg, &Default::default())
        .map_err(|errors| anyhow::anyhow!("bench manifest is invalid: {errors:?}"))
}

async fn reqwest_like_get(url: &str) -> bool {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    matches!(client.request(req).await, Ok(r) if r.status().is_success())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Failover trials unless `--trials` says otherwise.
const FAILOVER_TRIALS: usize = 20;

/// The high-availability section: commit latency and throughput against etcd, leader
/// failover, and resident memory. Every process it starts is a [`ha::Daemon`], stopped
/// when dropped (also when a step fails); every data dir is in one temp dir.
mod ha {
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

    use super::{bin_dir, free_port, proc_kb, which};

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

    pub async fn run(seconds: f64, trials: usize) -> anyhow::Result<()> {
        let bins = bin_dir()?;
        let work = tempfile::tempdir()?;
        let handler = bins.join("strom-test-handler");

        let mut strom = StromGroup::start(&bins, work.path(), 3).await?;
        let write_app = work.path().join(WRITE_APP);
        write_app_dir(&write_app, &handler, "set")?;
        strom.deploy(&write_app, WRITE_APP, 0).await?;

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
        for clients in CLIENT_COUNTS {
            let s = commit_load(&strom, clients, seconds).await?;
            print_commit_row("strom (SetAppSettings, gRPC)", clients, &s);
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

        // Leader failover.
        out!();
        out!(
            "Leader failover: kill -9 of the leader → first write acknowledged through a survivor ({} ms per attempt, survivors alternating; \"new leader\": a survivor first says it leads, asked every {} ms). The killed member restarts and catches up before the next trial.",
            ATTEMPT_TIMEOUT.as_millis(),
            ELECTION_POLL.as_millis()
        );
        out!();
        let strom_trials = failover(&mut strom, trials).await?;
        let etcd_trials = match &mut etcd {
            Some(etcd) => Some(failover(etcd, trials).await?),
            None => None,
        };
        out!("| system | trials | new leader p50 / p99 ms | first ack p50 ms | p99 ms | max ms | min ms | p99 vs {FAILOVER_GOAL_MS:.0} ms goal |");
        out!("|---|---:|---:|---:|---:|---:|---:|---|");
        print_failover_row(
            "strom (heartbeat 100 ms, election timeout 400–800 ms)",
            &strom_trials,
        );
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

    /// A server process this section started, with what it takes to start it again
    /// (same program, arguments and data dir). Its stdout and stderr go to `log`,
    /// rewritten at every start. Dropping it stops it: SIGTERM, SIGKILL after 5 s.
    struct Daemon {
        name: String,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(&'static str, &'static str)>,
        log: PathBuf,
        child: Option<Child>,
    }

    impl Daemon {
        fn start(
            name: String,
            program: &Path,
            args: Vec<String>,
            env: Vec<(&'static str, &'static str)>,
            log: PathBuf,
        ) -> anyhow::Result<Daemon> {
            let mut daemon = Daemon {
                name,
                program: program.to_path_buf(),
                args,
                env,
                log,
                child: None,
            };
            daemon.spawn()?;
            Ok(daemon)
        }

        fn spawn(&mut self) -> anyhow::Result<()> {
            let out = File::create(&self.log).with_context(|| self.log.display().to_string())?;
            let child = Command::new(&self.program)
                .args(&self.args)
                .envs(self.env.iter().copied())
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting {}: {}", self.name, self.program.display()))?;
            self.child = Some(child);
            Ok(())
        }

        fn running(&self) -> bool {
            self.child.is_some()
        }

        fn pid(&self) -> anyhow::Result<u32> {
            self.child
                .as_ref()
                .map(Child::id)
                .with_context(|| format!("{} is not running", self.name))
        }

        /// `kill -9`, and reap it.
        fn kill(&mut self) -> anyhow::Result<()> {
            if let Some(mut child) = self.child.take() {
                child.kill()?;
                child.wait()?;
            }
            Ok(())
        }

        /// An error with the end of its output if it has exited.
        fn check_alive(&mut self) -> anyhow::Result<()> {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
                }
            }
            Ok(())
        }

        fn log_tail(&self) -> String {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }

        /// Wait until its output has a line starting with `prefix`.
        async fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<()> {
            let deadline = Instant::now() + timeout;
            loop {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                if text.lines().any(|l| l.starts_with(prefix)) {
                    return Ok(());
                }
                self.check_alive()?;
                if Instant::now() > deadline {
                    bail!(
                        "{}: no `{prefix}` line after {timeout:?}:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            let Some(mut child) = self.child.take() else {
                return;
            };
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client's connection to one member, able to do one kind of acknowledged write.
    enum Writer {
        Strom {
            client: AdminServiceClient<Channel>,
            auth: MetadataValue<Ascii>,
        },
        Etcd {
            client: HttpClient,
            put_url: String,
        },
    }

    impl Writer {
        /// Write `value` under `key`; true once the member acknowledged it.
        async fn write(&mut self, key: &str, value: &str) -> bool {
            match self {
                Writer::Strom { client, auth } => {
                    let mut request = tonic::Request::new(SetAppSettingsRequest {
                        name: WRITE_APP.into(),
                        set: HashMap::from([(key.to_string(), value.to_string())]),
                        remove: Vec::new(),
                    });
                    request.metadata_mut().insert("authorization", auth.clone());
                    client.set_app_settings(request).await.is_ok()
                }
                Writer::Etcd { client, put_url } => {
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let body = serde_json::json!({
                        "key": b64.encode(key),
                        "value": b64.encode(value),
                    })
                    .to_string();
                    matches!(http_post(client, put_url, body).await, Ok((200, _)))
                }
            }
        }
    }

    fn http_client() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .build(connector)
    }

    async fn http_post(
        client: &HttpClient,
        url: &str,
        body: String,
    ) -> anyhow::Result<(u16, Bytes)> {
        let request = hyper::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// A group of 3 replicas under test: Strom's management nodes or etcd members.
    trait Replicated {
        const NAME: &'static str;
        fn members(&self) -> usize;
        fn running(&self, member: usize) -> bool;
        /// Whether `member` says it is the leader (false when it does not answer in
        /// time).
        async fn is_leader(&self, member: usize) -> bool;
        /// The running member that says it leads, waiting up to 30 s for one.
        async fn leader(&self) -> anyhow::Result<usize> {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                for m in (0..self.members()).filter(|m| self.running(*m)) {
                    if self.is_leader(m).await {
                        return Ok(m);
                    }
                }
                if Instant::now() > deadline {
                    bail!("{}: no leader after 30 s", Self::NAME);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        /// A new client connection to `member`.
        async fn writer(&self, member: usize) -> anyhow::Result<Writer>;
        /// `kill -9` `member`.
        fn kill(&mut self, member: usize) -> anyhow::Result<()>;
        /// Start `member` again on its data dir; return once it serves linearizable
        /// reads (it is a caught-up member again).
        async fn restart(&mut self, member: usize) -> anyhow::Result<()>;
    }

    struct CommitRun {
        writes_per_s: f64,
        p50_ms: f64,
        p99_ms: f64,
        errors: u64,
    }

    /// `clients` closed-loop clients, each on its own connection to the leader,
    /// writing their own key for `seconds`.
    async fn commit_load<G: Replicated>(
        group: &G,
        clients: usize,
        seconds: f64,
    ) -> anyhow::Result<CommitRun> {
        let leader = group.leader().await?;
        let mut writers = Vec::with_capacity(clients);
        for _ in 0..clients {
            writers.push(group.writer(leader).await?);
        }
        let start = Instant::now();
        let warm = start + WARMUP;
        let deadline = start + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::with_capacity(clients);
        for (c, mut writer) in writers.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("sigfig 3");
                let (key, mut errors) = (format!("BENCH_{c}"), 0u64);
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    seq += 1;
                    let value = format!("{seq:016}");
                    let sent = Instant::now();
                    let ok = writer.write(&key, &value).await;
                    if sent < warm {
                        continue;
                    }
                    if ok {
                        hist.record(sent.elapsed().as_micros() as u64)
                            .expect("auto-resizing histogram");
                    } else {
                        errors += 1;
                    }
                }
                (hist, errors)
            }));
        }
        let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
        let mut errors = 0;
        for task in tasks {
            let (h, e) = task.await?;
            hist.add(h)?;
            errors += e;
        }
        if hist.is_empty() {
            bail!("{}: no write succeeded with {clients} clients", G::NAME);
        }
        Ok(CommitRun {
            writes_per_s: hist.len() as f64 / (seconds - WARMUP.as_secs_f64()),
            p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
            errors,
        })
    }

    fn print_commit_row(system: &str, clients: usize, r: &CommitRun) {
        out!(
            "| {system} | {clients} | {:.0} | {:.2} | {:.2} | {} |",
            r.writes_per_s,
            r.p50_ms,
            r.p99_ms,
            r.errors
        );
    }

    struct Trial {
        killed: usize,
        new_leader: usize,
        /// Kill → a survivor says it leads (None: not seen before the write's ack).
        elected_ms: Option<f64>,
        /// Kill → first write acknowledged.
        ms: f64,
    }

    /// `trials` times: kill the leader, time the first write acknowledged through a
    /// survivor, restart the killed member and wait until it has caught up.
    async fn failover<G: Replicated>(group: &mut G, trials: usize) -> anyhow::Result<Vec<Trial>> {
        let mut results = Vec::with_capacity(trials);
        for trial in 1..=trials {
            let leader = group.leader().await?;
            let mut writers = Vec::new();
            for m in (0..group.members()).filter(|m| *m != leader) {
                writers.push(group.writer(m).await?);
            }
            if writers.len() != 2 {
                bail!("{}: the failover trials need 3 members", G::NAME);
            }
            let survivors: Vec<usize> = (0..group.members()).filter(|m| *m != leader).collect();
            let start = Instant::now();
            group.kill(leader)?;
            let done = std::cell::Cell::new(false);
            // Until the write is acknowledged, each survivor is asked every 20 ms
            // whether it leads: when the election ended, apart from the client's wait.
            let watch = |member: usize| {
                let (group, done) = (&*group, &done);
                async move {
                    while !done.get() {
                        if group.is_leader(member).await {
                            return Some((start.elapsed(), member));
                        }
                        tokio::time::sleep(ELECTION_POLL).await;
                    }
                    None
                }
            };
            let write = async {
                let acked = first_ack(&mut writers, trial, start).await;
                done.set(true);
                acked
            };
            let (acked, first, second) =
                tokio::join!(write, watch(survivors[0]), watch(survivors[1]));
            let ms = acked
                .with_context(|| {
                    format!("{} trial {trial}: killed member {}", G::NAME, leader + 1)
                })?
                .as_secs_f64()
                * 1000.0;
            let elected = [first, second].into_iter().flatten().min();
            let new_leader = match elected {
                Some((_, m)) => m,
                None => group.leader().await?,
            };
            results.push(Trial {
                killed: leader,
                new_leader,
                elected_ms: elected.map(|(t, _)| t.as_secs_f64() * 1000.0),
                ms,
            });
            group
                .restart(leader)
                .await
                .with_context(|| format!("{} trial {trial}", G::NAME))?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(results)
    }

    /// Writes through the `writers` in turn until one is acknowledged; the time from
    /// `start` until then.
    async fn first_ack(
        writers: &mut [Writer],
        trial: usize,
        start: Instant,
    ) -> anyhow::Result<Duration> {
        let mut attempt = 0usize;
        loop {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("no write acknowledged within 30 s");
            }
            let survivors = writers.len();
            let writer = &mut writers[attempt % survivors];
            attempt += 1;
            let sent = Instant::now();
            let value = format!("{trial}-{attempt}");
            match tokio::time::timeout(ATTEMPT_TIMEOUT, writer.write("FAILOVER", &value)).await {
                Ok(true) => return Ok(start.elapsed()),
                Ok(false) if sent.elapsed() < RETRY_PAUSE => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                _ => {}
            }
        }
    }

    /// The `q` quantile of sorted values, nearest rank.
    fn quantile(sorted: &[f64], q: f64) -> f64 {
        let rank = (q * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn print_failover_row(system: &str, trials: &[Trial]) {
        let mut ms: Vec<f64> = trials.iter().map(|t| t.ms).collect();
        ms.sort_by(f64::total_cmp);
        if ms.is_empty() {
            return;
        }
        let mut elected: Vec<f64> = trials.iter().filter_map(|t| t.elected_ms).collect();
        elected.sort_by(f64::total_cmp);
        let elected = if elected.is_empty() {
            "–".to_string()
        } else {
            format!(
                "{:.0} / {:.0}",
                quantile(&elected, 0.5),
                quantile(&elected, 0.99)
            )
        };
        let p99 = quantile(&ms, 0.99);
        let verdict = if p99 <= FAILOVER_GOAL_MS {
            "met"
        } else {
            "missed"
        };
        out!(
            "| {system} | {} | {elected} | {:.0} | {p99:.0} | {:.0} | {:.0} | {verdict} |",
            ms.len(),
            quantile(&ms, 0.5),
            ms[ms.len() - 1],
            ms[0],
        );
    }

    fn print_trials(system: &str, trials: &[Trial]) {
        let list: Vec<String> = trials
            .iter()
            .map(|t| {
                let elected = t.elected_ms.map_or("–".into(), |e| format!("{e:.0}"));
                format!(
                    "{elected}/{:.0} ({}→{})",
                    t.ms,
                    t.killed + 1,
                    t.new_leader + 1
                )
            })
            .collect();
        out!("- {system}: {}", list.join(", "));
    }

    /// Strom management nodes (node id = index + 1), each started by `strom serve`.
    struct StromGroup {
        bins: PathBuf,
        dir: PathBuf,
        nodes: Vec<Daemon>,
        control_ports: Vec<u16>,
        join_token: String,
        admin_token: String,
        auth: MetadataValue<Ascii>,
        /// Why starts of killed nodes failed (the node exited), and how often.
        failed_starts: std::collections::BTreeMap<String, usize>,
        /// Restarts that needed more than one start.
        retried_restarts: usize,
    }

    impl StromGroup {
        /// Bootstrap node 1, then join the others one by one.
        async fn start(bins: &Path, dir: &Path, n: usize) -> anyhow::Result<StromGroup> {
            let control_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let mut group = StromGroup {
                bins: bins.to_path_buf(),
                dir: dir.to_path_buf(),
                nodes: Vec::new(),
                control_ports,
                join_token: String::new(),
                admin_token: String::new(),
                auth: MetadataValue::from_static(""),
                failed_starts: Default::default(),
                retried_restarts: 0,
            };
            for i in 0..n {
                let data = dir.join(format!("strom-{}", i + 1));
                let mut args = vec![
                    "serve".to_string(),
                    "--node-id".into(),
                    (i + 1).to_string(),
                    "--roles".into(),
                    "management".into(),
                    "--data-dir".into(),
                    data.display().to_string(),
                    "--control-addr".into(),
                    format!("127.0.0.1:{}", group.control_ports[i]),
                    "--http-addr".into(),
                    format!("127.0.0.1:{}", free_port()),
                ];
                if i == 0 {
                    args.push("--bootstrap".into());
                } else {
                    args.extend([
                        "--join".into(),
                        group.url(0),
                        "--join-token".into(),
                        group.join_token.clone(),
                    ]);
                }
                let mut node = Daemon::start(
                    format!("strom node {}", i + 1),
                    &bins.join("strom"),
                    args,
                    vec![("STROM_LOG", STROM_LOG)],
                    dir.join(format!("strom-{}.log", i + 1)),
                )?;
                node.wait_for_line("Ready.", Duration::from_secs(60))
                    .await?;
                if i == 0 {
                    let read = |file: &str| {
                        std::fs::read_to_string(data.join(file))
                            .map(|t| t.trim().to_string())
                            .with_context(|| format!("{}", data.join(file).display()))
                    };
                    group.join_token = read("join.token")?;
                    group.admin_token = read("admin.token")?;
                    group.auth = format!("Bearer {}", group.admin_token).parse()?;
                }
                group.nodes.push(node);
            }
            Ok(group)
        }

        fn url(&self, i: usize) -> String {
            format!("http://127.0.0.1:{}", self.control_ports[i])
        }

        fn urls(&self) -> String {
            (0..self.control_ports.len())
                .map(|i| self.url(i))
                .collect::<Vec<_>>()
                .join(",")
        }

        async fn client(&self, i: usize) -> anyhow::Result<AdminServiceClient<Channel>> {
            let channel = Endpoint::from_shared(self.url(i))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(1))
                .connect()
                .await
                .with_context(|| format!("connecting to {}", self.url(i)))?;
            Ok(AdminServiceClient::new(channel))
        }

        fn request<T>(&self, message: T) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request
                .metadata_mut()
                .insert("authorization", self.auth.clone());
            request
        }

        /// Node `i`'s status, or an error after 2 s.
        async fn status(&self, i: usize, stale: bool) -> anyhow::Result<GetClusterStatusResponse> {
            let call = async {
                let mut client = self.client(i).await?;
                let request = self.request(GetClusterStatusRequest { stale });
                anyhow::Ok(client.get_cluster_status(request).await?.into_inner())
            };
            tokio::time::timeout(Duration::from_secs(2), call)
                .await
                .context("status timed out")?
        }

        /// Deploy the app in `dir` through the CLI (a zip upload), then set its scale.
        async fn deploy(&self, dir: &Path, name: &str, scale: u32) -> anyhow::Result<()> {
            let leader = self.leader().await?;
            let out = Command::new(self.bins.join("strom"))
                .args(["app", "deploy"])
                .arg(dir)
                .args(["--name", name, "--server", &self.url(leader), "--token"])
                .arg(&self.admin_token)
                .output()?;
            if !out.status.success() {
                bail!(
                    "strom app deploy {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let request = self.request(ScaleAppRequest {
                name: name.into(),
                instances: scale,
            });
            self.client(leader)
                .await?
                .scale_app(request)
                .await
                .with_context(|| format!("scaling {name} to {scale}"))?;
            Ok(())
        }

        /// A worker-only node joining through every management node.
        async fn start_worker(&self, id: u64) -> anyhow::Result<Daemon> {
            let args = vec![
                "serve".to_string(),
                "--node-id".into(),
                id.to_string(),
                "--roles".into(),
                "worker".into(),
                "--data-dir".into(),
                self.dir.join(format!("strom-{id}")).display().to_string(),
                "--control-addr".into(),
                format!("127.0.0.1:{}", free_port()),
                "--http-addr".into(),
                format!("127.0.0.1:{}", free_port()),
                "--join".into(),
                self.urls(),
                "--join-token".into(),
                self.join_token.clone(),
            ];
            let mut worker = Daemon::start(
                format!("strom worker {id}"),
                &self.bins.join("strom"),
                args,
                vec![("STROM_LOG", STROM_LOG)],
                self.dir.join(format!("strom-{id}.log")),
            )?;
            worker
                .wait_for_line("Ready.", Duration::from_secs(60))
                .await?;
            Ok(worker)
        }

        /// The pid of `app`'s instance on worker `node` once the leader hears it Ready.
        async fn wait_instance(&self, app: &str, node: u64) -> anyhow::Result<u32> {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let leader = self.leader().await?;
                if let Ok(status) = self.status(leader, true).await {
                    let ready = status.instances.iter().find(|i| {
                        i.app_name == app && i.node_id == node && i.state == "Ready" && i.pid != 0
                    });
                    if let Some(instance) = ready {
                        return Ok(instance.pid);
                    }
                }
                if Instant::now() > deadline {
                    bail!("{app}: no Ready instance on worker {node} after 60 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    impl Replicated for StromGroup {
        const NAME: &'static str = "strom";

        fn members(&self) -> usize {
            self.nodes.len()
        }

        fn running(&self, member: usize) -> bool {
            self.nodes[member].running()
        }

        async fn is_leader(&self, member: usize) -> bool {
            let status = tokio::time::timeout(STATUS_TIMEOUT, self.status(member, true));
            matches!(status.await, Ok(Ok(s)) if s.state == "leader")
        }

        async fn writer(&self, member: usize) -> anyhow::Result<Writer> {
            Ok(Writer::Strom {
                client: self.client(member).await?,
                auth: self.auth.clone(),
            })
        }

        fn kill(&mut self, member: usize) -> anyhow::Result<()> {
            self.nodes[member].kill()
        }

        async fn restart(&mut self, member: usize) -> anyhow::Result<()> {
            // A start can fail (the node exits at once): tried again every second
            // for up to a minute, each failure recorded for the report.
            let give_up = Instant::now() + Duration::from_secs(60);
            let mut failures = 0;
            loop {
                let node = &mut self.nodes[member];
                node.spawn()?;
                match node.wait_for_line("Ready.", Duration::from_secs(60)).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() < give_up && !node.running() => {
                        failures += 1;
                        let reason = e.to_string();
                        let reason = reason.lines().last().unwrap_or_default().trim();
                        *self
                            .failed_starts
                            .entry(format!("node {}: {reason}", member + 1))
                            .or_default() += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            if failures > 0 {
                self.retried_restarts += 1;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match self.status(member, false).await {
                    Ok(status) if status.leader_id.is_some() => return Ok(()),
                    _ if Instant::now() > deadline => {
                        bail!(
                            "strom node {}: not caught up 30 s after a restart",
                            member + 1
                        )
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    }

    /// etcd members `e1`…, all on 127.0.0.1 with their own data dirs.
    struct EtcdGroup {
        members: Vec<Daemon>,
        client_urls: Vec<String>,
        http: HttpClient,
    }

    impl EtcdGroup {
        async fn start(etcd: &Path, dir: &Path, n: usize) -> anyhow::Result<EtcdGroup> {
            let client_urls: Vec<String> = (0..n)
                .map(|_| format!("http://127.0.0.1:{}", free_port()))
                .collect();
            let peer_urls: Vec<String> = (0..n)
                .map(|_| format!("http://127.0.0.1:{}", free_port()))
                .collect();
            let initial_cluster = peer_urls
                .iter()
                .enumerate()
                .map(|(i, url)| format!("e{}={url}", i + 1))
                .collect::<Vec<_>>()
                .join(",");
            let mut members = Vec::new();
            for i in 0..n {
                let args = [
                    "--name",
                    &format!("e{}", i + 1),
                    "--data-dir",
                    &dir.join(format!("etcd-{}", i + 1)).display().to_string(),
                    "--listen-client-urls",
                    &client_urls[i],
                    "--advertise-client-urls",
                    &client_urls[i],
                    "--listen-peer-urls",
                    &peer_urls[i],
                    "--initial-advertise-peer-urls",
                    &peer_urls[i],
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "strom-bench",
                    "--logger",
                    "zap",
                    "--log-level",
                    "error",
                ]
                .map(String::from)
                .to_vec();
                members.push(Daemon::start(
                    format!("etcd member {}", i + 1),
                    etcd,
                    args,
                    Vec::new(),
                    dir.join(format!("etcd-{}.log", i + 1)),
                )?);
            }
            let mut group = EtcdGroup {
                members,
                client_urls,
                http: http_client(),
            };
            for i in 0..n {
                group.wait_linearizable(i).await?;
            }
            Ok(group)
        }

        /// Wait until member `i` answers a linearizable read (it has a leader and has
        /// applied everything committed before the read).
        async fn wait_linearizable(&mut self, i: usize) -> anyhow::Result<()> {
            let url = format!("{}/v3/kv/range", self.client_urls[i]);
            let body = r#"{"key":"cmVhZHk="}"#;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let read = tokio::time::timeout(
                    Duration::from_secs(2),
                    http_post(&self.http, &url, body.into()),
                );
                if let Ok(Ok((200, _))) = read.await {
                    return Ok(());
                }
                self.members[i].check_alive()?;
                if Instant::now() > deadline {
                    bail!(
                        "etcd member {}: no linearizable read after 60 s:\n{}",
                        i + 1,
                        self.members[i].log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    impl Replicated for EtcdGroup {
        const NAME: &'static str = "etcd";

        fn members(&self) -> usize {
            self.members.len()
        }

        fn running(&self, member: usize) -> bool {
            self.members[member].running()
        }

        async fn is_leader(&self, member: usize) -> bool {
            let url = format!("{}/v3/maintenance/status", self.client_urls[member]);
            let status =
                tokio::time::timeout(STATUS_TIMEOUT, http_post(&self.http, &url, "{}".into()));
            let Ok(Ok((200, body))) = status.await else {
                return false;
            };
            let Ok(status) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return false;
            };
            let leader = status["leader"].as_str().unwrap_or("0");
            leader != "0" && status["header"]["member_id"].as_str() == Some(leader)
        }

        async fn writer(&self, member: usize) -> anyhow::Result<Writer> {
            Ok(Writer::Etcd {
                client: http_client(),
                put_url: format!("{}/v3/kv/put", self.client_urls[member]),
            })
        }

        fn kill(&mut self, member: usize) -> anyhow::Result<()> {
            self.members[member].kill()
        }

        async fn restart(&mut self, member: usize) -> anyhow::Result<()> {
            // `--initial-cluster-state new` is ignored once the data dir holds a member.
            self.members[member].spawn()?;
            self.wait_linearizable(member).await
        }
    }
}
