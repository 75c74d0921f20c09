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
//! Run: `cargo run --release -p strom-chaos-tests --bin strom-bench [-- --seconds N]
//! [--trials N] [--only gateway|placements|ha]`. The gateway and HA sections build the
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
const SECTIONS: [&str; 3] = ["gateway", "placements", "ha"];

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?.to_path_buf();
    if !dir.join("strom").is_file() || !dir.join("strom-test-handler").is_file() {
        eprintln!("building the release strom binaries…");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "strom-node", "--bins"])
            .status()?;
        if !status.success() {
            bail!("cargo build failed");
        }
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
    machine_facts();
    println!();
    if wanted("gateway") {
        gateway_overhead(seconds).await?;
    }
    if wanted("placements") {
        if only.is_none() {
            println!();
        }
        placements()?;
    }
    if wanted("ha") {
        if only.is_none() {
            println!();
        }
        ha::run(seconds, trials).await?;
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
    println!("| machine | |");
    println!("|---|---|");
    println!("| cores | {cores} × {model} |");
    println!("| memory | {memory_gib:.1} GiB |");
    println!("| date | {} |", run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    println!(
        "| commit | {} |",
        run("git", &["rev-parse", "--short", "HEAD"])
    );
    println!("| load average (1, 5, 15 min) at start | {} |", load.join(", "));
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

    println!("| target | connections | p50 µs | p99 µs | req/s | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for connections in [1usize, 32] {
        for t in &targets {
            let r = load(t, connections, seconds).await?;
            println!(
                "| {} | {connections} | {:.0} | {:.0} | {:.0} | {} |",
                t.name, r.p50_us, r.p99_us, r.rps, r.errors
            );
            rows.push((t.name, connections, r));
        }
    }
    println!();
    println!("| comparison | connections | added p50 µs | throughput ratio |");
    println!("|---|---:|---:|---:|");
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
                println!(
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
    println!(
        "| placement scenario | workers | instances placed | best ms | median ms | placements/s | vs {PLACEMENTS_GOAL_PER_S:.0}/s goal |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
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
    println!(
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
