//! Commit latency and throughput: closed-loop clients writing through the leader.

use super::*;

pub(super) struct CommitRun {
    pub(super) writes_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) errors: u64,
}

/// `clients` closed-loop clients, each on its own connection to the leader,
/// writing their own key for `seconds`.
pub(super) async fn commit_load<G: Replicated>(
    group: &G,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<CommitRun> {
    let leader = group.leader().await?;
    let mut writers = Vec::with_capacity(clients);
    for _ in 0..clients {
        writers.push(group.writer(leader).await?);
    }
    let start = Instant::now();
    let warm = start + WARMUP;
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(clients);
    for (c, mut writer) in writers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("sigfig 3");
            let (key, mut errors) = (format!("BENCH_{c}"), 0u64);
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let value = format!("{seq:016}");
                let sent = Instant::now();
                let ok = writer.write(&key, &value).await;
                if sent < warm {
                    continue;
                }
                if ok {
                    hist.record(sent.elapsed().as_micros() as u64)
                        .expect("auto-resizing histogram");
                } else {
                    errors += 1;
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await?;
        hist.add(h)?;
        errors += e;
    }
    if hist.is_empty() {
        bail!("{}: no write succeeded with {clients} clients", G::NAME);
    }
    Ok(CommitRun {
        writes_per_s: hist.len() as f64 / (seconds - WARMUP.as_secs_f64()),
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    })
}

pub(super) fn print_commit_row(system: &str, clients: usize, r: &CommitRun) {
    out!(
        "| {system} | {clients} | {:.0} | {:.2} | {:.2} | {} |",
        r.writes_per_s,
        r.p50_ms,
        r.p99_ms,
        r.errors
    );
}
