//! Noticing a crashed leader at once, instead of after the election timeout.
//!
//! A follower holds one idle TCP connection to its leader's control address. When
//! the leader's process dies its kernel closes that connection; the follower then
//! connects again, and a *refused* connection proves the process is gone (its host
//! answers, nothing listens). Only that proof starts an election early: a
//! connection that just ends (the listener's idle timeout, a restart that is
//! already listening again) is replaced, and a partition or a frozen host (no
//! answer at all) is left to Raft's own timers, whose leader lease protects a
//! healthy leader from a follower that merely lost sight of it.
//!
//! The election itself: openraft 0.9 makes a follower wait out the leader lease
//! (`election_timeout_max`) and then an election timeout, and a follower whose lease
//! is still valid refuses to vote. So every survivor that saw the proof starts an
//! election at once (its vote for itself lifts its own lease), and again after each
//! pause that grows with its rank among the survivors while no leader has emerged:
//! the lowest-ranked survivor's second election, at a higher term, wins the votes
//! of the others. A leader elected meanwhile refuses these (its own lease).

use std::time::Duration;

use openraft::ServerState;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::management::ManagementNode;

/// How long a connection attempt to the leader may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Attempts when connecting fails at once without a refusal.
const CONNECT_ATTEMPTS: u32 = 5;
/// Between one survivor's second election and the next's: enough for an election
/// on this node's disk (a vote is one fsync).
const RANK_STEP: Duration = Duration::from_millis(40);
/// How long a survivor keeps electing after the proof while no leader emerges
/// (longer than any lease a survivor that missed the proof may still hold).
const CRASH_ELECTIONS_FOR: Duration = Duration::from_secs(2);
/// Before watching again after a connection that could not be made (not a proof).
const RETRY: Duration = Duration::from_secs(1);

/// What a fresh connection attempt to the leader says about its process.
#[derive(Debug)]
pub enum Probe {
    /// Something listens there (the new connection).
    Listening(TcpStream),
    /// Refused: the host answers and nothing listens (the process is gone).
    Gone,
    /// No answer, or another failure: proves nothing.
    Unknown,
}

/// How a connection attempt's outcome is read.
pub fn probe_result(result: std::io::Result<TcpStream>) -> Probe {
    match result {
        Ok(stream) => Probe::Listening(stream),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Gone,
        Err(_) => Probe::Unknown,
    }
}

/// This node's place among the voters that survive `leader` (0 = elects first).
pub fn rank(me: u64, voters: impl IntoIterator<Item = u64>, leader: u64) -> usize {
    voters
        .into_iter()
        .filter(|v| *v != leader && *v < me)
        .count()
}

/// Watch the leader while this node follows, until `cancel`.
pub async fn run(node: ManagementNode, cancel: CancellationToken) {
    let mut metrics = node.raft.metrics();
    loop {
        let target = {
            let m = metrics.borrow_and_update();
            let me = m.id;
            match (m.state, m.current_leader) {
                (ServerState::Follower, Some(leader)) if leader != me => m
                    .membership_config
                    .membership()
                    .get_node(&leader)
                    .map(|n| (leader, n.addr.clone())),
                _ => None,
            }
        };
        let Some((leader, addr)) = target else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
            continue;
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            gone = watch(&addr) => if gone {
                elect_after_crash(&node, leader, &cancel).await;
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            },
            // A new leader, or this node's state changed: watch again.
            changed = wait_leader_change(&mut metrics, leader) => if !changed { return },
        }
    }
}

/// Hold a connection to `addr` until it ends; `true` once a new connection is
/// refused (the process is gone), `false` when nothing could be proven.
async fn watch(addr: &str) -> bool {
    let mut stream = match connect(addr).await {
        Probe::Listening(s) => s,
        Probe::Gone => return true,
        Probe::Unknown => {
            tracing::debug!(leader = addr, "cannot watch the leader's port");
            return false;
        }
    };
    tracing::debug!(leader = addr, "watching the leader's port");
    loop {
        let mut buf = [0u8; 64];
        // The peer never writes to a connection that sent nothing; a read returns
        // when the connection ends (EOF or reset). Anything read is ignored.
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        let probe = connect(addr).await;
        tracing::debug!(leader = addr, ?probe, "the leader's connection ended");
        match probe {
            Probe::Listening(s) => stream = s,
            Probe::Gone => {
                tracing::info!(leader = addr, "the leader's connection closed and its port refuses connections: its process is gone");
                return true;
            }
            Probe::Unknown => return false,
        }
    }
}

/// A connection attempt to `addr`. One that fails at once without a refusal (a
/// port caught while its process is being torn down can answer a reset) is tried
/// again a few times, 10 ms apart: the teardown ends in a refusal.
async fn connect(addr: &str) -> Probe {
    for attempt in 1..=CONNECT_ATTEMPTS {
        let Ok(result) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
        else {
            return Probe::Unknown;
        };
        if let Err(e) = &result {
            tracing::debug!(leader = addr, attempt, "connecting to the leader: {e}");
        }
        match probe_result(result) {
            Probe::Unknown => tokio::time::sleep(Duration::from_millis(10)).await,
            probe => return probe,
        }
    }
    Probe::Unknown
}

/// Resolves with `true` when the leader is no longer `leader` or this node no
/// longer follows; `false` when the Raft node has shut down.
async fn wait_leader_change(
    metrics: &mut tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>>,
    leader: u64,
) -> bool {
    metrics
        .wait_for(|m| m.current_leader != Some(leader) || m.state != ServerState::Follower)
        .await
        .is_ok()
}

/// The leader's process is gone: elect now, and again after this node's rank's
/// pause if no leader has emerged.
async fn elect_after_crash(node: &ManagementNode, leader: u64, cancel: &CancellationToken) {
    let metrics = node.raft.metrics();
    let (me, voters) = {
        let m = metrics.borrow();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        (m.id, voters)
    };
    if !voters.contains(&me) {
        return;
    }
    let rank = rank(me, voters.iter().copied(), leader);
    let leaderless = || {
        let m = metrics.borrow();
        m.current_leader.is_none() || m.current_leader == Some(leader)
    };
    if !leaderless() {
        return;
    }
    metrics::counter!("strom_raft_crash_elections_total").increment(1);
    // Again every pause of this node's rank while no leader has emerged: a
    // survivor that has not seen the proof (yet) keeps its lease and refuses to
    // vote until it sees it or the lease runs out; the first election after that
    // wins, not one a whole election timeout later.
    let until = tokio::time::Instant::now() + CRASH_ELECTIONS_FOR;
    while leaderless() && tokio::time::Instant::now() < until {
        let _ = node.raft.trigger().elect().await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RANK_STEP * (rank as u32 + 1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survivors_rank_by_id_without_the_dead_leader() {
        assert_eq!(rank(2, [1, 2, 3], 1), 0);
        assert_eq!(rank(3, [1, 2, 3], 1), 1);
        assert_eq!(rank(1, [1, 2, 3], 2), 0);
        assert_eq!(rank(3, [1, 2, 3], 2), 1);
        assert_eq!(rank(5, [1, 2, 3, 4, 5], 3), 3);
    }

    #[tokio::test]
    async fn only_a_refused_connection_proves_the_process_gone() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = TcpStream::connect(addr).await;
        assert!(matches!(probe_result(open), Probe::Listening(_)));
        drop(listener);
        let refused = TcpStream::connect(addr).await;
        assert!(matches!(probe_result(refused), Probe::Gone));
        let timed_out = Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(probe_result(timed_out), Probe::Unknown));
        let unreachable = Err(std::io::Error::from(std::io::ErrorKind::HostUnreachable));
        assert!(matches!(probe_result(unreachable), Probe::Unknown));
    }

    #[tokio::test]
    async fn a_watch_ends_with_proof_when_the_listener_goes_away() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let watching = tokio::spawn({
            let addr = addr.clone();
            async move { watch(&addr).await }
        });
        // The watch's connection is accepted; an idle-timeout close is not proof
        // (the port still listens): the watch reconnects.
        let (first, _) = listener.accept().await.unwrap();
        drop(first);
        let (second, _) = listener.accept().await.unwrap();
        assert!(!watching.is_finished());
        // The process dies: its connections close and its port refuses.
        drop(listener);
        drop(second);
        let gone = tokio::time::timeout(Duration::from_secs(5), watching)
            .await
            .expect("the watch noticed")
            .unwrap();
        assert!(gone);
    }
}
