//! `strom-proto`: what Strom's components say to each other and what they agree on.
//!
//! - [`manifest`]: the Azure Functions app model (`host.json`, `function.json`, app
//!   packages) parsed and validated once at the edge.
//! - [`ids`]: newtypes for names and ids, parsed once and trusted inside.
//! - [`command`]: the replicated commands of the control plane (only ever extended).
//! - [`runtime_settings`]: the app settings that pick and limit an app's runtime.
//! - [`codec`]: the bincode codec and versioned envelope for Raft entries and snapshots.
//! - [`worker_view`]: what a worker and every gateway are told of the cluster.
//! - [`rich_error`]: validation errors in gRPC's rich error model.
//! - [`timers`]: timer schedules in time (zones, DST, what is due), pure.
//! - [`admin_v1`] / [`internal_v1`]: generated gRPC code.

pub mod codec;
pub mod command;
pub mod http_status;
pub mod ids;
pub mod instances;
pub mod invocations;
pub mod key_rules;
pub mod manifest;
pub mod raft_types;
pub mod rich_error;
pub mod route_table;
pub mod runtime_settings;
pub mod timers;
pub mod version;
pub mod worker_view;

/// Generated code of `proto/strom/admin/v1/admin.proto`.
#[allow(clippy::all, missing_docs)]
pub mod admin_v1 {
    tonic::include_proto!("strom.admin.v1");
}

/// Generated code of `proto/strom/internal/v1/raft.proto` and `worker.proto`.
#[allow(clippy::all, missing_docs)]
pub mod internal_v1 {
    tonic::include_proto!("strom.internal.v1");
}

/// The encoded descriptor set of every Strom .proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/strom_descriptor.bin"));
