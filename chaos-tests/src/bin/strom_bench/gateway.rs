//! Gateway overhead: the same handler and client, called directly, through nginx
//! (the industry baseline) and through Strom's gateway in forwarding and JSON
//! mode — and through an older build's gateway, when `--before` names one.
//!
//! With `--before`, each pair of this build and the older one is measured A B B A
//! (B A A B with `--before-first`), each run half the time: the order a build
//! is measured in has moved throughput by up to 2× at 32 connections on a
//! 2-core machine, so both runs of each are printed and the comparison uses
//! their mean, in which the order cancels.

use super::*;

#[derive(Clone)]
struct Target {
    name: &'static str,
    method: &'static str,
    url: String,
    body: Bytes,
    content_type: Option<&'static str>,
}

/// What is measured: one target, or this build and the older one's (A B B A).
enum Step {
    One(Target),
    Pair { current: Target, older: Target },
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

/// The mean of two runs of one target (for the comparison; quantiles of the first).
fn mean(a: &Result, b: &Result) -> Result {
    Result {
        quantiles: a.quantiles.clone(),
        p50_us: (a.p50_us + b.p50_us) / 2.0,
        p99_us: (a.p99_us + b.p99_us) / 2.0,
        rps: (a.rps + b.rps) / 2.0,
        errors: a.errors + b.errors,
    }
}

pub fn write_app(dir: &Path, handler: &Path) -> anyhow::Result<()> {
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

pub async fn gateway_overhead(builds: &Builds, seconds: f64) -> anyhow::Result<()> {
    let bins = builds.current.clone();
    let handler = bins.join("strom-test-handler");
    let work = tempfile::tempdir()?;

    // The handler on its own port: the direct baseline and nginx's upstream.
    let (_direct, direct_port) = direct_handler(&handler, &[]).await?;

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
    let http_port = start_strom_up(&bins.join("strom"), &app, &work.path().join("data")).await?;
    let strom = http_port.1;
    let strom_pid = strom.0.id();
    let http_port = http_port.0;
    // An older build's gateway beside it (`--before`), same app and handler.
    let before = match &builds.before {
        Some(dir) => {
            Some(start_strom_up(&dir.join("strom"), &app, &work.path().join("before")).await?)
        }
        None => None,
    };
    let json_payload = Bytes::from(
        serde_json::json!({"Data":{"req":{"Url":"http://127.0.0.1/api/echo","Method":"GET","Query":{},"Headers":{},"Params":{},"Identities":[]}},"Metadata":{}})
            .to_string(),
    );
    let mut targets = vec![Step::One(Target {
        name: "direct (forwarding shape)",
        method: "GET",
        url: format!("http://127.0.0.1:{direct_port}/api/fwd/bench"),
        body: Bytes::new(),
        content_type: None,
    })];
    if nginx.is_some() {
        targets.push(Step::One(Target {
            name: "nginx reverse proxy",
            method: "GET",
            url: format!("http://127.0.0.1:{nginx_port}/api/fwd/bench"),
            body: Bytes::new(),
            content_type: None,
        }));
    }
    let pair = |targets: &mut Vec<Step>, current: Target, older: Option<Target>| match older {
        Some(older) => targets.push(Step::Pair { current, older }),
        None => targets.push(Step::One(current)),
    };
    pair(
        &mut targets,
        Target {
            name: "strom gateway, forwarding mode",
            method: "GET",
            url: format!("http://127.0.0.1:{http_port}/api/fwd/bench"),
            body: Bytes::new(),
            content_type: None,
        },
        before.as_ref().map(|(port, _)| Target {
            name: "strom gateway (before), forwarding mode",
            method: "GET",
            url: format!("http://127.0.0.1:{port}/api/fwd/bench"),
            body: Bytes::new(),
            content_type: None,
        }),
    );
    targets.push(Step::One(Target {
        name: "direct (JSON-mode shape)",
        method: "POST",
        url: format!("http://127.0.0.1:{direct_port}/echo"),
        body: json_payload,
        content_type: Some("application/json"),
    }));
    pair(
        &mut targets,
        Target {
            name: "strom gateway, JSON mode",
            method: "GET",
            url: format!("http://127.0.0.1:{http_port}/api/echo"),
            body: Bytes::new(),
            content_type: None,
        },
        before.as_ref().map(|(port, _)| Target {
            name: "strom gateway (before), JSON mode",
            method: "GET",
            url: format!("http://127.0.0.1:{port}/api/echo"),
            body: Bytes::new(),
            content_type: None,
        }),
    );

    out!("| target | connections | p50 µs | p99 µs | req/s | errors |");
    out!("|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let measure = |t: &Target, connections: usize, seconds: f64| {
        let t = t.clone();
        async move {
            let profiled = match (connections, t.name) {
                (32, "strom gateway, forwarding mode") => Some("gateway-forwarding-32"),
                (32, "strom gateway, JSON mode") => Some("gateway-json-32"),
                _ => None,
            };
            let recording = profiled.and_then(|name| profile::start(name, &[strom_pid]));
            let r = load(&t, connections, seconds).await;
            if let Some(recording) = recording {
                recording.finish();
            }
            r
        }
    };
    let row = |name: &str, connections: usize, r: &Result| {
        out!(
            "| {name} | {connections} | {:.0} | {:.0} | {:.0} | {} |",
            r.p50_us,
            r.p99_us,
            r.rps,
            r.errors
        );
    };
    for connections in [1usize, 32] {
        for step in &targets {
            match step {
                Step::One(t) => {
                    let r = measure(t, connections, seconds).await?;
                    row(t.name, connections, &r);
                    report::latency(t.name, connections, r.quantiles.clone());
                    rows.push((t.name, connections, r));
                }
                Step::Pair { current, older } => {
                    let (a, b) = if builds.before_first {
                        (older, current)
                    } else {
                        (current, older)
                    };
                    let half = seconds / 2.0;
                    let a1 = measure(a, connections, half).await?;
                    let b1 = measure(b, connections, half).await?;
                    let b2 = measure(b, connections, half).await?;
                    let a2 = measure(a, connections, half).await?;
                    for (t, r, which) in [(a, &a1, 1), (b, &b1, 1), (b, &b2, 2), (a, &a2, 2)] {
                        row(&format!("{} (run {which} of 2)", t.name), connections, r);
                    }
                    for (t, r) in [(a, mean(&a1, &a2)), (b, mean(&b1, &b2))] {
                        row(&format!("{} (mean)", t.name), connections, &r);
                        rows.push((t.name, connections, r));
                    }
                }
            }
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
            (
                "strom before, forwarding vs direct",
                "strom gateway (before), forwarding mode",
                "direct (forwarding shape)",
            ),
            (
                "strom before, JSON mode vs direct",
                "strom gateway (before), JSON mode",
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

async fn reqwest_like_get(url: &str) -> bool {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    matches!(client.request(req).await, Ok(r) if r.status().is_success())
}

/// `strom up` of `strom` with the app on a free port, waited for until the app
/// answers; its port and the process (stopped when dropped).
async fn start_strom_up(strom: &Path, app: &Path, data: &Path) -> anyhow::Result<(u16, Proc)> {
    let (proc, http_port, _) = spawn_strom_up(strom, app, data)?;
    wait_port(([127, 0, 0, 1], http_port).into()).await?;
    // Wait for the first instance.
    for _ in 0..400 {
        if reqwest_like_get(&format!("http://127.0.0.1:{http_port}/api/fwd/ready")).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok((http_port, proc))
}
