//! One cached gRPC channel per peer address, for every node-to-node call of the
//! management role (forwarded writes and reads, membership, drains, member
//! versions, the leader's live view).
//!
//! A channel connects lazily and reconnects on its own after a failure, so a peer
//! that restarts on the same address is reached again without anything here
//! noticing. Keepalive pings find a peer that vanished without closing its
//! connections within seconds. In memory only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::ForwardError;
use crate::internal_auth::{internal, ClusterSecret, InternalChannel};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Cheap to clone; every clone shares the same channels. Every call on them shows
/// this node's proof of membership.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    secret: ClusterSecret,
}

impl PeerChannels {
    pub fn new(secret: ClusterSecret) -> PeerChannels {
        PeerChannels {
            channels: Arc::default(),
            secret,
        }
    }

    /// The channel to `addr` (`host:port` or a URL), created on first use.
    pub fn get(&self, addr: &str) -> Result<InternalChannel, ForwardError> {
        let url = crate::tls::url(addr);
        let mut channels = self.channels.lock().expect("peer channels lock");
        if let Some(c) = channels.get(&url) {
            return Ok(internal(c.clone(), &self.secret));
        }
        let channel = endpoint(&url)?.connect_lazy();
        channels.insert(url, channel.clone());
        Ok(internal(channel, &self.secret))
    }
}

/// The endpoint settings every node-to-node channel uses.
pub fn endpoint(url: &str) -> Result<Endpoint, ForwardError> {
    let bad = |e: &dyn std::fmt::Display| ForwardError::BadAddress {
        addr: url.to_string(),
        reason: e.to_string(),
    };
    let mut endpoint = Channel::from_shared(url.to_string())
        .map_err(|e| bad(&e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if let Some(tls) = crate::tls::current() {
        endpoint = endpoint
            .tls_config(tls.tonic_client())
            .map_err(|e| bad(&e))?;
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_channel_per_peer_is_reused() {
        let peers = PeerChannels::default();
        peers.get("127.0.0.1:1").unwrap();
        peers.get("http://127.0.0.1:1").unwrap();
        peers.get("127.0.0.1:2").unwrap();
        assert_eq!(peers.channels.lock().unwrap().len(), 2);
        assert!(matches!(
            peers.get("not a url"),
            Err(ForwardError::BadAddress { .. })
        ));
    }
}
