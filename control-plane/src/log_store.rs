//! The Raft log and vote store, in redb.
//!
//! Durable: every entry, the vote, the last committed log id and the last purged
//! log id, in one redb file (`<data-dir>/raft/log.redb`). Vote, log and purge
//! transactions commit with redb's `Durability::Immediate` (fsync) **before**
//! openraft is told the write is done, so a vote or an entry acknowledged to a peer survives
//! a crash. In memory: nothing but the database handle. redb calls block, so they
//! run on tokio's blocking pool.
//!
//! A storage error here is fatal by design: openraft shuts the node down rather
//! than continue with a log it cannot trust.

// openraft's StorageIOError is large by design; these are cold error paths.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use strom_proto::codec;
use strom_proto::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// Cheap to clone: clones share one database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

type IoResult<T> = Result<T, StorageIOError<u64>>;

impl LogStore {
    /// Open (or create) the log store file.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> IoResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StorageIOError::write(&e))?
            .map_err(StorageError::from)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(db: &Database, key: &str) -> IoResult<Option<T>> {
        let tx = db.begin_read().map_err(|e| StorageIOError::read(&e))?;
        let table = tx.open_table(META).map_err(|e| StorageIOError::read(&e))?;
        let Some(v) = table.get(key).map_err(|e| StorageIOError::read(&e))? else {
            return Ok(None);
        };
        codec::decode(v.value())
            .map(Some)
            .map_err(|e| StorageIOError::read(&e))
    }

    fn write_meta<T: serde::Serialize>(
        db: &Database,
        key: &str,
        value: &T,
        err: fn(&redb::Error) -> StorageIOError<u64>,
    ) -> IoResult<()> {
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        let run = || -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            tx.open_table(META)?.insert(key, bytes.as_slice())?;
            tx.commit()?;
            Ok(())
        };
        run().map_err(|e| err(&e))
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let range = bounds(&range);
        self.blocking(move |db| {
            let run = || -> Result<Vec<Entry>, redb::Error> {
                let tx = db.begin_read()?;
                let table = tx.open_table(LOGS)?;
                let mut out = Vec::new();
                for item in table.range::<u64>(range)? {
                    let (_, v) = item?;
                    out.push(codec::decode(v.value()).map_err(|e| {
                        redb::Error::Corrupted(format!("undecodable log entry: {e}"))
                    })?);
                }
                Ok(out)
            };
            run().map_err(|e| StorageIOError::read_logs(&e))
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.blocking(|db| {
            let last_purged: Option<LogId> = Self::read_meta(db, KEY_PURGED)?;
            let run = || -> Result<Option<LogId>, redb::Error> {
                let tx = db.begin_read()?;
                let table = tx.open_table(LOGS)?;
                let Some((_, v)) = table.last()? else {
                    return Ok(None);
                };
                let entry: Entry = codec::decode(v.value())
                    .map_err(|e| redb::Error::Corrupted(format!("undecodable log entry: {e}")))?;
                Ok(Some(entry.log_id))
            };
            let last = run().map_err(|e| StorageIOError::read_logs(&e))?;
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last.or(last_purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |db| {
            Self::write_meta(db, KEY_VOTE, &vote, |e| StorageIOError::write_vote(e))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.blocking(|db| Self::read_meta(db, KEY_VOTE)).await
    }

    /// The committed log id is a hint that lets a restarted node apply committed
    /// entries before it hears from a leader; losing the latest value in a crash is
    /// harmless (it only lags), so it is written without its own fsync and becomes
    /// durable with the next vote or log write.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.blocking(move |db| {
            let bytes = codec::encode(&committed).map_err(|e| StorageIOError::write(&e))?;
            let run = || -> Result<(), redb::Error> {
                let mut tx = db.begin_write()?;
                tx.set_durability(Durability::None)?;
                tx.open_table(META)?
                    .insert(KEY_COMMITTED, bytes.as_slice())?;
                tx.commit()?;
                Ok(())
            };
            run().map_err(|e| StorageIOError::write(&e))
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.blocking(|db| Ok(Self::read_meta::<Option<LogId>>(db, KEY_COMMITTED)?.flatten()))
            .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for e in entries {
            let bytes = codec::encode(&e).map_err(|err| StorageIOError::write_logs(&err))?;
            encoded.push((e.log_id.index, bytes));
        }
        let result = self
            .blocking(move |db| {
                let run = || -> Result<(), redb::Error> {
                    let tx = db.begin_write()?;
                    {
                        let mut table = tx.open_table(LOGS)?;
                        for (index, bytes) in &encoded {
                            table.insert(*index, bytes.as_slice())?;
                        }
                    }
                    tx.commit()?;
                    Ok(())
                };
                run().map_err(|e| StorageIOError::write_logs(&e))
            })
            .await;
        // The transaction above is committed durably (fsync) before we report it.
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |db| {
            let run = || -> Result<(), redb::Error> {
                let tx = db.begin_write()?;
                tx.open_table(LOGS)?
                    .retain_in(log_id.index.., |_, _| false)?;
                tx.commit()?;
                Ok(())
            };
            run().map_err(|e| StorageIOError::write_logs(&e))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |db| {
            let bytes = codec::encode(&log_id).map_err(|e| StorageIOError::write(&e))?;
            let run = || -> Result<(), redb::Error> {
                let tx = db.begin_write()?;
                tx.open_table(META)?.insert(KEY_PURGED, bytes.as_slice())?;
                tx.open_table(LOGS)?
                    .retain_in(..=log_id.index, |_, _| false)?;
                tx.commit()?;
                Ok(())
            };
            run().map_err(|e| StorageIOError::write_logs(&e))
        })
        .await
    }
}
