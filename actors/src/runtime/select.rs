//! Per-app runtime choice: the app setting `STROM_RUNTIME` (`process` or `docker`),
//! else the worker's default. A worker without a Docker runtime configured refuses
//! `docker` apps with a clear error (their instances report it; other apps run on).

use std::sync::Arc;

use strom_proto::runtime_settings::{RuntimeKind, RUNTIME};

use super::{InstanceRuntime, InstanceSpec, RuntimeError, Started};

pub struct Runtimes {
    pub process: Arc<dyn InstanceRuntime>,
    pub docker: Option<Arc<dyn InstanceRuntime>>,
    pub default: RuntimeKind,
}

impl Runtimes {
    /// Which runtime runs `spec`, or why none can.
    pub fn pick(&self, spec: &InstanceSpec) -> Result<&Arc<dyn InstanceRuntime>, RuntimeError> {
        let kind = match spec.settings.get(RUNTIME).map(|v| v.trim()) {
            None | Some("") => self.default,
            Some(v) => v
                .parse()
                .map_err(|e| RuntimeError::Other(format!("app setting {RUNTIME}: {e}")))?,
        };
        match kind {
            RuntimeKind::Process => Ok(&self.process),
            RuntimeKind::Docker => self.docker.as_ref().ok_or_else(|| {
                RuntimeError::Other(format!(
                    "app `{}` asks for {RUNTIME}=docker, but this worker runs no Docker \
                     runtime (set {RUNTIME}=process)",
                    spec.app
                ))
            }),
        }
    }
}

#[async_trait::async_trait]
impl InstanceRuntime for Runtimes {
    fn name(&self) -> &'static str {
        "select"
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Started, RuntimeError> {
        self.pick(spec)?.start(spec).await
    }
}
