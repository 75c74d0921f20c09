//! The RabbitMQ broker the messaging tests run against: the one
//! `STROM_RABBITMQ_URL` names (`.ci/rabbitmq start DIR` starts one on loopback
//! ports). Without it a test skips with a message; with
//! `STROM_REQUIRE_RABBITMQ=1` (CI) it fails instead.
//!
//! [`Broker`] is a plain lapin client, blocking, for what a test does beside
//! Strom: declare and delete queues, and read what functions published.

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use strom_proto::manifest::rabbitmq::{parse_amqp_uri, AmqpEndpoint};

/// The broker's URL, or `None` (with a message) when the test cannot run.
pub fn rabbitmq_or_skip(test: &str) -> Option<String> {
    match std::env::var("STROM_RABBITMQ_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("STROM_REQUIRE_RABBITMQ").is_ok_and(|v| v == "1") => {
            panic!("{test}: STROM_RABBITMQ_URL is not set, and STROM_REQUIRE_RABBITMQ=1")
        }
        _ => {
            eprintln!(
                "SKIPPED {test}: no RabbitMQ broker (start one with `.ci/rabbitmq start DIR` \
                 and source DIR/env; STROM_REQUIRE_RABBITMQ=1 makes this an error)"
            );
            None
        }
    }
}

/// The broker's TLS URL (`amqps://`) and the PEM of the CA its certificate
/// comes from (`STROM_RABBITMQ_TLS_URL`, `STROM_RABBITMQ_CA_FILE`, both written
/// by `.ci/rabbitmq`), or `None` (with a message) when the test cannot run.
pub fn rabbitmq_tls_or_skip(test: &str) -> Option<(String, String)> {
    let url = std::env::var("STROM_RABBITMQ_TLS_URL").unwrap_or_default();
    let ca = std::env::var("STROM_RABBITMQ_CA_FILE").unwrap_or_default();
    if url.trim().is_empty() || ca.trim().is_empty() {
        if std::env::var("STROM_REQUIRE_RABBITMQ").is_ok_and(|v| v == "1") {
            panic!("{test}: STROM_RABBITMQ_TLS_URL or STROM_RABBITMQ_CA_FILE is not set, and STROM_REQUIRE_RABBITMQ=1");
        }
        eprintln!(
            "SKIPPED {test}: no RabbitMQ TLS listener (`.ci/rabbitmq start DIR` starts one; \
             source DIR/env)"
        );
        return None;
    }
    let pem = std::fs::read_to_string(&ca)
        .unwrap_or_else(|e| panic!("{test}: STROM_RABBITMQ_CA_FILE {ca}: {e}"));
    Some((url, pem))
}

/// A message read back from a queue.
#[derive(Debug)]
pub struct Got {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub redelivered: bool,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking client of the test broker.
pub struct Broker {
    rt: tokio::runtime::Runtime,
    pub endpoint: AmqpEndpoint,
    _connection: Connection,
    channel: Channel,
}

impl Broker {
    pub fn connect(url: &str) -> Broker {
        Self::try_connect(url).unwrap_or_else(|e| panic!("the test broker: {e}"))
    }

    /// A client whose publishes are confirmed, or why the broker is not there.
    pub fn try_connect(url: &str) -> Result<Broker, String> {
        let endpoint = parse_amqp_uri(url).expect("STROM_RABBITMQ_URL is an AMQP URI");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (connection, channel) = rt.block_on(async {
            let c = strom_messaging::connect(&endpoint, None)
                .await
                .map_err(|e| e.to_string())?;
            let ch = c.create_channel().await.map_err(|e| e.to_string())?;
            ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((c, ch))
        })?;
        Ok(Broker {
            rt,
            endpoint,
            _connection: connection,
            channel,
        })
    }

    /// Declares a durable queue (again: no-op).
    pub fn declare(&self, queue: &str) {
        self.rt
            .block_on(self.channel.queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ))
            .unwrap_or_else(|e| panic!("declaring queue {queue}: {e}"));
    }

    /// Messages ready in `queue` (a passive declare: no management plugin).
    pub fn count(&self, queue: &str) -> u32 {
        self.rt
            .block_on(self.channel.queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ))
            .unwrap_or_else(|e| panic!("counting queue {queue}: {e}"))
            .message_count()
    }

    pub fn delete(&self, queue: &str) {
        let _ = self.rt.block_on(
            self.channel
                .queue_delete(ShortString::from(queue), QueueDeleteOptions::default()),
        );
    }

    /// The next message of `queue`, acknowledged, if there is one.
    pub fn get(&self, queue: &str) -> Option<Got> {
        let got = self
            .rt
            .block_on(
                self.channel
                    .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true }),
            )
            .unwrap_or_else(|e| panic!("reading queue {queue}: {e}"))?;
        Some(Got {
            body: got.delivery.data.clone(),
            properties: got.delivery.properties.clone(),
            redelivered: got.delivery.redelivered,
        })
    }

    /// Publishes `body` to `queue` (persistent, default exchange), confirmed.
    pub fn publish(&self, queue: &str, body: &[u8]) {
        self.try_publish(queue, body)
            .unwrap_or_else(|e| panic!("publishing to {queue}: {e}"));
    }

    /// [`Broker::publish`], or why the broker did not confirm it (within 10 s).
    pub fn try_publish(&self, queue: &str, body: &[u8]) -> Result<(), String> {
        let publish = async {
            self.channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    lapin::options::BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await
        };
        // The deadline's timer needs the runtime: made inside it.
        let confirmed = self.rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), publish).await
        });
        match confirmed {
            Ok(Ok(c)) if c.is_ack() => Ok(()),
            Ok(Ok(c)) => Err(format!("not confirmed: {c:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no confirmation within 10 s".into()),
        }
    }

    /// Every message waiting in `queue`, in order.
    pub fn drain(&self, queue: &str) -> Vec<Got> {
        std::iter::from_fn(|| self.get(queue)).collect()
    }
}
