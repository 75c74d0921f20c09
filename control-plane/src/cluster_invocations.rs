//! Invocation records of the whole cluster (`strom fn logs`, `ListInvocations`,
//! `StreamInvocations`): this node's own store, and every other worker's, asked
//! over the internal channel (its function port's `/.strom/invocations`, with the
//! node's certificate or the cluster's proof — no new port). A worker that cannot
//! be asked (down, unreachable, slower than [`PEER_DEADLINE`]) is named in the
//! answer, never silently left out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strom_proto::ids::NodeId;
use strom_proto::invocations::{merge_newest, InvocationRecord, Query};

use crate::admin_service::AdminApi;

/// How long one worker may take to answer.
pub const PEER_DEADLINE: Duration = Duration::from_secs(3);
/// The path a worker's function port answers a management node's question at.
pub const PEER_PATH: &str = "/.strom/invocations";

/// Asks another node's function port for its records (the node crate's gateway
/// client implements it: TLS, the cluster's proof).
#[async_trait::async_trait]
pub trait PeerInvocations: Send + Sync {
    async fn fetch(&self, http_addr: &str, query: &Query) -> Result<Vec<InvocationRecord>, String>;
}

/// Where the node's gateway, made after the admin API, announces its client.
#[derive(Clone, Default)]
pub struct PeerSlot(pub(crate) Arc<std::sync::OnceLock<Arc<dyn PeerInvocations>>>);

impl PeerSlot {
    pub fn set(&self, peers: Arc<dyn PeerInvocations>) {
        let _ = self.0.set(peers);
    }
}

/// A query string for [`PEER_PATH`].
pub fn to_query_string(q: &Query) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    if let Some(a) = &q.app {
        s.append_pair("app", a.as_str());
    }
    if let Some(f) = &q.function {
        s.append_pair("function", f);
    }
    if let Some(st) = &q.status {
        s.append_pair("status", st);
    }
    if let Some(t) = q.since_ms {
        s.append_pair("since_ms", &t.to_string());
    }
    if let Some(id) = &q.id {
        s.append_pair("id", id);
    }
    s.append_pair("limit", &q.limit.to_string());
    s.finish()
}

/// The query a [`PEER_PATH`] request carries (unknown or bad values: an error).
pub fn from_query_string(raw: &str) -> Result<Query, String> {
    let mut q = Query {
        limit: 100,
        ..Query::default()
    };
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match &*k {
            "app" => q.app = Some(strom_proto::ids::AppName::parse(&v).map_err(|e| e.to_string())?),
            "function" => q.function = Some(v.into_owned()),
            "status" => {
                Query::check_status(&v)?;
                q.status = Some(v.into_owned());
            }
            "since_ms" => q.since_ms = Some(v.parse().map_err(|_| "since_ms: not a number")?),
            "id" => q.id = Some(v.into_owned()),
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .map_err(|_| "limit: not a number")?
                    .min(10_000)
            }
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    Ok(q)
}

/// Records of the cluster matching `query` (of `node` only, if given), the newest
/// `query.limit` by start time, oldest first; and the workers that could not be asked.
pub async fn gather(
    api: &AdminApi,
    query: &Query,
    node: Option<NodeId>,
) -> (Vec<(NodeId, Arc<InvocationRecord>)>, Vec<(NodeId, String)>) {
    let local = api.local_worker();
    // This node's own records come from its store, not over the network.
    let local_id = local.map_or(api.node.config.node_id, |w| w.node_id);
    let mut all: Vec<(NodeId, Arc<InvocationRecord>)> = Vec::new();
    if let Some(local) = local {
        if node.is_none_or(|n| n == local.node_id) {
            all.extend(
                local
                    .invocations
                    .query(query)
                    .into_iter()
                    .map(|r| (local.node_id, r)),
            );
        }
    }
    let view = api.node.read_local();
    let peers: BTreeMap<NodeId, String> = view
        .state
        .workers
        .iter()
        .filter(|(id, _)| **id != local_id && node.is_none_or(|n| n == **id))
        .map(|(id, w)| (*id, w.info.http_addr.clone()))
        .collect();
    let mut unreachable = Vec::new();
    let Some(client) = api.peers.0.get().cloned() else {
        unreachable.extend(peers.keys().map(|id| {
            (
                *id,
                "this node cannot ask other nodes (it has no function port)".to_string(),
            )
        }));
        return (merge_newest(all, query.limit), unreachable);
    };
    let asks = peers.into_iter().map(|(id, addr)| {
        let client = client.clone();
        let query = query.clone();
        async move {
            let answer = tokio::time::timeout(PEER_DEADLINE, client.fetch(&addr, &query))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer from {addr} within {} s",
                        PEER_DEADLINE.as_secs()
                    ))
                });
            (id, answer)
        }
    });
    for (id, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(records) => all.extend(records.into_iter().map(|r| (id, Arc::new(r)))),
            Err(e) => {
                let down = view.state.workers.get(&id).is_some_and(|w| !w.up);
                unreachable.push((
                    id,
                    if down {
                        format!("worker is Down (no heartbeat): {e}")
                    } else {
                        e
                    },
                ));
            }
        }
    }
    (merge_newest(all, query.limit), unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_goes_over_the_wire_and_back() {
        let q = Query {
            app: Some(strom_proto::ids::AppName::parse("web").unwrap()),
            function: Some("hello".into()),
            status: Some("failed".into()),
            since_ms: Some(1_700_000_000_000),
            id: Some("a b&c".into()),
            limit: 7,
        };
        assert_eq!(from_query_string(&to_query_string(&q)).unwrap(), q);
        assert!(from_query_string("status=maybe").is_err());
        assert!(from_query_string("evil=1").unwrap_err().contains("evil"));
        assert!(from_query_string("app=../x").is_err());
        assert_eq!(from_query_string("limit=999999").unwrap().limit, 10_000);
    }
}
