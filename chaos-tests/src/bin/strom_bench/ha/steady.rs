//! The counterweight to fast failover: a leader that is noticed gone quickly must
//! not be thought gone when it is only slow. Steady writes through the leader for
//! a while with two CPU-bound busy loops taking this machine's cores, watching the
//! Raft term (it rises with every election, won or not) and the leader.

use super::*;

/// The sections's steady run.
pub(super) struct SteadyRun {
    pub(super) seconds: f64,
    pub(super) writes: u64,
    pub(super) errors: u64,
    /// The longest time between two acknowledged writes.
    pub(super) longest_gap: Duration,
    pub(super) term_before: u64,
    pub(super) term_after: u64,
    /// Times a different member was seen leading (sampled every 500 ms).
    pub(super) leader_changes: u32,
}

/// The highest term any member reports.
async fn term(group: &StromGroup) -> anyhow::Result<u64> {
    let mut term = None;
    for m in 0..group.members() {
        if let Ok(s) = group.status(m, true).await {
            term = term.max(Some(s.term));
        }
    }
    term.context("no member answered its status")
}

/// A CPU-bound loop in its own process (stopped when dropped).
fn busy_loop() -> anyhow::Result<crate::Proc> {
    Ok(crate::Proc(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .context("starting a busy loop")?,
    ))
}

pub(super) async fn steady(group: &StromGroup, seconds: f64) -> anyhow::Result<SteadyRun> {
    let _busy = [busy_loop()?, busy_loop()?];
    let term_before = term(group).await?;
    let first_leader = group.leader().await?;
    let mut writer = group.writer(first_leader).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let writes = tokio::spawn(async move {
        let (mut writes, mut errors, mut seq) = (0u64, 0u64, 0u64);
        let mut last_ack = Instant::now();
        let mut longest_gap = Duration::ZERO;
        while Instant::now() < deadline {
            seq += 1;
            if writer.write("STEADY", &format!("{seq:016}")).await {
                writes += 1;
                longest_gap = longest_gap.max(last_ack.elapsed());
                last_ack = Instant::now();
            } else {
                errors += 1;
            }
        }
        (writes, errors, longest_gap)
    });
    let mut leader = first_leader;
    let mut leader_changes = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for m in 0..group.members() {
            if group.is_leader(m).await {
                if m != leader {
                    leader_changes += 1;
                    leader = m;
                }
                break;
            }
        }
    }
    let (writes, errors, longest_gap) = writes.await?;
    Ok(SteadyRun {
        seconds,
        writes,
        errors,
        longest_gap,
        term_before,
        term_after: term(group).await?,
        leader_changes,
    })
}

pub(super) fn print_steady(r: &SteadyRun) {
    out!(
        "Steady writes with two CPU-bound busy loops on the machine (the counterweight to fast failover): one client writing through the leader for {:.0} s; the Raft term (highest any member reports) before and after; the leader sampled every 500 ms.",
        r.seconds
    );
    out!();
    out!("| seconds | writes acknowledged | errors | longest gap between acks ms | term before → after | leader changes seen | goal: no leader change |");
    out!("|---:|---:|---:|---:|---|---:|---|");
    let met = r.leader_changes == 0 && r.term_after == r.term_before;
    out!(
        "| {:.0} | {} | {} | {:.0} | {} → {} | {} | {} |",
        r.seconds,
        r.writes,
        r.errors,
        r.longest_gap.as_secs_f64() * 1000.0,
        r.term_before,
        r.term_after,
        r.leader_changes,
        if met { "met" } else { "missed" }
    );
}
