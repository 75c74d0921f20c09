//! The `local` checkpoint store: a directory (a local disk or a network share).
//!
//! ```text
//! <dir>/packages/<sha256>          a package, written once
//! <dir>/checkpoints/<id>.state     a checkpoint's state bytes
//! <dir>/checkpoints/<id>.json      its meta: written last, so a checkpoint is
//!                                  visible (listed, readable) only when complete
//! <dir>/store.lock                 writers and retention hold it (one at a time)
//! ```
//!
//! Folders it creates are 0700 and its files 0600 (checkpoints hold keys and
//! settings in clear). Every file is written to a temporary name, flushed, renamed
//! into place, and the folder flushed (`crate::durable::write_atomically`); every
//! read is verified
//! against its SHA-256. The lock is an advisory file lock (`flock`): it serializes
//! writers on one machine and on shares that honour it (NFSv4, SMB); on a share
//! that does not, point one cluster at one folder.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{fence, retention, verify, CheckpointError, CheckpointMeta, CheckpointStore, Retained};

#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// A store in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<LocalStore, CheckpointError> {
        let store = LocalStore {
            dir: dir.to_path_buf(),
        };
        for sub in ["packages", "checkpoints"] {
            let path = dir.join(sub);
            if !path.is_dir() {
                crate::durable::private_dir(&path).map_err(|e| store.io("creating it", e))?;
            }
        }
        Ok(store)
    }

    fn io(&self, what: &str, e: std::io::Error) -> CheckpointError {
        CheckpointError::Store {
            store: self.describe(),
            message: format!("{what}: {e}"),
        }
    }

    fn package_path(&self, sha256: &str) -> Result<PathBuf, CheckpointError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CheckpointError::PackageNotFound(format!(
                "{sha256} (not a SHA-256)"
            )));
        }
        Ok(self.dir.join("packages").join(sha256.to_ascii_lowercase()))
    }

    fn checkpoint_path(&self, id: &str, ext: &str) -> Result<PathBuf, CheckpointError> {
        let ok = !id.is_empty()
            && id.len() <= 200
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !id.starts_with('.');
        if !ok {
            return Err(CheckpointError::NotFound(id.to_string()));
        }
        Ok(self.dir.join("checkpoints").join(format!("{id}.{ext}")))
    }

    /// Hold the store's lock while `f` runs (blocking).
    fn locked<T>(
        &self,
        f: impl FnOnce() -> Result<T, CheckpointError>,
    ) -> Result<T, CheckpointError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("store.lock"))
            .map_err(|e| self.io("opening store.lock", e))?;
        file.lock().map_err(|e| self.io("locking store.lock", e))?;
        let out = f();
        let _ = file.unlock();
        out
    }

    fn list_blocking(
        &self,
        cluster_id: Option<&str>,
    ) -> Result<Vec<CheckpointMeta>, CheckpointError> {
        let dir = self.dir.join("checkpoints");
        let entries = std::fs::read_dir(&dir).map_err(|e| self.io("listing checkpoints", e))?;
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| self.io("listing checkpoints", e))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes =
                std::fs::read(&path).map_err(|e| self.io(&path.display().to_string(), e))?;
            let meta: CheckpointMeta =
                serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Store {
                    store: self.describe(),
                    message: format!("{}: not a checkpoint's meta: {e}", path.display()),
                })?;
            if cluster_id.is_none_or(|c| c == meta.cluster_id) {
                out.push(meta);
            }
        }
        out.sort_by_key(|m| std::cmp::Reverse((m.created_ms, m.position())));
        Ok(out)
    }

    fn stored_packages(&self) -> Result<Vec<String>, CheckpointError> {
        let dir = self.dir.join("packages");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| self.io("listing packages", e))? {
            let name = entry
                .map_err(|e| self.io("listing packages", e))?
                .file_name();
            if let Some(name) = name.to_str() {
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(LocalStore) -> Result<T, CheckpointError> + Send + 'static,
    ) -> Result<T, CheckpointError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| CheckpointError::Store {
                store: self.describe(),
                message: format!("a store task failed: {e}"),
            })?
    }

    /// For the conformance suite: a checkpoint whose writing stopped before its
    /// meta (the commit point) was written.
    pub fn write_torn(&self, meta: &CheckpointMeta, state: &[u8]) -> Result<(), CheckpointError> {
        let path = self.checkpoint_path(&meta.id, "state")?;
        let mut f = std::fs::File::create(&path).map_err(|e| self.io("torn write", e))?;
        f.write_all(&state[..state.len() / 2])
            .map_err(|e| self.io("torn write", e))
    }

    /// For the conformance suite: flip a byte of a stored checkpoint's state.
    pub fn corrupt_state(&self, id: &str) -> Result<(), CheckpointError> {
        let path = self.checkpoint_path(id, "state")?;
        let mut bytes = std::fs::read(&path).map_err(|e| self.io("corrupting", e))?;
        if let Some(b) = bytes.first_mut() {
            *b ^= 0xff;
        }
        std::fs::write(&path, bytes).map_err(|e| self.io("corrupting", e))
    }
}

#[async_trait::async_trait]
impl CheckpointStore for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.dir.display())
    }

    async fn has_package(&self, sha256: &str) -> Result<bool, CheckpointError> {
        let path = self.package_path(sha256)?;
        Ok(path.is_file())
    }

    async fn put_package(&self, sha256: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        verify(&format!("package {sha256}"), sha256, bytes)?;
        let path = self.package_path(sha256)?;
        if path.is_file() {
            return Ok(());
        }
        let bytes = bytes.to_vec();
        self.blocking(move |s| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            crate::durable::write_atomically(&s.dir.join("packages"), name, &bytes)
                .map_err(|e| s.io(&format!("writing package {name}"), e))
        })
        .await
    }

    async fn get_package(&self, sha256: &str) -> Result<Vec<u8>, CheckpointError> {
        let path = self.package_path(sha256)?;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CheckpointError::PackageNotFound(sha256.to_string()))
            }
            Err(e) => return Err(self.io(&format!("reading package {sha256}"), e)),
        };
        verify(&format!("package {sha256}"), sha256, &bytes)?;
        Ok(bytes)
    }

    async fn write(&self, meta: &CheckpointMeta, state: &[u8]) -> Result<(), CheckpointError> {
        verify(
            &format!("checkpoint {}'s state", meta.id),
            &meta.state_sha256,
            state,
        )?;
        for p in &meta.packages {
            if !self.has_package(&p.sha256).await? {
                return Err(CheckpointError::PackageNotFound(p.sha256.clone()));
            }
        }
        let (meta, state) = (meta.clone(), state.to_vec());
        self.blocking(move |s| {
            s.locked(|| {
                fence(&meta, &s.list_blocking(Some(&meta.cluster_id))?)?;
                let dir = s.dir.join("checkpoints");
                let json =
                    serde_json::to_vec_pretty(&meta).map_err(|e| CheckpointError::Store {
                        store: s.describe(),
                        message: e.to_string(),
                    })?;
                crate::durable::write_atomically(&dir, &format!("{}.state", meta.id), &state)
                    .map_err(|e| s.io("writing the state", e))?;
                // The commit point: with the meta in place the checkpoint is visible.
                crate::durable::write_atomically(&dir, &format!("{}.json", meta.id), &json)
                    .map_err(|e| s.io("writing the meta", e))
            })
        })
        .await
    }

    async fn list(&self, cluster_id: Option<&str>) -> Result<Vec<CheckpointMeta>, CheckpointError> {
        let cluster = cluster_id.map(str::to_string);
        self.blocking(move |s| s.list_blocking(cluster.as_deref()))
            .await
    }

    async fn read(&self, id: &str) -> Result<(CheckpointMeta, Vec<u8>), CheckpointError> {
        let json_path = self.checkpoint_path(id, "json")?;
        let json = match tokio::fs::read(&json_path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CheckpointError::NotFound(id.to_string()))
            }
            Err(e) => return Err(self.io(&format!("reading checkpoint {id}"), e)),
        };
        let meta: CheckpointMeta =
            serde_json::from_slice(&json).map_err(|e| CheckpointError::Store {
                store: self.describe(),
                message: format!("checkpoint {id}: its meta is unreadable: {e}"),
            })?;
        let state = tokio::fs::read(self.checkpoint_path(id, "state")?)
            .await
            .map_err(|e| self.io(&format!("reading checkpoint {id}'s state"), e))?;
        verify(
            &format!("checkpoint {id}'s state"),
            &meta.state_sha256,
            &state,
        )?;
        Ok((meta, state))
    }

    async fn retain(&self, cluster_id: &str, keep: usize) -> Result<Retained, CheckpointError> {
        let cluster = cluster_id.to_string();
        self.blocking(move |s| {
            s.locked(|| {
                let all = s.list_blocking(None)?;
                let plan = retention(&cluster, &all, &s.stored_packages()?, keep);
                for id in &plan.checkpoints {
                    // The meta first: a half-removed checkpoint is invisible.
                    for ext in ["json", "state"] {
                        match std::fs::remove_file(s.checkpoint_path(id, ext)?) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(s.io(&format!("removing checkpoint {id}"), e)),
                        }
                    }
                }
                // Leftovers of writes that stopped before their meta (a writer
                // holds the lock until its meta is in place, so none is running).
                let dir = s.dir.join("checkpoints");
                for entry in std::fs::read_dir(&dir).map_err(|e| s.io("listing checkpoints", e))? {
                    let path = entry.map_err(|e| s.io("listing checkpoints", e))?.path();
                    if path.extension().and_then(|e| e.to_str()) == Some("state")
                        && !path.with_extension("json").exists()
                    {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                for p in &plan.packages {
                    match std::fs::remove_file(s.package_path(p)?) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(s.io(&format!("removing package {p}"), e)),
                    }
                }
                Ok(plan)
            })
        })
        .await
    }
}
