//! RabbitMQ triggers: every Ready instance on this node of an app with a
//! `rabbitMQTrigger` has its own consumer of the function's queue (competing
//! consumers, each on its own connection), with at most `prefetchCount` (and
//! `maxConcurrentRequests`) messages unacknowledged. A consumer follows the
//! routing snapshot: an instance that becomes Ready starts one; one that stops
//! being served (a drain, a scale-down, a new version) cancels its consumer
//! first and lets the messages it holds finish — make-before-break, as for HTTP.
//!
//! A message is acknowledged only after its invocation succeeded, outputs
//! confirmed included ([`super::outputs`]). A failed one is tried again by the
//! function's retry policy (none: 5 attempts a second apart, as Azure), and
//! after the last attempt published, confirmed, to `<queue>-poison` with
//! headers saying why — and only then acknowledged; with the app setting
//! `STROM_RABBITMQ_DEAD_LETTER=reject` it is rejected to the queue's
//! dead-letter exchange instead. A body over the function port's size limit is
//! poisoned at once. A message no instance here can take goes back to the
//! queue. A lost connection (broker restart, network cut) is reconnected with
//! backoff; the messages it held unacknowledged are redelivered by the broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use strom_actors::Endpoint;
use strom_messaging::delivery::{
    after_failure, body_value, metadata, poison_headers, poison_queue, retry_context, AfterFailure,
    DeliveryFacts,
};
use strom_proto::ids::AppName;
use strom_proto::instances::TriggerStatus;
use strom_proto::invocations::InvocationStatus;
use strom_proto::manifest::rabbitmq::{AmqpEndpoint, RabbitMqTrigger, CA_SETTING};
use strom_proto::manifest::{is_function_disabled, RetryPolicy, Trigger};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::admin_invoke::NonHttpRun;
use super::admission::AdminTarget;
use super::translate::fast_uuid;
use super::Gateway;
use crate::traces::Trace;

/// The app setting that sends poisoned messages to the queue's dead-letter
/// exchange (`reject`) instead of `<queue>-poison`.
pub const DEAD_LETTER_SETTING: &str = "STROM_RABBITMQ_DEAD_LETTER";
/// The longest pause between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The state of this node's consumers, for its heartbeats (`strom fn list`
/// shows it; the leader counts the messages in flight when scaling on queue
/// depth). Cheap to clone.
#[derive(Clone, Default)]
pub struct TriggerBoard(Arc<std::sync::Mutex<HashMap<Key, Board>>>);

impl std::fmt::Debug for TriggerBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TriggerBoard")
    }
}

/// One consumer's state.
#[derive(Debug, Clone, Default)]
struct Board {
    queue: String,
    consuming: bool,
    in_flight: u32,
    error: Option<String>,
}

impl TriggerBoard {
    fn update(&self, key: &Key, f: impl FnOnce(&mut Board)) {
        if let Some(b) = self.0.lock().expect("trigger board").get_mut(key) {
            f(b);
        }
    }

    fn add(&self, key: Key, queue: &str) {
        self.0.lock().expect("trigger board").insert(
            key,
            Board {
                queue: queue.to_string(),
                ..Board::default()
            },
        );
    }

    fn remove(&self, key: &Key) {
        self.0.lock().expect("trigger board").remove(key);
    }

    /// Each function's trigger on this node: its consumers summed, and the
    /// reason of one that does not consume.
    pub fn reports(&self) -> Vec<TriggerStatus> {
        let board = self.0.lock().expect("trigger board");
        let mut out: Vec<TriggerStatus> = Vec::new();
        for ((app, function, _), b) in board.iter() {
            let i = match out
                .iter()
                .position(|t| &t.app == app && &t.function == function)
            {
                Some(i) => i,
                None => {
                    out.push(TriggerStatus {
                        app: app.clone(),
                        function: function.clone(),
                        queue: b.queue.clone(),
                        consumers: 0,
                        consuming: 0,
                        in_flight: 0,
                        error: None,
                    });
                    out.len() - 1
                }
            };
            let t = &mut out[i];
            t.consumers += 1;
            t.consuming += u32::from(b.consuming);
            t.in_flight += b.in_flight;
            if !b.consuming && t.error.is_none() {
                t.error.clone_from(&b.error);
            }
        }
        out.sort_by(|a, b| (&a.app, &a.function).cmp(&(&b.app, &b.function)));
        out
    }
}

/// One consumer: a function's queue, for one instance.
#[derive(Clone)]
struct Spec {
    app: AppName,
    function: String,
    trigger: RabbitMqTrigger,
    policy: Option<RetryPolicy>,
    endpoint: Arc<Endpoint>,
    prefetch: u16,
}

type Key = (AppName, String, String);

impl Gateway {
    /// Runs the consumers of this node's instances until the gateway stops.
    pub(super) async fn run_consumers(self) {
        let stop = self.inner.stop.clone();
        let mut running: HashMap<Key, (CancellationToken, JoinHandle<()>)> = HashMap::new();
        let mut stopping: Vec<JoinHandle<()>> = Vec::new();
        loop {
            let changed = self.inner.routing.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wanted = self.wanted_consumers();
            let gone: Vec<Key> = running
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                self.inner.config.triggers.remove(&key);
                if let Some((cancel, task)) = running.remove(&key) {
                    // Make-before-break: it stops taking messages, finishes those
                    // it holds, then closes.
                    cancel.cancel();
                    stopping.push(task);
                }
            }
            stopping.retain(|t| !t.is_finished());
            for (key, spec) in wanted {
                if running.contains_key(&key) {
                    continue;
                }
                self.inner
                    .config
                    .triggers
                    .add(key.clone(), &spec.trigger.queue_name);
                let cancel = self.inner.stop.child_token();
                let task = tokio::spawn(self.clone().consume(key.clone(), spec, cancel.clone()));
                running.insert(key, (cancel, task));
            }
            tokio::select! {
                _ = changed => {}
                _ = stop.cancelled() => break,
            }
        }
        for (key, (cancel, task)) in running {
            self.inner.config.triggers.remove(&key);
            cancel.cancel();
            stopping.push(task);
        }
        for task in stopping {
            let _ = task.await;
        }
    }

    /// A consumer per Ready instance and enabled `rabbitMQTrigger` function.
    fn wanted_consumers(&self) -> HashMap<Key, Spec> {
        let snapshot = self.inner.routing.load();
        let view = self.inner.view.borrow().clone();
        let mut wanted = HashMap::new();
        for (app, serving) in &snapshot.apps {
            let Some(run) = view.runs.get(app) else {
                continue;
            };
            let host = &serving.manifest.host;
            let prefetch = match (
                serving.messaging.prefetch_count,
                host.max_concurrent_requests,
            ) {
                (0, Some(m)) => m.min(u32::from(u16::MAX)) as u16,
                (p, Some(m)) => u32::from(p).min(m) as u16,
                (p, None) => p,
            };
            for f in &serving.manifest.functions {
                let Trigger::RabbitMq(t) = &f.trigger else {
                    continue;
                };
                if is_function_disabled(&run.settings, &f.name) {
                    continue;
                }
                for endpoint in &serving.endpoints {
                    let key = (app.clone(), f.name.clone(), endpoint.instance_id.clone());
                    wanted.insert(
                        key,
                        Spec {
                            app: app.clone(),
                            function: f.name.clone(),
                            trigger: t.clone(),
                            policy: f.retry.clone(),
                            endpoint: endpoint.clone(),
                            prefetch,
                        },
                    );
                }
            }
        }
        wanted
    }

    /// One consumer, reconnecting with backoff until it is cancelled.
    async fn consume(self, key: Key, spec: Spec, cancel: CancellationToken) {
        let tag = format!(
            "strom-{}-{}",
            self.inner.config.node_id, spec.endpoint.instance_id
        );
        let mut backoff = Duration::from_secs(1);
        let mut last_error = String::new();
        loop {
            match self.consume_once(&key, &spec, &tag, &cancel).await {
                Ok(()) => return,
                Err((consumed, e)) => {
                    if consumed {
                        backoff = Duration::from_secs(1);
                    }
                    self.inner.config.triggers.update(&key, |b| {
                        b.consuming = false;
                        b.error = Some(e.clone());
                    });
                    // The same failure again is logged once, not every attempt.
                    if e != last_error {
                        tracing::warn!(app = %spec.app, function = %spec.function, queue = %spec.trigger.queue_name, "RabbitMQ trigger: {e}; retrying with backoff");
                        last_error = e;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects, consumes until cancelled (`Ok`) or the connection fails
    /// (`Err`: whether it got to consume, and why).
    async fn consume_once(
        &self,
        key: &Key,
        spec: &Spec,
        tag: &str,
        cancel: &CancellationToken,
    ) -> Result<(), (bool, String)> {
        let settings = self.settings_of(&spec.app);
        let queue = spec.trigger.queue_name.as_str();
        let broker = Arc::new(
            spec.trigger
                .connection
                .resolve(&settings)
                .map_err(|(field, why)| (false, format!("{field}: {why}")))?,
        );
        let ca = settings.get(CA_SETTING).cloned();
        let describe =
            |e: &lapin::Error| strom_messaging::connect::describe(&broker, e).to_string();
        let failed = |e: lapin::Error| (false, describe(&e));
        let connection = tokio::select! {
            c = strom_messaging::connect(&broker, ca.as_deref()) => c.map_err(|e| (false, e.to_string()))?,
            _ = cancel.cancelled() => return Ok(()),
        };
        // The poison queue is Strom's: declared (durable) on a channel of its own,
        // as a refusal closes the channel it came on.
        let reject = settings
            .get(DEAD_LETTER_SETTING)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("reject"));
        if !reject {
            let side = connection.create_channel().await.map_err(failed)?;
            let poison = poison_queue(queue);
            if let Err(e) = side
                .queue_declare(
                    ShortString::from(poison.as_str()),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
            {
                tracing::warn!(app = %spec.app, queue = %poison, "cannot declare the poison queue: {}", describe(&e));
            }
            let _ = side.close(200, "strom: declared".into()).await;
        }
        let channel = connection.create_channel().await.map_err(failed)?;
        channel
            .basic_qos(spec.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(failed)?;
        let mut consumer = channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(failed)?;
        tracing::info!(app = %spec.app, function = %spec.function, %queue, instance = %spec.endpoint.instance_id, broker = %broker, "RabbitMQ trigger consuming");
        let board = self.inner.config.triggers.clone();
        board.update(key, |b| {
            b.consuming = true;
            b.error = None;
        });
        let spec = Arc::new(spec.clone());
        let mut held: JoinSet<()> = JoinSet::new();
        let ended = loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    // Stop taking new messages; the ones held finish below.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        channel.basic_cancel(ShortString::from(tag), BasicCancelOptions::default()),
                    ).await;
                    break Ok(());
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let this = self.clone();
                        let (spec, broker, ca, tag) = (spec.clone(), broker.clone(), ca.clone(), tag.to_string());
                        let (board, key) = (board.clone(), key.clone());
                        board.update(&key, |b| b.in_flight += 1);
                        held.spawn(async move {
                            this.handle_delivery(spec, delivery, broker, ca, tag).await;
                            board.update(&key, |b| b.in_flight = b.in_flight.saturating_sub(1));
                        });
                    }
                    Some(Err(e)) => break Err((true, describe(&e))),
                    None => break Err((true, "the broker ended the consumer".to_string())),
                },
                Some(_) = held.join_next(), if !held.is_empty() => {}
            }
        };
        while held.join_next().await.is_some() {}
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            connection.close(200, "strom: consumer stopped".into()),
        )
        .await;
        ended
    }

    /// One message: invoked (and retried) until it succeeds, then acknowledged;
    /// or poisoned after the last attempt.
    async fn handle_delivery(
        self,
        spec: Arc<Spec>,
        d: Delivery,
        broker: Arc<AmqpEndpoint>,
        ca: Option<String>,
        tag: String,
    ) {
        let max = self.inner.config.max_body_bytes;
        if d.data.len() > max {
            let why = format!(
                "the message body ({} bytes) is over the limit of {max} bytes",
                d.data.len()
            );
            self.poison(&spec, &d, &broker, ca.as_deref(), "-", 0, &why)
                .await;
            return;
        }
        let mut attempt = 1u32;
        let mut last_error: Option<String> = None;
        loop {
            let Some(endpoint) = self.instance_for(&spec) else {
                // No instance here takes it now: back to the queue, for another.
                requeue(&d).await;
                return;
            };
            let facts = DeliveryFacts {
                consumer_tag: &tag,
                delivery_tag: d.delivery_tag,
                redelivered: d.redelivered,
                exchange: d.exchange.as_str(),
                routing_key: d.routing_key.as_str(),
                properties: &d.properties,
            };
            let mut data = serde_json::Map::new();
            data.insert(spec.trigger.binding_name.clone(), body_value(&d.data));
            let mut metadata = metadata(&facts);
            if let Some(context) =
                retry_context(spec.policy.as_ref(), attempt, last_error.as_deref())
            {
                metadata.insert("RetryContext".into(), context);
            }
            let run = NonHttpRun {
                id: fast_uuid(),
                data,
                metadata,
                trigger: "rabbitMQ",
                trace: Trace::default(),
            };
            let target = AdminTarget {
                app: spec.app.clone(),
                function: spec.function.clone(),
                binding: spec.trigger.binding_name.clone(),
            };
            let record = self.clone().run_non_http(target, endpoint, run).await;
            if record.status == InvocationStatus::Succeeded {
                if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
                    // The channel is gone: the broker gives the message to another
                    // consumer (a second handling, which the record shows).
                    tracing::warn!(app = %spec.app, function = %spec.function, invocation = %record.id, "could not acknowledge (the message will be redelivered): {e}");
                }
                return;
            }
            let error = record
                .error
                .clone()
                .unwrap_or_else(|| format!("HTTP {}", record.http_status));
            match after_failure(spec.policy.as_ref(), attempt) {
                AfterFailure::Retry { delay_ms } => {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    attempt += 1;
                    last_error = Some(error);
                }
                AfterFailure::Poison => {
                    self.poison(
                        &spec,
                        &d,
                        &broker,
                        ca.as_deref(),
                        &record.id,
                        attempt,
                        &error,
                    )
                    .await;
                    return;
                }
            }
        }
    }

    /// The consumer's own instance while it is Ready here, else another Ready
    /// instance of the app here.
    fn instance_for(&self, spec: &Spec) -> Option<Arc<Endpoint>> {
        let snapshot = self.inner.routing.load();
        let serving = snapshot.apps.get(&spec.app)?;
        serving
            .endpoints
            .iter()
            .find(|e| e.instance_id == spec.endpoint.instance_id)
            .or_else(|| serving.endpoints.first())
            .cloned()
    }

    /// After the last attempt: to `<queue>-poison` (confirmed), then acknowledged;
    /// or rejected to the dead-letter exchange when the app says so. A poison
    /// publish that fails gives the message back to the queue: never lost.
    #[allow(clippy::too_many_arguments)]
    async fn poison(
        &self,
        spec: &Spec,
        d: &Delivery,
        broker: &AmqpEndpoint,
        ca: Option<&str>,
        invocation: &str,
        attempts: u32,
        error: &str,
    ) {
        let queue = &spec.trigger.queue_name;
        let settings = self.settings_of(&spec.app);
        let reject = settings
            .get(DEAD_LETTER_SETTING)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("reject"));
        if reject {
            tracing::warn!(app = %spec.app, function = %spec.function, %queue, attempts, "message rejected to the queue's dead-letter exchange: {error}");
            let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
        let headers = poison_headers(
            d.properties.headers().as_ref(),
            &spec.function,
            invocation,
            attempts,
            error,
        );
        let props = d
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        let poison = poison_queue(queue);
        match self
            .inner
            .publisher
            .publish_raw(broker, ca, &poison, &[(d.data.clone(), props)])
            .await
        {
            Ok(()) => {
                tracing::warn!(app = %spec.app, function = %spec.function, %queue, attempts, "message moved to `{poison}`: {error}");
                metrics::counter!("strom_rabbitmq_poisoned_total", "app" => spec.app.to_string())
                    .increment(1);
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
            Err(e) => {
                tracing::error!(app = %spec.app, function = %spec.function, %queue, "could not move a failed message to `{poison}` ({e}); it goes back to the queue");
                requeue(d).await;
            }
        }
    }
}

/// Gives a message back to its queue, for another consumer (or this one again).
async fn requeue(d: &Delivery) {
    let _ = d
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(app: &str, function: &str, instance: &str) -> Key {
        (
            AppName::parse(app).unwrap(),
            function.to_string(),
            instance.to_string(),
        )
    }

    #[test]
    fn the_board_sums_each_functions_consumers_and_keeps_one_reason() {
        let board = TriggerBoard::default();
        let (a, b, c) = (
            key("shop", "f", "i1"),
            key("shop", "f", "i2"),
            key("shop", "g", "i1"),
        );
        board.add(a.clone(), "orders");
        board.add(b.clone(), "orders");
        board.add(c.clone(), "other");
        board.update(&a, |s| {
            s.consuming = true;
            s.in_flight = 3;
        });
        board.update(&b, |s| {
            s.error = Some("connection refused to 127.0.0.1:5672".into())
        });
        let reports = board.reports();
        assert_eq!(reports.len(), 2);
        let f = &reports[0];
        assert_eq!(
            (
                f.function.as_str(),
                f.queue.as_str(),
                f.consumers,
                f.consuming,
                f.in_flight
            ),
            ("f", "orders", 2, 1, 3)
        );
        assert_eq!(
            f.error.as_deref(),
            Some("connection refused to 127.0.0.1:5672")
        );
        assert_eq!((reports[1].consumers, reports[1].consuming), (1, 0));
        assert_eq!(reports[1].error, None, "starting, no failure yet");
        // A consumer that went is no longer counted; updates to it change nothing.
        board.remove(&b);
        board.update(&b, |s| s.in_flight = 9);
        assert_eq!(board.reports()[0].consumers, 1);
        assert_eq!(board.reports()[0].error, None);
    }
}
