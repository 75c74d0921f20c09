//! Timer dispatch lateness: from a tick's scheduled time to the handler receiving
//! the run, for a warm instance. The same handler records when each run reaches
//! it (`TEST_HANDLER_RECORD`) and which tick it is for; the baseline is the best
//! any scheduler could do on this machine: a loop in this process that sleeps
//! until each tick and POSTs the same JSON-mode request to the handler directly.
//! A scale-to-zero app (`STROM_SCALE_TO_ZERO`, stopped at once after each run)
//! shows the cost of starting an instance for a run.

use super::*;
use strom_chaos_tests::history::TimerEvent;

/// Every second (NCRONTAB with seconds).
const EVERY_SECOND: &str = "* * * * * *";

/// Lateness of each run's arrival at the handler after its tick (ms).
fn lateness(record: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    let mut late: Vec<f64> = text
        .lines()
        .filter_map(TimerEvent::parse)
        .filter(|e| e.start)
        .map(|e| e.at_unix_ms as f64 - e.tick_ms as f64)
        .collect();
    late.sort_by(f64::total_cmp);
    late
}

fn row(what: &str, late: &[f64], baseline_p50: Option<f64>) {
    if late.is_empty() {
        out!("| {what} | 0 | – | – | – | – |");
        return;
    }
    let q = |p: f64| late[((late.len() - 1) as f64 * p).round() as usize];
    let ratio = baseline_p50
        .filter(|b| *b > 0.0)
        .map_or("1.00×".to_string(), |b| format!("{:.2}×", q(0.5) / b));
    out!(
        "| {what} | {} | {:.1} | {:.1} | {:.1} | {ratio} |",
        late.len(),
        q(0.5),
        q(0.99),
        late[late.len() - 1]
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The baseline: sleep until each whole second, POST the run to the handler.
async fn direct(handler: &Path, dir: &Path, seconds: f64) -> anyhow::Result<Vec<f64>> {
    let record = dir.join("direct.jsonl");
    let (_handler, port) =
        direct_handler(handler, &[("TEST_HANDLER_RECORD", record.as_os_str())]).await?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let tick = (now_ms() / 1000 + 1) * 1000;
        tokio::time::sleep(Duration::from_millis((tick - now_ms()).max(0) as u64)).await;
        let at = chrono::DateTime::from_timestamp_millis(tick).unwrap_or_default();
        let body = serde_json::json!({
            "Data": {"timer": strom_proto::timers::timer_info(
                chrono_tz::Tz::UTC,
                Some(&strom_proto::timers::ScheduleStatus {
                    last: None,
                    next: at,
                    last_updated: at,
                    schedule: EVERY_SECOND.into(),
                }),
                false,
            )},
            "Metadata": {},
        });
        let req = hyper::Request::post(format!("http://127.0.0.1:{port}/tick"))
            .header("content-type", "application/json")
            .header("x-azure-functions-invocationid", format!("direct-{tick}"))
            .body(Full::new(Bytes::from(body.to_string())))?;
        let resp = client.request(req).await?;
        resp.into_body().collect().await?;
    }
    Ok(lateness(&record))
}

/// `strom up` with a timer on `schedule` and the app `settings`; runs recorded by
/// the handler (the first two, warming up, left out).
async fn through_strom(
    strom: &Path,
    handler: &Path,
    dir: &Path,
    seconds: f64,
    schedule: &str,
    settings: serde_json::Value,
) -> anyhow::Result<Vec<f64>> {
    let dir = dir.join(format!("strom-{}", free_port()));
    let dir = dir.as_path();
    let app = dir.join("timers");
    let record = dir.join("strom.jsonl");
    std::fs::create_dir_all(app.join("tick"))?;
    std::fs::write(
        app.join("host.json"),
        format!(
            r#"{{"version":"2.0","customHandler":{{"description":{{"defaultExecutablePath":"{}"}}}}}}"#,
            handler.display()
        ),
    )?;
    std::fs::write(
        app.join("tick/function.json"),
        format!(
            r#"{{"bindings":[{{"type":"timerTrigger","direction":"in","name":"timer","schedule":"{schedule}"}}]}}"#
        ),
    )?;
    let mut values = settings;
    values["TEST_HANDLER_RECORD"] = serde_json::json!(record);
    std::fs::write(
        app.join("local.settings.json"),
        serde_json::json!({ "Values": values }).to_string(),
    )?;
    let (_strom, _, _) = spawn_strom_up(strom, &app, &dir.join("data"))?;
    // Warm: measure only once runs arrive.
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    while lateness(&record).len() < 2 {
        if Instant::now() > warm_deadline {
            bail!("no timer run reached the handler within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let skip = lateness(&record).len();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let text = std::fs::read_to_string(&record).unwrap_or_default();
    let measured: String = text
        .lines()
        .filter(|l| TimerEvent::parse(l).is_some_and(|e| e.start))
        .skip(skip)
        .map(|l| format!("{l}\n"))
        .collect();
    let kept = dir.join("strom-measured.jsonl");
    std::fs::write(&kept, measured)?;
    Ok(lateness(&kept))
}

pub async fn run(builds: &Builds, seconds: f64) -> anyhow::Result<()> {
    let seconds = seconds.max(20.0);
    let handler = builds.current.join("strom-test-handler");
    let strom = builds.current.join("strom");
    let dir = tempfile::tempdir()?;
    let direct_late = direct(&handler, dir.path(), seconds).await?;
    let warm = serde_json::json!({});
    let strom_late =
        through_strom(&strom, &handler, dir.path(), seconds, EVERY_SECOND, warm).await?;
    // A batch app: no instance between runs (stopped at once), a run every 5 s,
    // so each one starts an instance.
    let batch = serde_json::json!({"STROM_SCALE_TO_ZERO": "true", "STROM_IDLE_STOP": "00:00:00"});
    let cold_seconds = seconds.max(40.0);
    let cold_late = through_strom(
        &strom,
        &handler,
        dir.path(),
        cold_seconds,
        "*/5 * * * * *",
        batch,
    )
    .await?;
    out!(
        "Timers for {seconds:.0} s (every second, warm) and {cold_seconds:.0} s (every 5 s, scale to zero); lateness = when the run reaches the handler minus its tick (wall clock, one machine)."
    );
    out!();
    out!("| dispatch | runs | p50 ms | p99 ms | max ms | p50 vs direct |");
    out!("|---|---:|---:|---:|---:|---:|");
    let base = direct_late.get(direct_late.len() / 2).copied();
    row(
        "direct (sleep until the tick, POST to the handler)",
        &direct_late,
        None,
    );
    row(
        "strom up, warm instance (leader fires, commits, sends to it)",
        &strom_late,
        base,
    );
    row(
        "strom up, scale-to-zero app (each run starts an instance)",
        &cold_late,
        base,
    );
    Ok(())
}
