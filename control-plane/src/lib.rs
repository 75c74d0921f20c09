//! `strom-control-plane`: the management role as a library.
//!
//! - [`log_store`]: the Raft log and vote in redb (fsync'd before acknowledging).
//! - [`state_machine`]: applies commands to [`cluster_state::ClusterState`], snapshots.
//! - [`impl_raft_network`]: openraft over tonic, with peer identity checks.
//! - [`blob_store`]: content-addressed app packages; [`blob_replication`]: between nodes.
//! - [`management`]: starts a node, bootstraps a cluster once, proposes and reads.
//! - [`membership`]: joining the management group (learner, catch-up, voter).
//! - [`workers`]: worker registration, leases, the state watch, the leader's duties;
//!   [`scheduler`]: where instances run (pure).
//! - [`admin_service`] and [`control_server`]: the gRPC admin API on the control port.

pub mod admin_service;
pub mod blob_replication;
pub mod blob_store;
pub mod cluster_state;
pub mod control_server;
pub mod impl_raft_network;
pub mod log_store;
pub mod management;
pub mod membership;
pub mod scheduler;
pub mod state_machine;
pub mod tls;
pub mod workers;

pub use management::{Bootstrap, ManagementConfig, ManagementNode, ProposeError};
