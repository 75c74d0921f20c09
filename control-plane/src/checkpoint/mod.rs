//! Checkpoints of the replicated state in a store outside the Raft group (issue
//! 17): the state (a snapshot's bytes) with the packages it references, so that a
//! whole cluster can come back from the store if every management node is lost.
//!
//! [`CheckpointStore`] is what a store offers; `local` (a directory, the default)
//! implements it here, SQL Server later, both held to one conformance suite
//! (`control-plane/tests/checkpoint_store.rs`). What every store must guarantee:
//!
//! - **Visible only when complete**: a checkpoint whose writing stopped half way
//!   (a crash, a lost connection) is never listed or read.
//! - **Verified**: the state and every package are checked against their SHA-256
//!   on read; a mismatch is an error naming the checkpoint, never wrong data.
//! - **Fenced**: a checkpoint is written only if its (term, index) is newer than
//!   the newest stored for its cluster id, decided under the store's own lock, so a
//!   deposed leader can never overwrite newer state.
//! - **Packages once**: a package already stored (same SHA-256) is not sent again.
//! - **Retention**: the newest K checkpoints of a cluster are kept; packages no
//!   checkpoint references any more are deleted (a package a writer stored for a
//!   checkpoint it has not written yet may go too: that write then fails with
//!   `PackageNotFound`, changes nothing, and is tried again).
//!
//! The pure decisions (fencing, retention, chunking) live here and are unit-tested.

pub mod local;
pub mod sqlserver;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Open the store a `--checkpoint-store` / `--from` value names:
/// `local:DIR` (or a plain path), `sqlserver:<ADO.NET connection string>`, or
/// `sqlserver:@FILE` (the connection string read from FILE, so that its password
/// is not on a command line).
pub fn open_store(spec: &str) -> Result<Arc<dyn CheckpointStore>, CheckpointError> {
    let spec = spec.trim();
    let bad = |message: String| CheckpointError::Store {
        store: "checkpoint store".into(),
        message,
    };
    if let Some(rest) = spec.strip_prefix("sqlserver:") {
        let conn = match rest.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| bad(format!("reading the connection string from {path}: {e}")))?,
            None => rest.to_string(),
        };
        return Ok(Arc::new(sqlserver::SqlServerStore::new(conn.trim())?));
    }
    let dir = match spec.split_once(':') {
        Some(("local", dir)) => dir,
        // A Windows drive letter is a path, not a scheme.
        Some((scheme, _)) if scheme.len() > 1 => {
            return Err(bad(format!(
            "`{scheme}:` is not a kind of store; use local:DIR or sqlserver:<connection string> \
                 (or sqlserver:@FILE)"
        )))
        }
        _ => spec,
    };
    if dir.is_empty() {
        return Err(bad(
            "local: needs a directory (local:/var/backups/strom)".into()
        ));
    }
    Ok(Arc::new(local::LocalStore::open(std::path::Path::new(
        dir,
    ))?))
}

/// What a checkpoint is of, as listed (`strom cluster checkpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Unique in the store: `<cluster id>-<term>-<index>`.
    pub id: String,
    pub cluster_id: String,
    /// The Raft term and last applied log index of the state.
    pub term: u64,
    pub index: u64,
    /// When it was taken (Unix ms, the writer's clock).
    pub created_ms: i64,
    /// SHA-256 (hex) and size of the state bytes.
    pub state_sha256: String,
    pub state_size: u64,
    /// Every package (app version) the state references: SHA-256 hex and size.
    pub packages: Vec<PackageRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PackageRef {
    pub sha256: String,
    pub size: u64,
}

impl CheckpointMeta {
    /// The meta of `state` taken at (term, index).
    pub fn new(
        cluster_id: &str,
        term: u64,
        index: u64,
        created_ms: i64,
        state: &[u8],
        packages: Vec<PackageRef>,
    ) -> CheckpointMeta {
        CheckpointMeta {
            id: format!("{cluster_id}-{term}-{index}"),
            cluster_id: cluster_id.to_string(),
            term,
            index,
            created_ms,
            state_sha256: sha256_hex(state),
            state_size: state.len() as u64,
            packages,
        }
    }

    /// Its position: newer checkpoints compare greater.
    pub fn position(&self) -> (u64, u64) {
        (self.term, self.index)
    }
}

/// Why a store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Fencing: the store holds a checkpoint of this cluster at or after this one.
    #[error(
        "checkpoint {id} (term {term}, index {index}) is not newer than the newest stored for \
         cluster {cluster}: {newest} (term {newest_term}, index {newest_index}); refused"
    )]
    Stale {
        id: String,
        term: u64,
        index: u64,
        cluster: String,
        newest: String,
        newest_term: u64,
        newest_index: u64,
    },
    #[error("no checkpoint `{0}` in the store")]
    NotFound(String),
    #[error("no package {0} in the store")]
    PackageNotFound(String),
    /// Stored bytes do not match their SHA-256.
    #[error("{what} is corrupt: its SHA-256 is {actual}, not {expected}")]
    Corrupt {
        what: String,
        expected: String,
        actual: String,
    },
    /// The store could not be reached or failed (I/O, connection, permissions).
    #[error("checkpoint store {store}: {message}")]
    Store { store: String, message: String },
}

/// A place checkpoints are kept.
#[async_trait::async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Where it is, for messages (no secrets).
    fn describe(&self) -> String;
    /// Whether the store holds this package already.
    async fn has_package(&self, sha256: &str) -> Result<bool, CheckpointError>;
    /// Store a package under its SHA-256 (checked on arrival).
    async fn put_package(&self, sha256: &str, bytes: &[u8]) -> Result<(), CheckpointError>;
    /// A package, verified.
    async fn get_package(&self, sha256: &str) -> Result<Vec<u8>, CheckpointError>;
    /// Write a checkpoint (its packages must be stored first): refused with
    /// [`CheckpointError::Stale`] unless newer than every checkpoint of its
    /// cluster; visible only once complete.
    async fn write(&self, meta: &CheckpointMeta, state: &[u8]) -> Result<(), CheckpointError>;
    /// Complete checkpoints, newest first; of one cluster, or of all.
    async fn list(&self, cluster_id: Option<&str>) -> Result<Vec<CheckpointMeta>, CheckpointError>;
    /// A checkpoint's meta and state, the state verified.
    async fn read(&self, id: &str) -> Result<(CheckpointMeta, Vec<u8>), CheckpointError>;
    /// Keep the newest `keep` checkpoints of a cluster; delete the rest and every
    /// package no remaining checkpoint references. Answers what went.
    async fn retain(&self, cluster_id: &str, keep: usize) -> Result<Retained, CheckpointError>;
}

/// What retention removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retained {
    pub checkpoints: Vec<String>,
    pub packages: Vec<String>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Check `bytes` against `expected` (hex SHA-256).
pub fn verify(what: &str, expected: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(CheckpointError::Corrupt {
            what: what.to_string(),
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Fencing: may `candidate` be written next to `stored` (the cluster's complete
/// checkpoints)? Only if newer than all of them.
pub fn fence(candidate: &CheckpointMeta, stored: &[CheckpointMeta]) -> Result<(), CheckpointError> {
    let newest = stored
        .iter()
        .filter(|m| m.cluster_id == candidate.cluster_id)
        .max_by_key(|m| m.position());
    match newest {
        Some(n) if n.position() >= candidate.position() => Err(CheckpointError::Stale {
            id: candidate.id.clone(),
            term: candidate.term,
            index: candidate.index,
            cluster: candidate.cluster_id.clone(),
            newest: n.id.clone(),
            newest_term: n.term,
            newest_index: n.index,
        }),
        _ => Ok(()),
    }
}

/// Retention: which of a cluster's checkpoints go (all but the newest `keep`;
/// `keep` is at least 1), and which packages no kept checkpoint (of any
/// cluster) references.
pub fn retention(
    cluster_id: &str,
    all: &[CheckpointMeta],
    stored_packages: &[String],
    keep: usize,
) -> Retained {
    let keep = keep.max(1);
    let mut ours: Vec<&CheckpointMeta> =
        all.iter().filter(|m| m.cluster_id == cluster_id).collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.position()));
    let going: Vec<String> = ours.iter().skip(keep).map(|m| m.id.clone()).collect();
    // Compared in lower case: a package id is hex, however a writer spelled it.
    let referenced: std::collections::BTreeSet<String> = all
        .iter()
        .filter(|m| !going.contains(&m.id))
        .flat_map(|m| m.packages.iter().map(|p| p.sha256.to_ascii_lowercase()))
        .collect();
    let packages = stored_packages
        .iter()
        .filter(|p| !referenced.contains(&p.to_ascii_lowercase()))
        .cloned()
        .collect();
    Retained {
        checkpoints: going,
        packages,
    }
}

/// A store's rows hold at most this many bytes each (SQL Server: one
/// `VARBINARY(MAX)` parameter per chunk, well under the 2 GiB limit and small
/// enough for steady network writes).
pub const CHUNK: usize = 4 * 1024 * 1024;

/// `bytes` in chunks of at most `size` (at least one chunk, empty for no bytes).
pub fn chunks(bytes: &[u8], size: usize) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return vec![&[]];
    }
    bytes.chunks(size.max(1)).collect()
}

/// Put chunks back together: they must be numbered 0..n without a gap, and the
/// whole must match `sha256` (a missing last chunk is caught by the hash).
pub fn reassemble(
    what: &str,
    mut numbered: Vec<(u32, Vec<u8>)>,
    sha256: &str,
) -> Result<Vec<u8>, CheckpointError> {
    numbered.sort_by_key(|(i, _)| *i);
    for (expected, (i, _)) in numbered.iter().enumerate() {
        if *i as usize != expected {
            return Err(CheckpointError::Corrupt {
                what: format!("{what} (chunk {expected} missing)"),
                expected: sha256.to_string(),
                actual: "incomplete".into(),
            });
        }
    }
    let bytes: Vec<u8> = numbered.into_iter().flat_map(|(_, b)| b).collect();
    verify(what, sha256, &bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(cluster: &str, term: u64, index: u64, packages: &[&str]) -> CheckpointMeta {
        CheckpointMeta::new(
            cluster,
            term,
            index,
            0,
            b"state",
            packages
                .iter()
                .map(|p| PackageRef {
                    sha256: p.to_string(),
                    size: 1,
                })
                .collect(),
        )
    }

    #[test]
    fn a_store_is_named_by_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let local = open_store(&format!("local:{}", dir.path().display())).unwrap();
        assert!(local.describe().starts_with("local:"));
        let plain = open_store(&dir.path().display().to_string()).unwrap();
        assert_eq!(plain.describe(), local.describe());
        let sql =
            open_store("sqlserver:server=tcp:db,1433;database=strom;user id=u;password=p").unwrap();
        assert_eq!(sql.describe(), "sqlserver:db:1433/strom");
        let file = dir.path().join("conn");
        std::fs::write(&file, "server=db;user id=u;password=p\n").unwrap();
        assert!(open_store(&format!("sqlserver:@{}", file.display())).is_ok());
        for (bad, want) in [
            ("s3:bucket", "not a kind of store"),
            ("local:", "needs a directory"),
            (
                "sqlserver:@/nonexistent/conn",
                "reading the connection string",
            ),
            ("sqlserver:server=db", "no `user id`"),
        ] {
            let e = open_store(bad).err().unwrap().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn only_a_newer_checkpoint_of_the_cluster_may_be_written() {
        let stored = vec![
            meta("c1", 3, 100, &[]),
            meta("c1", 2, 150, &[]),
            meta("c2", 9, 900, &[]),
        ];
        assert!(fence(&meta("c1", 3, 101, &[]), &stored).is_ok());
        assert!(
            fence(&meta("c1", 4, 1, &[]), &stored).is_ok(),
            "a newer term wins"
        );
        for stale in [
            meta("c1", 3, 100, &[]),
            meta("c1", 3, 99, &[]),
            meta("c1", 2, 500, &[]),
        ] {
            let e = fence(&stale, &stored).unwrap_err().to_string();
            assert!(e.contains("c1-3-100") && e.contains("refused"), "{e}");
        }
        assert!(
            fence(&meta("c3", 1, 1, &[]), &stored).is_ok(),
            "another cluster is apart"
        );
    }

    #[test]
    fn retention_keeps_the_newest_and_the_packages_they_need() {
        let all = vec![
            meta("c1", 1, 10, &["a", "b"]),
            meta("c1", 1, 20, &["b", "c"]),
            meta("c1", 2, 5, &["c"]),
            meta("c2", 1, 1, &["a"]),
        ];
        let stored: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let r = retention("c1", &all, &stored, 2);
        assert_eq!(r.checkpoints, vec!["c1-1-10".to_string()]);
        // b is still needed by c1-1-20, a by c2; d by nobody.
        assert_eq!(r.packages, vec!["d".to_string()]);
        let r = retention("c1", &all, &stored, 0);
        assert_eq!(r.checkpoints.len(), 2, "at least one is always kept");
        assert_eq!(r.packages, vec!["b".to_string(), "d".to_string()]);
    }

    #[test]
    fn chunks_come_back_whole_or_not_at_all() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let sha = sha256_hex(&bytes);
        let parts: Vec<(u32, Vec<u8>)> = chunks(&bytes, 3000)
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i as u32, c.to_vec()))
            .collect();
        assert_eq!(parts.len(), 4);
        let mut shuffled = parts.clone();
        shuffled.reverse();
        assert_eq!(reassemble("x", shuffled, &sha).unwrap(), bytes);
        // Without its last chunk: the hash says so.
        let torn = parts[..3].to_vec();
        assert!(matches!(
            reassemble("x", torn, &sha),
            Err(CheckpointError::Corrupt { .. })
        ));
        // A gap.
        let gap = vec![parts[0].clone(), parts[2].clone()];
        let e = reassemble("x", gap, &sha).unwrap_err().to_string();
        assert!(e.contains("chunk 1 missing"), "{e}");
        assert_eq!(chunks(&[], 10), vec![&[] as &[u8]]);
        assert_eq!(
            reassemble("e", vec![(0, vec![])], &sha256_hex(&[])).unwrap(),
            Vec::<u8>::new()
        );
    }
}
