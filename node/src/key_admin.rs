//! Where the key management API's writes go ([`KeyAdmin`]): on a management node,
//! its admin API (the same validation and commit as `strom fn set-key`); on a
//! worker-only node, a proposal to the management group over the internal
//! channel (the node's certificate or the cluster's proof), answered once this
//! node's own view shows the change.

use std::sync::Arc;
use std::time::Duration;

use strom_control_plane::admin_service::AdminApi;
use strom_control_plane::internal_auth::ClusterSecret;
use strom_proto::codec;
use strom_proto::command::{Command, CommandResult, KeyScope};
use strom_proto::ids::AppName;
use strom_proto::internal_v1::cluster_service_client::ClusterServiceClient;
use strom_proto::internal_v1::ProposeRequest;
use strom_proto::worker_view::WorkerView;
use tokio::sync::watch;

use crate::agent::Managers;
use crate::gateway::KeyAdmin;

/// How long a write may take: the proposal, then this node's view following it.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// A management node: its admin API.
pub struct ManagementKeys(pub AdminApi);

#[async_trait::async_trait]
impl KeyAdmin for ManagementKeys {
    async fn put(
        &self,
        app: &AppName,
        scope: KeyScope,
        name: &str,
        value: &str,
    ) -> Result<(), tonic::Status> {
        self.0
            .put_key(app.clone(), scope, name, Some(value))
            .await
            .map(|_| ())
    }

    async fn delete(
        &self,
        app: &AppName,
        scope: KeyScope,
        name: &str,
    ) -> Result<(), tonic::Status> {
        self.0
            .delete_key(app.clone(), scope, name)
            .await
            .map(|_| ())
    }

    fn is_admin_token(&self, token: &str) -> Option<bool> {
        Some(self.0.is_admin_token(token))
    }
}

/// A worker-only node: proposals to the management group.
pub struct RemoteKeys {
    pub managers: Arc<Managers>,
    pub secret: ClusterSecret,
    /// This node's view: a write is answered once it shows it.
    pub view: watch::Receiver<Arc<WorkerView>>,
}

impl RemoteKeys {
    /// Propose `command` to the leader (following leader hints), then wait until
    /// this node's view has applied it.
    async fn propose(&self, command: Command) -> Result<(), tonic::Status> {
        let bytes = codec::encode(&command).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let work = async {
            let mut tried: Vec<String> = Vec::new();
            let mut queue = self.managers.addresses();
            let mut last = "no management node is known".to_string();
            while let Some(addr) = queue.first().cloned() {
                queue.remove(0);
                if tried.contains(&addr) {
                    continue;
                }
                tried.push(addr.clone());
                let channel = match strom_control_plane::tls::channel(
                    &addr,
                    Duration::from_secs(2),
                    &self.secret,
                )
                .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
                let mut request = tonic::Request::new(ProposeRequest {
                    cluster_id: self.managers.cluster_id(),
                    command: bytes.clone(),
                });
                request.set_timeout(Duration::from_secs(5));
                match ClusterServiceClient::new(channel).propose(request).await {
                    Ok(reply) => return Ok(reply.into_inner()),
                    Err(s) => {
                        if let Some(leader) = crate::agent::leader_hint(&s) {
                            queue.insert(0, leader);
                        }
                        last = format!("{addr}: {}", s.message());
                    }
                }
            }
            Err(tonic::Status::unavailable(format!(
                "no management node took the change: {last}"
            )))
        };
        let reply = tokio::time::timeout(WRITE_DEADLINE, work)
            .await
            .map_err(|_| timeout())??;
        let result: CommandResult = codec::decode(&reply.result)
            .map_err(|e| tonic::Status::internal(format!("an undecodable answer: {e}")))?;
        if let CommandResult::Rejected(r) = result {
            return Err(strom_control_plane::admin_service::rejection_status(&r));
        }
        let mut view = self.view.clone();
        tokio::time::timeout(
            WRITE_DEADLINE,
            view.wait_for(|v| v.applied_index >= reply.log_index),
        )
        .await
        .map_err(|_| timeout())?
        .map_err(|_| timeout())?;
        Ok(())
    }
}

fn timeout() -> tonic::Status {
    tonic::Status::deadline_exceeded(format!(
        "the change was not confirmed within {} s (it may still apply)",
        WRITE_DEADLINE.as_secs()
    ))
}

fn now_ms() -> i64 {
    strom_control_plane::management::now_ms()
}

#[async_trait::async_trait]
impl KeyAdmin for RemoteKeys {
    async fn put(
        &self,
        app: &AppName,
        scope: KeyScope,
        name: &str,
        value: &str,
    ) -> Result<(), tonic::Status> {
        self.propose(Command::PutKey {
            app: app.clone(),
            name: if scope == KeyScope::Master {
                "_master".into()
            } else {
                name.into()
            },
            scope,
            value: value.into(),
            at_ms: now_ms(),
        })
        .await
    }

    async fn delete(
        &self,
        app: &AppName,
        scope: KeyScope,
        name: &str,
    ) -> Result<(), tonic::Status> {
        self.propose(Command::DeleteKey {
            app: app.clone(),
            scope,
            name: name.into(),
            at_ms: now_ms(),
        })
        .await
    }

    fn is_admin_token(&self, _token: &str) -> Option<bool> {
        None
    }
}
