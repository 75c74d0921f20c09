//! How many messages wait in a queue, read as AMQP 0-9-1 allows without the
//! management plugin: a passive `queue.declare`, which answers the queue's
//! ready-message count (and changes nothing). The leader reads its apps' trigger
//! queues this way to scale them on depth.
//!
//! One connection per broker (and credentials), kept between reads; a read that
//! fails drops it, and the next read connects again. A queue that does not exist
//! closes the channel it was asked on (404), not the connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use strom_proto::manifest::rabbitmq::AmqpEndpoint;

use crate::connect::{connect, describe, BrokerError};

/// How long one read may take, connecting included.
pub const DEPTH_DEADLINE: Duration = Duration::from_secs(5);

type Key = (AmqpEndpoint, Option<String>);

struct Link {
    connection: Connection,
    channel: Option<Channel>,
}

/// Reads queue depths; keeps a connection per broker.
#[derive(Default)]
pub struct DepthProbe {
    links: tokio::sync::Mutex<HashMap<Key, Link>>,
}

impl DepthProbe {
    /// Messages ready in `queue` on `endpoint`, within [`DEPTH_DEADLINE`].
    pub async fn ready(
        &self,
        endpoint: &AmqpEndpoint,
        ca_pem: Option<&str>,
        queue: &str,
    ) -> Result<u64, BrokerError> {
        let key = (endpoint.clone(), ca_pem.map(str::to_string));
        let mut links = self.links.lock().await;
        let read = tokio::time::timeout(
            DEPTH_DEADLINE,
            Self::read(&mut links, &key, endpoint, ca_pem, queue),
        )
        .await;
        match read {
            Ok(result) => result,
            Err(_) => {
                if let Some(link) = links.remove(&key) {
                    tokio::spawn(async move {
                        let _ = link.connection.close(320, "strom: no answer".into()).await;
                    });
                }
                Err(BrokerError::Timeout {
                    addr: endpoint.address(),
                    secs: DEPTH_DEADLINE.as_secs(),
                })
            }
        }
    }

    async fn read(
        links: &mut HashMap<Key, Link>,
        key: &Key,
        endpoint: &AmqpEndpoint,
        ca_pem: Option<&str>,
        queue: &str,
    ) -> Result<u64, BrokerError> {
        if links
            .get(key)
            .is_some_and(|l| !l.connection.status().connected())
        {
            links.remove(key);
        }
        if !links.contains_key(key) {
            let connection = connect(endpoint, ca_pem).await?;
            links.insert(
                key.clone(),
                Link {
                    connection,
                    channel: None,
                },
            );
        }
        let link = links.get_mut(key).expect("inserted above");
        let channel = match &link.channel {
            Some(c) if c.status().connected() => c.clone(),
            _ => {
                let c = link
                    .connection
                    .create_channel()
                    .await
                    .map_err(|e| describe(endpoint, &e))?;
                link.channel = Some(c.clone());
                c
            }
        };
        let declared = channel
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(q) => Ok(u64::from(q.message_count())),
            Err(e) => {
                // The channel is closed by a refusal (a missing queue); the
                // connection stays unless it broke too.
                link.channel = None;
                if !link.connection.status().connected() {
                    links.remove(key);
                }
                Err(describe(endpoint, &e))
            }
        }
    }

    /// Closes the connections of brokers not in `keep` (an app's settings
    /// changed, or its trigger went).
    pub async fn retain(&self, keep: &[(AmqpEndpoint, Option<String>)]) {
        let mut links = self.links.lock().await;
        let gone: Vec<Key> = links
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(link) = links.remove(&key) {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        link.connection.close(200, "strom: not needed".into()),
                    )
                    .await;
                });
            }
        }
    }
}

/// Shared by the leader's rounds.
pub type SharedProbe = Arc<DepthProbe>;
