//! `strom-chaos-tests`: the multi-node harness (real `strom` processes and Docker
//! containers), fault injection and the history checker, and the benchmarks.
//!
//! - [`cluster`]: a cluster of `strom` containers on a private Docker network;
//! - [`workload`]: admin writes and HTTP requests recorded in a [`history`];
//! - [`checker`]: what must hold afterwards;
//! - [`run`]: one seeded run (`cargo run -p strom-chaos-tests -- --profile ci`).

pub mod checker;
pub mod cluster;
pub mod history;
pub mod run;
pub mod workload;

/// The `strom` binary's crate, re-exported so harness code drives the same CLI.
pub use strom_node as node;
