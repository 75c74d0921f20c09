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
    /// Attempts the client made (more than 1: it went on to other members, in
    /// its session when the first may have had the write).
    pub attempts: u32,
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

/// A ledger setting's value changed, as a manager showed it (linearizable reads,
/// every ~150 ms): the applied history of the writers' registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSeen {
    pub at_ms: u64,
    pub node: String,
    pub key: String,
    pub value: String,
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

/// One line of a timer app's run record (the test handler's
/// `TEST_HANDLER_RECORD`): a run starting or ending on some instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerEvent {
    pub start: bool,
    /// The timer function (`<app>/<function>` names it uniquely here).
    pub function: String,
    pub invocation_id: String,
    /// The handler process.
    pub pid: u64,
    /// Wall clock, Unix ms.
    pub at_unix_ms: u64,
    /// Start lines: the tick (`ScheduleStatus.Next`, Unix ms) and `IsPastDue`.
    pub tick_ms: i64,
    pub past_due: bool,
}

impl TimerEvent {
    /// Parse one record line (`None`: not a timer run's line).
    pub fn parse(line: &str) -> Option<TimerEvent> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let start = v["event"] == "start";
        // The test handler writes `data`; the conformance handler the whole `payload`.
        let data = if v["data"].is_object() {
            &v["data"]
        } else {
            &v["payload"]["Data"]
        };
        let timer = data
            .as_object()
            .and_then(|d| d.values().find(|b| b.get("ScheduleStatus").is_some()));
        let tick_ms = match timer {
            Some(t) => chrono::DateTime::parse_from_rfc3339(t["ScheduleStatus"]["Next"].as_str()?)
                .ok()?
                .timestamp_millis(),
            None if start => return None,
            None => 0,
        };
        Some(TimerEvent {
            start,
            function: v["function"].as_str()?.to_string(),
            invocation_id: v["invocationId"].as_str()?.to_string(),
            pid: v["pid"].as_u64()?,
            at_unix_ms: v["atMs"].as_u64()?,
            tick_ms,
            past_due: timer.is_some_and(|t| t["IsPastDue"] == true),
        })
    }
}

#[derive(Debug, Default)]
pub struct Records {
    pub writes: Vec<Write>,
    pub requests: Vec<Request>,
    pub leaders: Vec<LeaderSeen>,
    /// Changes of the ledger's settings, per manager.
    pub ledger_seen: Vec<LedgerSeen>,
    pub faults: Vec<Fault>,
    /// Free-form lines (phases, upgrades), for the context of a failed check.
    pub notes: Vec<(u64, String)>,
    /// The timer apps' runs, read at the end (wall-clock times).
    pub timer_events: Vec<TimerEvent>,
    /// The wall clock when the run started (Unix ms): run times + this = wall clock.
    pub started_unix_ms: u64,
    /// The messaging app's messages (`None`: the run had no broker).
    pub messages: Option<crate::messages::MessageRecords>,
}

#[derive(Clone)]
pub struct History {
    started: Instant,
    pub records: Arc<Mutex<Records>>,
}

impl History {
    pub fn new() -> History {
        let started_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        History {
            started: Instant::now(),
            records: Arc::new(Mutex::new(Records {
                started_unix_ms,
                ..Records::default()
            })),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_record_lines_of_both_handlers_parse() {
        let conformance = r#"{"event":"start","function":"tick","invocationId":"abc","pid":7,"atMs":1000,"payload":{"Data":{"timer":{"IsPastDue":true,"ScheduleStatus":{"Next":"1970-01-01T00:00:02.000+00:00"}}},"Metadata":{}}}"#;
        let e = TimerEvent::parse(conformance).unwrap();
        assert!(e.start && e.past_due);
        assert_eq!((e.tick_ms, e.pid, e.at_unix_ms), (2000, 7, 1000));
        assert_eq!(
            (e.function.as_str(), e.invocation_id.as_str()),
            ("tick", "abc")
        );
        let test_handler = r#"{"event":"start","function":"tick","invocationId":"x","pid":8,"atMs":5,"data":{"t":{"IsPastDue":false,"ScheduleStatus":{"Next":"1970-01-01T00:00:04.000+01:00"}}}}"#;
        let e = TimerEvent::parse(test_handler).unwrap();
        assert_eq!((e.tick_ms, e.past_due), (4000 - 3_600_000, false));
        let end = r#"{"event":"end","function":"tick","invocationId":"x","pid":8,"atMs":9}"#;
        assert!(!TimerEvent::parse(end).unwrap().start);
        // A start without a timer value is not a timer run.
        let http = r#"{"event":"start","function":"f","invocationId":"y","pid":8,"atMs":9,"data":{"req":{}}}"#;
        assert!(TimerEvent::parse(http).is_none());
    }
}
