//! Invocation records: every call of a local instance ends in one, written to the
//! node's bounded [`InvocationStore`] by one task after a short grace period,
//! with the handler's output lines that belong to it.
//!
//! A handler's output travels through a pipe and can trail its answer a little,
//! so a record takes the lines from its start to its answer plus [`LOG_GRACE`],
//! at most [`TRAILING_LINES`] after the answer, that are its own (the instance's
//! [`strom_actors::log_ring::LogRing`] tags each line with the invocations in
//! flight when it arrived: a line of one is that one's; a line written while
//! several were in flight appears once, in the earliest one's record, naming them
//! all); at most [`MAX_RECORD_LINES`] in all. In memory only.
//!
//! The same task counts each invocation in the node's metrics
//! ([`InvocationMetrics`]), so the request path records nothing but the record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strom_actors::log_ring::Owner;
use strom_actors::runtime::LogStream;
use strom_actors::Endpoint;
use strom_proto::invocations::{InvocationRecord, InvocationStatus, InvocationStore, LogEntry};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long handler output after an invocation's answer still counts as its log.
pub const LOG_GRACE: Duration = Duration::from_millis(50);
/// Lines after the answer that may still belong to the invocation.
const TRAILING_LINES: u64 = 16;
/// Most handler lines kept in one invocation record.
const MAX_RECORD_LINES: u64 = 200;
/// Records waiting for their grace period.
const QUEUE: usize = 65_536;

/// An invocation whose record waits for trailing handler output.
pub struct Pending {
    pub record: InvocationRecord,
    pub endpoint: Arc<Endpoint>,
    /// The instance's next line number when the request was sent.
    pub from_line: u64,
    /// The instance's next line number when the answer arrived.
    pub answered_line: u64,
    pub due: Instant,
}

impl Pending {
    /// A record of a call answered now, whose lines started at `from_line`.
    pub fn new(record: InvocationRecord, endpoint: Arc<Endpoint>, from_line: u64) -> Pending {
        Pending {
            answered_line: endpoint.logs.next_seq(),
            record,
            endpoint,
            from_line,
            due: Instant::now() + LOG_GRACE,
        }
    }
}

/// Where finished calls go. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
    store: InvocationStore,
}

impl Recorder {
    /// The recorder and its task (which ends at `cancel`, writing what it holds).
    pub fn start(
        store: InvocationStore,
        cancel: CancellationToken,
    ) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(rx, store.clone(), cancel));
        (Recorder { tx, store }, task)
    }

    /// Record a call. When the instance may have died under it, the record says
    /// how, once the worker has noticed (without delaying the response).
    pub fn submit(&self, pending: Pending, died_under_call: bool) {
        if died_under_call {
            let this = self.clone();
            tokio::spawn(async move {
                let mut pending = pending;
                if let Some(info) = pending.endpoint.exit_reason(Duration::from_secs(5)).await {
                    if let Some(e) = pending.record.error.as_mut() {
                        e.push_str(&format!("; the instance ended: {info}"));
                    }
                }
                pending.due = Instant::now() + LOG_GRACE;
                this.send(pending);
            });
        } else {
            self.send(pending);
        }
    }

    fn send(&self, pending: Pending) {
        if let Err(e) = self.tx.try_send(pending) {
            // The recorder is far behind (or stopped): keep the record, without
            // trailing lines.
            let pending = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            let record = pending.record;
            InvocationMetrics::default().count(&record);
            self.store.record(record);
        }
    }
}

/// `strom_invocations_total` and `strom_invocation_duration_seconds`, with the
/// handles of each app, function and trigger kept by the one task that records
/// (looked up by the record's own strings: nothing is allocated per record).
#[derive(Default)]
pub struct InvocationMetrics {
    by_app: HashMap<String, HashMap<String, [Option<FunctionMetrics>; 3]>>,
}

struct FunctionMetrics {
    /// By status: succeeded, failed, timedout.
    outcomes: [metrics::Counter; 3],
    duration: metrics::Histogram,
}

impl FunctionMetrics {
    fn new(app: &str, function: &str, trigger: &'static str) -> FunctionMetrics {
        let counter = |status: &'static str| metrics::counter!("strom_invocations_total", "app" => app.to_string(), "function" => function.to_string(), "trigger" => trigger, "status" => status);
        FunctionMetrics {
            outcomes: [counter("succeeded"), counter("failed"), counter("timedout")],
            duration: metrics::histogram!("strom_invocation_duration_seconds", "app" => app.to_string(), "function" => function.to_string(), "trigger" => trigger),
        }
    }
}

impl InvocationMetrics {
    pub fn count(&mut self, record: &InvocationRecord) {
        let (t, trigger) = match &*record.trigger {
            "timer" => (1, "timer"),
            "admin" => (2, "admin"),
            _ => (0, "http"),
        };
        let app = record.app.as_str();
        if !self.by_app.contains_key(app) {
            self.by_app.insert(app.to_string(), HashMap::new());
        }
        let functions = self.by_app.get_mut(app).expect("inserted above");
        if !functions.contains_key(&record.function) {
            functions.insert(record.function.clone(), Default::default());
        }
        let slots = functions.get_mut(&record.function).expect("inserted above");
        let f =
            slots[t].get_or_insert_with(|| FunctionMetrics::new(app, &record.function, trigger));
        let i = match record.status {
            InvocationStatus::Succeeded => 0,
            InvocationStatus::Failed => 1,
            InvocationStatus::TimedOut => 2,
        };
        f.outcomes[i].increment(1);
        f.duration.record(record.duration_us as f64 / 1e6);
        // The portal's charts: the last hour, per minute.
        strom_control_plane::invocation_history::global().record(
            record.started_at_ms + (record.duration_us / 1000) as i64,
            i != 0,
            record.duration_us,
        );
    }
}

/// Writes records once their grace period is over; one task for all (records
/// arrive in due order, as the grace is constant).
async fn run(mut rx: mpsc::Receiver<Pending>, store: InvocationStore, cancel: CancellationToken) {
    let mut batch = Vec::new();
    let mut metrics = InvocationMetrics::default();
    loop {
        // Wake once per batch, not once per record: take everything queued, wait
        // for the last one's due time, write them all.
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, 1024) => n,
            _ = cancel.cancelled() => 0,
        };
        if received == 0 {
            break;
        }
        if let Some(last) = batch.last() {
            tokio::select! {
                _ = tokio::time::sleep_until(last.due) => {}
                _ = cancel.cancelled() => {}
            }
        }
        for p in batch.drain(..) {
            let record = finish(p);
            metrics.count(&record);
            store.record(record);
        }
    }
    // Stopping: what is queued is written as it is.
    rx.close();
    while let Ok(p) = rx.try_recv() {
        batch.push(p);
    }
    for p in batch.drain(..) {
        let record = finish(p);
        metrics.count(&record);
        store.record(record);
    }
}

fn finish(p: Pending) -> InvocationRecord {
    let mut record = p.record;
    let to = p
        .endpoint
        .logs
        .next_seq()
        .min(p.answered_line + TRAILING_LINES)
        .min(p.from_line + MAX_RECORD_LINES);
    for tagged in p.endpoint.logs.lines_of(p.from_line, to, &record.id) {
        let text = match &tagged.owner {
            // Written while several were in flight: shown once, in the earliest's
            // record, naming them all.
            Owner::Shared(ids) => format!(
                "[instance output while {} were in flight] {}",
                ids.iter().map(|i| &**i).collect::<Vec<_>>().join(", "),
                tagged.line.text
            ),
            _ => tagged.line.text,
        };
        record.logs.push(LogEntry {
            source: match tagged.line.stream {
                LogStream::Stdout => "stdout".into(),
                LogStream::Stderr => "stderr".into(),
            },
            text,
        });
    }
    record
}
