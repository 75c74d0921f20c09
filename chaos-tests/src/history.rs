//! What happened during a run: every admin write with its outcome, every HTTP
//! request with its status, every leader observation and every fault. Times are
//! milliseconds since the run started.

use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteKind {
    /// `set` on the ledger app, plus `CHAOS_LAST = tag` in the same write.
    Setting {
        key: String,
        value: String,
    },
    PutKey {
        name: String,
        value: String,
    },
    DeleteKey {
        name: String,
    },
    /// A deploy of the ledger app whose package carries `marker`.
    Deploy {
        marker: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at this Raft log index (for a deploy, with the version id).
    Acked { index: u64, version: Option<String> },
    /// Refused before anything was proposed (it cannot have taken effect).
    Refused(String),
    /// Unavailable, timed out, cut off: it may or may not have taken effect.
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct Write {
    pub client: usize,
    /// `c<client>-<n>`: what `CHAOS_LAST` is set to.
    pub tag: String,
    pub kind: WriteKind,
    /// The manager it was sent to.
    pub node: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub client: usize,
    /// The node whose gateway it went to.
    pub node: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The HTTP status, or why there was none.
    pub result: Result<u16, String>,
}

#[derive(Debug, Clone)]
pub struct LeaderSeen {
    pub at_ms: u64,
    pub node: String,
    pub node_id: u64,
    pub term: u64,
    pub state: String,
    pub leader_id: u64,
}

/// A fault, from its start to when the harness saw the cluster healthy again.
#[derive(Debug, Clone)]
pub struct Fault {
    pub what: String,
    /// Nodes that cannot serve (or be reached) while it lasts.
    pub impaired: Vec<String>,
    pub start_ms: u64,
    /// When it was undone (`None`: still in place).
    pub healed_ms: Option<u64>,
    /// When every node answered again after it was undone.
    pub settled_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Records {
    pub writes: Vec<Write>,
    pub requests: Vec<Request>,
    pub leaders: Vec<LeaderSeen>,
    pub faults: Vec<Fault>,
    /// Free-form lines (phases, upgrades), for the context of a failed check.
    pub notes: Vec<(u64, String)>,
}

#[derive(Clone)]
pub struct History {
    started: Instant,
    pub records: Arc<Mutex<Records>>,
}

impl History {
    pub fn new() -> History {
        History {
            started: Instant::now(),
            records: Arc::default(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().expect("history lock")
    }

    pub fn note(&self, text: impl Into<String>) {
        let text = text.into();
        let at = self.now_ms();
        println!("[{:>7.1}s] {text}", at as f64 / 1000.0);
        self.lock().notes.push((at, text));
    }

    /// Record a fault starting now; returns its index for [`History::healed`].
    pub fn fault(&self, what: impl Into<String>, impaired: Vec<String>) -> usize {
        let what = what.into();
        self.note(format!("fault: {what}"));
        let mut r = self.lock();
        r.faults.push(Fault {
            what,
            impaired,
            start_ms: self.now_ms(),
            healed_ms: None,
            settled_ms: None,
        });
        r.faults.len() - 1
    }

    pub fn healed(&self, fault: usize) {
        let at = self.now_ms();
        let mut r = self.lock();
        r.faults[fault].healed_ms = Some(at);
    }

    /// The fault could not be made (the engine refused a pause): nothing was
    /// impaired, so it excuses nothing; it is kept, renamed, for the record.
    pub fn skipped(&self, fault: usize, why: &str) {
        let at = self.now_ms();
        let what = {
            let mut r = self.lock();
            let f = &mut r.faults[fault];
            f.what = format!("skipped {} ({why})", f.what);
            f.impaired.clear();
            f.healed_ms = Some(at);
            f.settled_ms = Some(at);
            f.what.clone()
        };
        self.note(what);
    }

    pub fn settled(&self, fault: usize) {
        let at = self.now_ms();
        let what = {
            let mut r = self.lock();
            r.faults[fault].settled_ms = Some(at);
            r.faults[fault].what.clone()
        };
        self.note(format!("settled after: {what}"));
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}
