//! Nothing leaked: every container carries its cluster's and node's labels, the
//! runtime keeps the names of the containers live instances own, and a sweep
//! removes every container of this node that none owns — at worker start (what a
//! killed worker left), in the background on the next start once something may
//! have been left behind, and at shutdown (then all of them). Containers of other
//! nodes or clusters are never touched.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;

use super::engine::remove;
use super::{DockerRuntime, RuntimeError, LABEL_CLUSTER, LABEL_NODE};

impl DockerRuntime {
    fn labels(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_CLUSTER}={}", self.config.cluster),
                format!("{LABEL_NODE}={}", self.config.node),
            ],
        )])
    }

    /// Remove every container of this node (cluster + node labels) that no live
    /// instance owns; returns their names. An unreachable engine is an error.
    pub async fn sweep(&self) -> Result<Vec<String>, RuntimeError> {
        self.sweep_where(true).await
    }

    /// At shutdown, after the instances had their chance to stop: remove every
    /// container of this node, live or not.
    pub async fn sweep_all(&self) -> Result<Vec<String>, RuntimeError> {
        self.sweep_where(false).await
    }

    /// Remove this node's containers network (at shutdown, after its containers);
    /// the next start creates it again. In use or gone: left as it is.
    pub async fn remove_network(&self) {
        if let Ok(docker) = self.client().await {
            let _ = docker.remove_network(&self.network_name()).await;
        }
    }

    async fn sweep_where(&self, spare_live: bool) -> Result<Vec<String>, RuntimeError> {
        let docker = self.client().await?;
        let list = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&self.labels())
                    .build(),
            ))
            .await
            .map_err(|e| self.engine_error(e))?;
        let mut removed = Vec::new();
        for c in list {
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            if spare_live && self.live.lock().expect("live lock").contains(&name) {
                continue;
            }
            match remove(&docker, &name).await {
                Ok(()) => removed.push(name),
                Err(e) => tracing::warn!(container = %name, "cannot remove a stale container: {e}"),
            }
        }
        if !removed.is_empty() {
            tracing::warn!(?removed, "removed containers no live instance owns");
        }
        Ok(removed)
    }

    /// A sweep in the background (at most one at a time, bounded): a start does not
    /// wait on it.
    pub(super) fn sweep_in_background(&self) {
        use std::sync::atomic::Ordering;
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let done = match tokio::time::timeout(Duration::from_secs(60), me.sweep()).await {
                Ok(Err(e)) => {
                    tracing::warn!("sweeping stale containers: {e}");
                    false
                }
                Err(_) => {
                    tracing::warn!("sweeping stale containers took over 60 s");
                    false
                }
                Ok(Ok(_)) => true,
            };
            if !done {
                me.left_behind.store(true, Ordering::Release);
            }
            me.sweeping.store(false, Ordering::Release);
        });
    }
}
