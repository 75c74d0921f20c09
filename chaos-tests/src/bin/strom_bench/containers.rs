//! The instance runtimes section: cold start, crash → serving, and the worker's
//! memory per instance, for the Docker runtime and the process runtime, each beside
//! its bare baseline, with the same static handler (the conformance suite's) in the
//! same `FROM scratch` image.
//!
//! - Cold start (issue 20's goal 4), 20 starts each: `strom app scale APP 1` (from
//!   0) acknowledged → the first 200 through the gateway, polled every 1 ms. The
//!   scheduler decides after the scale is acknowledged and the instance is Ready
//!   before the gateway answers with it, so this bounds "scheduler's decision →
//!   Ready" from above; the time from issuing the CLI is shown too. Baselines: a
//!   bare container of the same image (create + start through the Engine API, port
//!   published on 127.0.0.1, default options) → its first 200; the handler spawned
//!   by hand → its first answer. With `--before`, the older build's `strom up` is
//!   measured the same way in the same run.
//! - Crash → serving: the handler exits on a request (`action=exit`), then the time
//!   from that failed answer to the next 200; baseline for docker: the engine's own
//!   `--restart always` policy on a bare container.
//! - Memory: the `strom up` process's resident memory with 0 and with 10 instances,
//!   per runtime; the difference per instance is the worker's own cost (handlers and
//!   containers are separate processes and not counted).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::models::RestartPolicyNameEnum;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;

use crate::{free_port, proc_kb, wait_port, Proc};
use strom_testkit::handler as support;

const TRIALS: usize = 5;
/// Cold starts per runtime and build (the goal's p99 is over 20).
const COLD_TRIALS: usize = 20;
const INSTANCES_FOR_MEMORY: u32 = 10;

/// One GET; the status, or `None` when nothing answered.
async fn status_of(addr: SocketAddr, target: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()
}

/// Poll (every 1 ms) until a 200; the time since `t0`.
async fn until_ok(addr: SocketAddr, target: &str, t0: Instant) -> anyhow::Result<Duration> {
    let deadline = t0 + Duration::from_secs(60);
    loop {
        if status_of(addr, target).await == Some(200) {
            return Ok(t0.elapsed());
        }
        if Instant::now() > deadline {
            bail!("{addr}{target}: no 200 within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The `q` quantile (nearest rank) in ms.
fn quantile_ms(v: &[Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    crate::quantile(&ms, q)
}

fn median_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn list_ms(v: &[Duration]) -> String {
    v.iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bare container of `image`: the handler on 8080, published on 127.0.0.1.
async fn bare_container(
    docker: &Docker,
    image: &str,
    name: &str,
    restart: bool,
) -> anyhow::Result<SocketAddr> {
    let body = ContainerCreateBody {
        image: Some(image.into()),
        entrypoint: Some(vec!["/home/site/wwwroot/conformance-handler".into()]),
        env: Some(vec!["FUNCTIONS_CUSTOMHANDLER_PORT=8080".into()]),
        exposed_ports: Some(vec!["8080/tcp".into()]),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                "8080/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    // A fixed port: a restarted container gets the same one.
                    host_port: Some(if restart {
                        free_port().to_string()
                    } else {
                        String::new()
                    }),
                }]),
            )])),
            restart_policy: restart.then_some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ALWAYS),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(name).build()),
            body,
        )
        .await?;
    docker.start_container(name, None).await?;
    let inspect = docker.inspect_container(name, None).await?;
    let port: u16 = inspect
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get("8080/tcp").cloned().flatten())
        .and_then(|b| b.into_iter().find_map(|b| b.host_port))
        .context("no published port")?
        .parse()?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

async fn remove(docker: &Docker, name: &str) {
    let _ = docker
        .remove_container(
            name,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await;
}

/// A `strom up` running both runtimes' copies of the app.
struct Strom {
    _proc: Proc,
    pid: u32,
    http: SocketAddr,
    control: String,
    data: PathBuf,
    bin: PathBuf,
}

impl Strom {
    fn cli(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(&self.bin)
            .args(args)
            .args(["--server", &self.control, "--data-dir"])
            .arg(&self.data)
            .output()?;
        if !out.status.success() {
            bail!("strom {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        proc_kb(&status, "VmRSS:").context("no VmRSS")
    }

    async fn scale_and_wait(&self, app: &str, n: u32) -> anyhow::Result<()> {
        self.cli(&["app", "scale", app, &n.to_string()])?;
        let target = format!("/api/{app}/x");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // At 0 a request would wait for an instance (up to the start-up limit).
            let ok = n == 0 || status_of(self.http, &target).await == Some(200);
            let count = self.ready_instances(app)?;
            if count == n && (n == 0 || ok) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{app}: {count} of {n} instances ready after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn ready_instances(&self, app: &str) -> anyhow::Result<u32> {
        let out = Command::new(&self.bin)
            .args([
                "app",
                "show",
                app,
                "--output",
                "json",
                "--server",
                &self.control,
            ])
            .arg("--data-dir")
            .arg(&self.data)
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| String::from_utf8_lossy(&out.stderr).to_string())?;
        let mut n = 0;
        if let Some(list) = v.get("instances").and_then(|i| i.as_array()) {
            for i in list {
                let ready = i.get("state").and_then(|s| s.as_str()) == Some("Ready");
                let serving = i.get("serving").and_then(|s| s.as_bool()).unwrap_or(true);
                if ready && serving {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Start `strom up` with `bin_dir`'s `strom` on both copies of the app (in `work`),
/// and wait until each serves with one instance.
async fn up(bin_dir: &Path, work: &Path, data: &str) -> anyhow::Result<Strom> {
    let http_port = free_port();
    let control_port = free_port();
    let data = work.join(data);
    let child = Command::new(bin_dir.join("strom"))
        .arg("up")
        .arg(work.join("boxed"))
        .arg(work.join("plain"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--control-addr", &format!("127.0.0.1:{control_port}")])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .env("STROM_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let strom = Strom {
        _proc: Proc(child),
        pid,
        http: SocketAddr::from(([127, 0, 0, 1], http_port)),
        control: format!("http://127.0.0.1:{control_port}"),
        data,
        bin: bin_dir.join("strom"),
    };
    wait_port(strom.http).await?;
    let token = strom.data.join("admin.token");
    for _ in 0..600 {
        if token.is_file() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `strom up` deploys its folders after the ports open.
    for app in ["boxed", "plain"] {
        let mut deployed = false;
        for _ in 0..600 {
            if strom.cli(&["app", "show", app]).is_ok() {
                deployed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !deployed {
            bail!("app {app} was not deployed within 60 s");
        }
        strom.scale_and_wait(app, 1).await?;
    }
    Ok(strom)
}

/// One cold start of `app`: from 0 to 1 instance; the times from issuing the
/// scale and from its acknowledgement to the first 200 through the gateway.
async fn cold_start(strom: &Strom, app: &str) -> anyhow::Result<(Duration, Duration)> {
    strom.scale_and_wait(app, 0).await?;
    let issued = Instant::now();
    strom.cli(&["app", "scale", app, "1"])?;
    let acked = Instant::now();
    let took = until_ok(strom.http, &format!("/api/{app}/x"), acked).await?;
    Ok((issued.elapsed(), took))
}

pub async fn run(builds: &crate::Builds) -> anyhow::Result<()> {
    out!("### Instance runtimes: cold start, crash → serving, memory per instance");
    out!();
    let Some(docker) = support::docker_or_skip("the containers benchmark").await else {
        out!("No Docker engine answered: section skipped.");
        return Ok(());
    };
    let scratch = std::env::temp_dir().join("strom-bench");
    let handler = support::handler_binary(&scratch);
    let image = support::conformance_image(&docker, &scratch).await;
    let work = tempfile::tempdir()?;

    // Two copies of the app: `boxed` in containers, `plain` as processes.
    for (name, runtime) in [("boxed", "docker"), ("plain", "process")] {
        let dir = work.path().join(name);
        support::write_app(&dir, &handler);
        // One route per app (they share the function port): /api/<app>/…
        std::fs::write(
            dir.join("hello").join("function.json"),
            format!(
                r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","methods":["get"],"route":"{name}/{{*rest}}"}},{{"type":"http","direction":"out","name":"res"}}]}}"#
            ),
        )?;
        std::fs::write(
            dir.join("local.settings.json"),
            format!(
                r#"{{"IsEncrypted":false,"Values":{{"STROM_RUNTIME":"{runtime}","STROM_CONTAINER_IMAGE":"{image}"}}}}"#
            ),
        )?;
    }
    let strom = up(&builds.current, work.path(), "data").await?;
    let before = match &builds.before {
        Some(dir) => Some(up(dir, work.path(), "data-before").await?),
        None => None,
    };

    // Cold start: the builds, runtimes and baselines interleaved, trial by trial.
    let mut cold: HashMap<String, Vec<Duration>> = HashMap::new();
    for trial in 0..COLD_TRIALS {
        let builds =
            std::iter::once(("this build", &strom)).chain(before.as_ref().map(|b| ("before", b)));
        for (build, s) in builds {
            for app in ["boxed", "plain"] {
                let (issued, acked) = cold_start(s, app).await?;
                cold.entry(format!("{build} {app} issued"))
                    .or_default()
                    .push(issued);
                cold.entry(format!("{build} {app}"))
                    .or_default()
                    .push(acked);
            }
        }
        let name = format!("strom-bench-bare-{}-{trial}", std::process::id());
        let t0 = Instant::now();
        let addr = bare_container(&docker, &image, &name, false).await?;
        let took = until_ok(addr, "/", t0).await;
        remove(&docker, &name).await;
        cold.entry("bare docker".into()).or_default().push(took?);

        let port = free_port();
        let t0 = Instant::now();
        let child = Command::new(&handler)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let _p = Proc(child);
        let took = until_ok(SocketAddr::from(([127, 0, 0, 1], port)), "/", t0).await?;
        cold.entry("bare process".into()).or_default().push(took);
    }
    out!(
        "Cold start, {COLD_TRIALS} starts each (ms). Strom: `app scale APP 1` (from 0) acknowledged → first 200 through the gateway (an upper bound of the scheduler's decision → Ready); in brackets, from issuing the CLI. Goals: process runtime ≤ the handler's own spawn → ready + 20 ms at p50 and p99; docker runtime ≤ 1.2× a bare create + start."
    );
    out!();
    out!("| what | p50 ms | p99 ms | goal (p50 / p99) | every start (ms) |");
    out!("|---|---:|---:|---|---|");
    let q = |key: &str, at: f64| quantile_ms(&cold[key], at);
    let (bare_docker, bare_process) = (
        (q("bare docker", 0.5), q("bare docker", 0.99)),
        (q("bare process", 0.5), q("bare process", 0.99)),
    );
    out!(
        "| bare container (Engine API create + start → first 200) | {:.1} | {:.1} | baseline | {} |",
        bare_docker.0,
        bare_docker.1,
        list_ms(&cold["bare docker"])
    );
    out!(
        "| bare process (the handler spawned → first answer) | {:.1} | {:.1} | baseline | {} |",
        bare_process.0,
        bare_process.1,
        list_ms(&cold["bare process"])
    );
    let builds: Vec<&str> = if before.is_some() {
        vec!["this build", "before"]
    } else {
        vec!["this build"]
    };
    for build in builds {
        for (app, runtime) in [("boxed", "docker"), ("plain", "process")] {
            let key = format!("{build} {app}");
            let (p50, p99) = (q(&key, 0.5), q(&key, 0.99));
            let issued = format!("{key} issued");
            let goal = if app == "boxed" {
                let (r50, r99) = (p50 / bare_docker.0, p99 / bare_docker.1);
                let met = if r50 <= 1.2 && r99 <= 1.2 {
                    "met"
                } else {
                    "missed"
                };
                format!("{r50:.2}× / {r99:.2}× of bare: {met}")
            } else {
                let (a50, a99) = (p50 - bare_process.0, p99 - bare_process.1);
                let met = if a50 <= 20.0 && a99 <= 20.0 {
                    "met"
                } else {
                    "missed"
                };
                format!("+{a50:.1} / +{a99:.1} ms over bare: {met}")
            };
            out!(
                "| Strom ({build}), {runtime} runtime | {p50:.1} ({:.1}) | {p99:.1} ({:.1}) | {goal} | {} |",
                q(&issued, 0.5),
                q(&issued, 0.99),
                list_ms(&cold[&key])
            );
        }
    }
    out!();
    drop(before);

    // Crash → serving.
    let mut crash: HashMap<&str, Vec<Duration>> = HashMap::new();
    for app in ["boxed", "plain"] {
        strom.scale_and_wait(app, 1).await?;
        for _ in 0..TRIALS {
            let _ = status_of(strom.http, &format!("/api/{app}/x?action=exit&code=1")).await;
            let t0 = Instant::now();
            let took = until_ok(strom.http, &format!("/api/{app}/x"), t0).await?;
            crash.entry(app).or_default().push(took);
            // Past the restart policy's immediate first restart: a quiet second.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let name = format!("strom-bench-restart-{}", std::process::id());
    let addr = bare_container(&docker, &image, &name, true).await?;
    until_ok(addr, "/", Instant::now()).await?;
    for _ in 0..TRIALS {
        let _ = status_of(addr, "/?action=exit&code=1").await;
        let t0 = Instant::now();
        let took = until_ok(addr, "/", t0).await;
        crash.entry("bare docker").or_default().push(took?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    remove(&docker, &name).await;
    out!("Crash → serving again, {TRIALS} crashes each (ms):");
    out!();
    out!("| what | median ms | trials (ms) |");
    out!("|---|---|---|");
    for (label, key) in [
        ("bare container, engine `--restart always`", "bare docker"),
        ("Strom, docker runtime", "boxed"),
        ("Strom, process runtime", "plain"),
    ] {
        let v = crash.get_mut(key).unwrap();
        let m = median_ms(v);
        out!("| {label} | {m:.0} | {} |", list_ms(v));
    }
    out!();

    // Memory per instance.
    out!(
        "Worker memory: the `strom up` process's RSS with 0 and with {INSTANCES_FOR_MEMORY} instances (handlers and containers not counted):"
    );
    out!();
    out!("| runtime | RSS at 0 (MiB) | RSS at {INSTANCES_FOR_MEMORY} (MiB) | per instance (KiB) |");
    out!("|---|---|---|---|");
    for (app, label) in [("boxed", "docker"), ("plain", "process")] {
        for other in ["boxed", "plain"] {
            strom.scale_and_wait(other, 0).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at0 = strom.rss_kib()?;
        strom.scale_and_wait(app, INSTANCES_FOR_MEMORY).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let atn = strom.rss_kib()?;
        let per = (atn as f64 - at0 as f64) / INSTANCES_FOR_MEMORY as f64;
        out!(
            "| {label} | {:.1} | {:.1} | {per:.0} |",
            at0 as f64 / 1024.0,
            atn as f64 / 1024.0
        );
    }
    for other in ["boxed", "plain"] {
        strom.scale_and_wait(other, 0).await?;
    }
    Ok(())
}
