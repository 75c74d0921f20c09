//! `strom-control-plane`: the management role as a library.
//!
//! - [`log_store`]: the Raft log and vote in redb (fsync'd before acknowledging).
//! - [`state_machine`]: applies commands to [`cluster_state::ClusterState`], snapshots.
//! - [`impl_raft_network`]: openraft over tonic, with peer identity checks.
//! - [`blob_store`]: content-addressed app packages; [`blob_replication`]: between
//!   nodes; [`blob_gc`]: removing those no version references; [`retention`]: which
//!   old versions the leader forgets.
//! - [`management`]: starts a node, bootstraps a cluster once, proposes and reads;
//!   [`forward`]: writes and reads forwarded to the leader; [`peers`]: one cached
//!   channel per peer; [`error`]: typed errors and their gRPC codes.
//! - [`membership`]: joining the management group (learner, catch-up, voter).
//! - [`workers`]: worker registration, heartbeats and the state watch;
//!   [`leader_duties`]: the leader's term task (leases in [`leases`], the version
//!   gate, scheduler rounds, timers); [`scheduler`]: where instances run (pure).
//! - [`timer_records`]: replicated timer schedule status and runs;
//!   [`timer_plan`]: what the leader fires and sends (pure); [`timer_service`]:
//!   what a run is sent with, and the dispatcher seam the gateway implements.
//! - [`internal_auth`]: the proof internal callers show without TLS.
//! - [`admin_service`] and [`control_server`]: the gRPC admin API on the control port;
//!   [`publishing`]: Kudu's zip deploy; [`portal`]: the management portal (web UI),
//!   its charts from [`invocation_history`].

pub mod admin_service;
pub mod blob_gc;
pub mod blob_replication;
pub mod blob_store;
pub mod checkpoint;
pub mod checkpointer;
pub mod client_sessions;
pub mod cluster_invocations;
pub mod cluster_state;
pub mod control_server;
pub mod decode_errors;
pub mod deploy;
pub mod deployments;
pub mod durable;
pub mod error;
pub mod forward;
pub mod health;
pub mod impl_raft_network;
pub mod internal_auth;
pub mod invocation_history;
pub mod leader_duties;
pub mod leader_watch;
pub mod leases;
pub mod log_store;
pub mod management;
pub mod membership;
pub mod metrics;
pub mod peers;
pub mod portal;
pub mod publishing;
pub mod queue_scale;
pub mod restore;
pub mod retention;
pub mod scheduler;
pub mod state_machine;
pub mod timer_plan;
pub mod timer_records;
pub mod timer_service;
pub mod tls;
pub mod traces;
pub mod view_feed;
pub mod worker_view;
pub mod workers;

pub use management::{Bootstrap, ManagementConfig, ManagementNode, ProposeError};
