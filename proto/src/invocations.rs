//! Invocation records: one per function execution on this node, kept in a bounded
//! in-memory store (oldest dropped first) and streamed to followers.
//!
//! In memory only: records are lost when the node restarts (they are diagnostics;
//! the replicated state never depends on them).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::ids::AppName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvocationStatus {
    Succeeded,
    Failed,
    TimedOut,
}

impl InvocationStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            InvocationStatus::Succeeded => "Succeeded",
            InvocationStatus::Failed => "Failed",
            InvocationStatus::TimedOut => "TimedOut",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// `handler` (the `Logs` of a JSON-mode response), `stdout` or `stderr`.
    pub source: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationRecord {
    /// Also sent to the handler as `X-Azure-Functions-InvocationId`.
    pub id: String,
    pub app: AppName,
    pub function: String,
    pub instance_id: String,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    pub duration_us: u64,
    pub status: InvocationStatus,
    /// HTTP status returned to the caller (0 for non-HTTP triggers).
    pub http_status: u16,
    pub error: Option<String>,
    pub logs: Vec<LogEntry>,
    /// What started it: `http`, `timer` (a scheduled run) or `admin` (an admin
    /// invoke of a non-HTTP function).
    #[serde(default)]
    pub trigger: std::borrow::Cow<'static, str>,
}

impl InvocationRecord {
    /// The record of a call that started at `started_at_ms`: succeeded with 200
    /// until the answer says otherwise.
    pub fn started(
        id: String,
        app: AppName,
        function: String,
        instance_id: String,
        started_at_ms: i64,
        trigger: &'static str,
    ) -> InvocationRecord {
        InvocationRecord {
            id,
            app,
            function,
            instance_id,
            started_at_ms,
            duration_us: 0,
            status: InvocationStatus::Succeeded,
            http_status: 200,
            error: None,
            logs: Vec::new(),
            trigger: std::borrow::Cow::Borrowed(trigger),
        }
    }
}

/// Bounded, shared store of recent invocations. Cheap to clone.
#[derive(Clone)]
pub struct InvocationStore {
    inner: Arc<Mutex<VecDeque<Arc<InvocationRecord>>>>,
    capacity: usize,
    tx: broadcast::Sender<Arc<InvocationRecord>>,
}

impl InvocationStore {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(1024);
        InvocationStore {
            inner: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(4096)))),
            capacity: capacity.max(1),
            tx,
        }
    }

    pub fn record(&self, record: InvocationRecord) {
        let record = Arc::new(record);
        {
            let mut q = self.inner.lock().expect("invocation store lock");
            if q.len() == self.capacity {
                q.pop_front();
            }
            q.push_back(record.clone());
        }
        let _ = self.tx.send(record);
    }

    /// Records as they are written.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<InvocationRecord>> {
        self.tx.subscribe()
    }
}

/// Which invocations a caller asks for (`strom fn logs` and a management node
/// asking a worker's function port, `/.strom/invocations`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    pub app: Option<AppName>,
    pub function: Option<String>,
    /// `succeeded`, `failed` (failed or timed out) or `timedout`.
    pub status: Option<String>,
    /// Only those started at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Only this invocation.
    pub id: Option<String>,
    /// The newest this many.
    pub limit: usize,
}

impl Query {
    pub fn matches(&self, r: &InvocationRecord) -> bool {
        matches(r, self.app.as_ref(), self.function.as_deref())
            && self.since_ms.is_none_or(|t| r.started_at_ms >= t)
            && self.id.as_deref().is_none_or(|id| r.id == id)
            && self
                .status
                .as_deref()
                .is_none_or(|s| match s.to_ascii_lowercase().as_str() {
                    "failed" => r.status != InvocationStatus::Succeeded,
                    other => r.status.as_str().eq_ignore_ascii_case(other),
                })
    }

    /// A status filter that is not one of the known words.
    pub fn check_status(status: &str) -> Result<(), String> {
        match status.to_ascii_lowercase().as_str() {
            "succeeded" | "failed" | "timedout" => Ok(()),
            _ => Err(format!(
                "status `{status}`: use succeeded, failed (failed or timed out) or timedout"
            )),
        }
    }
}

impl InvocationStore {
    /// The newest `query.limit` records the query matches, oldest first.
    pub fn query(&self, query: &Query) -> Vec<Arc<InvocationRecord>> {
        let q = self.inner.lock().expect("invocation store lock");
        let mut out: Vec<_> = q
            .iter()
            .rev()
            .filter(|r| query.matches(r))
            .take(query.limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// Records of several nodes, merged: the newest `limit` by start time, oldest first.
pub fn merge_newest<T>(
    mut all: Vec<(T, Arc<InvocationRecord>)>,
    limit: usize,
) -> Vec<(T, Arc<InvocationRecord>)> {
    all.sort_by(|a, b| (a.1.started_at_ms, &a.1.id).cmp(&(b.1.started_at_ms, &b.1.id)));
    let skip = all.len().saturating_sub(limit);
    all.into_iter().skip(skip).collect()
}

pub fn matches(r: &InvocationRecord, app: Option<&AppName>, function: Option<&str>) -> bool {
    app.is_none_or(|a| &r.app == a) && function.is_none_or(|f| r.function.eq_ignore_ascii_case(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, f: &str) -> InvocationRecord {
        InvocationRecord {
            id: i.to_string(),
            app: AppName::parse("app").unwrap(),
            function: f.into(),
            instance_id: "x".into(),
            started_at_ms: i as i64,
            duration_us: 1,
            status: InvocationStatus::Succeeded,
            http_status: 200,
            error: None,
            logs: vec![],
            trigger: std::borrow::Cow::Borrowed("http"),
        }
    }

    #[test]
    fn the_store_is_bounded_and_filters() {
        let s = InvocationStore::new(3);
        let mut rx = s.subscribe();
        for i in 0..5 {
            s.record(rec(i, if i % 2 == 0 { "even" } else { "odd" }));
        }
        let ids: Vec<_> = s
            .query(&Query {
                limit: 10,
                ..Query::default()
            })
            .iter()
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(ids, ["2", "3", "4"]);
        let even: Vec<_> = s
            .query(&Query {
                function: Some("EVEN".into()),
                limit: 10,
                ..Query::default()
            })
            .iter()
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(even, ["2", "4"]);
        assert_eq!(rx.try_recv().unwrap().id, "0");
    }
}
