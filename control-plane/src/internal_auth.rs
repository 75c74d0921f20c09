//! Proof that an internal caller is a node of this cluster, when there is no TLS.
//!
//! With TLS, a node certificate signed by the cluster CA is the proof
//! ([`crate::tls::RequirePeerCert`]). Without it, the cluster id alone is not a
//! credential (it is printed at start and stored in `worker.json`): every internal
//! call — Raft, joins, forwarded writes, packages, worker streams — and every
//! gateway hop carries [`PROOF_METADATA`], a value derived from the join token
//! (SHA-256 over a fixed label and the token). Every node knows the join token
//! (`join.token`, 0600); the proof is never printed or logged, and a node compares
//! what it is shown with its own in constant time.
//!
//! Nodes of the previous protocol send no proof: a call without one is accepted
//! until the cluster speaks [`Feature::InternalProof`] (every member and worker
//! upgraded), then refused. A wrong proof is always refused. In memory only.

use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use strom_proto::version::Feature;
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::state_machine::StateView;

/// The gRPC metadata (and HTTP header, on the hop) carrying the proof.
pub const PROOF_METADATA: &str = "x-strom-proof";

const LABEL: &[u8] = b"strom internal proof v1\n";
const METRICS_LABEL: &[u8] = b"strom metrics token v1\n";

/// The proof of one join token: `base64url(SHA-256(label ‖ token))`.
fn derive(join_token: &str) -> Arc<str> {
    use base64::Engine;
    let digest = Sha256::new()
        .chain_update(LABEL)
        .chain_update(join_token.trim().as_bytes())
        .finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(digest)
        .into()
}

/// This node's proof, once it knows the join token. Cheap to clone; clones share
/// it (a node that creates or learns the token later updates every holder).
#[derive(Clone, Default)]
pub struct ClusterSecret(Arc<RwLock<Option<Arc<str>>>>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let known = self.0.read().map(|s| s.is_some()).unwrap_or(false);
        write!(f, "ClusterSecret {{ known: {known} }}")
    }
}

impl ClusterSecret {
    pub fn from_join_token(token: &str) -> ClusterSecret {
        let secret = ClusterSecret::default();
        secret.set_join_token(token);
        secret
    }

    /// Learn the join token (an empty one is ignored).
    pub fn set_join_token(&self, token: &str) {
        if token.trim().is_empty() {
            return;
        }
        *self.0.write().expect("secret lock") = Some(derive(token));
    }

    /// The join token kept in `dir/join.token`, if there is one.
    pub fn load(&self, dir: &std::path::Path) {
        if let Ok(token) = std::fs::read_to_string(dir.join("join.token")) {
            self.set_join_token(&token);
        }
    }

    pub fn is_known(&self) -> bool {
        self.proof().is_some()
    }

    /// What this node shows other nodes.
    pub fn proof(&self) -> Option<Arc<str>> {
        self.0.read().expect("secret lock").clone()
    }

    /// The cluster's read-only metrics token (`GET /metrics`):
    /// `base64url(SHA-256(label ‖ proof))`, so it reveals neither the proof nor the
    /// join token, and every node derives the same one.
    pub fn metrics_token(&self) -> Option<String> {
        use base64::Engine;
        let proof = self.proof()?;
        let digest = Sha256::new()
            .chain_update(METRICS_LABEL)
            .chain_update(proof.as_bytes())
            .finalize();
        Some(format!(
            "strom-metrics-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
        ))
    }

    /// Whether `presented` is this cluster's proof (constant time; false while
    /// this node does not know the token).
    pub fn verify(&self, presented: &[u8]) -> bool {
        match self.proof() {
            Some(ours) => ours.as_bytes().ct_eq(presented).into(),
            None => false,
        }
    }
}

/// Adds this node's proof to every call on a channel to another node.
#[derive(Clone, Debug)]
pub struct AttachProof(pub ClusterSecret);

impl Interceptor for AttachProof {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(proof) = self.0.proof() {
            if let Ok(value) = MetadataValue::try_from(&*proof) {
                request.metadata_mut().insert(PROOF_METADATA, value);
            }
        }
        Ok(request)
    }
}

/// A channel to another node's control port that proves this node's membership.
pub type InternalChannel = InterceptedService<Channel, AttachProof>;

pub fn internal(channel: Channel, secret: &ClusterSecret) -> InternalChannel {
    InterceptedService::new(channel, AttachProof(secret.clone()))
}

/// What the caller of an internal service showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// The right proof.
    Valid,
    /// None at all (a node of the previous protocol, or not a node).
    Missing,
    /// A proof that is not this cluster's.
    Wrong,
}

pub fn check(secret: &ClusterSecret, presented: Option<&[u8]>) -> Shown {
    match presented {
        None => Shown::Missing,
        Some(p) if secret.verify(p) => Shown::Valid,
        Some(_) => Shown::Wrong,
    }
}

/// Whether a call that showed `shown` is let in, given the cluster's protocol.
pub fn admits(shown: Shown, proof_required: bool) -> bool {
    match shown {
        Shown::Valid => true,
        Shown::Missing => !proof_required,
        Shown::Wrong => false,
    }
}

/// Whether a cluster at `protocol` requires the proof of every internal caller.
pub fn required_at(protocol: u32) -> bool {
    protocol >= Feature::InternalProof.since()
}

/// The interceptor of every internal service on the control port: with TLS a
/// verified node certificate, without it this cluster's proof.
#[derive(Clone)]
pub struct RequireNode {
    pub secret: ClusterSecret,
    pub state: watch::Receiver<Arc<StateView>>,
}

impl Interceptor for RequireNode {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if crate::tls::current().is_some() {
            return crate::tls::RequirePeerCert.call(request);
        }
        let shown = check(
            &self.secret,
            request.metadata().get(PROOF_METADATA).map(|v| v.as_bytes()),
        );
        // The state is read only when the proof is not valid (not on the hot path).
        if shown == Shown::Valid || admits(shown, required_at(self.state.borrow().state.protocol()))
        {
            return Ok(request);
        }
        Err(Status::unauthenticated(match shown {
            Shown::Missing => "internal service: callers must prove they are a node of this cluster (no proof shown)",
            _ => "invalid join token: the caller's proof (derived from its join token) is not this cluster's",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proof_depends_on_the_token_and_is_not_the_token() {
        let a = ClusterSecret::from_join_token("strom_token_a\n");
        let b = ClusterSecret::from_join_token("strom_token_b");
        let proof = a.proof().unwrap();
        assert!(!proof.contains("strom_token_a"));
        assert_ne!(proof, b.proof().unwrap());
        assert_eq!(
            proof,
            ClusterSecret::from_join_token("strom_token_a")
                .proof()
                .unwrap()
        );
        assert!(!format!("{a:?}").contains(&*proof));
    }

    #[test]
    fn only_the_right_proof_is_valid() {
        let s = ClusterSecret::from_join_token("t");
        let proof = s.proof().unwrap();
        assert_eq!(check(&s, Some(proof.as_bytes())), Shown::Valid);
        assert_eq!(check(&s, None), Shown::Missing);
        assert_eq!(check(&s, Some(b"")), Shown::Wrong);
        assert_eq!(check(&s, Some(b"t")), Shown::Wrong);
        let mut almost = proof.as_bytes().to_vec();
        almost[0] ^= 1;
        assert_eq!(check(&s, Some(&almost)), Shown::Wrong);
        // A node that does not know the token yet accepts no proof as valid.
        assert_eq!(
            check(&ClusterSecret::default(), Some(proof.as_bytes())),
            Shown::Wrong
        );
    }

    #[test]
    fn a_missing_proof_is_refused_once_the_cluster_requires_it() {
        let old = Feature::InternalProof.since() - 1;
        assert!(admits(Shown::Missing, required_at(old)));
        assert!(!admits(Shown::Missing, required_at(old + 1)));
        assert!(!admits(Shown::Wrong, required_at(old)));
        assert!(admits(Shown::Valid, required_at(old + 1)));
    }

    #[test]
    fn a_later_token_reaches_every_clone() {
        let s = ClusterSecret::default();
        let held = s.clone();
        assert!(!held.is_known());
        s.set_join_token("  ");
        assert!(!held.is_known());
        s.set_join_token("t");
        assert_eq!(held.proof(), ClusterSecret::from_join_token("t").proof());
    }
}
