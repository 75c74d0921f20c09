//! Leader failover: kill -9 of the leader, then the time to the first acknowledged write.

use super::*;

pub(super) struct Trial {
    pub(super) killed: usize,
    pub(super) new_leader: usize,
    /// Kill → a survivor says it leads (None: not seen before the write's ack).
    pub(super) elected_ms: Option<f64>,
    /// Kill → first write acknowledged.
    pub(super) ms: f64,
}

/// What happens to the leader in a failover trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// `kill -9`: its connections close and its port refuses.
    Kill,
    /// `SIGSTOP`: as a partition or a frozen host looks to the others (nothing
    /// closes, nothing answers); `SIGCONT` after the trial.
    Freeze,
}

/// `trials` times: kill (or freeze) the leader, time the first write acknowledged
/// through a survivor, restart (or thaw) the member and wait until it has caught up.
pub(super) async fn failover<G: Replicated>(
    group: &mut G,
    trials: usize,
    fault: Fault,
) -> anyhow::Result<Vec<Trial>> {
    let mut results = Vec::with_capacity(trials);
    for trial in 1..=trials {
        let leader = group.leader().await?;
        let mut writers = Vec::new();
        for m in (0..group.members()).filter(|m| *m != leader) {
            writers.push(group.writer(m).await?);
        }
        if writers.len() != 2 {
            bail!("{}: the failover trials need 3 members", G::NAME);
        }
        let survivors: Vec<usize> = (0..group.members()).filter(|m| *m != leader).collect();
        let start = Instant::now();
        match fault {
            Fault::Kill => group.kill(leader)?,
            Fault::Freeze => group.signal(leader, "STOP")?,
        }
        let done = std::cell::Cell::new(false);
        // Until the write is acknowledged, each survivor is asked every 20 ms
        // whether it leads: when the election ended, apart from the client's wait.
        let watch = |member: usize| {
            let (group, done) = (&*group, &done);
            async move {
                while !done.get() {
                    if group.is_leader(member).await {
                        return Some((start.elapsed(), member));
                    }
                    tokio::time::sleep(ELECTION_POLL).await;
                }
                None
            }
        };
        let write = async {
            let acked = first_ack(&mut writers, trial, start).await;
            done.set(true);
            acked
        };
        let (acked, first, second) = tokio::join!(write, watch(survivors[0]), watch(survivors[1]));
        if fault == Fault::Freeze {
            group.signal(leader, "CONT")?;
        }
        let ms = acked
            .with_context(|| format!("{} trial {trial}: killed member {}", G::NAME, leader + 1))?
            .as_secs_f64()
            * 1000.0;
        let elected = [first, second].into_iter().flatten().min();
        match fault {
            Fault::Kill => group
                .restart(leader)
                .await
                .with_context(|| format!("{} trial {trial}", G::NAME))?,
            // The thawed member learns of the new term and follows.
            Fault::Freeze => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while group.is_leader(leader).await {
                    if Instant::now() > deadline {
                        bail!(
                            "{} trial {trial}: the thawed member still leads after 30 s",
                            G::NAME
                        );
                    }
                    tokio::time::sleep(ELECTION_POLL).await;
                }
                group.leader().await?;
            }
        }
        // Asked after the thaw, whose member may claim to lead until it learns of
        // the new term.
        let new_leader = match elected {
            Some((_, m)) => m,
            None => group.leader().await?,
        };
        results.push(Trial {
            killed: leader,
            new_leader,
            elected_ms: elected.map(|(t, _)| t.as_secs_f64() * 1000.0),
            ms,
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(results)
}

/// Writes through the `writers` in turn until one is acknowledged; the time from
/// `start` until then.
pub(super) async fn first_ack(
    writers: &mut [Writer],
    trial: usize,
    start: Instant,
) -> anyhow::Result<Duration> {
    let mut attempt = 0usize;
    loop {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("no write acknowledged within 30 s");
        }
        let survivors = writers.len();
        let writer = &mut writers[attempt % survivors];
        attempt += 1;
        let sent = Instant::now();
        let value = format!("{trial}-{attempt}");
        match tokio::time::timeout(ATTEMPT_TIMEOUT, writer.write("FAILOVER", &value)).await {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) if sent.elapsed() < RETRY_PAUSE => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            _ => {}
        }
    }
}

/// The header of the table [`print_failover_row`] fills.
pub(super) fn print_failover_header() {
    out!("| system | trials | new leader p50 / p99 ms | first ack p50 ms | p99 ms | max ms | min ms | p99 vs {FAILOVER_GOAL_MS:.0} ms goal |");
    out!("|---|---:|---:|---:|---:|---:|---:|---|");
}

pub(super) fn print_failover_row(system: &str, trials: &[Trial]) {
    let mut ms: Vec<f64> = trials.iter().map(|t| t.ms).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return;
    }
    let mut elected: Vec<f64> = trials.iter().filter_map(|t| t.elected_ms).collect();
    elected.sort_by(f64::total_cmp);
    let elected = if elected.is_empty() {
        "–".to_string()
    } else {
        format!(
            "{:.0} / {:.0}",
            quantile(&elected, 0.5),
            quantile(&elected, 0.99)
        )
    };
    let p99 = quantile(&ms, 0.99);
    let verdict = if p99 <= FAILOVER_GOAL_MS {
        "met"
    } else {
        "missed"
    };
    out!(
        "| {system} | {} | {elected} | {:.0} | {p99:.0} | {:.0} | {:.0} | {verdict} |",
        ms.len(),
        quantile(&ms, 0.5),
        ms[ms.len() - 1],
        ms[0],
    );
}

pub(super) fn print_trials(system: &str, trials: &[Trial]) {
    let list: Vec<String> = trials
        .iter()
        .map(|t| {
            let elected = t.elected_ms.map_or("–".into(), |e| format!("{e:.0}"));
            format!(
                "{elected}/{:.0} ({}→{})",
                t.ms,
                t.killed + 1,
                t.new_leader + 1
            )
        })
        .collect();
    out!("- {system}: {}", list.join(", "));
}
