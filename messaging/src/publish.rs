//! Function outputs to RabbitMQ, confirmed. One connection per broker address
//! (and credentials) with one confirm-mode channel, shared by every invocation
//! of this node; a broken one is replaced on the next publish.
//!
//! Messages go to the default exchange with the queue's name as routing key,
//! persistent (delivery mode 2) and `mandatory`: a message the broker cannot
//! route to a queue comes back, and the publish fails naming the queue, rather
//! than being dropped. A publish succeeds only when the broker confirmed every
//! message, within [`PUBLISH_DEADLINE`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde_json::Value;
use strom_proto::manifest::rabbitmq::AmqpEndpoint;

use crate::connect::{connect, describe, BrokerError};

/// How long one output's messages may take, connecting included.
pub const PUBLISH_DEADLINE: Duration = Duration::from_secs(30);
/// A connection unused this long is closed when another is opened.
const IDLE: Duration = Duration::from_secs(300);

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

/// An output's value as messages, as Azure's custom handlers give them: null →
/// none; an array → one message per item (nulls skipped); a string → its text;
/// anything else → its JSON.
pub fn messages_of(value: &Value) -> Vec<OutMessage> {
    fn one(v: &Value) -> Option<OutMessage> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(OutMessage {
                body: s.as_bytes().to_vec(),
                content_type: "text/plain; charset=utf-8",
            }),
            other => Some(OutMessage {
                body: other.to_string().into_bytes(),
                content_type: "application/json",
            }),
        }
    }
    match value {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    }
}

/// Why an output was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker returned message {n} of {of}: {reason}")]
    Returned { n: usize, of: usize, reason: String },
    #[error("the broker refused message {n} of {of} (nack)")]
    Nacked { n: usize, of: usize },
    #[error("{addr}: {what}")]
    Lost { addr: String, what: String },
    #[error("no confirmation from {addr} within {secs} s")]
    Timeout { addr: String, secs: u64 },
}

struct Link {
    connection: Connection,
    channel: Channel,
}

/// The connection to one broker, opened by the first publish that needs it.
#[derive(Default)]
struct Slot {
    link: tokio::sync::Mutex<Option<Link>>,
    used: Mutex<Option<Instant>>,
}

type Key = (AmqpEndpoint, Option<String>);

/// Publishes outputs; one per node.
#[derive(Default)]
pub struct Publisher {
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
}

impl Publisher {
    /// Publishes `messages` to `queue` on `endpoint` and waits for the broker
    /// to confirm each, within [`PUBLISH_DEADLINE`]. `invocation` becomes each
    /// message's correlation id (and, with its index, its message id).
    pub async fn publish(
        &self,
        endpoint: &AmqpEndpoint,
        ca_pem: Option<&str>,
        queue: &str,
        invocation: &str,
        messages: &[OutMessage],
    ) -> Result<(), PublishError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let messages: Vec<(Vec<u8>, BasicProperties)> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(ShortString::from(m.content_type))
                    .with_message_id(ShortString::from(format!("{invocation}:{i}")))
                    .with_correlation_id(ShortString::from(invocation))
                    .with_timestamp(now)
                    .with_app_id(ShortString::from("strom"));
                (m.body.clone(), props)
            })
            .collect();
        self.publish_raw(endpoint, ca_pem, queue, &messages).await
    }

    /// Publishes messages with the properties given (a poisoned message keeps
    /// its own), confirmed as [`Publisher::publish`] does.
    pub async fn publish_raw(
        &self,
        endpoint: &AmqpEndpoint,
        ca_pem: Option<&str>,
        queue: &str,
        messages: &[(Vec<u8>, BasicProperties)],
    ) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let slot = self.slot(endpoint, ca_pem);
        let sent = tokio::time::timeout(
            PUBLISH_DEADLINE,
            self.send(&slot, endpoint, ca_pem, queue, messages),
        )
        .await;
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if !matches!(
                    e,
                    PublishError::Returned { .. } | PublishError::Nacked { .. }
                ) {
                    Self::reset(&slot).await;
                }
                Err(e)
            }
            Err(_) => {
                Self::reset(&slot).await;
                Err(PublishError::Timeout {
                    addr: endpoint.address(),
                    secs: PUBLISH_DEADLINE.as_secs(),
                })
            }
        }
    }

    fn slot(&self, endpoint: &AmqpEndpoint, ca_pem: Option<&str>) -> Arc<Slot> {
        let key = (endpoint.clone(), ca_pem.map(str::to_string));
        let mut slots = self.slots.lock().expect("publisher lock");
        if !slots.contains_key(&key) {
            // Connections of settings no longer used (a rotated password) go.
            slots.retain(|_, s| {
                let used = *s.used.lock().expect("slot lock");
                Arc::strong_count(s) > 1 || used.is_some_and(|t| t.elapsed() < IDLE)
            });
        }
        let slot = slots.entry(key).or_default().clone();
        *slot.used.lock().expect("slot lock") = Some(Instant::now());
        slot
    }

    async fn reset(slot: &Slot) {
        if let Some(link) = slot.link.lock().await.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                link.connection.close(320, "strom: resetting".into()),
            )
            .await;
        }
    }

    /// The slot's channel, connecting first when it has none or lost it.
    async fn channel(
        slot: &Slot,
        endpoint: &AmqpEndpoint,
        ca_pem: Option<&str>,
    ) -> Result<Channel, BrokerError> {
        let mut link = slot.link.lock().await;
        if let Some(l) = link.as_ref() {
            if l.connection.status().connected() && l.channel.status().connected() {
                return Ok(l.channel.clone());
            }
        }
        *link = None;
        let connection = connect(endpoint, ca_pem).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| describe(endpoint, &e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| describe(endpoint, &e))?;
        *link = Some(Link {
            connection,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    async fn send(
        &self,
        slot: &Slot,
        endpoint: &AmqpEndpoint,
        ca_pem: Option<&str>,
        queue: &str,
        messages: &[(Vec<u8>, BasicProperties)],
    ) -> Result<(), PublishError> {
        let channel = Self::channel(slot, endpoint, ca_pem).await?;
        let lost = |what: String| PublishError::Lost {
            addr: endpoint.address(),
            what,
        };
        let of = messages.len();
        let mut confirms = Vec::with_capacity(of);
        for (i, (body, props)) in messages.iter().enumerate() {
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    props.clone(),
                )
                .await
                .map_err(|e| lost(format!("publishing message {} of {of} failed: {e}", i + 1)))?;
            confirms.push(confirm);
        }
        for (i, confirm) in confirms.into_iter().enumerate() {
            let n = i + 1;
            match confirm.await.map_err(|e| {
                lost(format!(
                    "the connection failed before the broker confirmed message {n} of {of}: {e}"
                ))
            })? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                    let reason = if returned.reply_code == 312 {
                        format!("no queue `{queue}` on {endpoint} (NO_ROUTE)")
                    } else {
                        format!("{} {}", returned.reply_code, returned.reply_text.as_str())
                    };
                    return Err(PublishError::Returned { n, of, reason });
                }
                Confirmation::Nack(None) => return Err(PublishError::Nacked { n, of }),
                Confirmation::NotRequested => {
                    return Err(lost("the channel is not in confirm mode".into()))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_become_messages_as_azure_custom_handlers_give_them() {
        assert!(messages_of(&json!(null)).is_empty());
        assert_eq!(
            messages_of(&json!("hello")),
            vec![OutMessage {
                body: b"hello".to_vec(),
                content_type: "text/plain; charset=utf-8"
            }]
        );
        assert_eq!(
            messages_of(&json!({"id": 1})),
            vec![OutMessage {
                body: br#"{"id":1}"#.to_vec(),
                content_type: "application/json"
            }]
        );
        let many = messages_of(&json!(["a", {"b": 2}, null, 3]));
        let bodies: Vec<&[u8]> = many.iter().map(|m| m.body.as_slice()).collect();
        assert_eq!(bodies, vec![&b"a"[..], &br#"{"b":2}"#[..], &b"3"[..]]);
        assert!(messages_of(&json!([])).is_empty());
    }
}
