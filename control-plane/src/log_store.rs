//! The Raft log and vote store, in redb.
//!
//! Durable: every entry, the vote, the last committed log id and the last purged
//! log id, in one redb file (`<data-dir>/raft/log.redb`). Vote, log and purge
//! transactions commit with redb's `Durability::Immediate` (fsync) **before**
//! openraft is told the write is done, so a vote or an entry acknowledged to a peer
//! survives a crash.
//!
//! **Appends do not block Raft.** `append` keeps the entries in memory (readable at
//! once, as openraft requires) and queues them for the writer thread, which makes
//! them durable and only then reports them flushed (`LogFlushed`): meanwhile the
//! leader replicates them to its followers, so its own fsync overlaps theirs instead
//! of preceding them. The writer takes every write queued while it was busy in one
//! transaction — **group commit**, one fsync for all of them. Every other write
//! (vote, truncation, purge, the committed hint) goes through the same queue, so the
//! disk sees them in the order openraft made them; those calls return once durable.
//! Reads run on tokio's blocking pool and overlay the entries not yet written.
//!
//! A storage error here is fatal by design: openraft shuts the node down rather
//! than continue with a log it cannot trust.

// openraft's StorageIOError is large by design; these are cold error paths.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

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

/// Cheap to clone: clones share one database, its writer and the entries not
/// yet written.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Appended entries the writer has not made durable yet, by index.
    unflushed: Arc<Mutex<BTreeMap<u64, Entry>>>,
    writer: Arc<Writer>,
}

/// The writer thread and its queue. Dropped with the last handle: the queue
/// closes, the thread finishes what was queued and is joined, so the database is
/// closed when the store is dropped (a restart in the same process reopens it).
struct Writer {
    queue: Option<mpsc::Sender<Write>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn send(&self, write: Write) -> Result<(), StorageIOError<u64>> {
        self.queue
            .as_ref()
            .and_then(|q| q.send(write).ok())
            .ok_or_else(|| {
                StorageIOError::write_logs(&std::io::Error::other("the log writer has stopped"))
            })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type IoResult<T> = Result<T, StorageIOError<u64>>;

/// One `append`: its entries (log id, encoded) and whom to tell once durable.
type Appended = (Vec<(LogId, Vec<u8>)>, LogFlushed<TypeConfig>);

/// A write for the writer thread, done in queue order.
enum Write {
    /// Entries (log id, encoded) to make durable, then report flushed.
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        flushed: LogFlushed<TypeConfig>,
    },
    /// Any other write, after every append queued before it is durable.
    Run(Box<dyn FnOnce(&Database) + Send>),
}

impl LogStore {
    /// Open (or create) the log store file and start its writer thread.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.commit()?;
        let db = Arc::new(db);
        let unflushed = Arc::new(Mutex::new(BTreeMap::new()));
        let (writes, queue) = mpsc::channel();
        let (writer_db, writer_unflushed) = (db.clone(), unflushed.clone());
        let thread = std::thread::Builder::new()
            .name("strom-raft-log".into())
            .spawn(move || write_loop(&writer_db, &writer_unflushed, &queue))
            .map_err(redb::Error::Io)?;
        Ok(LogStore {
            db,
            unflushed,
            writer: Arc::new(Writer {
                queue: Some(writes),
                thread: Some(thread),
            }),
        })
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

    /// Run `f` on the writer thread, after every write queued before it.
    async fn write<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> IoResult<T> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let run = Write::Run(Box::new(move |db| {
            let _ = done.send(f(db));
        }));
        self.writer.send(run)?;
        result
            .await
            .map_err(|_| {
                StorageError::from(StorageIOError::write(&std::io::Error::other(
                    "the log writer has stopped",
                )))
            })?
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
        // Taken before the file is read: the writer forgets an entry only after
        // its transaction committed, so an entry not in this copy is in the file.
        let unflushed: Vec<(u64, Entry)> = self
            .unflushed
            .lock()
            .expect("unflushed entries lock")
            .range(range)
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        self.blocking(move |db| {
            let run = || -> Result<Vec<Entry>, redb::Error> {
                let tx = db.begin_read()?;
                let table = tx.open_table(LOGS)?;
                let mut out = BTreeMap::new();
                for item in table.range::<u64>(range)? {
                    let (k, v) = item?;
                    let entry: Entry = codec::decode(v.value()).map_err(|e| {
                        redb::Error::Corrupted(format!("undecodable log entry: {e}"))
                    })?;
                    out.insert(k.value(), entry);
                }
                out.extend(unflushed);
                Ok(out.into_values().collect())
            };
            run().map_err(|e| StorageIOError::read_logs(&e))
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_unflushed = self
            .unflushed
            .lock()
            .expect("unflushed entries lock")
            .last_key_value()
            .map(|(_, e)| e.log_id);
        self.blocking(move |db| {
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
            let last = last_unflushed.or(run().map_err(|e| StorageIOError::read_logs(&e))?);
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
        self.write(move |db| {
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
        self.write(move |db| {
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
        {
            let mut unflushed = self.unflushed.lock().expect("unflushed entries lock");
            for e in entries {
                let bytes = codec::encode(&e).map_err(|err| StorageIOError::write_logs(&err))?;
                encoded.push((e.log_id, bytes));
                unflushed.insert(e.log_id.index, e);
            }
        }
        // Readable now; durable (and reported flushed) when the writer has
        // committed them.
        self.writer.send(Write::Append {
            entries: encoded,
            flushed: callback,
        })?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Gone for readers at once; from the file after every queued append.
        self.unflushed
            .lock()
            .expect("unflushed entries lock")
            .retain(|index, _| *index < log_id.index);
        self.write(move |db| {
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
        self.unflushed
            .lock()
            .expect("unflushed entries lock")
            .retain(|index, _| *index > log_id.index);
        self.write(move |db| {
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

/// The writer thread: every write in queue order, the appends queued together in
/// one transaction (one fsync), until every handle is dropped.
fn write_loop(
    db: &Database,
    unflushed: &Mutex<BTreeMap<u64, Entry>>,
    queue: &mpsc::Receiver<Write>,
) {
    while let Ok(first) = queue.recv() {
        let mut appends = Vec::new();
        for write in std::iter::once(first).chain(std::iter::from_fn(|| queue.try_recv().ok())) {
            match write {
                Write::Append { entries, flushed } => appends.push((entries, flushed)),
                Write::Run(run) => {
                    flush(db, unflushed, std::mem::take(&mut appends));
                    run(db);
                }
            }
        }
        flush(db, unflushed, appends);
    }
}

/// Make `appends` durable in one transaction, then report each flushed (or the
/// error) in order.
fn flush(db: &Database, unflushed: &Mutex<BTreeMap<u64, Entry>>, appends: Vec<Appended>) {
    if appends.is_empty() {
        return;
    }
    let run = || -> Result<(), redb::Error> {
        let tx = db.begin_write()?;
        {
            let mut table = tx.open_table(LOGS)?;
            for (entries, _) in &appends {
                for (log_id, bytes) in entries {
                    table.insert(log_id.index, bytes.as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    };
    let result = run();
    if result.is_ok() {
        // On disk now: readers find them there. An entry replaced meanwhile (a
        // truncation and a new append at its index) stays.
        let mut unflushed = unflushed.lock().expect("unflushed entries lock");
        for (entries, _) in &appends {
            for (log_id, _) in entries {
                if unflushed
                    .get(&log_id.index)
                    .is_some_and(|e| e.log_id == *log_id)
                {
                    unflushed.remove(&log_id.index);
                }
            }
        }
    }
    for (_, flushed) in appends {
        flushed.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
    }
}
