//! The Docker engine connection: made on first use (API version negotiated, so
//! older engines, API 1.41, work), made afresh after a failure (the engine may
//! have restarted), and what the engine runs ([`EngineOs`]). Errors name the
//! engine's address and its own message.

use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use bollard::Docker;
use tokio::sync::OnceCell;

use super::{DockerRuntime, RuntimeError, WWWROOT, WWWROOT_WINDOWS};
use std::sync::Arc;

/// What the engine runs: Linux or Windows containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineOs {
    Linux,
    Windows,
}

impl EngineOs {
    pub(crate) fn from_info(os_type: Option<&str>) -> EngineOs {
        match os_type {
            Some(t) if t.eq_ignore_ascii_case("windows") => EngineOs::Windows,
            _ => EngineOs::Linux,
        }
    }

    pub fn wwwroot(self) -> &'static str {
        match self {
            EngineOs::Linux => WWWROOT,
            EngineOs::Windows => WWWROOT_WINDOWS,
        }
    }

    pub(crate) fn separator(self) -> char {
        match self {
            EngineOs::Linux => '/',
            EngineOs::Windows => '\\',
        }
    }
}

pub(crate) fn default_engine_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| {
        if cfg!(windows) {
            "npipe:////./pipe/docker_engine".into()
        } else {
            "unix:///var/run/docker.sock".into()
        }
    })
}

pub(crate) fn unreachable_at(engine: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(format!(
        "the Docker engine at {engine} is unreachable (DOCKER_HOST names another): {e}"
    ))
}

pub(crate) fn unreachable(e: impl std::fmt::Display) -> RuntimeError {
    unreachable_at(&default_engine_address(), e)
}

pub(crate) fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A Docker error as one line: the engine's message when it gave one.
pub(crate) fn describe(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    }
}

impl DockerRuntime {
    /// The engine client, connected (and its API version negotiated) on first use.
    pub async fn client(&self) -> Result<Docker, RuntimeError> {
        Ok(self.engine().await?.0)
    }

    /// The client and what the engine runs.
    pub async fn engine(&self) -> Result<(Docker, EngineOs), RuntimeError> {
        let cell = self.client.lock().expect("client lock").clone();
        let engine = self.engine_address();
        let connect = async {
            let docker = match &self.config.engine {
                Some(host) => Docker::connect_with_host(host),
                None => Docker::connect_with_defaults(),
            }
            .map_err(|e| unreachable_at(&engine, e))?;
            let ask = async {
                let docker = docker.negotiate_version().await?;
                let info = docker.info().await?;
                Ok::<_, DockerError>((docker, EngineOs::from_info(info.os_type.as_deref())))
            };
            tokio::time::timeout(Duration::from_secs(10), ask)
                .await
                .map_err(|_| unreachable_at(&engine, "no answer within 10 s"))?
                .map_err(|e| unreachable_at(&engine, describe(&e)))
        };
        cell.get_or_try_init(|| connect).await.cloned()
    }

    /// Where the engine is expected.
    pub fn engine_address(&self) -> String {
        self.config
            .engine
            .clone()
            .unwrap_or_else(default_engine_address)
    }

    /// After a connection failure, connect afresh next time (the engine may have
    /// restarted, or `DOCKER_HOST` pointed at a proxy that came back).
    pub(super) fn reconnect_later(&self) {
        *self.client.lock().expect("client lock") = Arc::new(OnceCell::new());
    }

    /// An engine error: the engine's own answer, or (no answer) unreachable, and
    /// then a fresh connection next time.
    pub(super) fn engine_error(&self, e: DockerError) -> RuntimeError {
        match e {
            DockerError::DockerResponseServerError { .. } => {
                RuntimeError::Other(format!("the Docker engine: {}", describe(&e)))
            }
            other => {
                self.reconnect_later();
                unreachable_at(&self.engine_address(), describe(&other))
            }
        }
    }
}

/// Force-remove a container (and its anonymous volumes); gone already is fine.
pub(super) async fn remove(docker: &Docker, name: &str) -> Result<(), String> {
    match docker
        .remove_container(
            name,
            Some(
                RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()), // removal already in progress
        Err(e) => Err(describe(&e)),
    }
}
