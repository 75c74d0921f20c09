//! Worker leases, as the leader of one term keeps them: pure data and decisions
//! over an explicit `now` (tokio time), tested under a paused clock.
//!
//! In memory only, and only for the term that created them: a new leader starts
//! with none and gives every worker a full lease from the moment it took over, so
//! a leader change never marks a healthy worker Down.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use strom_proto::ids::NodeId;
use strom_proto::instances::{InstanceState, InstanceStatus, TriggerStatus};
use tokio::time::Instant;

use crate::cluster_state::ClusterState;
use crate::scheduler::LiveView;

/// What the latest heartbeat (or registration) of one worker said.
#[derive(Debug, Clone)]
pub struct Lease {
    /// When the heartbeat arrived.
    pub last: Instant,
    pub build: String,
    pub protocol: u32,
    pub instances: Vec<InstanceStatus>,
    /// Its RabbitMQ triggers' consumers.
    pub triggers: Vec<TriggerStatus>,
}

#[derive(Debug)]
pub struct Leases {
    /// When this node became leader: the earliest a lease can count from.
    leader_since: Instant,
    leases: HashMap<NodeId, Lease>,
}

impl Leases {
    pub fn new(leader_since: Instant) -> Self {
        Leases {
            leader_since,
            leases: HashMap::new(),
        }
    }

    /// A heartbeat arrived (an older one, delivered late, never rolls a lease back).
    pub fn renew(&mut self, node: NodeId, lease: Lease) {
        match self.leases.get(&node) {
            Some(known) if known.last > lease.last => {}
            _ => {
                self.leases.insert(node, lease);
            }
        }
    }

    pub fn remove(&mut self, node: NodeId) {
        self.leases.remove(&node);
    }

    pub fn get(&self, node: NodeId) -> Option<&Lease> {
        self.leases.get(&node)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Lease)> {
        self.leases.iter()
    }

    /// Time since `node` last heard of, counting from the start of this term.
    pub fn silence(&self, node: NodeId, now: Instant) -> Duration {
        let last = self
            .leases
            .get(&node)
            .map(|l| l.last.max(self.leader_since))
            .unwrap_or(self.leader_since);
        now.saturating_duration_since(last)
    }

    /// The workers among `up` whose lease of `length` ran out at `now`.
    pub fn expired(
        &self,
        up: impl IntoIterator<Item = NodeId>,
        now: Instant,
        length: Duration,
    ) -> Vec<NodeId> {
        up.into_iter()
            .filter(|id| self.silence(*id, now) > length)
            .collect()
    }

    /// Ready instances of each app's active version per worker (what the
    /// scheduler needs for make-before-break drains).
    pub fn ready_view(&self, state: &ClusterState) -> LiveView {
        let mut ready = HashMap::new();
        for (node, lease) in &self.leases {
            for i in &lease.instances {
                let active = state.apps.get(&i.app).map(|a| &a.active_version);
                if i.state == InstanceState::Ready && active == Some(&i.version) {
                    *ready.entry((*node, i.app.clone())).or_insert(0) += 1;
                }
            }
        }
        LiveView {
            ready,
            now_ms: crate::management::now_ms(),
            ..LiveView::default()
        }
    }

    /// Messages the workers' consumers of `app` hold unacknowledged, as last
    /// reported.
    pub fn in_flight(&self, app: &strom_proto::ids::AppName) -> u64 {
        self.leases
            .values()
            .flat_map(|l| &l.triggers)
            .filter(|t| &t.app == app)
            .map(|t| u64::from(t.in_flight))
            .sum()
    }

    /// The protocol each of `workers` reported this term (`None`: not heard yet).
    pub fn protocols(
        &self,
        workers: impl IntoIterator<Item = NodeId>,
    ) -> BTreeMap<NodeId, Option<u32>> {
        workers
            .into_iter()
            .map(|id| (id, self.leases.get(&id).map(|l| l.protocol)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(at: Instant, protocol: u32) -> Lease {
        Lease {
            last: at,
            build: "b".into(),
            protocol,
            instances: Vec::new(),
            triggers: Vec::new(),
        }
    }

    const LEASE: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_gives_every_worker_a_full_lease() {
        let t0 = Instant::now();
        let leases = Leases::new(t0);
        // Nobody has heartbeated this term yet: nobody expires within one lease.
        tokio::time::advance(LEASE).await;
        assert!(leases.expired([1, 2], Instant::now(), LEASE).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(leases.expired([1, 2], Instant::now(), LEASE), vec![1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_renew_and_silence_expires() {
        let mut leases = Leases::new(Instant::now());
        tokio::time::advance(Duration::from_secs(3)).await;
        leases.renew(1, lease(Instant::now(), 2));
        tokio::time::advance(Duration::from_secs(3)).await;
        // 6 s into the term: worker 2 never spoke, worker 1 spoke 3 s ago.
        assert_eq!(leases.expired([1, 2], Instant::now(), LEASE), vec![2]);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(leases.expired([1, 2], Instant::now(), LEASE), vec![1, 2]);
        // Only Up workers are judged.
        assert_eq!(leases.expired([2], Instant::now(), LEASE), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_heartbeat_never_rolls_a_lease_back() {
        let t0 = Instant::now();
        let mut leases = Leases::new(t0);
        tokio::time::advance(Duration::from_secs(4)).await;
        let fresh = Instant::now();
        leases.renew(1, lease(fresh, 3));
        // A heartbeat received earlier but handled later (queued behind a commit).
        leases.renew(1, lease(t0 + Duration::from_secs(1), 2));
        assert_eq!(leases.get(1).unwrap().last, fresh);
        assert_eq!(
            leases.protocols([1, 2]),
            BTreeMap::from([(1, Some(3)), (2, None)])
        );
    }
}
