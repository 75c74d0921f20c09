//! Gateway cost in instructions: what one request costs the `strom up` process,
//! counted by valgrind's callgrind (instructions executed, not time), so two
//! builds compare to within a fraction of a percent on a shared, noisy machine
//! where throughput varies by ±10 % from run to run. One worker thread, one
//! keep-alive connection, the same handler; the count covers only the measured
//! requests (instrumentation is switched on after a warm-up, off before the stop).
//! Skipped with a note when valgrind is not installed.

use super::*;

/// Requests counted per target.
const REQUESTS: usize = 2000;
/// Measurements of each build, interleaved (this build, before, this build, …):
/// a node's timers and background tasks add a few percent that vary from run to
/// run, so one measurement each is not enough to compare builds.
const ROUNDS: usize = 3;

/// Instructions per request of one build in one mode.
async fn instructions_per_request(strom: &Path, app: &Path, path: &str) -> anyhow::Result<f64> {
    let work = tempfile::tempdir()?;
    let out = work.path().join("callgrind.out");
    let port = free_port();
    let mut child = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--instr-atstart=no",
            &format!("--callgrind-out-file={}", out.display()),
        ])
        .arg(strom)
        .arg("up")
        .arg(app)
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .args(["--control-addr", "127.0.0.1:0", "--http-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--startup-timeout-secs", "120"])
        .env("STROM_LOG", "error")
        .env("STROM_WORKER_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting strom under valgrind")?;
    let pid = child.id().to_string();
    let stdout = child.stdout.take().context("its stdout")?;
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
            .any(|l| l.starts_with("Ready."))
    });
    let guard = Proc(child);
    if !tokio::time::timeout(Duration::from_secs(300), ready).await?? {
        bail!("strom under valgrind did not become ready");
    }
    let url = format!("http://127.0.0.1:{port}{path}");
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let get = || async {
        let req = hyper::Request::get(&url).body(Full::new(Bytes::new()))?;
        let resp = client.request(req).await?;
        let ok = resp.status().is_success();
        resp.into_body().collect().await?;
        anyhow::ensure!(ok, "{url}: not a success");
        anyhow::Ok(())
    };
    for _ in 0..100 {
        get().await?;
    }
    let control = |args: &[&str]| {
        Command::new("callgrind_control")
            .args(args)
            .arg(&pid)
            .output()
            .with_context(|| format!("callgrind_control {}", args.join(" ")))
    };
    control(&["-i", "on"])?;
    for _ in 0..REQUESTS {
        get().await?;
    }
    control(&["-i", "off"])?;
    control(&["-d"])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(guard);
    let mut total = 0u64;
    for entry in std::fs::read_dir(work.path())? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("callgrind.out")
        {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        total += text
            .lines()
            .filter_map(|l| l.strip_prefix("totals: "))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    if total == 0 {
        bail!("callgrind counted nothing (is callgrind_control on PATH?)");
    }
    Ok(total as f64 / REQUESTS as f64)
}

pub async fn run(builds: &Builds) -> anyhow::Result<()> {
    if which("valgrind").is_none() || which("callgrind_control").is_none() {
        eprintln!("valgrind not found (Debian: apt-get install valgrind): the gateway cost section is skipped");
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let app = work.path().join("bench");
    gateway::write_app(&app, &builds.current.join("strom-test-handler"))?;
    let mut builds_to_measure = vec![("this build", builds.current.join("strom"))];
    if let Some(before) = &builds.before {
        builds_to_measure.push(("before", before.join("strom")));
    }
    out!(
        "Instructions the `strom up` process executes per request (callgrind, {REQUESTS} requests, one connection, one worker thread, after a warm-up; the median of {ROUNDS} runs of each build, interleaved, with the lowest and highest):"
    );
    out!();
    out!("| build | forwarding mode | JSON mode |");
    out!("|---|---:|---:|");
    let mut runs: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); builds_to_measure.len()];
    for _ in 0..ROUNDS {
        for (i, (_, strom)) in builds_to_measure.iter().enumerate() {
            runs[i]
                .0
                .push(instructions_per_request(strom, &app, "/api/fwd/bench").await?);
            runs[i]
                .1
                .push(instructions_per_request(strom, &app, "/api/echo").await?);
        }
    }
    let mut medians = Vec::new();
    for ((name, _), (forwarding, json)) in builds_to_measure.iter().zip(&mut runs) {
        let (f, j) = (spread(forwarding), spread(json));
        out!(
            "| {name} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) |",
            f.1,
            f.0,
            f.2,
            j.1,
            j.0,
            j.2
        );
        medians.push((f.1, j.1));
    }
    if let [now, before] = medians.as_slice() {
        out!(
            "| this build / before (medians) | {:.3}× | {:.3}× |",
            now.0 / before.0,
            now.1 / before.1
        );
    }
    Ok(())
}

/// (lowest, median, highest) of a few measurements.
fn spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
    )
}
