//! The checks a chaos run ends with, over its [`Records`] and the state every
//! manager holds once the faults are healed. Pure functions: unit-tested below
//! with hand-made histories.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::history::{Outcome, Records, Request, TimerEvent, WriteKind};

/// What one manager holds at the end of a run (read through that node).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    pub node: String,
    pub settings: BTreeMap<String, String>,
    /// The ledger function's own keys.
    pub keys: BTreeMap<String, String>,
    /// Version ids, newest first.
    pub versions: Vec<String>,
}

/// One check's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub check: &'static str,
    /// One line of what was checked and found.
    pub summary: String,
    /// Each violation with the time it concerns (for the history around it).
    pub violations: Vec<(u64, String)>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

fn verdict(check: &'static str, summary: String, violations: Vec<(u64, String)>) -> Verdict {
    Verdict {
        check,
        summary,
        violations,
    }
}

/// Every check, in the order they are reported.
/// `keep`: the versions each app keeps (older ones are forgotten by retention).
pub fn check_all(
    records: &Records,
    states: &[NodeState],
    workers: &[String],
    keep: usize,
) -> Vec<Verdict> {
    vec![
        workload_ran(records),
        acknowledged_writes_present(records, states, keep),
        same_state_everywhere(states),
        commit_order(records, states),
        applied_once(records),
        one_leader_per_term(records),
        faults_settled(records),
        data_plane(records, workers),
        timers(records),
        messages(records),
    ]
}

/// The messaging rules, over what the producer published, the outputs (one per
/// successful handling; an output is confirmed before its message is
/// acknowledged) and the poison queue at the end:
/// - every message the broker confirmed was handled at least once, unless it
///   asks the handler to fail: then it is in the poison queue, and never handled;
/// - a message is handled more than once only because the broker redelivered
///   it (its first consumer lost it) or because an attempt of the same delivery
///   failed and was retried (`RetryContext.RetryCount` > 0; e.g. its output was
///   not confirmed, so may have been published): at most one of its handlings
///   was the first attempt of a first delivery;
/// - the poison queue holds only messages that ask to fail, and nothing else
///   was handled or poisoned that was not published;
/// - nothing is left in the queue.
pub fn messages(records: &Records) -> Verdict {
    let Some(m) = &records.messages else {
        return verdict(
            "messages",
            "not run (no broker: STROM_RABBITMQ_URL)".into(),
            vec![],
        );
    };
    let mut violations = Vec::new();
    let published: BTreeMap<u64, &crate::messages::Published> =
        m.published.iter().map(|p| (p.id, p)).collect();
    let mut handled: BTreeMap<u64, Vec<&crate::messages::Handled>> = BTreeMap::new();
    for h in &m.handled {
        handled.entry(h.id).or_default().push(h);
    }
    let poisoned: HashSet<u64> = m.poisoned.iter().map(|(id, _)| *id).collect();
    for p in m.published.iter().filter(|p| p.confirmed) {
        let t = p.at_ms as f64 / 1000.0;
        if p.failing && !poisoned.contains(&p.id) {
            violations.push((
                p.at_ms,
                format!("message {} (asks to fail; confirmed, published at {t:.1}s) is not in the poison queue", p.id),
            ));
        }
        if !p.failing && !handled.contains_key(&p.id) {
            violations.push((
                p.at_ms,
                format!(
                    "message {} (confirmed, published at {t:.1}s) was never handled: lost",
                    p.id
                ),
            ));
        }
    }
    let (mut again, mut retried) = (0, 0);
    for (id, hs) in handled.iter_mut() {
        hs.sort_by_key(|h| h.at_ms);
        let at = hs[0].at_ms;
        match published.get(id) {
            None => violations.push((at, format!("message {id} was handled but never published"))),
            Some(p) if p.failing => violations.push((
                at,
                format!("message {id} asks the handler to fail, yet it was handled successfully"),
            )),
            Some(_) => {}
        }
        let firsts = hs.iter().filter(|h| !h.redelivered && h.retry == 0).count();
        if firsts > 1 {
            let times: Vec<String> = hs
                .iter()
                .map(|h| {
                    let why = match (h.redelivered, h.retry) {
                        (true, 0) => " (redelivered)".to_string(),
                        (true, n) => format!(" (redelivered, retry {n})"),
                        (false, 0) => String::new(),
                        (false, n) => format!(" (retry {n})"),
                    };
                    format!("{:.1}s{why}", h.at_ms as f64 / 1000.0)
                })
                .collect();
            violations.push((
                at,
                format!(
                    "message {id} was handled {} times, {firsts} of them on the first attempt of a first delivery (no redelivery or retry explains them): {}",
                    hs.len(),
                    times.join(", ")
                ),
            ));
        }
        again += hs.iter().skip(1).filter(|h| h.redelivered).count();
        retried += hs.iter().skip(1).filter(|h| !h.redelivered).count();
    }
    let mut wrongly: BTreeSet<u64> = BTreeSet::new();
    for (id, error) in &m.poisoned {
        match published.get(id) {
            Some(p) if p.failing => {}
            Some(p) => {
                if wrongly.insert(*id) {
                    violations.push((
                        p.at_ms,
                        format!("message {id} is in the poison queue but did not ask to fail (its error: {error})"),
                    ));
                }
            }
            None => violations.push((
                0,
                format!("message {id} is in the poison queue but was never published"),
            )),
        }
    }
    if m.left > 0 {
        violations.push((
            records.notes.last().map_or(0, |(t, _)| *t),
            format!("{} message(s) left in the queue at the end", m.left),
        ));
    }
    let confirmed = m.published.iter().filter(|p| p.confirmed).count();
    let failing = m.published.iter().filter(|p| p.failing).count();
    let mut summary = format!(
        "{} published ({confirmed} confirmed, {failing} asking to fail), {} handlings of {} messages ({again} again after a redelivery, {retried} in a retry of the same delivery), {} poisoned ({} distinct), {} left",
        m.published.len(),
        m.handled.len(),
        handled.len(),
        m.poisoned.len(),
        poisoned.len(),
        m.left
    );
    // Why Strom gave up on messages it should have handled: the first reason.
    if let Some((id, error)) = m.poisoned.iter().find(|(id, _)| wrongly.contains(id)) {
        summary.push_str(&format!(
            "; {} poisoned that did not ask to fail (message {id}: {error})",
            wrongly.len()
        ));
    }
    verdict("messages", summary, violations)
}

/// The chaos timer apps' period.
pub const TIMER_PERIOD_MS: i64 = 2000;
/// How long around a fault (before its start, after it settled) its effects on
/// timers are excused.
const TIMER_FAULT_MARGIN_MS: u64 = 15_000;

/// One tick's run as the handlers recorded it.
#[derive(Debug, Clone)]
struct TickRun {
    id: String,
    past_due: bool,
    /// Run times (ms since the run started) of its first start and last end.
    start_ms: u64,
    end_ms: Option<u64>,
}

/// The timer rules over the handlers' records, per timer function:
/// - never two runs at once: a run starts only when every earlier run ended (or
///   was lost with its worker and is being sent again, with its id);
/// - one invocation id per tick (a tick sent again keeps its id);
/// - ticks `TIMER_PERIOD_MS` apart, unless the gap is explained: the earlier run
///   was past due (missed ticks collapse into it), the timer was busy (the
///   earlier run outlasted the period), or a fault was in effect;
/// - a past-due run happens only around a fault or after a busy run;
/// - each timer kept running to the end of the run.
pub fn timers(records: &Records) -> Verdict {
    let run_ms = |unix: u64| unix.saturating_sub(records.started_unix_ms);
    let in_fault = |from: u64, to: u64| {
        records.faults.iter().any(|f| {
            let start = f.start_ms.saturating_sub(TIMER_FAULT_MARGIN_MS);
            let end = f
                .settled_ms
                .unwrap_or(u64::MAX)
                .saturating_add(TIMER_FAULT_MARGIN_MS);
            start <= to && from <= end
        })
    };
    let mut by_function: BTreeMap<&str, Vec<&TimerEvent>> = BTreeMap::new();
    for e in &records.timer_events {
        by_function.entry(&e.function).or_default().push(e);
    }
    let end_ms = records
        .notes
        .iter()
        .rev()
        .find(|(_, n)| n == "workload stopped")
        .map(|(at, _)| *at);
    let mut violations = Vec::new();
    let mut counts = Vec::new();
    for (function, mut events) in by_function {
        events.sort_by_key(|e| (e.at_unix_ms, e.start));
        let mut active: Vec<(&str, u64)> = Vec::new();
        let mut ticks: BTreeMap<i64, TickRun> = BTreeMap::new();
        let mut tick_of: BTreeMap<&str, i64> = BTreeMap::new();
        let mut sent_again = 0;
        for e in &events {
            let at = run_ms(e.at_unix_ms);
            if e.start {
                let before = active.len();
                active.retain(|(id, _)| *id != e.invocation_id);
                sent_again += usize::from(active.len() != before);
                if let Some((other, _)) = active.first() {
                    violations.push((
                        at,
                        format!(
                            "timer {function}: run {} started at {:.1}s while run {other} still ran",
                            e.invocation_id,
                            at as f64 / 1000.0
                        ),
                    ));
                }
                active.push((&e.invocation_id, e.pid));
                tick_of.insert(&e.invocation_id, e.tick_ms);
                let run = ticks.entry(e.tick_ms).or_insert_with(|| TickRun {
                    id: e.invocation_id.clone(),
                    past_due: e.past_due,
                    start_ms: at,
                    end_ms: None,
                });
                if run.id != e.invocation_id {
                    violations.push((
                        at,
                        format!(
                            "timer {function}: tick {} ran with two invocation ids ({} and {})",
                            e.tick_ms, run.id, e.invocation_id
                        ),
                    ));
                }
            } else {
                active.retain(|(id, pid)| !(*id == e.invocation_id && *pid == e.pid));
                if let Some(run) = tick_of
                    .get(e.invocation_id.as_str())
                    .and_then(|t| ticks.get_mut(t))
                {
                    run.end_ms = Some(at);
                }
            }
        }
        let list: Vec<(&i64, &TickRun)> = ticks.iter().collect();
        for (i, (tick, run)) in list.iter().enumerate() {
            let tick_at = run_ms(u64::try_from(**tick).unwrap_or(0));
            let busy_before = i > 0
                && list[i - 1]
                    .1
                    .end_ms
                    .is_some_and(|end| end + 1000 >= tick_at);
            if run.past_due && !busy_before && !in_fault(tick_at, run.start_ms) {
                violations.push((
                    run.start_ms,
                    format!(
                        "timer {function}: the run of tick {tick} ({:.1}s) was past due with no fault and no busy run before it",
                        tick_at as f64 / 1000.0
                    ),
                ));
            }
            if let Some((next, _)) = list.get(i + 1) {
                let gap = **next - **tick;
                let busy = run
                    .end_ms
                    .is_some_and(|end| end + 1000 >= tick_at + TIMER_PERIOD_MS as u64);
                let next_at = run_ms(u64::try_from(**next).unwrap_or(0));
                if gap != TIMER_PERIOD_MS
                    && !(gap > TIMER_PERIOD_MS
                        && (run.past_due || busy || in_fault(tick_at, next_at)))
                {
                    violations.push((
                        tick_at,
                        format!(
                            "timer {function}: ticks {tick} and {next} are {gap} ms apart, not explained by a past-due run, a busy run or a fault"
                        ),
                    ));
                }
            }
        }
        if let (Some(end), Some((last, _))) = (end_ms, list.last()) {
            let last_at = run_ms(u64::try_from(**last).unwrap_or(0));
            if last_at + 20_000 < end {
                violations.push((
                    last_at,
                    format!(
                        "timer {function}: its last tick ran at {:.1}s, the run ended at {:.1}s",
                        last_at as f64 / 1000.0,
                        end as f64 / 1000.0
                    ),
                ));
            }
        }
        counts.push(format!(
            "{function}: {} ticks, {} past due, {} sent again",
            list.len(),
            list.iter().filter(|(_, r)| r.past_due).count(),
            sent_again
        ));
    }
    if counts.is_empty() {
        violations.push((0, "no timer run was recorded".into()));
    }
    verdict("timers", counts.join("; "), violations)
}

/// Every fault was undone and the cluster was healthy again afterwards: a fault
/// that never settled fails the run (it would otherwise leave the rest of the run
/// unchecked, every later failure excused by it).
pub fn faults_settled(records: &Records) -> Verdict {
    let violations = records
        .faults
        .iter()
        .filter(|f| f.settled_ms.is_none())
        .map(|f| {
            (
                f.start_ms,
                format!(
                    "fault `{}` at {:.1}s never settled ({})",
                    f.what,
                    f.start_ms as f64 / 1000.0,
                    if f.healed_ms.is_some() {
                        "undone, but the cluster was not healthy again"
                    } else {
                        "never undone"
                    }
                ),
            )
        })
        .collect();
    verdict(
        "faults settled",
        format!("{} faults", records.faults.len()),
        violations,
    )
}

/// A run that acknowledged nothing or served nothing proves nothing.
pub fn workload_ran(records: &Records) -> Verdict {
    let acked = records
        .writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Acked { .. }))
        .count();
    let served = records
        .requests
        .iter()
        .filter(|r| matches!(r.result, Ok(s) if (200..300).contains(&s)))
        .count();
    let mut violations = Vec::new();
    if acked == 0 {
        violations.push((0, "no write was acknowledged".to_string()));
    }
    if served == 0 {
        violations.push((0, "no request was served".to_string()));
    }
    verdict(
        "workload ran",
        format!(
            "{} writes ({acked} acknowledged), {} requests ({served} served)",
            records.writes.len(),
            records.requests.len()
        ),
        violations,
    )
}

/// The registers a write sets, with the value it leaves (`None`: deleted). Settings
/// and keys are registers (last writer wins); every setting write also sets
/// `CHAOS_LAST` to its tag.
pub fn effects(w: &crate::history::Write) -> Vec<(String, Option<String>)> {
    match &w.kind {
        WriteKind::Setting { key, value } => vec![
            (format!("setting {key}"), Some(value.clone())),
            ("setting CHAOS_LAST".into(), Some(w.tag.clone())),
        ],
        WriteKind::PutKey { name, value } => vec![(format!("key {name}"), Some(value.clone()))],
        WriteKind::DeleteKey { name } => vec![(format!("key {name}"), None)],
        WriteKind::Deploy { .. } => Vec::new(),
    }
}

fn register_value<'a>(state: &'a NodeState, register: &str) -> Option<&'a String> {
    match register.split_once(' ') {
        Some(("setting", k)) => state.settings.get(k),
        Some(("key", k)) => state.keys.get(k),
        _ => None,
    }
}

/// Every acknowledged write is in effect on every manager, unless a later write to
/// the same setting or key replaced it: per register, the value is the one of the
/// acknowledged write with the highest log index, or of a write whose outcome is
/// unknown and that may have been committed after it. Every acknowledged deploy's
/// version is there.
pub fn acknowledged_writes_present(
    records: &Records,
    states: &[NodeState],
    keep: usize,
) -> Verdict {
    let mut violations = Vec::new();
    // register -> (last acknowledged: index, value, write), unknown writes.
    type Last<'a> = Option<(u64, Option<String>, &'a crate::history::Write)>;
    type Unknown<'a> = Vec<(Option<String>, &'a crate::history::Write)>;
    let mut registers: BTreeMap<String, (Last, Unknown)> = BTreeMap::new();
    let mut checked = 0usize;
    for w in &records.writes {
        match &w.outcome {
            Outcome::Acked { index, .. } => {
                checked += 1;
                for (r, v) in effects(w) {
                    let entry = registers.entry(r).or_default();
                    if entry.0.as_ref().is_none_or(|(i, _, _)| *i < *index) {
                        entry.0 = Some((*index, v, w));
                    }
                }
            }
            Outcome::Unknown(_) => {
                for (r, v) in effects(w) {
                    registers.entry(r).or_default().1.push((v, w));
                }
            }
            // Checked too: it must not have taken effect.
            Outcome::Refused(_) => {
                for (r, _) in effects(w) {
                    registers.entry(r).or_default();
                }
            }
        }
    }
    for (register, (last, unknown)) in &registers {
        for s in states {
            let found = register_value(s, register);
            let ok = match last {
                Some((_, v, _)) if v.as_ref() == found => true,
                // A write with an unknown outcome, still in flight when (or sent
                // after) the last acknowledged one began, may have replaced it.
                Some((_, _, a)) => unknown
                    .iter()
                    .any(|(v, u)| v.as_ref() == found && u.end_ms >= a.start_ms),
                // Only unknown writes: any of them, or none.
                None => found.is_none() || unknown.iter().any(|(v, _)| v.as_ref() == found),
            };
            if !ok {
                let (at, expected) = match last {
                    Some((index, v, a)) => (
                        a.end_ms,
                        format!(
                            "{:?} from write {} (acknowledged at index {index} by {} at {:.1}s)",
                            v,
                            a.tag,
                            a.node,
                            a.end_ms as f64 / 1000.0
                        ),
                    ),
                    None => (0, "nothing (no write was acknowledged)".into()),
                };
                violations.push((
                    at,
                    format!("{}: {register} is {:?}, expected {expected}", s.node, found),
                ));
            }
        }
    }
    // Acknowledged deploys and their indices: a version may be gone only by
    // retention, when the app lists its `keep` versions and all it lists with a
    // known index are newer.
    let deploy_index: BTreeMap<&str, u64> = records
        .writes
        .iter()
        .filter_map(|w| match &w.outcome {
            Outcome::Acked {
                index,
                version: Some(v),
            } => Some((v.as_str(), *index)),
            _ => None,
        })
        .collect();
    let aged_out = |s: &NodeState, index: u64| {
        s.versions.len() >= keep
            && s.versions
                .iter()
                .filter_map(|v| deploy_index.get(v.as_str()))
                .all(|i| *i > index)
    };
    for w in &records.writes {
        if let (WriteKind::Deploy { .. }, Outcome::Acked { index, version }) = (&w.kind, &w.outcome)
        {
            let id = version.as_deref().unwrap_or_default();
            for s in states {
                if !s.versions.iter().any(|v| v == id) && !aged_out(s, *index) {
                    violations.push((
                        w.end_ms,
                        format!(
                            "{}: version {id} (deploy {} acknowledged at index {index}) is missing",
                            s.node, w.tag
                        ),
                    ));
                }
            }
        }
    }
    verdict(
        "acknowledged writes present on every manager",
        format!(
            "{checked} acknowledged writes over {} settings and keys (last writer wins), on {} managers",
            registers.len(),
            states.len()
        ),
        violations,
    )
}

/// Every manager holds the same ledger state (they applied the same log).
pub fn same_state_everywhere(states: &[NodeState]) -> Verdict {
    let mut violations = Vec::new();
    if let Some(first) = states.first() {
        for s in &states[1..] {
            let mut diff = Vec::new();
            if s.settings != first.settings {
                let a: BTreeSet<_> = first.settings.iter().collect();
                let b: BTreeSet<_> = s.settings.iter().collect();
                diff.push(format!(
                    "settings differ ({} only on {}, {} only on {})",
                    a.difference(&b).count(),
                    first.node,
                    b.difference(&a).count(),
                    s.node
                ));
            }
            if s.keys != first.keys {
                diff.push("keys differ".to_string());
            }
            if s.versions != first.versions {
                diff.push(format!(
                    "versions differ ({} on {}, {} on {})",
                    first.versions.len(),
                    first.node,
                    s.versions.len(),
                    s.node
                ));
            }
            if !diff.is_empty() {
                violations.push((
                    0,
                    format!("{} vs {}: {}", first.node, s.node, diff.join("; ")),
                ));
            }
        }
    }
    verdict(
        "same state on every manager",
        format!(
            "{} managers: {} settings, {} keys, {} versions",
            states.len(),
            states.first().map_or(0, |s| s.settings.len()),
            states.first().map_or(0, |s| s.keys.len()),
            states.first().map_or(0, |s| s.versions.len())
        ),
        violations,
    )
}

/// Acknowledged writes were committed in an order consistent with real time (one
/// acknowledged before another began has the lower log index; no two share one),
/// and the versions list is in commit order. (That each setting and key ends on its
/// last committed write is checked by [`acknowledged_writes_present`].)
pub fn commit_order(records: &Records, states: &[NodeState]) -> Verdict {
    let mut violations = Vec::new();
    let mut acked: Vec<(u64, u64, u64, &str)> = records
        .writes
        .iter()
        .filter_map(|w| match w.outcome {
            Outcome::Acked { index, .. } => Some((w.start_ms, w.end_ms, index, w.tag.as_str())),
            _ => None,
        })
        .collect();
    // Unique indices.
    let mut by_index: BTreeMap<u64, &str> = BTreeMap::new();
    for &(_, end, index, tag) in &acked {
        if let Some(other) = by_index.insert(index, tag) {
            violations.push((
                end,
                format!("writes {other} and {tag} were both acknowledged at index {index}"),
            ));
        }
    }
    // Real-time order: sorted by end, a running maximum of the indices of the
    // writes that ended before each start.
    acked.sort_by_key(|a| a.1);
    let mut ends: Vec<(u64, u64, &str)> = Vec::new(); // (end, max index so far, its tag)
    for &(_, end, index, tag) in &acked {
        let (max, max_tag) = match ends.last() {
            Some(&(_, m, t)) if m >= index => (m, t),
            _ => (index, tag),
        };
        ends.push((end, max, max_tag));
    }
    for &(start, end, index, tag) in &acked {
        // The last write that ended strictly before this one started.
        let before = ends.partition_point(|e| e.0 < start);
        if before > 0 {
            let (_, max, max_tag) = ends[before - 1];
            if max >= index {
                violations.push((
                    end,
                    format!(
                        "write {tag} (index {index}) began after {max_tag} (index {max}) was acknowledged, yet was committed before it"
                    ),
                ));
            }
        }
    }
    // Versions, newest first, in decreasing index order.
    let deploy_index: BTreeMap<&str, u64> = records
        .writes
        .iter()
        .filter_map(|w| match &w.outcome {
            Outcome::Acked {
                index,
                version: Some(v),
            } => Some((v.as_str(), *index)),
            _ => None,
        })
        .collect();
    for s in states {
        let indices: Vec<(u64, &str)> = s
            .versions
            .iter()
            .filter_map(|v| deploy_index.get(v.as_str()).map(|i| (*i, v.as_str())))
            .collect();
        for pair in indices.windows(2) {
            if pair[0].0 < pair[1].0 {
                violations.push((
                    0,
                    format!(
                        "{}: version {} (index {}) is listed as newer than {} (index {})",
                        s.node, pair[0].1, pair[0].0, pair[1].1, pair[1].0
                    ),
                ));
            }
        }
    }
    verdict(
        "commit order",
        format!(
            "{} acknowledged writes in real-time order, {} versions in order",
            acked.len(),
            deploy_index.len()
        ),
        violations,
    )
}

/// No write applied twice. Every setting write puts a value of its own in a
/// register (and its tag in `CHAOS_LAST`), and writers send a write whose answer
/// was lost again, in their session, to the next member. Were one applied twice,
/// its value would come back after a later write replaced it: so in each
/// manager's observed history of a register, a value never reappears once
/// another took its place.
pub fn applied_once(records: &Records) -> Verdict {
    let mut violations = Vec::new();
    // (node, key) -> (current value, values replaced)
    let mut registers: BTreeMap<(&str, &str), (&str, std::collections::HashSet<&str>)> =
        BTreeMap::new();
    let mut seen = records.ledger_seen.iter().collect::<Vec<_>>();
    seen.sort_by_key(|s| s.at_ms);
    for s in &seen {
        let register = registers
            .entry((s.node.as_str(), s.key.as_str()))
            .or_insert_with(|| (s.value.as_str(), Default::default()));
        if register.0 == s.value {
            continue;
        }
        if register.1.contains(s.value.as_str()) {
            violations.push((
                s.at_ms,
                format!(
                    "{}: {} went back to `{}` (replaced before, by then `{}`): a write applied twice",
                    s.node, s.key, s.value, register.0
                ),
            ));
        }
        let old = register.0;
        register.1.insert(old);
        register.0 = s.value.as_str();
    }
    let retried = records.writes.iter().filter(|w| w.attempts > 1).count();
    let acked_after_retry = records
        .writes
        .iter()
        .filter(|w| w.attempts > 1 && matches!(w.outcome, Outcome::Acked { .. }))
        .count();
    verdict(
        "no write applied twice",
        format!(
            "{} register changes seen on the managers; {retried} writes sent to more than one \
             member ({acked_after_retry} of them acknowledged)",
            seen.len()
        ),
        violations,
    )
}

/// Leaders only move forward. openraft (without its `single-term-leader` feature,
/// as Strom runs it) identifies a leader by `(term, node id)`: a second leader may be
/// elected in the same term, with a higher node id, as a higher term would (a node
/// that voted for `(15, 3)` may later vote for `(15, 5)`, never back). So per node,
/// the leader it leads or follows, as `(term, leader id)`, never goes backwards: a
/// node seen following or leading an older leader after a newer one would mean a
/// vote went back (lost on a restart, or granted twice). Several leaders in one term
/// are listed in the summary.
pub fn one_leader_per_term(records: &Records) -> Verdict {
    let mut last: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new(); // node -> (term, leader, at)
    let mut per_term: BTreeMap<u64, std::collections::BTreeSet<u64>> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut seen: Vec<&crate::history::LeaderSeen> = records.leaders.iter().collect();
    seen.sort_by_key(|s| s.at_ms);
    for s in seen {
        let leader = if s.state == "leader" {
            s.node_id
        } else {
            s.leader_id
        };
        if leader == 0 {
            continue;
        }
        per_term.entry(s.term).or_default().insert(leader);
        let now = (s.term, leader);
        if let Some(&(term, prev, at)) = last.get(&s.node_id) {
            if now < (term, prev) {
                violations.push((
                    s.at_ms,
                    format!(
                        "{} went back from leader {prev} of term {term} (seen at {:.1}s) to leader {leader} of term {} (at {:.1}s)",
                        s.node,
                        at as f64 / 1000.0,
                        s.term,
                        s.at_ms as f64 / 1000.0
                    ),
                ));
            }
        }
        last.insert(s.node_id, (s.term, leader, s.at_ms));
    }
    let shared: Vec<String> = per_term
        .iter()
        .filter(|(_, l)| l.len() > 1)
        .map(|(t, l)| {
            format!(
                "term {t}: {}",
                l.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" then ")
            )
        })
        .collect();
    verdict(
        "leaders only move forward",
        format!(
            "{} observations over {} terms{}",
            records.leaders.len(),
            per_term.len(),
            if shared.is_empty() {
                String::new()
            } else {
                format!(
                    " (several leaders, in node-id order: {})",
                    shared.join("; ")
                )
            }
        ),
        violations,
    )
}

/// Why a failed request is excused, if it is.
pub fn excuse(records: &Records, r: &Request, workers: &[String]) -> Option<String> {
    // A fault excuses what overlaps it until it settled; one that never settled
    // only up to when it was undone (and fails the run by itself).
    let overlapping = records.faults.iter().filter(|f| {
        let end = f.settled_ms.or(f.healed_ms).unwrap_or(f.start_ms);
        f.start_ms <= r.end_ms && end >= r.start_ms
    });
    let mut impaired_workers: BTreeSet<&str> = BTreeSet::new();
    for f in overlapping {
        if f.impaired.contains(&r.node) {
            return Some(format!("its gateway {} was impaired ({})", r.node, f.what));
        }
        impaired_workers.extend(f.impaired.iter().map(String::as_str));
    }
    if !workers.is_empty()
        && workers
            .iter()
            .all(|w| impaired_workers.contains(w.as_str()))
    {
        return Some("no worker was reachable".into());
    }
    None
}

/// Requests to a healthy gateway while a worker was reachable all succeed; the
/// others are counted by reason.
pub fn data_plane(records: &Records, workers: &[String]) -> Verdict {
    let mut excused: BTreeMap<String, usize> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut ok = 0usize;
    for r in &records.requests {
        if matches!(r.result, Ok(s) if (200..300).contains(&s)) {
            ok += 1;
            continue;
        }
        match excuse(records, r, workers) {
            Some(why) => {
                let reason = why.split(" (").next().unwrap_or(&why).to_string();
                let reason = if reason.starts_with("its gateway") {
                    "gateway node impaired".to_string()
                } else {
                    reason
                };
                *excused.entry(reason).or_default() += 1;
            }
            None => violations.push((
                r.start_ms,
                format!(
                    "request by caller {} to {} at {:.3}s–{:.3}s failed: {}",
                    r.client,
                    r.node,
                    r.start_ms as f64 / 1000.0,
                    r.end_ms as f64 / 1000.0,
                    match &r.result {
                        Ok(s) => format!("HTTP {s}"),
                        Err(e) => e.clone(),
                    }
                ),
            )),
        }
    }
    let excused_text = if excused.is_empty() {
        "none excused".to_string()
    } else {
        excused
            .iter()
            .map(|(k, v)| format!("{v} excused: {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    verdict(
        "data plane",
        format!(
            "{} requests: {ok} succeeded, {} failed where they must not, {excused_text}",
            records.requests.len(),
            violations.len()
        ),
        violations,
    )
}

/// The history around `at_ms` (± `window_ms`): faults, notes, and what the writes
/// and requests did there.
pub fn context(records: &Records, at_ms: u64, window_ms: u64) -> String {
    let from = at_ms.saturating_sub(window_ms);
    let to = at_ms + window_ms;
    let mut lines: Vec<(u64, String)> = Vec::new();
    for f in &records.faults {
        let end = f.settled_ms.unwrap_or(u64::MAX);
        if f.start_ms <= to && end >= from {
            lines.push((
                f.start_ms,
                format!(
                    "fault {} (impaired: {}; healed {}; settled {})",
                    f.what,
                    f.impaired.join(","),
                    f.healed_ms
                        .map_or("never".into(), |t| format!("{:.1}s", t as f64 / 1000.0)),
                    f.settled_ms
                        .map_or("never".into(), |t| format!("{:.1}s", t as f64 / 1000.0)),
                ),
            ));
        }
    }
    for (t, n) in &records.notes {
        if (from..=to).contains(t) {
            lines.push((*t, n.clone()));
        }
    }
    // Acknowledged writes as a count; the others one by one.
    let mut acked_here = 0usize;
    for w in &records.writes {
        if (from..=to).contains(&w.end_ms) {
            if matches!(w.outcome, Outcome::Acked { .. }) {
                acked_here += 1;
                continue;
            }
            lines.push((
                w.end_ms,
                format!(
                    "write {} {:?} via {}: {:?}",
                    w.tag, w.kind, w.node, w.outcome
                ),
            ));
        }
    }
    lines.push((
        from,
        format!("{acked_here} writes acknowledged in this window"),
    ));
    let failed: Vec<&Request> = records
        .requests
        .iter()
        .filter(|r| (from..=to).contains(&r.end_ms) && !matches!(r.result, Ok(s) if s < 300))
        .collect();
    for r in failed.iter().take(20) {
        lines.push((
            r.end_ms,
            format!("request to {} failed: {:?}", r.node, r.result),
        ));
    }
    // Each node's (state, term) when it changes.
    let mut last: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for s in &records.leaders {
        let now = (s.state.as_str(), s.term);
        if last.insert(s.node.as_str(), now) != Some(now) && (from..=to).contains(&s.at_ms) {
            lines.push((
                s.at_ms,
                format!(
                    "{} is {} in term {} (leader {})",
                    s.node, s.state, s.term, s.leader_id
                ),
            ));
        }
    }
    lines.sort_by_key(|l| l.0);
    lines.dedup();
    lines
        .iter()
        .map(|(t, l)| format!("  [{:>8.3}s] {l}", *t as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Fault, LeaderSeen, Write};

    fn write(tag: &str, kind: WriteKind, start: u64, end: u64, outcome: Outcome) -> Write {
        Write {
            client: 0,
            tag: tag.into(),
            kind,
            node: "m1".into(),
            start_ms: start,
            end_ms: end,
            outcome,
            attempts: 1,
        }
    }

    fn setting(tag: &str, start: u64, end: u64, outcome: Outcome) -> Write {
        write(
            tag,
            WriteKind::Setting {
                key: format!("K_{tag}"),
                value: "v".into(),
            },
            start,
            end,
            outcome,
        )
    }

    fn acked(index: u64) -> Outcome {
        Outcome::Acked {
            index,
            version: None,
        }
    }

    fn state(node: &str, settings: &[(&str, &str)]) -> NodeState {
        NodeState {
            node: node.into(),
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn set(tag: &str, key: &str, value: &str, start: u64, end: u64, outcome: Outcome) -> Write {
        write(
            tag,
            WriteKind::Setting {
                key: key.into(),
                value: value.into(),
            },
            start,
            end,
            outcome,
        )
    }

    #[test]
    fn a_lost_acknowledged_write_is_reported_with_the_node() {
        let records = Records {
            writes: vec![
                setting("a", 0, 10, acked(5)),
                setting("b", 20, 30, acked(6)),
                setting("c", 40, 50, Outcome::Unknown("timeout".into())),
                setting("x", 40, 50, Outcome::Refused("bad".into())),
            ],
            ..Default::default()
        };
        let full = state("m1", &[("K_a", "v"), ("K_b", "v"), ("CHAOS_LAST", "b")]);
        let lost = state("m2", &[("K_a", "v"), ("CHAOS_LAST", "b")]);
        let v = acknowledged_writes_present(&records, &[full.clone(), lost.clone()], 100);
        assert_eq!(v.violations.len(), 1, "{v:?}");
        assert!(
            v.violations[0].1.starts_with("m2: setting K_b is None"),
            "{v:?}"
        );
        assert!(v.violations[0].1.contains("from write b"), "{v:?}");
        assert!(acknowledged_writes_present(&records, &[full.clone(), full.clone()], 100).passed());
        // A write with an unknown outcome may or may not have taken effect.
        let mut with_c = full.clone();
        with_c.settings.insert("K_c".into(), "v".into());
        with_c.settings.insert("CHAOS_LAST".into(), "c".into());
        assert!(acknowledged_writes_present(&records, &[full.clone(), with_c], 100).passed());
        // A refused one must not have.
        let mut with_x = full.clone();
        with_x.settings.insert("K_x".into(), "v".into());
        assert!(!acknowledged_writes_present(&records, &[with_x], 100).passed());
        assert!(!same_state_everywhere(&[state("m1", &[("x", "1")]), lost]).passed());
    }

    #[test]
    fn a_setting_ends_on_its_last_acknowledged_write_or_a_later_unknown_one() {
        let mut records = Records {
            writes: vec![
                set("a", "K", "1", 0, 10, acked(5)),
                set("b", "K", "2", 20, 30, acked(9)),
            ],
            ..Default::default()
        };
        let final_state = |k: &str, last: &str| state("m1", &[("K", k), ("CHAOS_LAST", last)]);
        assert!(acknowledged_writes_present(&records, &[final_state("2", "b")], 100).passed());
        // An older value won: a lost update.
        let v = acknowledged_writes_present(&records, &[final_state("1", "a")], 100);
        assert_eq!(v.violations.len(), 2, "{v:?}");
        assert!(
            v.violations.iter().any(|x| x
                .1
                .contains("K is Some(\"1\"), expected Some(\"2\") from write b")),
            "{v:?}"
        );
        // A write with an unknown outcome still in flight when b began may have won…
        records
            .writes
            .push(set("c", "K", "3", 15, 40, Outcome::Unknown("cut".into())));
        assert!(acknowledged_writes_present(&records, &[final_state("3", "c")], 100).passed());
        // …but not one that had ended before b began.
        records.writes[2].end_ms = 18;
        assert!(!acknowledged_writes_present(&records, &[final_state("3", "c")], 100).passed());
    }

    #[test]
    fn keys_deleted_stay_deleted_and_put_keys_stay_put() {
        let put = |name: &str, index| {
            write(
                name,
                WriteKind::PutKey {
                    name: name.into(),
                    value: format!("val-{name}"),
                },
                0,
                1,
                acked(index),
            )
        };
        let records = Records {
            writes: vec![
                put("k1", 1),
                put("k2", 2),
                write(
                    "d",
                    WriteKind::DeleteKey { name: "k1".into() },
                    2,
                    3,
                    acked(3),
                ),
            ],
            ..Default::default()
        };
        let mut good = NodeState {
            node: "m1".into(),
            ..Default::default()
        };
        good.keys.insert("k2".into(), "val-k2".into());
        assert!(acknowledged_writes_present(&records, std::slice::from_ref(&good), 100).passed());
        let mut back = good.clone();
        back.keys.insert("k1".into(), "val-k1".into());
        let v = acknowledged_writes_present(&records, &[back], 100);
        assert!(
            v.violations[0]
                .1
                .contains("key k1 is Some(\"val-k1\"), expected None"),
            "{v:?}"
        );
        let v = acknowledged_writes_present(&records, &[NodeState::default()], 100);
        assert!(v.violations[0].1.contains("key k2 is None"), "{v:?}");
    }

    #[test]
    fn commit_order_catches_stale_indices_and_duplicates() {
        let ok = Records {
            writes: vec![
                setting("a", 0, 10, acked(5)),
                setting("b", 5, 15, acked(4)), // concurrent with a: either order
                setting("c", 20, 30, acked(9)),
            ],
            ..Default::default()
        };
        assert!(commit_order(&ok, &[]).passed());
        let stale = Records {
            writes: vec![
                setting("a", 0, 10, acked(5)),
                setting("b", 20, 30, acked(3)),
            ],
            ..Default::default()
        };
        let v = commit_order(&stale, &[]);
        assert!(
            v.violations.iter().any(|x| x.1.contains("began after a")),
            "{v:?}"
        );
        let dup = Records {
            writes: vec![setting("a", 0, 10, acked(5)), setting("b", 0, 10, acked(5))],
            ..Default::default()
        };
        assert!(!commit_order(&dup, &[]).passed());
    }

    #[test]
    fn leaders_that_go_back_are_reported_and_a_second_leader_of_a_term_is_not() {
        let seen = |node_id, term, state: &str, leader_id, at_ms| LeaderSeen {
            at_ms,
            node: format!("m{node_id}"),
            node_id,
            term,
            state: state.into(),
            leader_id,
        };
        let mut records = Records {
            leaders: vec![
                seen(1, 3, "leader", 1, 0),
                seen(2, 3, "follower", 1, 0),
                seen(2, 4, "leader", 2, 100),
                seen(3, 4, "follower", 2, 100),
                seen(3, 4, "follower", 0, 120),
                // openraft: (4, 3) supersedes (4, 2) in the same term.
                seen(3, 4, "leader", 3, 200),
                seen(2, 4, "follower", 3, 250),
            ],
            ..Default::default()
        };
        let v = one_leader_per_term(&records);
        assert!(v.passed(), "{v:?}");
        assert!(v.summary.contains("term 4: 2 then 3"), "{v:?}");
        // A node seen following an older leader after a newer one: a vote went back.
        records.leaders.push(seen(2, 4, "follower", 2, 300));
        let v = one_leader_per_term(&records);
        assert!(!v.passed());
        assert!(
            v.violations[0]
                .1
                .contains("m2 went back from leader 3 of term 4"),
            "{v:?}"
        );
    }

    #[test]
    fn failed_requests_count_unless_their_gateway_or_every_worker_was_impaired() {
        let request = |node: &str, start, result| Request {
            client: 0,
            node: node.into(),
            start_ms: start,
            end_ms: start + 5,
            result,
        };
        let fault = |what: &str, impaired: &[&str], start, settled| Fault {
            what: what.into(),
            impaired: impaired.iter().map(|s| s.to_string()).collect(),
            start_ms: start,
            healed_ms: Some(settled),
            settled_ms: Some(settled),
        };
        let workers = vec!["w1".to_string(), "w2".to_string()];
        let records = Records {
            requests: vec![
                request("m1", 0, Ok(200)),
                request("m2", 100, Err("refused".into())), // m2 killed
                request("m1", 300, Ok(502)),               // both workers down
                request("m1", 600, Ok(503)),               // nothing excuses it
            ],
            faults: vec![
                fault("kill m2", &["m2"], 90, 200),
                fault("cut w1", &["w1"], 250, 400),
                fault("kill w2", &["w2"], 280, 350),
            ],
            ..Default::default()
        };
        let v = data_plane(&records, &workers);
        assert_eq!(v.violations.len(), 1, "{v:?}");
        assert!(v.violations[0].1.contains("HTTP 503"), "{v:?}");
        assert!(
            v.summary.contains("1 excused: gateway node impaired"),
            "{v:?}"
        );
        assert!(
            v.summary.contains("1 excused: no worker was reachable"),
            "{v:?}"
        );
        let around = context(&records, 300, 100);
        assert!(around.contains("fault cut w1"), "{around}");
        assert!(around.contains("request to m1 failed"), "{around}");
    }

    #[test]
    fn an_acknowledged_deploy_may_be_gone_only_by_retention() {
        let deploy = |n: u64| {
            write(
                &format!("v{n}"),
                WriteKind::Deploy {
                    marker: format!("m{n}"),
                },
                n * 10,
                n * 10 + 5,
                Outcome::Acked {
                    index: n,
                    version: Some(format!("v{n}")),
                },
            )
        };
        let records = Records {
            writes: (1..=4).map(deploy).collect(),
            ..Default::default()
        };
        let listing = |versions: &[&str]| NodeState {
            node: "m1".into(),
            versions: versions.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        };
        // Keeping 2: the two newest are listed, the older ones aged out.
        assert!(acknowledged_writes_present(&records, &[listing(&["v4", "v3"])], 2).passed());
        // A newer one missing is lost, not aged out.
        let v = acknowledged_writes_present(&records, &[listing(&["v4", "v2"])], 2);
        assert!(v.violations[0].1.contains("version v3"), "{v:?}");
        // Fewer listed than kept: nothing may be missing.
        let v = acknowledged_writes_present(&records, &[listing(&["v4"])], 2);
        assert!(!v.passed());
    }

    #[test]
    fn a_fault_that_never_settled_fails_the_run_and_excuses_nothing_after_it() {
        let records = Records {
            requests: vec![Request {
                client: 0,
                node: "m2".into(),
                start_ms: 5_000,
                end_ms: 5_005,
                result: Err("refused".into()),
            }],
            faults: vec![Fault {
                what: "kill m2".into(),
                impaired: vec!["m2".into()],
                start_ms: 100,
                healed_ms: Some(1_000),
                settled_ms: None,
            }],
            ..Default::default()
        };
        let v = faults_settled(&records);
        assert!(!v.passed());
        assert!(v.violations[0].1.contains("never settled"), "{v:?}");
        let v = data_plane(&records, &["w1".to_string()]);
        assert_eq!(
            v.violations.len(),
            1,
            "not excused after it was undone: {v:?}"
        );
    }

    #[test]
    fn a_pause_the_engine_refused_impairs_nothing() {
        let history = crate::history::History::new();
        let f = history.fault("pause worker: w1", vec!["w1".into()]);
        history.skipped(f, "the engine could not freeze it");
        let records = history.lock();
        assert!(records.faults[0].impaired.is_empty());
        assert!(
            records.faults[0].what.contains("skipped"),
            "{:?}",
            records.faults[0]
        );
        assert!(faults_settled(&records).passed());
        let failed = Request {
            client: 0,
            node: "w1".into(),
            start_ms: records.faults[0].start_ms,
            end_ms: records.faults[0].start_ms + 1,
            result: Err("refused".into()),
        };
        assert_eq!(excuse(&records, &failed, &["w1".to_string()]), None);
    }

    #[test]
    fn an_empty_run_fails() {
        assert!(!workload_ran(&Records::default()).passed());
    }

    /// A timer run of tick `tick_s` (seconds of the run) from `start_s` to `end_s`.
    fn run(
        id: &str,
        tick_s: f64,
        start_s: f64,
        end_s: Option<f64>,
        past_due: bool,
    ) -> Vec<TimerEvent> {
        let unix = |s: f64| 1_000_000 + (s * 1000.0) as u64;
        let mut events = vec![TimerEvent {
            start: true,
            function: "tick".into(),
            invocation_id: id.into(),
            pid: 7,
            at_unix_ms: unix(start_s),
            tick_ms: unix(tick_s) as i64,
            past_due,
        }];
        if let Some(end) = end_s {
            events.push(TimerEvent {
                start: false,
                at_unix_ms: unix(end),
                tick_ms: 0,
                past_due: false,
                ..events[0].clone()
            });
        }
        events
    }

    fn timer_records(runs: Vec<Vec<TimerEvent>>, faults: Vec<Fault>, end_s: u64) -> Records {
        Records {
            timer_events: runs.into_iter().flatten().collect(),
            started_unix_ms: 1_000_000,
            faults,
            notes: vec![(end_s * 1000, "workload stopped".into())],
            ..Records::default()
        }
    }

    fn regular(n: usize) -> Vec<Vec<TimerEvent>> {
        (0..n)
            .map(|i| {
                let t = 2.0 * i as f64;
                run(&format!("r{i}"), t, t + 0.01, Some(t + 0.3), false)
            })
            .collect()
    }

    #[test]
    fn timer_runs_every_period_once_pass() {
        let v = timers(&timer_records(regular(10), vec![], 20));
        assert!(v.passed(), "{:?}", v.violations);
        assert!(v.summary.contains("tick: 10 ticks"), "{}", v.summary);
        // No runs recorded at all fails.
        assert!(!timers(&timer_records(vec![], vec![], 20)).passed());
    }

    #[test]
    fn overlapping_runs_two_ids_for_a_tick_and_unexplained_gaps_fail() {
        let mut runs = regular(5);
        runs.push(run("late", 10.0, 10.0, Some(13.0), false));
        runs.push(run("over", 12.0, 12.5, Some(12.8), false));
        let v = timers(&timer_records(runs, vec![], 14));
        assert!(
            v.violations.iter().any(|(_, t)| t.contains("still ran")),
            "{:?}",
            v.violations
        );

        let mut runs = regular(5);
        runs.push(run("dup", 8.0, 8.5, Some(8.7), false));
        let v = timers(&timer_records(runs, vec![], 10));
        assert!(
            v.violations
                .iter()
                .any(|(_, t)| t.contains("two invocation ids")),
            "{:?}",
            v.violations
        );

        // Ticks 10 and 12 missing, without a reason.
        let mut runs = regular(5);
        runs.push(run("after", 14.0, 14.0, Some(14.2), false));
        let v = timers(&timer_records(runs, vec![], 16));
        assert!(
            v.violations
                .iter()
                .any(|(_, t)| t.contains("4000 ms apart") || t.contains("6000 ms apart")),
            "{:?}",
            v.violations
        );

        // The timer stopped long before the end.
        let v = timers(&timer_records(regular(5), vec![], 60));
        assert!(
            v.violations.iter().any(|(_, t)| t.contains("last tick")),
            "{:?}",
            v.violations
        );
    }

    #[test]
    fn an_outage_collapses_into_one_past_due_run_and_a_lost_run_is_sent_again_with_its_id() {
        let mut runs = regular(5);
        // A leader was killed at 9 s; tick 10 ran past due at 16 s, 12 and 14 collapsed.
        runs.push(run("pd", 10.0, 16.0, Some(16.2), true));
        runs.push(run("n", 18.0, 18.0, Some(18.3), false));
        // Tick 20's worker died mid-run; it was sent again with the same id.
        runs.push(run("lost", 20.0, 20.0, None, false));
        runs.push(run("lost", 20.0, 23.0, Some(23.2), false));
        runs.push(run("z", 24.0, 24.0, Some(24.1), false));
        let kill = Fault {
            what: "kill leader".into(),
            impaired: vec![],
            start_ms: 9_000,
            healed_ms: Some(12_000),
            settled_ms: Some(14_000),
        };
        let v = timers(&timer_records(runs.clone(), vec![kill], 26));
        assert!(v.passed(), "{:?}", v.violations);
        assert!(
            v.summary.contains("1 past due, 1 sent again"),
            "{}",
            v.summary
        );
        // Without the fault the past-due run and its gap are unexplained.
        let v = timers(&timer_records(runs, vec![], 26));
        assert!(
            v.violations
                .iter()
                .any(|(_, t)| t.contains("past due with no fault")),
            "{:?}",
            v.violations
        );
    }

    #[test]
    fn a_run_longer_than_its_period_makes_the_next_ticks_wait() {
        // 3 s runs every 2 s: tick 2 runs when tick 0's run ends; tick 4 waits for
        // it and runs past due, tick 6 collapsed into it.
        let runs = vec![
            run("a", 0.0, 0.0, Some(3.0), false),
            run("b", 2.0, 3.0, Some(6.0), false),
            run("c", 4.0, 6.0, Some(9.0), true),
            run("d", 8.0, 9.0, Some(12.0), false),
        ];
        let v = timers(&timer_records(runs, vec![], 14));
        assert!(v.passed(), "{:?}", v.violations);
    }

    #[test]
    fn messages_lost_duplicated_without_redelivery_or_wrongly_poisoned_fail() {
        use crate::messages::{Handled, MessageRecords, Published};
        let p = |id, failing, confirmed| Published {
            id,
            failing,
            confirmed,
            at_ms: id * 50,
        };
        let h = |id, redelivered, at_ms| Handled {
            id,
            redelivered,
            retry: 0,
            at_ms,
        };
        let run = |m: MessageRecords| {
            messages(&Records {
                messages: Some(m),
                ..Records::default()
            })
        };
        // All handled (1 twice: its second delivery was a redelivery), 2
        // poisoned, 3 unconfirmed and never seen: passes.
        let good = MessageRecords {
            published: vec![
                p(0, false, true),
                p(1, false, true),
                p(2, true, true),
                p(3, false, false),
            ],
            handled: vec![h(0, false, 10), h(1, true, 30), h(1, false, 20)],
            poisoned: vec![(2, "about to fail".into())],
            left: 0,
        };
        let v = run(good.clone());
        assert!(v.passed(), "{:?}", v.violations);
        assert!(
            v.summary
                .contains("1 again after a redelivery, 0 in a retry"),
            "{}",
            v.summary
        );
        // A retry of the same delivery (its first output not confirmed) explains
        // a second handling too.
        let mut retried = good.clone();
        retried.handled.push(Handled {
            id: 0,
            redelivered: false,
            retry: 1,
            at_ms: 50,
        });
        let v = run(retried);
        assert!(v.passed(), "{:?}", v.violations);
        assert!(v.summary.contains("1 in a retry"), "{}", v.summary);
        // Lost: 0 never handled.
        let mut lost = good.clone();
        lost.handled.retain(|x| x.id != 0);
        let v = run(lost);
        assert_eq!(v.violations.len(), 1);
        assert!(
            v.violations[0].1.contains("message 0 (confirmed"),
            "{:?}",
            v.violations
        );
        // Handled twice, both first deliveries.
        let mut twice = good.clone();
        twice.handled.push(h(0, false, 40));
        let v = run(twice);
        assert!(
            v.violations[0]
                .1
                .contains("message 0 was handled 2 times, 2 of them on the first attempt"),
            "{:?}",
            v.violations
        );
        // The failing one handled; a good one poisoned; something left.
        let mut wrong = good.clone();
        wrong.handled.push(h(2, false, 40));
        wrong.poisoned = vec![(0, "boom".into())];
        wrong.left = 3;
        let v = run(wrong);
        let all: Vec<&str> = v.violations.iter().map(|(_, t)| t.as_str()).collect();
        assert!(
            all.iter()
                .any(|t| t.contains("message 2 (asks to fail")
                    && t.contains("not in the poison queue")),
            "{all:?}"
        );
        assert!(
            all.iter()
                .any(|t| t.contains("message 2 asks the handler to fail, yet")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|t| t.contains(
                "message 0 is in the poison queue but did not ask to fail (its error: boom)"
            )),
            "{all:?}"
        );
        assert!(
            all.iter().any(|t| t.contains("3 message(s) left")),
            "{all:?}"
        );
        // No broker: nothing to check, said so.
        let v = messages(&Records::default());
        assert!(v.passed() && v.summary.contains("not run"));
    }

    #[test]
    fn a_value_that_comes_back_is_a_write_applied_twice() {
        let seen = |at_ms, node: &str, value: &str| crate::history::LedgerSeen {
            at_ms,
            node: node.into(),
            key: "CHAOS_C0_1".into(),
            value: value.into(),
        };
        let mut records = Records {
            ledger_seen: vec![
                seen(1, "m1", "a"),
                seen(2, "m1", "b"),
                seen(2, "m2", "a"),
                seen(3, "m2", "b"),
                seen(4, "m1", "c"),
            ],
            ..Records::default()
        };
        assert!(applied_once(&records).passed());
        // `a` again after `b` replaced it on m2.
        records.ledger_seen.push(seen(5, "m2", "a"));
        let v = applied_once(&records);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0]
            .1
            .contains("m2: CHAOS_C0_1 went back to `a`"));
    }
}
