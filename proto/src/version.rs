//! The cluster version gate.
//!
//! Every node reports its build and its wire **protocol** number. A new `Command`
//! variant or wire field belongs to a [`Feature`] introduced at some protocol; the
//! leader uses it only once every management member reports at least that protocol
//! (an older member could not decode the log entry, and would stop). During a
//! rolling upgrade the cluster keeps speaking the old protocol until the last node
//! is upgraded, then switches on its own. A member that cannot be asked counts as
//! the oldest protocol: the gate stays closed rather than guessing.

use std::collections::BTreeMap;

use crate::ids::NodeId;

/// The wire protocol this build speaks.
///
/// - 1: the first release (apps, versions, settings, keys, scale, management membership).
/// - 2: worker nodes and the scheduler (`RegisterWorker`, `SetWorkerLiveness`,
///   `SetWorkerSchedule`, `Place`, `RemoveWorker`; `WorkerService`).
/// - 3: workers count in the gate; version retention (`ForgetVersions`). Workers
///   of this protocol read a worker view (`WatchState` with `view_format` 1).
/// - 4: internal calls and gateway hops without TLS must prove the join token
///   (`x-strom-proof`); before, the cluster id was the only credential.
/// - 5: apps may share routes: each app has its own address (`{app}.<domain>`),
///   and the shared address serves a route only while one app claims it; before,
///   a deploy whose routes overlapped another app's was refused.
/// - 6: timers: `ScheduleTimer`, `FireTimer`, `CompleteTimer`, and the state's timer
///   records (snapshot format 3).
/// - 7: timers run: the leader fires them and sends runs to other nodes'
///   gateways; timer retries: `RetryTimer`, and the state's retry records
///   (snapshot format 4).
/// - 8: publishing: deployment history and per-app deployment credentials
///   (`BeginDeployment`, `UpdateDeployment`, `SetDeployCredential`), system keys
///   (`KeyScope::System`) (snapshot format 5).
/// - 9: messaging: apps with `rabbitMQ` output bindings (an older worker would
///   take them for unsupported and drop their messages) and `rabbitMQTrigger`s
///   (`Trigger::RabbitMq`, appended: an older node cannot decode it).
/// - 10: client sessions: `OpenSession`, `InSession`, `CommandResult::Replayed`
///   and the state's session table (snapshot format 6), so a retried admin
///   write is applied once.
pub const PROTOCOL: u32 = 10;

/// The oldest protocol a member can speak; what a member that does not answer
/// `NodeInfo` (a build from before the gate) is taken to speak.
pub const OLDEST_PROTOCOL: u32 = 1;

/// This build, as shown by `strom cluster status`.
pub const BUILD: &str = env!("CARGO_PKG_VERSION");

/// Features that need every member to understand them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Worker registration, leases and placements (protocol 2).
    Workers,
    /// Older versions beyond the retention count are forgotten (protocol 3).
    VersionRetention,
    /// Internal callers without TLS are refused unless they show the cluster's
    /// proof (protocol 4).
    InternalProof,
    /// Deploys whose routes overlap another app's are accepted (protocol 5).
    AppHosts,
    /// Timer records and the timer commands (protocol 6).
    Timers,
    /// Timers run: every node's gateway serves a timer run another node's leader
    /// sends, and a failed run is retried by its retry policy, the retry
    /// recorded (protocol 7). Builds of protocol 6 kept records but ran nothing.
    TimerRuns,
    /// Deployment history, deployment credentials and system keys (protocol 8).
    Publishing,
    /// Versions with RabbitMQ bindings: every worker publishes their outputs and
    /// every node decodes their triggers (protocol 9).
    Messaging,
    /// Client sessions: retried admin writes applied once (protocol 10).
    ClientSessions,
}

impl Feature {
    pub fn since(self) -> u32 {
        match self {
            Feature::Workers => 2,
            Feature::VersionRetention => 3,
            Feature::InternalProof => 4,
            Feature::AppHosts => 5,
            Feature::Timers => 6,
            Feature::TimerRuns => 7,
            Feature::Publishing => 8,
            Feature::Messaging => 9,
            Feature::ClientSessions => 10,
        }
    }
}

/// What one node reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVersion {
    pub build: String,
    pub protocol: u32,
}

/// The protocol every listed member speaks: the lowest reported; members missing
/// from `reported` count as [`OLDEST_PROTOCOL`].
pub fn cluster_protocol(
    members: impl IntoIterator<Item = NodeId>,
    reported: &BTreeMap<NodeId, NodeVersion>,
) -> u32 {
    members
        .into_iter()
        .map(|id| {
            reported
                .get(&id)
                .map(|v| v.protocol)
                .unwrap_or(OLDEST_PROTOCOL)
        })
        .min()
        .unwrap_or(PROTOCOL)
}

/// The protocol every listed member and worker speaks. Workers count from
/// protocol 3 on (they read what the management group sends them); a worker not
/// heard from yet (`None`) counts as [`OLDEST_PROTOCOL`], like a silent member.
pub fn cluster_protocol_with_workers(
    members: impl IntoIterator<Item = NodeId>,
    reported: &BTreeMap<NodeId, NodeVersion>,
    workers: impl IntoIterator<Item = Option<u32>>,
) -> u32 {
    let workers = workers
        .into_iter()
        .map(|p| p.unwrap_or(OLDEST_PROTOCOL))
        .min()
        .unwrap_or(u32::MAX);
    cluster_protocol(members, reported).min(workers)
}

/// Whether `feature` may be used with these members.
pub fn allows(
    feature: Feature,
    members: impl IntoIterator<Item = NodeId>,
    reported: &BTreeMap<NodeId, NodeVersion>,
) -> bool {
    cluster_protocol(members, reported) >= feature.since()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(build: &str, protocol: u32) -> NodeVersion {
        NodeVersion {
            build: build.into(),
            protocol,
        }
    }

    #[test]
    fn the_gate_opens_only_when_every_member_understands_the_feature() {
        // A rolling upgrade from a protocol-1 build to a protocol-2 build.
        let mut reported = BTreeMap::from([(1, v("0.1.0", 1)), (2, v("0.1.0", 1))]);
        assert_eq!(cluster_protocol([1, 2, 3], &reported), 1);
        assert!(!allows(Feature::Workers, [1, 2, 3], &reported));
        reported.insert(1, v("0.2.0", 2));
        reported.insert(2, v("0.2.0", 2));
        // Node 3 has not answered: it counts as the oldest protocol.
        assert!(!allows(Feature::Workers, [1, 2, 3], &reported));
        reported.insert(3, v("0.2.0", 2));
        assert!(allows(Feature::Workers, [1, 2, 3], &reported));
        // A newer member does not open features the others lack.
        reported.insert(3, v("0.3.0", 3));
        reported.insert(2, v("0.1.0", 1));
        assert_eq!(cluster_protocol([1, 2, 3], &reported), 1);
        assert!(!allows(Feature::Workers, [1, 2, 3], &reported));
    }

    #[test]
    fn workers_hold_the_gate_until_each_speaks_the_protocol() {
        let members = BTreeMap::from([(1, v("new", 3)), (2, v("new", 3))]);
        assert_eq!(cluster_protocol_with_workers([1, 2], &members, []), 3);
        // One worker still runs the previous build, one has not heartbeated yet.
        assert_eq!(
            cluster_protocol_with_workers([1, 2], &members, [Some(3), Some(2)]),
            2
        );
        assert_eq!(
            cluster_protocol_with_workers([1, 2], &members, [Some(3), None]),
            OLDEST_PROTOCOL
        );
        assert_eq!(
            cluster_protocol_with_workers([1, 2], &members, [Some(3), Some(4)]),
            3
        );
    }

    #[test]
    fn a_cluster_of_this_build_allows_everything_it_has() {
        let reported = BTreeMap::from([(1, v(BUILD, PROTOCOL))]);
        assert!(allows(Feature::Workers, [1], &reported));
        for feature in [
            Feature::Workers,
            Feature::VersionRetention,
            Feature::InternalProof,
            Feature::AppHosts,
            Feature::Timers,
        ] {
            assert!(allows(feature, [1], &reported));
            assert!(feature.since() <= PROTOCOL);
        }
    }
}
