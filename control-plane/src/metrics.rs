//! Prometheus metrics (issue 18): `GET /metrics` on the control port and on the
//! function port of every node, in Prometheus' text exposition format 0.0.4
//! (what every Prometheus version and `promtool check metrics` read).
//!
//! A process is one node, so there is one process-wide recorder: every crate
//! records through the `metrics` facade (`metrics::counter!(…)`), [`install`]
//! makes the exporter that recorder when `strom` starts, and both ports render it.
//! Hot paths keep the handles they record with (the gateway's invocation
//! counters live in its recorder task, off the request path). [`CATALOG`] names
//! every metric with its type and meaning; `docs/observability.md` lists the same
//! (a test keeps the two equal). Labels are bounded: app, function, trigger,
//! status, state, outcome, HTTP code and worker id — never an invocation or
//! instance id. Values that are facts of a member's state (Raft term and indexes,
//! workers by state, the checkpoint's age) are computed when scraped
//! ([`on_scrape`]), so they cost nothing between scrapes.
//!
//! Reading needs a credential ([`authorize`]): `Authorization: Bearer` with the
//! cluster's read-only metrics token (derived from the join token, so every node
//! knows it without replication; each node keeps it in `metrics.token`, 0600), or
//! the admin token (where the node can check it), or another node's proof or
//! certificate. In memory only: counters start at zero with the process.

use std::sync::{OnceLock, RwLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use subtle::ConstantTimeEq;
use tonic::codegen::http::{header, HeaderMap, HeaderValue, StatusCode};

use crate::internal_auth::ClusterSecret;

/// Where both ports serve the metrics.
pub const PATH: &str = "/metrics";
/// The read-only token each node writes to its data dir.
pub const TOKEN_FILE: &str = "metrics.token";
/// Prometheus' text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric's type, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: name, type, labels, meaning.
#[derive(Debug)]
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Described {
    Described {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric Strom exports.
pub const CATALOG: &[Described] = &[
    m("strom_build_info", Gauge, &["version"], "Always 1; the build this node runs."),
    // Gateway and invocations (the node that ran the instance).
    m("strom_invocations_total", Counter, &["app", "function", "trigger", "status"], "Invocations of local instances by outcome (status: succeeded, failed, timedout; trigger: http, timer, admin, rabbitMQ)."),
    m("strom_invocation_duration_seconds", Histogram, &["app", "function", "trigger"], "How long invocations of local instances took, from the gateway's send to the answer."),
    m("strom_gateway_responses_total", Counter, &["code"], "Responses of this node's function port by HTTP status code (429: maxOutstandingRequests, 504: functionTimeout, 503: no instance)."),
    m("strom_gateway_requests_in_flight", Gauge, &["app"], "Requests for the app admitted on this node and not yet answered (counted against maxOutstandingRequests)."),
    m("strom_gateway_requests_queued", Gauge, &["app"], "Requests for the app waiting for a turn under maxConcurrentRequests."),
    m("strom_rabbitmq_published_total", Counter, &["app"], "Messages functions of the app sent to RabbitMQ outputs, each confirmed by the broker."),
    m("strom_rabbitmq_poisoned_total", Counter, &["app"], "Messages of the app's RabbitMQ triggers moved to their poison queue after the last attempt failed."),
    m("strom_rabbitmq_queue_ready", Gauge, &["app", "queue"], "Messages ready in a RabbitMQ trigger queue at the leader's last read (every 500 ms; only on the leader)."),
    m("strom_gateway_hops_total", Counter, &["outcome"], "Requests this gateway sent to another node's gateway (outcome: answered; undelivered: no instance there; refused: no connection; broken: failed after sending)."),
    // Instances (worker role).
    m("strom_instance_starts_total", Counter, &["app"], "Instances started (first starts, restarts and replacements)."),
    m("strom_instance_restarts_total", Counter, &["app"], "Instances that failed and are restarted by the restart policy."),
    m("strom_instance_crash_loops_total", Counter, &["app"], "Times an instance slot entered CrashLooping (more than maxRestarts failures within the period)."),
    m("strom_instances", Gauge, &["app", "state"], "Instances on this worker by state (starting, ready, draining, restarting, crashlooping)."),
    m("strom_instance_cold_start_seconds", Histogram, &["app"], "From an instance's start to its first successful readiness probe."),
    // Management group.
    m("strom_raft_term", Gauge, &[], "This member's current Raft term."),
    m("strom_raft_is_leader", Gauge, &[], "1 while this member is the leader."),
    m("strom_raft_has_leader", Gauge, &[], "1 while this member knows a leader."),
    m("strom_raft_leader_changes_total", Counter, &[], "Times this member saw the leader change (to another node or to none)."),
    m("strom_raft_crash_elections_total", Counter, &[], "Elections this member started at once because its leader's process was seen gone (connection closed, port refusing)."),
    m("strom_raft_last_log_index", Gauge, &[], "Index of the last entry in this member's log."),
    m("strom_raft_applied_index", Gauge, &[], "Index of the last entry this member applied to its state."),
    m("strom_raft_apply_lag", Gauge, &[], "Entries in this member's log not applied yet."),
    m("strom_raft_proposal_duration_seconds", Histogram, &[], "From a write proposed on the leader to its commit and apply."),
    m("strom_raft_proposal_failures_total", Counter, &[], "Writes proposed on this member that were not committed (not leader, no quorum, fatal)."),
    m("strom_workers", Gauge, &["state"], "Workers registered in the cluster by state (up, down, draining, cordoned), as the replicated state says."),
    m("strom_worker_heartbeats_total", Counter, &["worker"], "Worker heartbeats this member received as leader."),
    m("strom_scheduler_placements_total", Counter, &[], "Placement changes the leader's scheduler committed."),
    m("strom_blob_replications_total", Counter, &["outcome"], "Package replications to the other voters (outcome: ok, failed)."),
    m("strom_timer_lateness_seconds", Histogram, &["app", "function"], "From a timer tick's scheduled time to the leader sending its first attempt."),
    m("strom_timer_runs_total", Counter, &["app", "function", "outcome"], "Timer run attempts whose outcome the leader recorded (outcome: succeeded, failed)."),
    m("strom_timer_retries_total", Counter, &["app", "function"], "Timer runs the leader retried under the function's retry policy."),
    m("strom_checkpoints_total", Counter, &[], "Checkpoints this member wrote to the checkpoint store."),
    m("strom_checkpoint_failures_total", Counter, &[], "Checkpoint writes of this member that failed."),
    m("strom_checkpoint_last_success_timestamp_seconds", Gauge, &[], "Creation time (Unix seconds) of the newest checkpoint this member wrote or found in the store."),
    m("strom_checkpoint_age_seconds", Gauge, &[], "Age of the newest checkpoint this member knows of (take the minimum over the members)."),
];

/// The duration buckets (seconds) of every histogram: 1 ms to 5 min.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

type Hook = Box<dyn Fn() + Send + Sync>;
static HOOKS: RwLock<Vec<Hook>> = RwLock::new(Vec::new());

/// Make the exporter this process's metrics recorder (once; later calls do
/// nothing). Before it, recording does nothing and `/metrics` answers 503.
pub fn install() -> Result<(), String> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .map_err(|e| format!("metrics buckets: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| format!("installing the metrics recorder: {e}"))?;
    for d in CATALOG {
        let help = d.help;
        match d.kind {
            Kind::Counter => metrics::describe_counter!(d.name, help),
            Kind::Gauge => metrics::describe_gauge!(d.name, help),
            Kind::Histogram => {
                metrics::describe_histogram!(d.name, metrics::Unit::Seconds, help)
            }
        }
    }
    metrics::gauge!("strom_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let _ = HANDLE.set(handle);
    Ok(())
}

/// Refresh values computed from state before each scrape (a role registers one
/// when it starts).
pub fn on_scrape(hook: impl Fn() + Send + Sync + 'static) {
    HOOKS.write().expect("metrics hooks").push(Box::new(hook));
}

/// The exposition text, or `None` when no exporter is installed.
pub fn render() -> Option<String> {
    let handle = HANDLE.get()?;
    for hook in HOOKS.read().expect("metrics hooks").iter() {
        hook();
    }
    Some(handle.render())
}

/// A management member's metrics: leader changes (a task that follows openraft's
/// metrics, doing no more than a comparison per update, and ends with the Raft
/// node), and, when scraped, the Raft gauges, workers by state and the newest
/// checkpoint's age.
pub fn observe_management(node: &crate::ManagementNode) {
    let mut raft = node.raft.metrics();
    let changes = metrics::counter!("strom_raft_leader_changes_total");
    tokio::spawn(async move {
        let mut leader = raft.borrow_and_update().current_leader;
        while raft.changed().await.is_ok() {
            let now = raft.borrow_and_update().current_leader;
            if now != leader {
                changes.increment(1);
                leader = now;
            }
        }
    });
    let raft = node.raft.metrics();
    let state = node.state.clone();
    let checkpoints = node.checkpoints.clone();
    on_scrape(move || {
        {
            let m = raft.borrow();
            metrics::gauge!("strom_raft_term").set(m.current_term as f64);
            let leading =
                m.current_leader == Some(m.id) && m.state == openraft::ServerState::Leader;
            metrics::gauge!("strom_raft_is_leader").set(f64::from(u8::from(leading)));
            metrics::gauge!("strom_raft_has_leader")
                .set(f64::from(u8::from(m.current_leader.is_some())));
            let last = m.last_log_index.unwrap_or(0);
            let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
            metrics::gauge!("strom_raft_last_log_index").set(last as f64);
            metrics::gauge!("strom_raft_applied_index").set(applied as f64);
            metrics::gauge!("strom_raft_apply_lag").set(last.saturating_sub(applied) as f64);
        }
        let view = state.borrow().clone();
        let mut by_state: std::collections::BTreeMap<&str, u32> =
            ["up", "down", "draining", "cordoned"]
                .map(|s| (s, 0))
                .into();
        for w in view.state.workers.values() {
            let s = w.status().to_ascii_lowercase();
            if let Some(n) = by_state.iter_mut().find(|(k, _)| **k == s).map(|(_, n)| n) {
                *n += 1;
            }
        }
        for (s, n) in by_state {
            metrics::gauge!("strom_workers", "state" => s).set(f64::from(n));
        }
        if let Some(last) = checkpoints.status().and_then(|s| s.last) {
            let created = last.meta.created_ms;
            let age = (crate::management::now_ms() - created).max(0) as f64 / 1000.0;
            metrics::gauge!("strom_checkpoint_last_success_timestamp_seconds")
                .set(created as f64 / 1000.0);
            metrics::gauge!("strom_checkpoint_age_seconds").set(age);
        }
    });
}

/// Whether a request may read the metrics: the cluster's metrics token or the
/// admin token (`is_admin`; a node that cannot check it says no) as a bearer
/// token, or another node's proof (`proof`: the [`crate::internal_auth::PROOF_METADATA`]
/// value it showed) or certificate. `Err` says what is missing.
pub fn authorize(
    headers: &HeaderMap,
    proof: Option<&HeaderValue>,
    secret: &ClusterSecret,
    node_cert: bool,
    is_admin: &dyn Fn(&str) -> bool,
) -> Result<(), &'static str> {
    if node_cert || proof.is_some_and(|p| secret.verify(p.as_bytes())) {
        return Ok(());
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = bearer else {
        return Err("reading metrics needs `Authorization: Bearer` with the cluster's metrics token (metrics.token in a node's data dir) or the admin token");
    };
    let metrics_token = secret.metrics_token();
    if metrics_token.is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.as_bytes())))
        || is_admin(token)
    {
        return Ok(());
    }
    Err("invalid metrics token")
}

/// The answer to `GET /metrics` ([`authorize`]'s arguments): (status, response
/// headers, body).
pub fn answer(
    headers: &HeaderMap,
    proof: Option<&HeaderValue>,
    secret: &ClusterSecret,
    node_cert: bool,
    is_admin: &dyn Fn(&str) -> bool,
) -> (StatusCode, HeaderMap, String) {
    let mut out = HeaderMap::new();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let json = |code: &str, message: &str| {
        serde_json::json!({"error": {"code": code, "message": message}}).to_string() + "\n"
    };
    if let Err(why) = authorize(headers, proof, secret, node_cert, is_admin) {
        out.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"strom metrics\""),
        );
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return (StatusCode::UNAUTHORIZED, out, json("Unauthorized", why));
    }
    match render() {
        Some(text) => {
            out.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            (StatusCode::OK, out, text)
        }
        None => {
            out.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                out,
                json("Unavailable", "this process records no metrics"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_follows_prometheus_naming() {
        let mut seen = std::collections::HashSet::new();
        for d in CATALOG {
            assert!(seen.insert(d.name), "{} twice", d.name);
            assert!(d.name.starts_with("strom_"), "{}", d.name);
            match d.kind {
                Kind::Counter => assert!(d.name.ends_with("_total"), "{}", d.name),
                Kind::Histogram => assert!(d.name.ends_with("_seconds"), "{}", d.name),
                Kind::Gauge => assert!(!d.name.ends_with("_total"), "{}", d.name),
            }
            for l in d.labels {
                assert!(
                    !["id", "invocation", "instance", "invocation_id"].contains(l),
                    "{}: unbounded label {l}",
                    d.name
                );
            }
        }
    }

    #[test]
    fn reading_needs_the_metrics_token_the_admin_token_or_a_node() {
        let secret = ClusterSecret::from_join_token("join-secret");
        let token = secret.metrics_token().unwrap();
        let no_admin = |_: &str| false;
        let bearer = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
            h
        };
        assert!(authorize(&HeaderMap::new(), None, &secret, false, &no_admin).is_err());
        assert!(authorize(&bearer(&token), None, &secret, false, &no_admin).is_ok());
        assert!(authorize(&bearer("nope"), None, &secret, false, &no_admin).is_err());
        assert!(authorize(&bearer("admin"), None, &secret, false, &|t| t == "admin").is_ok());
        assert!(authorize(&HeaderMap::new(), None, &secret, true, &no_admin).is_ok());
        let proof: HeaderValue = secret.proof().unwrap().parse().unwrap();
        assert!(authorize(&HeaderMap::new(), Some(&proof), &secret, false, &no_admin).is_ok());
        let wrong = HeaderValue::from_static("not-the-proof");
        assert!(authorize(&HeaderMap::new(), Some(&wrong), &secret, false, &no_admin).is_err());
        // The token reveals neither the join token nor the proof.
        assert_ne!(&*token, "join-secret");
        assert_ne!(token.as_str(), &*secret.proof().unwrap());
        // A node that does not know the join token accepts no metrics token.
        let unknown = ClusterSecret::default();
        assert!(authorize(&bearer(&token), None, &unknown, false, &no_admin).is_err());
        let (status, headers, body) = answer(&HeaderMap::new(), None, &secret, false, &no_admin);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
        assert!(body.contains("metrics token"), "{body}");
    }
}
