//! `strom-testkit`: what Strom's tests and benchmarks share, so that no test suite
//! copies another's helpers or imports its files.
//!
//! - [`ports`]: free ports on 127.0.0.1 that a restarted node can bind again.
//! - [`apps`]: app folders, zips and validated manifests.
//! - [`node`]: a running `strom up` / `strom serve` process and client commands.
//! - [`http`]: a small blocking HTTP/1.1 client and a background request load.
//! - [`prometheus`]: the metrics text format, parsed strictly, and `promtool`.
//! - [`handler`]: the static conformance handler, its app, its local image, and
//!   the Docker check (skip with a message, or fail under `STROM_REQUIRE_DOCKER=1`).
//! - [`broker`]: the RabbitMQ broker of the messaging tests (`STROM_RABBITMQ_URL`)
//!   and a small client to declare queues and read what was published.

pub mod apps;
pub mod broker;
pub mod handler;
pub mod http;
pub mod node;
pub mod ports;
pub mod prometheus;

use std::time::Duration;

/// Poll `f` until it returns `Some`, or panic after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
