//! `strom-chaos-tests`: the multi-node harness (real `strom` processes and Docker
//! containers), fault injection and the history checker. It builds on `strom-node`
//! and grows with the multi-node issues; see `docs/architecture.md` §Testing.

/// The `strom` binary's crate, re-exported so harness code drives the same CLI.
pub use strom_node as node;
