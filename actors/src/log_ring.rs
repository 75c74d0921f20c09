//! A bounded ring of an instance's recent output lines, numbered in arrival order.
//!
//! The gateway notes the line number when an invocation starts and reads the range
//! once the invocation is over (plus a short grace for lines still in the pipe):
//! no subscription per request, no wake-up per line. Lines older than the ring's
//! capacity are gone (they are diagnostics). In memory only.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::runtime::LogLine;

#[derive(Debug)]
pub struct LogRing {
    inner: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<LogLine>,
    /// Number of the first line in `lines`.
    first: u64,
    capacity: usize,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        LogRing {
            inner: Mutex::new(Ring {
                lines: VecDeque::new(),
                first: 0,
                capacity: capacity.max(1),
            }),
        }
    }

    pub fn push(&self, line: LogLine) {
        let mut r = self.inner.lock().expect("log ring lock");
        if r.lines.len() == r.capacity {
            r.lines.pop_front();
            r.first += 1;
        }
        r.lines.push_back(line);
    }

    /// The number the next line will get.
    pub fn next_seq(&self) -> u64 {
        let r = self.inner.lock().expect("log ring lock");
        r.first + r.lines.len() as u64
    }

    /// Lines numbered `from..to` that are still in the ring.
    pub fn range(&self, from: u64, to: u64) -> Vec<LogLine> {
        let r = self.inner.lock().expect("log ring lock");
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
}
