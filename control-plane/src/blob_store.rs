//! Content-addressed blob store for app packages.
//!
//! Durable: one file per blob at `<data-dir>/blobs/sha256/<hex>`, written to a temp
//! file in the same directory, fsync'd and renamed, so a blob is either complete or
//! absent. The name is the SHA-256 of the content and is checked on every write
//! and on read, so a corrupted or truncated file is never served.
//!
//! In memory: when each blob was last written, for [`PIN`] (a deploy stores its
//! package before the version commits, and a follower receives it before that),
//! so the collector (`blob_gc`) never removes a package whose version may still
//! be committing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use strom_proto::ids::VersionId;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {expected}: content hashes to {actual}")]
    HashMismatch {
        expected: VersionId,
        actual: VersionId,
    },
    #[error("blob {0} not found")]
    NotFound(VersionId),
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    /// Blobs written recently, and when.
    pins: std::sync::Arc<std::sync::Mutex<HashMap<VersionId, Instant>>>,
}

/// How long a blob just written is kept even if no version references it: longer
/// than a deploy takes from storing its package to committing it (the push to
/// the other voters, up to 60 s, then the commit).
pub const PIN: Duration = Duration::from_secs(180);

impl BlobStore {
    pub fn open(data_dir: &Path) -> Result<Self, BlobError> {
        let dir = data_dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&dir).map_err(|source| BlobError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(BlobStore {
            dir,
            pins: Default::default(),
        })
    }

    pub fn path_of(&self, id: &VersionId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    pub fn contains(&self, id: &VersionId) -> bool {
        self.path_of(id).is_file()
    }

    /// Store `bytes`, returning their id. Idempotent.
    pub async fn put(&self, bytes: std::sync::Arc<Vec<u8>>) -> Result<VersionId, BlobError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.put_blocking(&bytes))
            .await
            .expect("blob write task panicked")
    }

    fn put_blocking(&self, bytes: &[u8]) -> Result<VersionId, BlobError> {
        let id = VersionId::of_bytes(bytes);
        self.pins
            .lock()
            .expect("pins lock")
            .insert(id.clone(), Instant::now());
        let target = self.path_of(&id);
        if target.is_file() {
            return Ok(id);
        }
        let io = |source| BlobError::Io {
            path: target.clone(),
            source,
        };
        crate::durable::write_durably(&target, bytes).map_err(io)?;
        Ok(id)
    }

    /// Blobs written within the last [`PIN`], and when.
    pub fn pinned(&self) -> HashMap<VersionId, Instant> {
        let now = Instant::now();
        let mut pins = self.pins.lock().expect("pins lock");
        pins.retain(|_, at| now.duration_since(*at) < PIN);
        pins.clone()
    }

    /// Every stored blob and how long ago it was written (temp files and other
    /// names are skipped).
    pub async fn list(&self) -> Result<Vec<(VersionId, Duration)>, BlobError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let io = |source| BlobError::Io {
                path: dir.clone(),
                source,
            };
            let now = SystemTime::now();
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let entry = entry.map_err(io)?;
                let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| VersionId::parse(n).ok())
                else {
                    continue;
                };
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .unwrap_or_default();
                out.push((id, age));
            }
            Ok(out)
        })
        .await
        .expect("blob listing task panicked")
    }

    /// Remove a blob (gone already is fine).
    pub async fn remove(&self, id: &VersionId) -> Result<(), BlobError> {
        let path = self.path_of(id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BlobError::Io { path, source }),
        }
    }

    /// Read a blob and verify its hash.
    pub async fn get(&self, id: &VersionId) -> Result<Vec<u8>, BlobError> {
        let path = self.path_of(id);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(id.clone()))
            }
            Err(source) => return Err(BlobError::Io { path, source }),
        };
        let actual = VersionId::from_digest(&Sha256::digest(&bytes));
        if &actual != id {
            return Err(BlobError::HashMismatch {
                expected: id.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_named_by_content_and_verified_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let id = store
            .put(std::sync::Arc::new(b"package".to_vec()))
            .await
            .unwrap();
        assert_eq!(id, VersionId::of_bytes(b"package"));
        assert_eq!(store.get(&id).await.unwrap(), b"package");
        // Idempotent.
        assert_eq!(
            store
                .put(std::sync::Arc::new(b"package".to_vec()))
                .await
                .unwrap(),
            id
        );

        std::fs::write(store.path_of(&id), b"tampered").unwrap();
        assert!(matches!(
            store.get(&id).await,
            Err(BlobError::HashMismatch { .. })
        ));

        let missing = VersionId::of_bytes(b"other");
        assert!(matches!(
            store.get(&missing).await,
            Err(BlobError::NotFound(_))
        ));
    }
}
