//! RabbitMQ messages (issue 23): the same handler (`strom-test-handler`, whose
//! echo answers each message with an output message that carries it) fed from a
//! queue
//! - by a plain `lapin` consumer in this process (the baseline): for each
//!   delivery, POST the JSON-mode request to the handler, publish its output
//!   with a publisher confirm, then acknowledge — what Strom does, with nothing
//!   else;
//! - by Strom (`strom up`, a `rabbitMQTrigger` function with a `rabbitMQ`
//!   output): its consumer, invocation, output confirm and acknowledgement.
//!
//! Both at prefetch 1 and 30 (`extensions.rabbitMQ.prefetchCount`), measured
//! the same way: messages/s over a backlog of messages published as fast as the
//! broker confirms them, and end-to-end latency (publish → handler → output
//! confirmed → the output reaches this process) at a steady rate well under
//! either's capacity. And scale from zero: a scale-to-zero app with no
//! instance, one message published, until the handler receives it (the
//! handler's own record) and until its output arrives.
//!
//! Needs a broker: `STROM_RABBITMQ_URL` (`.ci/rabbitmq start DIR && . DIR/env`
//! starts one on loopback); without it the section says so and measures nothing.

use std::collections::HashSet;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use strom_chaos_tests::messages::connect;
use tokio::sync::mpsc;

use super::*;

/// Messages in each throughput backlog.
const BACKLOG: u64 = 2_000;
/// The steady rate of the latency runs (messages/s).
const STEADY_RATE: f64 = 50.0;
/// Scale-from-zero trials.
const COLD_TRIALS: usize = 5;

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A connection with a confirm-mode channel (declares and publishes).
struct Mq {
    connection: Connection,
    channel: Channel,
}

impl Mq {
    async fn open(url: &str) -> anyhow::Result<Mq> {
        let connection = connect(url).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Mq {
            connection,
            channel,
        })
    }

    async fn declare(&self, queue: &str) -> anyhow::Result<()> {
        self.channel
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring {queue}"))?;
        Ok(())
    }

    async fn delete(&self, queue: &str) {
        let _ = self
            .channel
            .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
            .await;
    }
}

/// Publishes `body` persistent to `queue`; the future of its confirm.
async fn publish(
    channel: &Channel,
    queue: &str,
    body: &[u8],
) -> anyhow::Result<lapin::PublisherConfirm> {
    Ok(channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("application/json")),
        )
        .await?)
}

/// A message: its number and when it was published (µs since the epoch).
fn message(seq: u64) -> Vec<u8> {
    serde_json::json!({"seq": seq, "sentUs": now_us()})
        .to_string()
        .into_bytes()
}

/// The message an output carries: the test handler's echo puts the request's
/// `Data` in its output's body (a JSON text), and the trigger's binding is `msg`.
fn carried(output: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(output).ok()?;
    let body: serde_json::Value = serde_json::from_str(v["body"].as_str()?).ok()?;
    let m = &body["data"]["msg"];
    Some((m["seq"].as_u64()?, m["sentUs"].as_u64()?))
}

/// Reads the output queue: (seq, µs from publish to arrival) of each output.
async fn outputs(
    connection: &Connection,
    queue: &str,
) -> anyhow::Result<mpsc::UnboundedReceiver<(u64, u64)>> {
    let channel = connection.create_channel().await?;
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from("bench-outputs"),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(d)) = consumer.next().await {
            if let Some((seq, sent)) = carried(&d.data) {
                if tx.send((seq, now_us().saturating_sub(sent))).is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}

/// Waits for the outputs of `seqs`; their latencies (ms), or what is missing.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<(u64, u64)>,
    seqs: std::ops::Range<u64>,
    limit: Duration,
) -> anyhow::Result<Vec<f64>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = HashSet::new();
    let mut late = Vec::new();
    while (seen.len() as u64) < seqs.end - seqs.start {
        let got = tokio::time::timeout_at(deadline, rx.recv()).await;
        match got {
            Ok(Some((seq, us))) => {
                if seqs.contains(&seq) && seen.insert(seq) {
                    late.push(us as f64 / 1000.0);
                }
            }
            Ok(None) => bail!("the output reader stopped"),
            Err(_) => bail!(
                "{} of {} outputs arrived within {limit:?}",
                seen.len(),
                seqs.end - seqs.start
            ),
        }
    }
    late.sort_by(f64::total_cmp);
    Ok(late)
}

/// What was measured of one consumer at one prefetch.
struct Measured {
    per_second: f64,
    latency_ms: Vec<f64>,
}

/// Throughput over a backlog, then latency at a steady rate, of whatever
/// consumes `input` and answers to the outputs `rx` reads. `next` numbers
/// messages across calls.
async fn measure(
    mq: &Mq,
    input: &str,
    rx: &mut mpsc::UnboundedReceiver<(u64, u64)>,
    next: &mut u64,
    seconds: f64,
) -> anyhow::Result<Measured> {
    // Throughput: publish the backlog as fast as the broker confirms it.
    let first = *next;
    let start = Instant::now();
    let mut confirms = Vec::with_capacity(BACKLOG as usize);
    for _ in 0..BACKLOG {
        confirms.push(publish(&mq.channel, input, &message(*next)).await?);
        *next += 1;
    }
    for c in confirms {
        if !c.await?.is_ack() {
            bail!("the broker did not confirm a backlog message");
        }
    }
    collect(rx, first..*next, Duration::from_secs(300)).await?;
    let per_second = BACKLOG as f64 / start.elapsed().as_secs_f64();

    // Latency: a message every 1/STEADY_RATE s.
    let first = *next;
    let gap = Duration::from_secs_f64(1.0 / STEADY_RATE);
    let mut tick = tokio::time::Instant::now();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        tokio::time::sleep_until(tick).await;
        tick += gap;
        if !publish(&mq.channel, input, &message(*next))
            .await?
            .await?
            .is_ack()
        {
            bail!("the broker did not confirm a message");
        }
        *next += 1;
    }
    let latency_ms = collect(rx, first..*next, Duration::from_secs(120)).await?;
    Ok(Measured {
        per_second,
        latency_ms,
    })
}

/// The baseline consumer: for each delivery, POST the JSON-mode request to the
/// handler, publish its `Outputs.res` confirmed, then acknowledge.
async fn plain_consumer(
    url: &str,
    input: &str,
    output: &str,
    handler_port: u16,
    prefetch: u16,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let connection = connect(url).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let out = connection.create_channel().await?;
    out.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            ShortString::from(input),
            ShortString::from("bench-plain"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let output = output.to_string();
    Ok(tokio::spawn(async move {
        let _keep = (connection, channel);
        let mut n = 0u64;
        while let Some(Ok(delivery)) = consumer.next().await {
            n += 1;
            let (client, out, output) = (client.clone(), out.clone(), output.clone());
            tokio::spawn(async move {
                if let Err(e) = handle(&client, handler_port, &out, &output, &delivery, n).await {
                    eprintln!("plain consumer: {e:#}");
                }
            });
        }
    }))
}

async fn handle(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    port: u16,
    out: &Channel,
    output: &str,
    delivery: &Delivery,
    n: u64,
) -> anyhow::Result<()> {
    let msg: serde_json::Value = serde_json::from_slice(&delivery.data)?;
    let body = serde_json::json!({
        "Data": {"msg": msg},
        "Metadata": {"DeliveryTag": delivery.delivery_tag, "Redelivered": delivery.redelivered},
    });
    let req = hyper::Request::post(format!("http://127.0.0.1:{port}/work"))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", format!("plain-{n}"))
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = client.request(req).await?;
    let answer: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
    let res = answer["Outputs"]["res"].to_string();
    if !publish(out, output, res.as_bytes()).await?.await?.is_ack() {
        bail!("the broker did not confirm an output");
    }
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// An app folder: `work` triggered by `input`, its echo sent to `output`.
fn write_app(
    dir: &Path,
    handler: &Path,
    input: &str,
    output: &str,
    prefetch: u16,
    settings: serde_json::Value,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("work"))?;
    std::fs::write(
        dir.join("host.json"),
        serde_json::json!({
            "version": "2.0",
            "customHandler": {"description": {"defaultExecutablePath": handler}},
            "extensions": {"rabbitMQ": {"prefetchCount": prefetch}},
        })
        .to_string(),
    )?;
    std::fs::write(
        dir.join("work/function.json"),
        serde_json::json!({"bindings": [
            {"type": "rabbitMQTrigger", "direction": "in", "name": "msg",
             "queueName": input, "connectionStringSetting": "Mq"},
            {"type": "rabbitMQ", "direction": "out", "name": "res",
             "queueName": output, "connectionStringSetting": "Mq"},
        ]})
        .to_string(),
    )?;
    std::fs::write(
        dir.join("local.settings.json"),
        serde_json::json!({"IsEncrypted": false, "Values": settings}).to_string(),
    )?;
    Ok(())
}

/// Publishes warm-up messages until one comes back (Strom is consuming).
async fn warm_up(
    mq: &Mq,
    input: &str,
    rx: &mut mpsc::UnboundedReceiver<(u64, u64)>,
    next: &mut u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seq = *next;
        *next += 1;
        publish(&mq.channel, input, &message(seq)).await?.await?;
        if collect(rx, seq..seq + 1, Duration::from_secs(3))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Strom did not consume from {input} within 90 s");
        }
    }
}

/// The queue trigger's state in `fn list` (scale, consumers).
fn trigger_state(strom: &Path, server: &str, token: &str) -> Option<(u64, u64)> {
    let out = Command::new(strom)
        .args([
            "fn", "list", "messages", "--output", "json", "--server", server,
        ])
        .env("STROM_TOKEN", token)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let q = &v["functions"][0]["queue"];
    Some((q["scale"].as_u64()?, q["consumers"].as_u64().unwrap_or(0)))
}

/// Scale from zero, `COLD_TRIALS` times: (ms to the handler, ms to the output).
async fn cold_starts(
    strom: &Path,
    handler: &Path,
    url: &str,
    mq: &Mq,
    dir: &Path,
    next: &mut u64,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (input, output) = (
        format!("bench-cold-in-{}", std::process::id()),
        format!("bench-cold-out-{}", std::process::id()),
    );
    mq.declare(&input).await?;
    mq.declare(&output).await?;
    let record = dir.join("cold.jsonl");
    let app = dir.join("messages");
    write_app(
        &app,
        handler,
        &input,
        &output,
        30,
        serde_json::json!({
            "Mq": url,
            "TEST_HANDLER_RECORD": record,
            "STROM_SCALE_TO_ZERO": "true",
            "STROM_MAX_SCALE": "1",
            "STROM_SCALE_DOWN_COOLDOWN": "00:00:01",
        }),
    )?;
    let data = dir.join("cold-data");
    let (_strom, _, server) = spawn_strom_up(strom, &app, &data)?;
    let mut rx = outputs(&mq.connection, &output).await?;
    let (mut to_handler, mut to_output) = (Vec::new(), Vec::new());
    let mut token = String::new();
    for trial in 0..COLD_TRIALS {
        // At zero: no instance, no consumer.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if token.is_empty() {
                token = std::fs::read_to_string(data.join("admin.token"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
            }
            if !token.is_empty() && trigger_state(strom, &server, &token) == Some((0, 0)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("trial {trial}: the app did not scale to zero within 90 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let seq = *next;
        *next += 1;
        let sent = now_us();
        publish(&mq.channel, &input, &message(seq)).await?.await?;
        let late = collect(&mut rx, seq..seq + 1, Duration::from_secs(60)).await?;
        to_output.push(late[0]);
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        let at_ms = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "start" && v["data"]["msg"]["seq"] == seq)
            .and_then(|v| v["atMs"].as_u64())
            .context("the handler's record has no start of the cold message")?;
        to_handler.push((at_ms as f64 - sent as f64 / 1000.0).max(0.0));
    }
    mq.delete(&input).await;
    mq.delete(&output).await;
    to_handler.sort_by(f64::total_cmp);
    to_output.sort_by(f64::total_cmp);
    Ok((to_handler, to_output))
}

pub async fn run(builds: &Builds, seconds: f64) -> anyhow::Result<()> {
    let Ok(url) = std::env::var("STROM_RABBITMQ_URL") else {
        out!("Skipped: `STROM_RABBITMQ_URL` is not set (`.ci/rabbitmq start DIR && . DIR/env` starts a broker on loopback).");
        return Ok(());
    };
    let seconds = seconds.max(10.0);
    let handler = builds.current.join("strom-test-handler");
    let strom = builds.current.join("strom");
    let dir = tempfile::tempdir()?;
    let mq = Mq::open(&url).await?;
    let mut next = 0u64;
    let mut rows = Vec::new();
    for prefetch in [1u16, 30] {
        let tag = format!("{}-{prefetch}", std::process::id());
        let (input, output) = (format!("bench-in-{tag}"), format!("bench-out-{tag}"));

        // The baseline.
        mq.declare(&input).await?;
        mq.declare(&output).await?;
        let (handler_proc, port) = direct_handler(&handler, &[]).await?;
        let mut rx = outputs(&mq.connection, &output).await?;
        let consumer = plain_consumer(&url, &input, &output, port, prefetch).await?;
        let plain = measure(&mq, &input, &mut rx, &mut next, seconds).await?;
        consumer.abort();
        drop(handler_proc);
        mq.delete(&input).await;
        mq.delete(&output).await;

        // Strom.
        let (input, output) = (format!("{input}-s"), format!("{output}-s"));
        mq.declare(&input).await?;
        mq.declare(&output).await?;
        let app = dir
            .path()
            .join(format!("messages-{prefetch}"))
            .join("messages");
        write_app(
            &app,
            &handler,
            &input,
            &output,
            prefetch,
            serde_json::json!({"Mq": url}),
        )?;
        let data = dir.path().join(format!("data-{prefetch}"));
        let (strom_proc, _, _) = spawn_strom_up(&strom, &app, &data)?;
        let mut rx = outputs(&mq.connection, &output).await?;
        warm_up(&mq, &input, &mut rx, &mut next).await?;
        let through = measure(&mq, &input, &mut rx, &mut next, seconds).await?;
        drop(strom_proc);
        mq.delete(&input).await;
        mq.delete(&output).await;
        rows.push((prefetch, plain, through));
    }
    let (to_handler, to_output) =
        cold_starts(&strom, &handler, &url, &mq, dir.path(), &mut next).await?;

    out!(
        "RabbitMQ on this machine's broker ({BACKLOG} messages as a backlog for messages/s; then {seconds:.0} s at {STEADY_RATE:.0} messages/s for latency = publish → handler → output confirmed → output received here). Each message is persistent, each output published with a publisher confirm before the message is acknowledged, on both sides."
    );
    out!();
    out!(
        "| consumer | prefetch | messages/s | vs plain | latency p50 ms | p99 ms | p50 vs plain |"
    );
    out!("|---|---:|---:|---:|---:|---:|---:|");
    for (prefetch, plain, through) in &rows {
        let p = |m: &Measured, q: f64| quantile(&m.latency_ms, q);
        out!(
            "| plain lapin consumer → handler | {prefetch} | {:.0} | 1.00× | {:.1} | {:.1} | 1.00× |",
            plain.per_second,
            p(plain, 0.5),
            p(plain, 0.99)
        );
        out!(
            "| Strom (`strom up`) | {prefetch} | {:.0} | {:.2}× | {:.1} | {:.1} | {:.2}× |",
            through.per_second,
            through.per_second / plain.per_second,
            p(through, 0.5),
            p(through, 0.99),
            p(through, 0.5) / p(plain, 0.5)
        );
    }
    out!();
    out!(
        "Scale from zero ({COLD_TRIALS} trials; a scale-to-zero app with no instance, one message): the leader reads the queue every 500 ms, places an instance at its next round, the worker starts the handler and its consumer."
    );
    out!();
    out!("| from publish to | p50 ms | max ms |");
    out!("|---|---:|---:|");
    out!(
        "| the handler receives the message | {:.0} | {:.0} |",
        quantile(&to_handler, 0.5),
        to_handler[to_handler.len() - 1]
    );
    out!(
        "| its output arrives (confirmed, then acknowledged) | {:.0} | {:.0} |",
        quantile(&to_output, 0.5),
        to_output[to_output.len() - 1]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_carries_its_message() {
        // The test handler's echo: Outputs.res with the request's Data in its body.
        let echo = serde_json::json!({
            "statusCode": 200,
            "body": serde_json::json!({"data": {"msg": {"seq": 7, "sentUs": 123}}}).to_string(),
        });
        assert_eq!(carried(echo.to_string().as_bytes()), Some((7, 123)));
        assert_eq!(carried(b"{\"body\":\"not json\"}"), None);
        let m: serde_json::Value = serde_json::from_slice(&message(3)).unwrap();
        assert_eq!(m["seq"], 3);
        assert!(m["sentUs"].as_u64().unwrap() > 0);
    }
}
