//! Invocation records: every call of a local instance ends in one, written to the
//! node's bounded [`InvocationStore`] by one task after a short grace period,
//! with the handler's output lines that belong to it.
//!
//! A handler's output travels through a pipe and can trail its answer a little,
//! so a record takes the lines from its start to its answer plus [`LOG_GRACE`],
//! at most [`TRAILING_LINES`] after the answer, skipping lines that name another
//! invocation sent to the same instance; at most [`MAX_RECORD_LINES`] in all. In
//! memory only.

use std::sync::Arc;
use std::time::Duration;

use strom_actors::runtime::LogStream;
use strom_actors::Endpoint;
use strom_proto::invocations::{InvocationRecord, InvocationStore, LogEntry};
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
            self.store.record(pending.record);
        }
    }
}

/// Writes records once their grace period is over; one task for all (records
/// arrive in due order, as the grace is constant).
async fn run(mut rx: mpsc::Receiver<Pending>, store: InvocationStore, cancel: CancellationToken) {
    let mut batch = Vec::new();
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
            store.record(finish(p));
        }
    }
    // Stopping: what is queued is written as it is.
    rx.close();
    while let Ok(p) = rx.try_recv() {
        batch.push(p);
    }
    for p in batch.drain(..) {
        store.record(finish(p));
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
    for line in p.endpoint.logs.range(p.from_line, to) {
        if names_other_invocation(&line.text, &record.id, &p.endpoint) {
            continue;
        }
        record.logs.push(LogEntry {
            source: match line.stream {
                LogStream::Stdout => "stdout".into(),
                LogStream::Stderr => "stderr".into(),
            },
            text: line.text,
        });
    }
    record
}

/// The UUID-shaped words of a log line.
fn uuids_in(line: &str) -> impl Iterator<Item = &str> {
    let b = line.as_bytes();
    (0..b.len().saturating_sub(35)).filter_map(move |i| {
        let w = &b[i..i + 36];
        let shaped = w.iter().enumerate().all(|(j, c)| match j {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
        shaped.then(|| &line[i..i + 36])
    })
}

/// Whether a line names another invocation sent to the same instance (so it
/// belongs to that one's record, not this one's).
fn names_other_invocation(line: &str, ours: &str, endpoint: &Endpoint) -> bool {
    !line.contains(ours) && uuids_in(line).any(|id| endpoint.had_invocation(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_words_are_found_in_log_lines() {
        let a = "0b8e3c1e-9f3c-4c8e-8a1b-2d4e5f6a7b8c";
        let line = format!("order 11111111-2222-3333-4444-555555555555 for {a}");
        let found: Vec<_> = uuids_in(&line).collect();
        assert_eq!(found, ["11111111-2222-3333-4444-555555555555", a]);
        assert_eq!(uuids_in("plain line").count(), 0);
    }
}
