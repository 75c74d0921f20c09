//! `strom-chaos-tests`: the multi-node harness (real `strom` processes and Docker
//! containers), fault injection and the history checker, and the benchmarks.
//!
//! - [`cluster`]: a cluster of `strom` containers on a private Docker network;
//! - [`workload`]: admin writes and HTTP requests recorded in a [`history`];
//! - [`messages`]: the RabbitMQ app's producer, output reader and broker relay;
//! - [`checker`]: what must hold afterwards;
//! - [`run`]: one seeded run (`cargo run -p strom-chaos-tests -- --profile ci`).

pub mod checker;
pub mod cluster;
pub mod history;
pub mod messages;
pub mod run;
pub mod session_client;
pub mod workload;

/// The `strom` binary's crate, re-exported so harness code drives the same CLI.
pub use strom_node as node;

/// `cargo` for a nested build: without the variables `cargo run` sets for the
/// running package (`CARGO_PKG_*`, `CARGO_MANIFEST_*`, …), which build scripts may
/// track and which would otherwise make the nested build recompile crates the outer
/// one just built.
pub fn nested_cargo() -> std::process::Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().to_string();
        let scoped = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || key == "CARGO_PRIMARY_PACKAGE";
        if scoped {
            cmd.env_remove(&key);
        }
    }
    cmd
}
