//! An instance's life as a container: the image present (pulled only if
//! allowed), the node's network, create and start (a start that fails or is
//! cancelled removes its container), its output followed into the line ring, its
//! end reported once the last lines are in, then the container removed; a stop is
//! the engine's (SIGTERM, grace, SIGKILL) and returns once the container is gone.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use strom_proto::runtime_settings::RuntimeSettings;
use tokio::sync::{broadcast, watch};

use super::engine::{describe, is_not_found, remove};
use super::mount::plain_path;
use super::spec::{endpoint_of, exit_from};
use super::{DockerRuntime, EngineOs, CONTAINER_PORT, LABEL_CLUSTER, LABEL_NODE, NOT_READY_HINT};
use crate::runtime::{
    ExitInfo, InstanceControl, InstanceSpec, LineSplitter, LogLine, LogStream, RuntimeError,
    Started,
};

impl DockerRuntime {
    /// The node's bridge network for its containers (Linux), created on first use:
    /// no traffic between containers (`enable_icc=false`); published ports work.
    pub fn network_name(&self) -> String {
        let cluster: String = self
            .config
            .cluster
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        format!("strom-{}-{cluster}", self.config.node)
    }

    /// The network's id (containers join it by id: names may be ambiguous).
    async fn ensure_network(&self, docker: &Docker) -> Result<String, RuntimeError> {
        let _one_at_a_time = self.network.lock().await;
        let name = self.network_name();
        match docker.inspect_network(&name, None).await {
            Ok(n) => {
                return n
                    .id
                    .ok_or_else(|| RuntimeError::Other(format!("network {name}: no id")))
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.engine_error(e)),
        }
        let request = bollard::models::NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_string(),
                "false".to_string(),
            )])),
            labels: Some(HashMap::from([
                (LABEL_CLUSTER.to_string(), self.config.cluster.clone()),
                (LABEL_NODE.to_string(), self.config.node.to_string()),
            ])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(created) => Ok(created.id),
            Err(e) => Err(RuntimeError::Other(format!(
                "creating the containers' network {name}: {}",
                describe(&e)
            ))),
        }
    }

    /// The image, present on the engine (pulled first if allowed).
    async fn ensure_image(
        &self,
        docker: &Docker,
        image: &str,
    ) -> Result<bollard::models::ImageInspect, RuntimeError> {
        match docker.inspect_image(image).await {
            Ok(i) => return Ok(i),
            Err(e) if is_not_found(&e) && self.config.allow_pull => {}
            Err(e) if is_not_found(&e) => {
                return Err(RuntimeError::Other(format!(
                    "image `{image}` is not on this worker's Docker engine; build it \
                     (`strom image build`) or load it (`docker load`) on every worker, \
                     or let workers pull it (--container-allow-pull)"
                )))
            }
            Err(e) => return Err(self.engine_error(e)),
        }
        tracing::info!(%image, "pulling image");
        // Without a tag or digest the engine would pull every tag.
        let last = image.rsplit('/').next().unwrap_or(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(image);
        if !last.contains(':') && !image.contains('@') {
            options = options.tag("latest");
        }
        let pull = async {
            let mut stream = docker.create_image(Some(options.build()), None, None);
            while let Some(step) = stream.next().await {
                step.map_err(|e| {
                    RuntimeError::Other(format!("pulling image `{image}` failed: {}", describe(&e)))
                })?;
            }
            Ok::<_, RuntimeError>(())
        };
        tokio::time::timeout(Duration::from_secs(900), pull)
            .await
            .map_err(|_| {
                RuntimeError::Other(format!("pulling image `{image}` took over 15 minutes"))
            })??;
        docker.inspect_image(image).await.map_err(|e| {
            RuntimeError::Other(format!("image `{image}` after the pull: {}", describe(&e)))
        })
    }
}

/// The container of a start in progress: if the start fails or is cancelled (its
/// future dropped) at any point, the container is removed and its name leaves the
/// live set, so nothing is left that the sweep would spare.
struct Pending {
    docker: Docker,
    name: String,
    live: Arc<Mutex<HashSet<String>>>,
    left_behind: Arc<std::sync::atomic::AtomicBool>,
    armed: bool,
}

impl Pending {
    fn new(runtime: &DockerRuntime, docker: &Docker, name: &str) -> Pending {
        runtime
            .live
            .lock()
            .expect("live lock")
            .insert(name.to_string());
        Pending {
            docker: docker.clone(),
            name: name.to_string(),
            live: runtime.live.clone(),
            left_behind: runtime.left_behind.clone(),
            armed: true,
        }
    }

    /// Started: the exit watcher owns the container (and its live entry) now.
    fn keep(mut self) {
        self.armed = false;
    }

    async fn fail(mut self) {
        self.armed = false;
        if remove(&self.docker, &self.name).await.is_err() {
            self.left_behind
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.live.lock().expect("live lock").remove(&self.name);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Cancelled mid-start: remove in the background (a create still in flight
        // is caught by the next sweep, its name no longer being live).
        self.live.lock().expect("live lock").remove(&self.name);
        self.left_behind
            .store(true, std::sync::atomic::Ordering::Release);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            let name = std::mem::take(&mut self.name);
            rt.spawn(async move {
                let _ = remove(&docker, &name).await;
            });
        }
    }
}

impl DockerRuntime {
    /// Start one instance (see the module documentation).
    pub async fn start_instance(&self, spec: &InstanceSpec) -> Result<Started, RuntimeError> {
        let settings = RuntimeSettings::parse(&spec.settings)
            .map_err(|e| RuntimeError::Other(format!("app settings: {e}")))?
            .or(&self.config.defaults);
        let image = settings.image.clone().ok_or_else(|| {
            RuntimeError::Other(format!(
                "app `{}` runs in containers but names no image: set the app setting \
                 STROM_CONTAINER_IMAGE, or give workers --container-image",
                spec.app
            ))
        })?;
        let source: PathBuf = std::fs::canonicalize(&spec.app_root)
            .map(plain_path)
            .map_err(|e| {
                RuntimeError::Other(format!("app folder {}: {e}", spec.app_root.display()))
            })?;
        let (docker, os) = self.engine().await?;
        // What a lost engine connection or a cancelled start left behind (what a
        // killed worker left is swept when the worker starts).
        if self
            .left_behind
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.sweep_in_background();
        }
        let inspect = self.ensure_image(&docker, &image).await?;
        let image_user = inspect.config.as_ref().and_then(|c| c.user.clone());
        let name = format!("strom-{}", spec.instance_id);
        let network = match os {
            EngineOs::Linux => Some(self.ensure_network(&docker).await?),
            // Windows containers stay on the engine's `nat` network.
            EngineOs::Windows => None,
        };
        let body = self.body(
            spec,
            &settings,
            &image,
            image_user.as_deref(),
            &source,
            os,
            network.as_deref(),
        );
        let pending = Pending::new(self, &docker, &name);
        match self.create_and_start(&docker, &name, body, os).await {
            Ok((endpoint, pid)) => {
                pending.keep();
                Ok(self.watch(&docker, &name, endpoint, pid, spec, os))
            }
            Err(e) => {
                pending.fail().await;
                Err(e)
            }
        }
    }

    async fn create_and_start(
        &self,
        docker: &Docker,
        name: &str,
        body: ContainerCreateBody,
        os: EngineOs,
    ) -> Result<(SocketAddr, Option<u32>), RuntimeError> {
        let failed = |what: &str, e: DockerError| match e {
            DockerError::DockerResponseServerError { .. } => {
                RuntimeError::Other(format!("{what} container {name}: {}", describe(&e)))
            }
            other => self.engine_error(other),
        };
        docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map_err(|e| failed("creating", e))?;
        docker
            .start_container(name, None)
            .await
            .map_err(|e| failed("starting", e))?;
        let inspect = docker
            .inspect_container(name, None)
            .await
            .map_err(|e| failed("inspecting", e))?;
        let running = inspect
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        // A handler that already exited has no address; its exit is reported by the
        // watcher like any other (with its output).
        let endpoint = match (endpoint_of(&inspect, os), running) {
            (Some(e), _) => e,
            (None, false) => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            (None, true) => {
                return Err(RuntimeError::Other(format!(
                    "container {name}: the engine gave no address for port {CONTAINER_PORT}"
                )))
            }
        };
        let pid = inspect
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .map(|p| p as u32);
        Ok((endpoint, pid))
    }

    /// Follow a started container's output and its end; the end is reported once
    /// its last lines are in, and then the container is removed.
    fn watch(
        &self,
        docker: &Docker,
        name: &str,
        endpoint: SocketAddr,
        pid: Option<u32>,
        spec: &InstanceSpec,
        os: EngineOs,
    ) -> Started {
        // Subscribed before the log stream starts: no line is missed.
        let (logs, lines) = broadcast::channel(1024);
        let logs_done = tokio::spawn(follow_logs(
            docker.clone(),
            name.to_string(),
            logs.clone(),
            spec.instance_id.clone(),
        ));
        let (exit_tx, exited) = watch::channel(None);
        let (removed_tx, removed) = watch::channel(false);
        let live = self.live.clone();
        let left_behind = self.left_behind.clone();
        let watcher_docker = docker.clone();
        let watcher_name = name.to_string();
        tokio::spawn(async move {
            let info = wait_exit(&watcher_docker, &watcher_name, os).await;
            // The log stream ends with the container; let it deliver the last lines.
            let _ = tokio::time::timeout(Duration::from_secs(2), logs_done).await;
            let _ = exit_tx.send(Some(info));
            match remove(&watcher_docker, &watcher_name).await {
                // Gone: the sweep may take the name from now on.
                Ok(()) => {
                    live.lock().expect("live lock").remove(&watcher_name);
                }
                // Still there (the engine is away): not live any more, so the next
                // sweep removes it.
                Err(e) => {
                    live.lock().expect("live lock").remove(&watcher_name);
                    left_behind.store(true, std::sync::atomic::Ordering::Release);
                    tracing::warn!(container = %watcher_name, "cannot remove the ended container (the next sweep will): {e}");
                }
            }
            let _ = removed_tx.send(true);
        });
        Started {
            endpoint,
            pid,
            logs,
            lines: Some(lines),
            exited: exited.clone(),
            control: Box::new(DockerControl {
                docker: docker.clone(),
                name: name.to_string(),
                exited,
                removed,
                stopped: false,
            }),
            not_ready_hint: Some(NOT_READY_HINT),
        }
    }
}

/// How the container ended. A lost engine connection ends the watch too (the
/// instance is replaced; the sweep removes the container once the engine answers).
async fn wait_exit(docker: &Docker, name: &str, os: EngineOs) -> ExitInfo {
    let mut wait = docker.wait_container(
        name,
        Some(
            WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build(),
        ),
    );
    let code = match wait.next().await {
        Some(Ok(r)) => r.status_code,
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
        Some(Err(e)) => {
            return ExitInfo::Other(format!(
                "lost track of container {name}: the Docker engine: {}",
                describe(&e)
            ))
        }
        None => {
            return ExitInfo::Other(format!(
                "lost track of container {name}: the Docker engine closed the connection"
            ))
        }
    };
    let oom_flag = || async {
        match docker.inspect_container(name, None).await {
            Ok(i) => i.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(_) => false,
        }
    };
    let mut oom = oom_flag().await;
    if !oom && code == 137 && os == EngineOs::Linux {
        // The OOM event can trail the exit a little.
        tokio::time::sleep(Duration::from_millis(200)).await;
        oom = oom_flag().await;
    }
    exit_from(code, oom, os)
}

async fn follow_logs(
    docker: Docker,
    name: String,
    tx: broadcast::Sender<LogLine>,
    instance: String,
) {
    let mut stream = docker.logs(
        &name,
        Some(
            LogsOptionsBuilder::new()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    let mut out = LineSplitter::new(LogStream::Stdout, tx.clone(), instance.clone());
    let mut err = LineSplitter::new(LogStream::Stderr, tx, instance);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bollard::container::LogOutput::StdOut { message })
            | Ok(bollard::container::LogOutput::Console { message }) => out.push(&message),
            Ok(bollard::container::LogOutput::StdErr { message }) => err.push(&message),
            Ok(bollard::container::LogOutput::StdIn { .. }) => {}
            Err(_) => break,
        }
    }
    out.finish();
    err.finish();
}

struct DockerControl {
    docker: Docker,
    name: String,
    exited: watch::Receiver<Option<ExitInfo>>,
    /// The watcher has removed the container (or given it to the sweep).
    removed: watch::Receiver<bool>,
    stopped: bool,
}

#[async_trait::async_trait]
impl InstanceControl for DockerControl {
    async fn stop(&mut self, grace: Duration) -> ExitInfo {
        self.stopped = true;
        if let Some(info) = self.exited.borrow().clone() {
            return info;
        }
        // SIGTERM, `grace`, then SIGKILL: the engine does both.
        let t = grace.as_secs_f64().ceil() as i32;
        if let Err(e) = self
            .docker
            .stop_container(
                &self.name,
                Some(StopContainerOptionsBuilder::new().t(t).build()),
            )
            .await
        {
            if !is_not_found(&e) {
                tracing::warn!(container = %self.name, "stopping: {}", describe(&e));
                // Removal kills it, if the engine answers at all.
                let _ = remove(&self.docker, &self.name).await;
            }
        }
        let ended = match tokio::time::timeout(
            grace + Duration::from_secs(10),
            self.exited.wait_for(|e| e.is_some()),
        )
        .await
        {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        };
        let info = match ended {
            Some(info) => info,
            None => {
                let _ = remove(&self.docker, &self.name).await;
                ExitInfo::Other(format!(
                    "container {} did not report its end; it was removed",
                    self.name
                ))
            }
        };
        // Stopped means gone: the container is removed before this returns.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.removed.wait_for(|r| *r)).await;
        info
    }
}

impl Drop for DockerControl {
    /// Dropped without a stop (an actor that failed before it could stop it): the
    /// container must not run on unowned.
    fn drop(&mut self) {
        if self.stopped || *self.removed.borrow() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            let name = self.name.clone();
            rt.spawn(async move {
                let _ = remove(&docker, &name).await;
            });
        }
    }
}
