//! State fan-out: what one `SetAppSettings` costs the management node that 1,000
//! workers of a 10,000-app cluster watch, with whole views per change (stream
//! format 1, as every build before deltas, and still what an older worker gets)
//! and with deltas (format 2), side by side in one process: the same state, the
//! same change, the same stream code the gRPC service runs (`view_feed::updates`).
//!
//! Two passes per format: watchers that only count the bytes (the process CPU is
//! then the management node's: finding the change, projecting and encoding), and
//! watchers that also decode each update as a worker does (the time until the last
//! one has read the change). They do not keep the views: 1,000 views of 10,000
//! apps do not fit in this machine's memory, and applying a delta to the view a
//! worker holds is a copy of that view either way. In process: no HTTP/2 framing
//! or TLS, which add work per byte; and 1,000 workers' decoding shares this
//! machine's 2 cores, where a real cluster spreads it over 1,000 machines.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::StreamExt;
use prost::Message;
use strom_control_plane::state_machine::StateView;
use strom_control_plane::view_feed;
use strom_proto::worker_view::{ViewDelta, WorkerView, DELTA_FORMAT};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;

const APPS: u32 = 10_000;
const WATCHERS: u64 = 1_000;

/// One pass's figures for one change.
struct Change {
    bytes: u64,
    cpu_ms: f64,
    last_ms: f64,
}

pub async fn run() -> anyhow::Result<()> {
    let mut state = placements::bench_cluster(APPS, 1)?;
    let changes = scheduler::plan(&state, &LiveView::default());
    placements::apply(&mut state, ClusterCommand::Place { changes, at_ms: 2 })?;
    let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 1);
    let members = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([1001, 1002, 1003])],
        (1001..=1003)
            .map(|id| {
                (
                    id,
                    openraft::BasicNode::new(format!("10.1.0.{}:7171", id - 1000)),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>(),
    );
    let first = StateView {
        last_applied: Some(log_id),
        membership: openraft::StoredMembership::new(Some(log_id), members),
        state: Arc::new(state),
    };

    out!(
        "{APPS} apps placed on {WATCHERS} workers, every worker watching one management node; one `SetAppSettings` (one app's setting) per change. In one process: no HTTP/2 or TLS, and the workers' decoding shares the 2 cores."
    );
    out!();
    out!("| stream | changes | bytes per change (all watchers) | management node CPU ms per change | last watcher received after ms | last watcher decoded after ms |");
    out!("|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (format, name, repeats) in [
        (
            1u32,
            "whole views (format 1: before, and older workers)",
            2usize,
        ),
        (DELTA_FORMAT, "deltas (format 2)", 5),
    ] {
        let counted = pass(&first, format, false, repeats).await?;
        let decoded = pass(&first, format, true, repeats).await?;
        let bytes = median(counted.iter().map(|c| c.bytes as f64).collect());
        let cpu = median(counted.iter().map(|c| c.cpu_ms).collect());
        let received = median(counted.iter().map(|c| c.last_ms).collect());
        let last = median(decoded.iter().map(|c| c.last_ms).collect());
        out!("| {name} | {repeats} | {bytes:.0} | {cpu:.1} | {received:.1} | {last:.1} |");
        rows.push((bytes, cpu, received, last));
    }
    let (b, d) = (rows[0], rows[1]);
    out!(
        "| deltas / whole views | | {:.5}× | {:.4}× | {:.4}× | {:.4}× |",
        d.0 / b.0,
        d.1 / b.1,
        d.2 / b.2,
        d.3 / b.3
    );
    Ok(())
}

/// `repeats` changes watched by `WATCHERS` streams of `format`; each watcher
/// also decodes its updates when `decode`, else only counts their bytes.
async fn pass(
    first: &StateView,
    format: u32,
    decode: bool,
    repeats: usize,
) -> anyhow::Result<Vec<Change>> {
    let cancel = CancellationToken::new();
    let (tx, states) = watch::channel(Arc::new(first.clone()));
    let feed = view_feed::start(states, cancel.clone());
    let bytes = Arc::new(AtomicU64::new(0));
    // Watchers that have the state at the index being waited for.
    let caught_up = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicU64::new(first.applied_index()));
    let notify = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for node in 1..=WATCHERS {
        let mut updates = Box::pin(view_feed::updates(feed.clone(), node, format));
        let (bytes, caught_up, target, notify) = (
            bytes.clone(),
            caught_up.clone(),
            target.clone(),
            notify.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while let Some(update) = updates.next().await {
                bytes.fetch_add(update.encoded_len() as u64, Ordering::Relaxed);
                let index = if !decode {
                    update.applied_index
                } else if update.worker_view_delta.is_empty() {
                    WorkerView::decode(&update.worker_view)?.applied_index
                } else {
                    ViewDelta::decode(&update.worker_view_delta)?.applied_index
                };
                if index == target.load(Ordering::Acquire) {
                    caught_up.fetch_add(1, Ordering::AcqRel);
                    notify.notify_one();
                }
            }
            anyhow::Ok(())
        }));
    }
    let all = || async {
        while caught_up.load(Ordering::Acquire) < WATCHERS as usize {
            notify.notified().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(600), all())
        .await
        .context("the first views")?;
    let mut results = Vec::new();
    let mut current = first.clone();
    for i in 0..repeats {
        let mut next = current.clone();
        let app = AppName::parse(&format!("app-{:05}", i * 7))?;
        placements::apply(
            Arc::make_mut(&mut next.state),
            ClusterCommand::SetAppSettings {
                app,
                set: [("GREETING".to_string(), format!("hello {i}"))].into(),
                remove: Vec::new(),
                at_ms: 3,
            },
        )?;
        let last = current.last_applied.expect("set above");
        next.last_applied = Some(openraft::LogId::new(last.leader_id, last.index + 1));
        caught_up.store(0, Ordering::Release);
        target.store(next.applied_index(), Ordering::Release);
        let bytes_before = bytes.load(Ordering::Acquire);
        let cpu_before = process_cpu_ms();
        let start = Instant::now();
        tx.send_replace(Arc::new(next.clone()));
        tokio::time::timeout(Duration::from_secs(600), all())
            .await
            .context("a change")?;
        results.push(Change {
            last_ms: start.elapsed().as_secs_f64() * 1000.0,
            cpu_ms: process_cpu_ms() - cpu_before,
            bytes: bytes.load(Ordering::Acquire) - bytes_before,
        });
        current = next;
    }
    cancel.cancel();
    drop(tx);
    for task in tasks {
        task.await??;
    }
    Ok(results)
}

/// CPU time of this process so far (every thread; ns resolution, from
/// `/proc/self/task/*/schedstat`).
fn process_cpu_ms() -> f64 {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ns as f64 / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
