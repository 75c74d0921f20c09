//! What docs/ gives operators for metrics stays true: every exported metric is
//! documented (and only those), the alert rules pass `promtool check rules`, and
//! the rules and the Grafana dashboard ask only for metrics Strom exports.

use std::collections::BTreeSet;
use std::path::PathBuf;

use strom_control_plane::metrics::{Kind, CATALOG};

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// The `strom_…` names in `text`, with histogram series suffixes taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bstrom_[a-z_]+\b").unwrap();
    re.find_iter(text)
        .map(|m| {
            let name = m.as_str();
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if CATALOG
                        .iter()
                        .any(|d| d.name == base && d.kind == Kind::Histogram)
                    {
                        return base.to_string();
                    }
                }
            }
            name.to_string()
        })
        .collect()
}

/// Every name in `used` is an exported metric (`who` uses them).
fn all_exported(used: &BTreeSet<String>, who: &str) {
    let exported = catalog();
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "{who} unexported metrics: {unknown:?}");
}

fn catalog() -> BTreeSet<String> {
    CATALOG.iter().map(|d| d.name.to_string()).collect()
}

#[test]
fn every_metric_is_documented_and_nothing_else() {
    let doc = std::fs::read_to_string(docs().join("observability.md")).unwrap();
    let table: String = doc
        .lines()
        .filter(|l| l.starts_with("| `strom_"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(metric_names(&table), catalog());
    for d in CATALOG {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", d.name)))
            .unwrap();
        let kind = format!("{:?}", d.kind).to_lowercase();
        assert!(row.contains(&format!("| {kind} |")), "{row}");
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_ask_for_exported_metrics() {
    let rules = docs().join("prometheus/strom-alerts.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let used = metric_names(&text);
    all_exported(&used, "rules use");
    for alert in [
        "StromNoLeader",
        "StromWorkerDown",
        "StromAppCrashLooping",
        "StromTimerLate",
        "StromCheckpointOld",
    ] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert}");
    }
    if let Some(out) =
        strom_testkit::prometheus::promtool(&["check", "rules", rules.to_str().unwrap()], b"")
            .unwrap()
    {
        assert!(out.contains("SUCCESS"), "{out}");
    }
    // The rules' own unit tests: each alert fires when it should and not before.
    let tests = docs().join("prometheus/strom-alerts.test.yml");
    if let Some(out) =
        strom_testkit::prometheus::promtool(&["test", "rules", tests.to_str().unwrap()], b"")
            .unwrap()
    {
        assert!(out.contains("SUCCESS"), "{out}");
    }
    let config = docs().join("prometheus/prometheus.yml");
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains("strom-alerts.yml") && text.contains("credentials_file"));
}

#[test]
fn the_dashboard_asks_for_exported_metrics_only() {
    let text = std::fs::read_to_string(docs().join("grafana/strom-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut exprs = String::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let used = metric_names(&exprs);
    all_exported(&used, "the dashboard uses");
    // The metrics an operator looks at first are on it.
    for name in [
        "strom_invocations_total",
        "strom_invocation_duration_seconds",
        "strom_raft_is_leader",
        "strom_workers",
        "strom_checkpoint_age_seconds",
    ] {
        assert!(used.contains(name), "{name}");
    }
}
