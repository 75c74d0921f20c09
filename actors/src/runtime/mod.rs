//! Instance runtimes: how one instance of an app version is started, watched and
//! stopped. One trait, two real implementations (the process runtime here; Docker
//! later), one shared conformance suite.
//!
//! A runtime only starts and stops; readiness ([`crate::readiness`]), restarts
//! ([`crate::restart_policy`]) and routing are decided elsewhere, the same way for
//! every runtime.

pub mod process;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use strom_proto::ids::{AppName, VersionId};
use strom_proto::manifest::CustomHandler;
use tokio::sync::{broadcast, watch};

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub app: AppName,
    pub version: VersionId,
    /// Unique per start (a restart gets a new id); also the handler's
    /// `FUNCTIONS_CUSTOMHANDLER_WORKER_ID`.
    pub instance_id: String,
    /// The unpacked package (`FUNCTIONS_APP_ROOT_PATH`).
    pub app_root: PathBuf,
    pub handler: CustomHandler,
    /// App settings, passed to the handler as environment variables.
    pub settings: BTreeMap<String, String>,
}

/// Which output stream a handler log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub text: String,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitInfo {
    Code(i32),
    Signal(i32),
    OutOfMemory,
    Other(String),
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitInfo::Code(c) => write!(f, "exited with code {c}"),
            ExitInfo::Signal(s) => write!(f, "killed by signal {s}"),
            ExitInfo::OutOfMemory => write!(f, "killed: out of memory"),
            ExitInfo::Other(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("starting `{program}` in {dir}: {source}")]
    Spawn {
        program: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free port for the handler: {0}")]
    NoPort(std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// A started instance.
pub struct Started {
    /// Where the handler listens (always 127.0.0.1).
    pub endpoint: SocketAddr,
    pub pid: Option<u32>,
    /// Handler stdout/stderr, line by line.
    pub logs: broadcast::Sender<LogLine>,
    /// Becomes `Some` when the instance has ended.
    pub exited: watch::Receiver<Option<ExitInfo>>,
    pub control: Box<dyn InstanceControl>,
}

#[async_trait::async_trait]
pub trait InstanceControl: Send + Sync {
    /// Ask the instance to stop (SIGTERM or equivalent), wait up to `grace`, then
    /// kill it. Returns how it ended.
    async fn stop(&mut self, grace: Duration) -> ExitInfo;
}

#[async_trait::async_trait]
pub trait InstanceRuntime: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn start(&self, spec: &InstanceSpec) -> Result<Started, RuntimeError>;
}

/// Expand `%NAME%` from app settings, then the environment (as Azure does for
/// `arguments`); unknown names are left as written.
pub fn expand_settings(text: &str, settings: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('%') {
            Some(end) if end > 0 => {
                let name = &after[..end];
                match settings
                    .get(name)
                    .cloned()
                    .or_else(|| std::env::var(name).ok())
                {
                    Some(v) => out.push_str(&v),
                    None => {
                        out.push('%');
                        out.push_str(name);
                        out.push('%');
                    }
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_expanded_in_arguments() {
        let s = BTreeMap::from([("PORTX".to_string(), "8080".to_string())]);
        assert_eq!(expand_settings("--port=%PORTX%", &s), "--port=8080");
        assert_eq!(
            expand_settings("%UNKNOWN_SETTING_X%", &s),
            "%UNKNOWN_SETTING_X%"
        );
        assert_eq!(expand_settings("100%", &s), "100%");
        assert_eq!(expand_settings("%%", &s), "%%");
    }
}
