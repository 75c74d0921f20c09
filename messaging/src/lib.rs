//! Strom's RabbitMQ client side, on `lapin` (AMQP 0-9-1): connecting under a
//! deadline with errors that name the broker but never its password
//! ([`connect`]), and publishing function outputs with publisher confirms
//! ([`publish`]): an output counts as sent only once the broker has confirmed
//! it, and a message no queue takes fails the invocation instead of vanishing;
//! and reading a queue's depth with a passive declare ([`depth`]).
//!
//! What a binding is and where its broker is comes from the app model
//! (`strom_proto::manifest::rabbitmq`); this crate only talks to brokers.

pub mod connect;
pub mod delivery;
pub mod depth;
pub mod publish;

pub use connect::{connect, BrokerError, CONNECT_DEADLINE};
pub use depth::{DepthProbe, DEPTH_DEADLINE};
pub use publish::{messages_of, OutMessage, PublishError, Publisher, PUBLISH_DEADLINE};
