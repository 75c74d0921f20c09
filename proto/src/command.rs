//! The replicated commands of the control plane.
//!
//! Every change to the cluster state is one [`Command`] committed to the Raft log
//! and applied in log order by every management node. Commands are deterministic:
//! anything random or time-dependent (keys, timestamps) is chosen by the proposer
//! and carried in the command. **Variants and fields are only ever added at the
//! end** (new variants), never changed or removed, so a node reading an old log
//! after a rolling upgrade still understands every entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AppName, ClusterId, TokenHash, VersionId};
use crate::manifest::AppManifest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The first command of a cluster: its identity and the hashes of its tokens.
    InitCluster {
        cluster_id: ClusterId,
        admin_token_hash: TokenHash,
        join_token_hash: TokenHash,
        at_ms: i64,
    },
    /// A validated package (already in the blob store) becomes the app's active version;
    /// the app is created if it does not exist yet.
    DeployVersion(Box<DeployVersion>),
    /// Make an earlier version active again (rollback).
    ActivateVersion {
        app: AppName,
        version: VersionId,
        at_ms: i64,
    },
    DeleteApp {
        app: AppName,
        at_ms: i64,
    },
    SetAppSettings {
        app: AppName,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        at_ms: i64,
    },
    /// Create or replace a key.
    PutKey {
        app: AppName,
        scope: KeyScope,
        name: String,
        value: String,
        at_ms: i64,
    },
    DeleteKey {
        app: AppName,
        scope: KeyScope,
        name: String,
        at_ms: i64,
    },
    /// How many instances of the app to run.
    SetScale {
        app: AppName,
        instances: u32,
        at_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployVersion {
    pub app: AppName,
    pub version: VersionId,
    pub size_bytes: u64,
    pub manifest: AppManifest,
    pub at_ms: i64,
    /// Key values the proposer generated; applied only where the key does not
    /// exist yet (the app's `_master` and `default` host key on first deploy, a
    /// `default` function key for each function that has none).
    pub initial_keys: InitialKeys,
    /// Settings added or replaced together with the version, atomically (like
    /// Core Tools' `--publish-local-settings`), so the first instances start with them.
    pub settings: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitialKeys {
    pub master: String,
    pub host_default: String,
    pub function_defaults: BTreeMap<String, String>,
}

/// Which key collection a key belongs to (as Azure: the master key, host keys
/// valid for every function, and per-function keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyScope {
    Master,
    Host,
    Function(String),
}

/// What applying a command did. Business outcomes are values, not errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The state changed.
    Applied,
    /// Valid, but the state already was what the command asks for.
    Unchanged,
    /// Refused; nothing changed.
    Rejected(Rejection),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("the cluster is not initialized")]
    NotInitialized,
    #[error("the cluster is already initialized")]
    AlreadyInitialized,
    #[error("app `{app}` not found")]
    AppNotFound { app: AppName },
    #[error("app `{app}` has no version `{version}`")]
    VersionNotFound { app: AppName, version: VersionId },
    #[error(
        "route conflict: function `{function}` of app `{app}` ({route}) overlaps function `{other_function}` of app `{other_app}` ({other_route}) on the shared address"
    )]
    RouteConflict {
        app: AppName,
        function: String,
        route: String,
        other_app: AppName,
        other_function: String,
        other_route: String,
    },
    #[error("app `{app}` has no function `{function}`")]
    FunctionNotFound { app: AppName, function: String },
    #[error("key `{name}` not found")]
    KeyNotFound { name: String },
    #[error("the `_master` key cannot be deleted")]
    MasterKeyIsPermanent,
}
