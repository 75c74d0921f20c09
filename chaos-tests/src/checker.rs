//! The checks a chaos run ends with, over its [`Records`] and the state every
//! manager holds once the faults are healed. Pure functions: unit-tested below
//! with hand-made histories.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Outcome, Records, Request, WriteKind};

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
        one_leader_per_term(records),
        faults_settled(records),
        data_plane(records, workers),
    ]
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
}
