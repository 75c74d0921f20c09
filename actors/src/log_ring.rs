//! A bounded ring of an instance's recent output lines, numbered in arrival order,
//! each tagged with whose output it is.
//!
//! The gateway notes the line number when an invocation starts and reads the range
//! once the invocation is over (plus a short grace for lines still in the pipe):
//! no subscription per request, no wake-up per line. A line belongs to an
//! invocation when exactly that one was in flight on the instance when the line
//! arrived (or, with none in flight, had ended within [`TRAILING_GRACE`]); with
//! several in flight it is shared — shown once, in the record of the earliest of
//! them, naming them all — and never copied into several records. Lines older than
//! the ring's capacity are gone (they are diagnostics). In memory only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::runtime::LogLine;

/// How long after an invocation ended, with no other in flight, its output may
/// still arrive through the pipe.
pub const TRAILING_GRACE: Duration = Duration::from_millis(50);

/// Whose output a line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Exactly this invocation was in flight (or had just ended).
    One(Arc<str>),
    /// These were in flight together (earliest first).
    Shared(Arc<[Arc<str>]>),
    /// No invocation: the instance's own output.
    Nobody,
}

/// A line and whose it is.
#[derive(Debug, Clone)]
pub struct TaggedLine {
    pub line: LogLine,
    pub owner: Owner,
}

#[derive(Debug)]
pub struct LogRing {
    inner: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<TaggedLine>,
    /// Number of the first line in `lines`.
    first: u64,
    capacity: usize,
    /// Invocations in flight on the instance, earliest first.
    in_flight: Vec<Arc<str>>,
    /// The owner a line arriving now gets, while `in_flight` does not change.
    current: Option<Owner>,
    /// The invocation that ended last, and when.
    last_ended: Option<(Arc<str>, Instant)>,
}

impl Ring {
    fn owner_now(&mut self) -> Owner {
        if self.in_flight.is_empty() {
            return match &self.last_ended {
                Some((id, at)) if at.elapsed() <= TRAILING_GRACE => Owner::One(id.clone()),
                _ => Owner::Nobody,
            };
        }
        self.current
            .get_or_insert_with(|| match self.in_flight.as_slice() {
                [one] => Owner::One(one.clone()),
                many => Owner::Shared(many.to_vec().into()),
            })
            .clone()
    }
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        LogRing {
            inner: Mutex::new(Ring {
                lines: VecDeque::new(),
                first: 0,
                capacity: capacity.max(1),
                in_flight: Vec::new(),
                current: None,
                last_ended: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.lock().expect("log ring lock")
    }

    pub fn push(&self, line: LogLine) {
        let mut r = self.lock();
        let owner = r.owner_now();
        if r.lines.len() == r.capacity {
            r.lines.pop_front();
            r.first += 1;
        }
        r.lines.push_back(TaggedLine { line, owner });
    }

    /// Invocation `id` was sent to the instance; returns the number the next line
    /// will get.
    pub fn begin(&self, id: Arc<str>) -> u64 {
        let mut r = self.lock();
        r.in_flight.push(id);
        r.current = None;
        r.first + r.lines.len() as u64
    }

    /// Invocation `id` is over (its answer was relayed).
    pub fn end(&self, id: &str) {
        let mut r = self.lock();
        if let Some(i) = r.in_flight.iter().position(|x| &**x == id) {
            let ended = r.in_flight.remove(i);
            r.last_ended = Some((ended, Instant::now()));
            r.current = None;
        }
    }

    /// The number the next line will get.
    pub fn next_seq(&self) -> u64 {
        let r = self.lock();
        r.first + r.lines.len() as u64
    }

    /// Lines numbered `from..to` that are still in the ring.
    pub fn range(&self, from: u64, to: u64) -> Vec<LogLine> {
        self.tagged_range(from, to)
            .into_iter()
            .map(|t| t.line)
            .collect()
    }

    /// Lines numbered `from..to` still in the ring that belong to invocation `id`:
    /// its own, and those written while several were in flight with `id` the
    /// earliest (shown once, in its record). Only those are copied out: a record
    /// is written for every invocation, and its range also holds later lines.
    pub fn lines_of(&self, from: u64, to: u64, id: &str) -> Vec<TaggedLine> {
        let r = self.lock();
        let start = from.max(r.first);
        let end = to.min(r.first + r.lines.len() as u64);
        (start..end)
            .map(|i| &r.lines[(i - r.first) as usize])
            .filter(|t| match &t.owner {
                Owner::One(owner) => **owner == *id,
                Owner::Shared(ids) => ids.first().is_some_and(|first| **first == *id),
                Owner::Nobody => false,
            })
            .cloned()
            .collect()
    }

    /// Lines numbered `from..to` that are still in the ring, with their owners.
    pub fn tagged_range(&self, from: u64, to: u64) -> Vec<TaggedLine> {
        let r = self.lock();
        let start = from.max(r.first);
        let end = to.min(r.first + r.lines.len() as u64);
        (start..end)
            .map(|i| r.lines[(i - r.first) as usize].clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::LogStream;

    fn line(t: &str) -> LogLine {
        LogLine {
            stream: LogStream::Stdout,
            text: t.into(),
        }
    }

    #[test]
    fn ranges_survive_only_within_capacity() {
        let r = LogRing::new(3);
        let a = r.next_seq();
        r.push(line("1"));
        r.push(line("2"));
        let b = r.next_seq();
        r.push(line("3"));
        assert_eq!(r.range(a, b).len(), 2);
        r.push(line("4"));
        let texts: Vec<_> = r
            .range(a, r.next_seq())
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(texts, ["2", "3", "4"], "line 1 fell out of the ring");
    }

    #[test]
    fn an_invocations_lines_are_its_own_and_the_shared_ones_it_started_first() {
        let r = LogRing::new(16);
        r.push(line("before"));
        r.begin("a".into());
        r.push(line("a alone"));
        r.begin("b".into());
        r.push(line("a and b"));
        r.end("a");
        r.push(line("b alone"));
        r.end("b");
        r.push(line("b just ended"));
        let texts = |id: &str| -> Vec<String> {
            r.lines_of(0, r.next_seq(), id)
                .into_iter()
                .map(|t| t.line.text)
                .collect()
        };
        assert_eq!(texts("a"), ["a alone", "a and b"]);
        assert_eq!(texts("b"), ["b alone", "b just ended"]);
        assert!(texts("c").is_empty());
        // The same as filtering every tagged line.
        assert_eq!(r.tagged_range(0, r.next_seq()).len(), 5);
    }

    fn owners(r: &LogRing) -> Vec<Owner> {
        r.tagged_range(0, r.next_seq())
            .into_iter()
            .map(|t| t.owner)
            .collect()
    }

    #[test]
    fn a_line_belongs_to_the_one_invocation_in_flight() {
        let r = LogRing::new(16);
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        r.push(line("before"));
        r.begin(a.clone());
        r.push(line("a alone"));
        r.begin(b.clone());
        r.push(line("a and b"));
        r.end("a");
        r.push(line("b alone"));
        r.end("b");
        r.push(line("b just ended"));
        let shared: Arc<[Arc<str>]> = vec![a.clone(), b.clone()].into();
        assert_eq!(
            owners(&r),
            [
                Owner::Nobody,
                Owner::One(a),
                Owner::Shared(shared),
                Owner::One(b.clone()),
                Owner::One(b),
            ]
        );
    }

    #[test]
    fn output_long_after_the_last_invocation_is_nobodys() {
        let r = LogRing::new(4);
        r.begin("a".into());
        r.end("a");
        std::thread::sleep(TRAILING_GRACE + Duration::from_millis(20));
        r.push(line("later"));
        assert_eq!(owners(&r), [Owner::Nobody]);
    }
}
