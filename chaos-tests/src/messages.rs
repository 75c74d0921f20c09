//! The RabbitMQ part of a chaos run (issue 23): the `mq` app consumes numbered
//! messages from a queue while the faults happen, and the checker finds out
//! whether any was lost or handled twice without cause.
//!
//! - The broker is the one `STROM_RABBITMQ_URL` names, on the host's loopback
//!   (`.ci/run` starts it with `.ci/rabbitmq`). The containers reach it through
//!   a [`Relay`] on the chaos network's gateway address, which can cut one
//!   container off the broker (its connections closed, new ones refused) while
//!   it still reaches everything else: the worker–broker partition.
//! - The [`Producer`] publishes a numbered message every 50 ms with publisher
//!   confirms (one in [`FAIL_EVERY`] asks the test handler to fail: it must end
//!   in the poison queue), and reconnects when the broker goes away.
//! - The `mq` app's function is the test handler's echo: each successful
//!   handling publishes (confirmed, before the acknowledgement) an output message
//!   carrying the message and its `Redelivered` flag. The [`Reader`] collects the
//!   outputs, once each (by their message id).
//! - Another reader takes the poison queue (each message's id and the error
//!   Strom gave up on); at the end, what is left in the input queue.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::history::History;

/// One message in this many asks the handler to fail (its `Query.action`).
pub const FAIL_EVERY: u64 = 40;
/// The producer's period.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// How long a publish may wait for its confirm.
const CONFIRM_DEADLINE: Duration = Duration::from_secs(10);

/// A published message, as the producer knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: u64,
    /// It asks the handler to fail: it must end in the poison queue.
    pub failing: bool,
    /// The broker confirmed it (else its fate is unknown: it may arrive).
    pub confirmed: bool,
    pub at_ms: u64,
}

/// One handling: an output message of the `mq` app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub id: u64,
    /// The broker had delivered the message before (its first consumer lost it).
    pub redelivered: bool,
    /// `RetryContext.RetryCount`: an attempt after a failed one of the same
    /// delivery (0: the delivery's first).
    pub retry: u64,
    /// When the harness read its output.
    pub at_ms: u64,
}

/// What the messaging part of a run saw.
#[derive(Debug, Clone, Default)]
pub struct MessageRecords {
    pub published: Vec<Published>,
    pub handled: Vec<Handled>,
    /// Message ids found in the poison queue at the end, with the error Strom
    /// gave up on (its `x-strom-error` header).
    pub poisoned: Vec<(u64, String)>,
    /// Messages left in the input queue at the end.
    pub left: u64,
}

/// The broker the run uses, from the environment; `None` (said why) when there
/// is none, an error when `STROM_REQUIRE_RABBITMQ=1`.
pub fn broker_from_env() -> anyhow::Result<Option<(String, String)>> {
    let url = std::env::var("STROM_RABBITMQ_URL").unwrap_or_default();
    let restart = std::env::var("STROM_RABBITMQ_RESTART").unwrap_or_default();
    if url.trim().is_empty() || restart.trim().is_empty() {
        if std::env::var("STROM_REQUIRE_RABBITMQ").is_ok_and(|v| v == "1") {
            bail!("STROM_RABBITMQ_URL or STROM_RABBITMQ_RESTART is not set, and STROM_REQUIRE_RABBITMQ=1 (.ci/rabbitmq start DIR writes both to DIR/env)");
        }
        println!("no RabbitMQ broker (STROM_RABBITMQ_URL, STROM_RABBITMQ_RESTART; `.ci/rabbitmq start DIR && . DIR/env`): the run has no messaging app and no broker faults");
        return Ok(None);
    }
    Ok(Some((url, restart)))
}

/// `url` with its host and port replaced by `addr` (credentials and vhost kept).
pub fn url_via(url: &str, addr: SocketAddr) -> anyhow::Result<String> {
    let (scheme_creds, rest) = url
        .split_once('@')
        .context("STROM_RABBITMQ_URL has no user@host")?;
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    Ok(format!("{scheme_creds}@{addr}{path}"))
}

/// The broker `url` names (`STROM_RABBITMQ_URL`), parsed as Strom does
/// (`amqp://host/` is the vhost `/`).
pub fn endpoint(url: &str) -> anyhow::Result<strom_proto::manifest::rabbitmq::AmqpEndpoint> {
    strom_proto::manifest::rabbitmq::parse_amqp_uri(url)
        .map_err(|e| anyhow::anyhow!("STROM_RABBITMQ_URL: {e}"))
}

/// A connection to `url` as Strom makes one (a deadline; errors without the
/// password).
pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    strom_messaging::connect(&endpoint(url)?, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A TCP relay to the broker that can cut off a source address.
#[derive(Clone)]
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<Mutex<HashSet<IpAddr>>>,
    /// Each relayed connection's source and its stop.
    conns: Arc<Mutex<Vec<(IpAddr, CancellationToken)>>>,
}

impl Relay {
    /// Listens on `ip` (a free port) and relays to `upstream` until `stop`.
    pub async fn start(
        ip: IpAddr,
        upstream: SocketAddr,
        stop: CancellationToken,
    ) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("the broker relay cannot listen on {ip}"))?;
        let relay = Relay {
            addr: listener.local_addr()?,
            cut: Arc::default(),
            conns: Arc::default(),
        };
        let this = relay.clone();
        tokio::spawn(async move {
            loop {
                let (client, peer) = tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                if this.cut.lock().expect("relay").contains(&peer.ip()) {
                    drop(client);
                    continue;
                }
                let token = stop.child_token();
                {
                    let mut conns = this.conns.lock().expect("relay");
                    conns.retain(|(_, t)| !t.is_cancelled());
                    conns.push((peer.ip(), token.clone()));
                }
                tokio::spawn(relay_one(client, upstream, token));
            }
        });
        Ok(relay)
    }

    /// Cut `ip` off the broker: its connections closed, new ones refused.
    pub fn cut(&self, ip: IpAddr) {
        self.cut.lock().expect("relay").insert(ip);
        for (from, token) in self.conns.lock().expect("relay").iter() {
            if *from == ip {
                token.cancel();
            }
        }
    }

    pub fn heal(&self, ip: IpAddr) {
        self.cut.lock().expect("relay").remove(&ip);
    }

    pub fn heal_all(&self) {
        self.cut.lock().expect("relay").clear();
    }
}

async fn relay_one(mut client: TcpStream, upstream: SocketAddr, stop: CancellationToken) {
    let Ok(Ok(mut server)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await
    else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = stop.cancelled() => {}
    }
    stop.cancel();
}

/// The messaging load: the producer and the readers, and what they saw.
pub struct Messaging {
    url: String,
    pub input: String,
    pub output: String,
    stop_producer: CancellationToken,
    stop_readers: CancellationToken,
    published: Arc<Mutex<Vec<Published>>>,
    /// Outputs by their message id (each counted once).
    handled: Arc<Mutex<HashMap<String, Handled>>>,
    poisoned: Arc<Mutex<Vec<(u64, String)>>>,
    producer: tokio::task::JoinHandle<()>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Messaging {
    /// Declares the queues (durable): the input, the outputs, and the input's
    /// poison queue as Strom declares it (the harness reads it from the start).
    pub async fn declare(url: &str, run: &str) -> anyhow::Result<(String, String)> {
        let (input, output) = (format!("chaos-in-{run}"), format!("chaos-out-{run}"));
        let c = connect(url).await?;
        let ch = c.create_channel().await?;
        for q in [&input, &output, &poison_queue(&input)] {
            ch.queue_declare(
                ShortString::from(q.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring {q}"))?;
        }
        let _ = c.close(200, "declared".into()).await;
        Ok((input, output))
    }

    /// Starts the producer and the readers of the outputs and the poison queue.
    pub fn start(url: String, input: String, output: String, history: History) -> Messaging {
        let (stop_producer, stop_readers) = (CancellationToken::new(), CancellationToken::new());
        let published = Arc::new(Mutex::new(Vec::new()));
        let handled = Arc::new(Mutex::new(HashMap::new()));
        let poisoned = Arc::new(Mutex::new(Vec::new()));
        let producer = tokio::spawn(produce(
            url.clone(),
            input.clone(),
            history.clone(),
            published.clone(),
            stop_producer.clone(),
        ));
        let readers = vec![
            tokio::spawn(consume(
                url.clone(),
                output.clone(),
                stop_readers.clone(),
                take_outputs(history.clone(), handled.clone()),
            )),
            tokio::spawn(consume(
                url.clone(),
                poison_queue(&input),
                stop_readers.clone(),
                take_poisoned(history, poisoned.clone()),
            )),
        ];
        Messaging {
            url,
            input,
            output,
            stop_producer,
            stop_readers,
            published,
            handled,
            poisoned,
            producer,
            readers,
        }
    }

    /// Stops publishing, waits (up to `limit`) until every confirmed message is
    /// handled (or, asking to fail, poisoned) and the input queue is empty,
    /// then deletes the queues. What was seen.
    pub async fn finish(self, history: &History, limit: Duration) -> MessageRecords {
        let Messaging {
            url,
            input,
            output,
            stop_producer,
            stop_readers,
            published,
            handled,
            poisoned,
            producer,
            readers,
        } = self;
        // The producer first; the readers keep reading.
        stop_producer.cancel();
        let _ = producer.await;
        let published = published.lock().expect("records").clone();
        let wanted = |failing: bool| -> HashSet<u64> {
            published
                .iter()
                .filter(|p| p.confirmed && p.failing == failing)
                .map(|p| p.id)
                .collect()
        };
        let (want_handled, want_poisoned) = (wanted(false), wanted(true));
        let deadline = tokio::time::Instant::now() + limit;
        let mut left = None;
        // The input queue's depth as the leader reads it (a passive declare, one
        // connection kept).
        let depth = strom_messaging::DepthProbe::default();
        let broker = endpoint(&url).ok();
        loop {
            let seen: HashSet<u64> = handled
                .lock()
                .expect("records")
                .values()
                .map(|h| h.id)
                .collect();
            let gave_up: HashSet<u64> = poisoned
                .lock()
                .expect("records")
                .iter()
                .map(|(id, _)| *id)
                .collect();
            if let Some(Ok(l)) = match &broker {
                Some(b) => Some(depth.ready(b, None, &input).await),
                None => None,
            } {
                left = Some(l);
            }
            let done = want_handled.is_subset(&seen)
                && want_poisoned.is_subset(&gave_up)
                && left == Some(0);
            if done || tokio::time::Instant::now() > deadline {
                if !done {
                    history.note(format!(
                        "messages: still waiting after {limit:?}: {} of {} handled, {} of {} poisoned, {} in the queue",
                        want_handled.intersection(&seen).count(),
                        want_handled.len(),
                        want_poisoned.intersection(&gave_up).count(),
                        want_poisoned.len(),
                        left.map_or("unknown".into(), |l| l.to_string()),
                    ));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The readers a moment more, for outputs still on their way.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_readers.cancel();
        for r in readers {
            let _ = r.await;
        }
        delete_queues(&url, &[&input, &output, &poison_queue(&input)]).await;
        let mut handled: Vec<Handled> =
            handled.lock().expect("records").values().cloned().collect();
        handled.sort_by_key(|h| (h.at_ms, h.id));
        let poisoned = poisoned.lock().expect("records").clone();
        MessageRecords {
            published,
            handled,
            poisoned,
            left: left.unwrap_or(0),
        }
    }
}

fn poison_queue(input: &str) -> String {
    strom_messaging::delivery::poison_queue(input)
}

async fn delete_queues(url: &str, queues: &[&str]) {
    let Ok(c) = connect(url).await else { return };
    if let Ok(ch) = c.create_channel().await {
        for q in queues {
            let _ = ch
                .queue_delete(ShortString::from(*q), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = c.close(200, "done".into()).await;
}

/// The body of message `id`.
pub fn body(id: u64) -> Vec<u8> {
    let failing = id % FAIL_EVERY == FAIL_EVERY - 1;
    let v = if failing {
        serde_json::json!({"id": id, "Query": {"action": "fail"}})
    } else {
        serde_json::json!({"id": id})
    };
    v.to_string().into_bytes()
}

/// The message an output carries (the test handler's echo: the request's `Data`
/// and `Metadata` in its body): its id, `Redelivered` and
/// `RetryContext.RetryCount`.
pub fn carried(output: &[u8]) -> Option<(u64, bool, u64)> {
    let v: serde_json::Value = serde_json::from_slice(output).ok()?;
    let body: serde_json::Value = serde_json::from_str(v["body"].as_str()?).ok()?;
    let meta = &body["metadata"];
    Some((
        body["data"]["msg"]["id"].as_u64()?,
        meta["Redelivered"] == true,
        meta["RetryContext"]["RetryCount"].as_u64().unwrap_or(0),
    ))
}

async fn confirm_channel(url: &str) -> anyhow::Result<(Connection, Channel)> {
    let c = connect(url).await?;
    let ch = c.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((c, ch))
}

async fn produce(
    url: String,
    queue: String,
    history: History,
    published: Arc<Mutex<Vec<Published>>>,
    stop: CancellationToken,
) {
    let mut link: Option<(Connection, Channel)> = None;
    let mut id = 0u64;
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_since: Option<String> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if link.is_none() {
            match tokio::time::timeout(Duration::from_secs(5), confirm_channel(&url)).await {
                Ok(Ok(l)) => {
                    if let Some(why) = down_since.take() {
                        history.note(format!(
                            "messages: the producer is connected again (was: {why})"
                        ));
                    }
                    link = Some(l);
                }
                Ok(Err(e)) => {
                    down_since.get_or_insert_with(|| format!("{e:#}"));
                    continue;
                }
                Err(_) => {
                    down_since.get_or_insert_with(|| "connect timed out".into());
                    continue;
                }
            }
        }
        let Some((_, ch)) = &link else { continue };
        let at_ms = history.now_ms();
        let sent = async {
            ch.basic_publish(
                ShortString::from(""),
                ShortString::from(queue.as_str()),
                BasicPublishOptions::default(),
                &body(id),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(ShortString::from("application/json")),
            )
            .await?
            .await
        };
        let confirmed = matches!(
            tokio::time::timeout(CONFIRM_DEADLINE, sent).await,
            Ok(Ok(c)) if c.is_ack()
        );
        published.lock().expect("records").push(Published {
            id,
            failing: id % FAIL_EVERY == FAIL_EVERY - 1,
            confirmed,
            at_ms,
        });
        id += 1;
        if !confirmed {
            down_since.get_or_insert_with(|| "a publish was not confirmed".into());
            link = None;
        }
    }
}

/// Reads `queue` until `stop`, reconnecting when the broker goes away; each
/// message goes to `take`, then is acknowledged (a message redelivered to the
/// reader can come twice: `take` sees it again).
async fn consume(
    url: String,
    queue: String,
    stop: CancellationToken,
    mut take: impl FnMut(&lapin::message::Delivery) + Send + 'static,
) {
    while !stop.is_cancelled() {
        let consumer = async {
            let c = connect(&url).await?;
            let ch = c.create_channel().await?;
            let consumer = ch
                .basic_consume(
                    ShortString::from(queue.as_str()),
                    ShortString::from("chaos-reader"),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            anyhow::Ok((c, ch, consumer))
        };
        let (_c, _ch, mut consumer) =
            match tokio::time::timeout(Duration::from_secs(5), consumer).await {
                Ok(Ok(x)) => x,
                _ => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = consumer.next() => n,
            };
            let Some(Ok(d)) = next else { break };
            take(&d);
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    }
}

/// The outputs: each once by its message id (a redelivery to this reader is
/// not a handling).
fn take_outputs(
    history: History,
    handled: Arc<Mutex<HashMap<String, Handled>>>,
) -> impl FnMut(&lapin::message::Delivery) + Send + 'static {
    let (mut foreign, mut unnamed) = (0u64, 0u64);
    move |d| {
        let key = match d.properties.message_id() {
            Some(m) => m.to_string(),
            None => {
                unnamed += 1;
                format!("unnamed-{unnamed}")
            }
        };
        match carried(&d.data) {
            Some((id, redelivered, retry)) => {
                let at_ms = history.now_ms();
                handled
                    .lock()
                    .expect("records")
                    .entry(key)
                    .or_insert(Handled {
                        id,
                        redelivered,
                        retry,
                        at_ms,
                    });
            }
            None => {
                foreign += 1;
                if foreign == 1 {
                    history.note(format!(
                        "messages: an output the harness cannot read: {}",
                        String::from_utf8_lossy(&d.data)
                    ));
                }
            }
        }
    }
}

/// The poison queue: each message's id and the error Strom gave up on (its
/// `x-strom-error` header).
fn take_poisoned(
    history: History,
    poisoned: Arc<Mutex<Vec<(u64, String)>>>,
) -> impl FnMut(&lapin::message::Delivery) + Send + 'static {
    move |d| {
        let error = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-strom-error").cloned())
            .map(|e| match e {
                lapin::types::AMQPValue::LongString(s) => s.to_string(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
        match v["id"].as_u64() {
            Some(id) => poisoned.lock().expect("records").push((id, error)),
            None => history.note(format!(
                "messages: a poisoned message that is not the producer's: {}",
                String::from_utf8_lossy(&d.data)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_outputs_and_urls() {
        let v: serde_json::Value = serde_json::from_slice(&body(3)).unwrap();
        assert_eq!(v, serde_json::json!({"id": 3}));
        let v: serde_json::Value = serde_json::from_slice(&body(FAIL_EVERY - 1)).unwrap();
        assert_eq!(v["Query"]["action"], "fail");
        let echo = serde_json::json!({
            "statusCode": 200,
            "body": serde_json::json!({"data": {"msg": {"id": 9}}, "metadata": {"Redelivered": true}}).to_string(),
        });
        assert_eq!(carried(echo.to_string().as_bytes()), Some((9, true, 0)));
        let retried = serde_json::json!({
            "body": serde_json::json!({"data": {"msg": {"id": 9}}, "metadata": {
                "Redelivered": false, "RetryContext": {"RetryCount": 2, "MaxRetryCount": 4}}}).to_string(),
        });
        assert_eq!(carried(retried.to_string().as_bytes()), Some((9, false, 2)));
        assert_eq!(carried(b"{}"), None);
        let gw: SocketAddr = "172.30.7.1:40001".parse().unwrap();
        assert_eq!(
            url_via("amqp://strom:pw@127.0.0.1:5672/", gw).unwrap(),
            "amqp://strom:pw@172.30.7.1:40001/"
        );
        assert_eq!(
            url_via("amqp://u:p@localhost:5672/%2Fv", gw).unwrap(),
            "amqp://u:p@172.30.7.1:40001/%2Fv"
        );
        assert_eq!(
            url_via("amqp://u:p@localhost", gw).unwrap(),
            "amqp://u:p@172.30.7.1:40001"
        );
    }
}
