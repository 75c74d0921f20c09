//! Errors of the management role, typed by cause, and their one mapping to gRPC.
//!
//! A cause keeps its meaning all the way to the caller: "no quorum" stays "no
//! quorum" (never "timed out"), a fatal Raft or storage error is INTERNAL with its
//! cause (never UNAVAILABLE, which tells clients to retry), and "not the leader"
//! carries the leader's address when one is known.

use std::path::PathBuf;
use std::time::Duration;

use strom_proto::codec::CodecError;
use strom_proto::ids::NodeId;
use tonic::Status;

use crate::blob_store::BlobError;

/// Metadata key carrying the leader's address in UNAVAILABLE answers.
pub const LEADER_METADATA: &str = "x-strom-leader";
/// Metadata key naming the cause of an UNAVAILABLE answer between nodes
/// (`not-leader`, `no-quorum`), so a forwarding node keeps it.
pub const CAUSE_METADATA: &str = "x-strom-cause";

/// Why a write or a fresh read could not be done. Business rejections are not
/// errors: they come back as `CommandResult::Rejected`.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader{}", leader_hint(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// Nothing commits: the outcome of a write is unknown (it may still be applied
    /// if a majority comes back), so it is not acknowledged.
    #[error(transparent)]
    NoQuorum(#[from] NoQuorum),
    /// The leader could not be asked, or refused what was forwarded to it.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The write committed, but this node had not applied it in time.
    #[error("committed at log index {index}, but this node did not apply it within {waited:?}")]
    NotApplied { index: u64, waited: Duration },
    /// Raft stopped (a storage error, a panic, a shutdown): fatal by design.
    #[error("raft stopped: {0}")]
    Fatal(Box<openraft::error::Fatal<NodeId>>),
    /// A membership change refused the write.
    #[error("membership change in progress: {0}")]
    Membership(Box<openraft::error::ChangeMembershipError<NodeId>>),
}

impl From<openraft::error::Fatal<NodeId>> for ProposeError {
    fn from(f: openraft::error::Fatal<NodeId>) -> Self {
        ProposeError::Fatal(Box::new(f))
    }
}

fn leader_hint(id: &Option<NodeId>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(a)) => format!("; the leader is node {id} at {a}"),
        (Some(id), None) => format!("; the leader is node {id}"),
        (None, Some(a)) => format!("; the leader is at {a}"),
        _ => "; no leader is known (election in progress or no quorum)".into(),
    }
}

/// What a node saw when nothing committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumView {
    /// This node thinks it leads, but a majority does not answer.
    Leads,
    /// This node follows a leader that does not answer.
    Follows(NodeId),
    /// No leader is known.
    NoLeader,
    /// The leader at this address answered that it has no quorum.
    LeaderReported { addr: String, message: String },
}

/// A write or a fresh read found no majority within its wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} within {waited:?}: no quorum ({})", explain(.voters, .view))]
pub struct NoQuorum {
    /// "the write was not committed", "a fresh read could not be confirmed".
    pub what: &'static str,
    pub waited: Duration,
    /// Voters this node knows of (`None` when the leader reported it).
    pub voters: Option<usize>,
    pub view: QuorumView,
}

fn explain(voters: &Option<usize>, view: &QuorumView) -> String {
    let majority = match voters {
        Some(v) => format!("a majority of the {v} management voters must be up and reachable"),
        None => "a majority of the management voters must be up and reachable".into(),
    };
    let seen = match view {
        QuorumView::Leads => "this node thinks it leads, but a majority does not answer".into(),
        QuorumView::Follows(l) => format!("this node follows node {l}, which does not answer"),
        QuorumView::NoLeader => "this node knows no leader".into(),
        QuorumView::LeaderReported { addr, message } => {
            format!("the leader at {addr} answered: {message}")
        }
    };
    format!("{majority}; {seen}")
}

/// Asking the leader (or another member) failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No answer: the connection failed or broke (the call may or may not have
    /// reached the peer).
    #[error("{addr} is unreachable: {}", status.message())]
    Unreachable { addr: String, status: Status },
    /// The peer answered with an error of its own.
    #[error("{addr} refused: {}", status.message())]
    Refused { addr: String, status: Status },
    /// The peer's address is not a valid URL.
    #[error("{addr} is not a valid address: {reason}")]
    BadAddress { addr: String, reason: String },
    /// The answer could not be decoded (a peer of another build, or corruption).
    #[error("{addr} sent an undecodable answer: {source}")]
    Decode {
        addr: String,
        #[source]
        source: CodecError,
    },
    #[error("the command cannot be encoded: {0}")]
    Encode(#[source] CodecError),
}

impl ProposeError {
    /// The gRPC status for this error (admin API and node-to-node calls alike).
    pub fn to_status(&self) -> Status {
        let message = self.to_string();
        match self {
            ProposeError::NotLeader { leader_addr, .. } => {
                let mut status = Status::unavailable(message);
                mark(&mut status, "not-leader");
                if let Some(a) = leader_addr.as_ref().and_then(|a| a.parse().ok()) {
                    status.metadata_mut().insert(LEADER_METADATA, a);
                }
                status
            }
            ProposeError::NoQuorum(_) => {
                let mut status = Status::unavailable(message);
                mark(&mut status, "no-quorum");
                status
            }
            ProposeError::Forward(ForwardError::Unreachable { .. }) => Status::unavailable(message),
            ProposeError::Forward(ForwardError::Refused { status, .. }) => {
                Status::new(status.code(), message)
            }
            ProposeError::NotApplied { .. } => Status::unavailable(message),
            // This node's Raft no longer runs (it is stopping for a restart or an
            // upgrade, or stopped after a fatal error, in its log): another member
            // can serve, so a client with several goes on to the next.
            ProposeError::Fatal(f) if matches!(**f, openraft::error::Fatal::Stopped) => {
                Status::unavailable(format!(
                    "{message}: this node no longer serves (stopping, or stopped after a \
                     fatal error: see its log); another member can"
                ))
            }
            ProposeError::Forward(_) | ProposeError::Fatal(_) | ProposeError::Membership(_) => {
                Status::internal(message)
            }
        }
    }

    /// What a node-to-node answer meant, as the forwarding node sees it.
    pub fn from_peer(addr: &str, status: Status) -> ProposeError {
        let cause = status
            .metadata()
            .get(CAUSE_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let leader = status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match (status.code(), cause.as_deref(), leader) {
            (tonic::Code::Unavailable, Some("no-quorum"), _) => ProposeError::NoQuorum(NoQuorum {
                what: "the leader could not commit or confirm",
                waited: Duration::ZERO,
                voters: None,
                view: QuorumView::LeaderReported {
                    addr: addr.to_string(),
                    message: status.message().to_string(),
                },
            }),
            (tonic::Code::Unavailable, _, Some(leader)) => ProposeError::NotLeader {
                leader_id: None,
                leader_addr: Some(leader),
            },
            // A build from before the cause marker answers "not the leader" as a
            // bare UNAVAILABLE naming no leader, as a broken connection does;
            // neither reached a leader that accepted the call.
            (tonic::Code::Unavailable, Some("not-leader"), None) => ProposeError::NotLeader {
                leader_id: None,
                leader_addr: None,
            },
            (tonic::Code::Unavailable, _, None) => {
                ProposeError::Forward(ForwardError::Unreachable {
                    addr: addr.to_string(),
                    status,
                })
            }
            _ => ProposeError::Forward(ForwardError::Refused {
                addr: addr.to_string(),
                status,
            }),
        }
    }
}

fn mark(status: &mut Status, cause: &'static str) {
    status.metadata_mut().insert(
        CAUSE_METADATA,
        tonic::metadata::MetadataValue::from_static(cause),
    );
}

/// Why a node could not start or join.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data dir {path} belongs to node {found}, not node {expected}")]
    WrongNode {
        path: PathBuf,
        found: NodeId,
        expected: NodeId,
    },
    #[error("raft log store {path}: {source}")]
    LogStore {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("raft configuration: {0}")]
    Config(Box<openraft::ConfigError>),
    #[error("raft: {0}")]
    Fatal(Box<openraft::error::Fatal<NodeId>>),
    #[error("initializing the raft group: {0}")]
    Initialize(Box<InitializeFailed>),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("no leader was elected within {0:?}")]
    NoLeader(Duration),
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error("joining the cluster: {0}")]
    Join(#[from] JoinError),
}

type InitializeFailed = openraft::error::RaftError<
    NodeId,
    openraft::error::InitializeError<NodeId, openraft::BasicNode>,
>;

impl From<openraft::ConfigError> for StartError {
    fn from(e: openraft::ConfigError) -> Self {
        StartError::Config(Box::new(e))
    }
}

impl From<openraft::error::Fatal<NodeId>> for StartError {
    fn from(e: openraft::error::Fatal<NodeId>) -> Self {
        StartError::Fatal(Box::new(e))
    }
}

impl From<InitializeFailed> for StartError {
    fn from(e: InitializeFailed) -> Self {
        StartError::Initialize(Box::new(e))
    }
}

/// Why joining the management group failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Wrong token, conflicting id, too old a build: asking again will not help.
    #[error("{addr} refused the node: {}", status.message())]
    Refused { addr: String, status: Status },
    #[error("no member accepted the node within {waited:?}; last: {last}")]
    TimedOut { waited: Duration, last: String },
    #[error("joined, but the cluster state did not arrive within {0:?}")]
    NoState(Duration),
}

/// Why a membership change or a drain failed.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("not the leader{}", .0.as_ref().map(|a| format!("; the leader is at {a}")).unwrap_or_default())]
    NotLeader(Option<String>),
    #[error("node {0} is not a member")]
    NotFound(NodeId),
    #[error("node {0} is the only voter; a cluster needs at least one")]
    LastVoter(NodeId),
    #[error("membership change failed: {0}")]
    Change(Box<ChangeFailed>),
    #[error("node {node}: {source}")]
    Peer {
        node: NodeId,
        #[source]
        source: ForwardError,
    },
    #[error(transparent)]
    HandOver(#[from] HandOverError),
}

type ChangeFailed = openraft::error::RaftError<
    NodeId,
    openraft::error::ClientWriteError<NodeId, openraft::BasicNode>,
>;

impl From<ChangeFailed> for MemberError {
    fn from(e: ChangeFailed) -> Self {
        MemberError::Change(Box::new(e))
    }
}

impl MemberError {
    pub fn to_status(&self) -> Status {
        let message = self.to_string();
        match self {
            MemberError::NotLeader(_) | MemberError::HandOver(_) => Status::unavailable(message),
            MemberError::NotFound(_) => Status::not_found(message),
            MemberError::LastVoter(_) => Status::failed_precondition(message),
            MemberError::Peer {
                source: ForwardError::Unreachable { .. },
                ..
            } => Status::unavailable(message),
            MemberError::Peer {
                source: ForwardError::Refused { status, .. },
                ..
            } => Status::new(status.code(), message),
            MemberError::Change(e) => match e.as_ref() {
                openraft::error::RaftError::APIError(
                    openraft::error::ClientWriteError::ForwardToLeader(_),
                ) => Status::unavailable(message),
                openraft::error::RaftError::APIError(
                    openraft::error::ClientWriteError::ChangeMembershipError(_),
                ) => Status::failed_precondition(message),
                openraft::error::RaftError::Fatal(_) => Status::internal(message),
            },
            MemberError::Peer { .. } => Status::internal(message),
        }
    }
}

/// Why a leader could not hand leadership over before a planned stop.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("no follower took over leadership within {0:?}")]
    NoTakeOver(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_survive_the_trip_between_nodes() {
        let no_quorum = ProposeError::NoQuorum(NoQuorum {
            what: "the write was not committed",
            waited: Duration::from_secs(5),
            voters: Some(3),
            view: QuorumView::Leads,
        });
        let status = no_quorum.to_status();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let back = ProposeError::from_peer("10.0.0.1:7171", status);
        assert!(matches!(back, ProposeError::NoQuorum(_)), "{back:?}");
        assert!(back.to_string().contains("no quorum"), "{back}");

        let not_leader = ProposeError::NotLeader {
            leader_id: Some(2),
            leader_addr: Some("10.0.0.2:7171".into()),
        };
        let back = ProposeError::from_peer("10.0.0.1:7171", not_leader.to_status());
        assert!(
            matches!(&back, ProposeError::NotLeader { leader_addr: Some(a), .. } if a == "10.0.0.2:7171"),
            "{back:?}"
        );

        // A broken connection is not "not the leader".
        let broken = Status::unavailable("transport error");
        assert!(matches!(
            ProposeError::from_peer("10.0.0.1:7171", broken),
            ProposeError::Forward(ForwardError::Unreachable { .. })
        ));
    }

    #[test]
    fn fatal_errors_are_internal_not_retryable() {
        let fatal = ProposeError::from(openraft::error::Fatal::Panicked);
        assert_eq!(fatal.to_status().code(), tonic::Code::Internal);
        assert!(fatal.to_status().message().contains("raft stopped"));
        // A fatal error the leader reported keeps its code through forwarding.
        let back = ProposeError::from_peer("10.0.0.1:7171", fatal.to_status());
        assert_eq!(back.to_status().code(), tonic::Code::Internal);
        // A node that stops (a restart) is unavailable: clients go to another.
        let stopped = ProposeError::from(openraft::error::Fatal::Stopped);
        assert_eq!(stopped.to_status().code(), tonic::Code::Unavailable);
        assert!(stopped.to_status().message().contains("another member can"));
    }
}
