//! Instance runtimes: how one instance of an app version is started, watched and
//! stopped. One trait, two real implementations ([`process`], the default, and
//! [`docker`], containers through the Docker Engine API), chosen per app by
//! [`select::Runtimes`], and one shared conformance suite
//! (`actors/tests/conformance.rs`); [`fake`] pretends, so the supervisor tree
//! above can be tested in virtual time.
//!
//! A runtime only starts and stops; readiness ([`crate::readiness`]), restarts
//! ([`crate::restart_policy`]) and routing are decided elsewhere, the same way for
//! every runtime.

pub mod docker;
pub mod fake;
#[cfg(windows)]
pub mod job;
pub mod process;
pub mod select;

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

impl InstanceSpec {
    /// `arguments` with `%SETTING%` expanded.
    pub fn expanded_arguments(&self) -> Vec<String> {
        self.handler
            .arguments
            .iter()
            .map(|a| expand_settings(a, &self.settings))
            .collect()
    }

    /// What the Azure host tells a custom handler, whatever runs it: its port, its
    /// worker id and the app root (with the legacy `HTTPWORKER` names).
    pub fn host_env(&self, port: u16, app_root: &str) -> [(&'static str, String); 5] {
        [
            ("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string()),
            ("FUNCTIONS_HTTPWORKER_PORT", port.to_string()),
            (
                "FUNCTIONS_CUSTOMHANDLER_WORKER_ID",
                self.instance_id.clone(),
            ),
            ("FUNCTIONS_HTTPWORKER_ID", self.instance_id.clone()),
            ("FUNCTIONS_APP_ROOT_PATH", app_root.to_string()),
        ]
    }
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
            // Windows' NTSTATUS exit codes (0xC0000005, …) as Windows shows them.
            ExitInfo::Code(c) if *c < 0 => write!(f, "exited with code {:#010X}", *c as u32),
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
    /// Every line from the start (subscribed before the handler could write); taken
    /// by the instance's owner (an unread receiver would hold up to 1024 lines).
    pub lines: Option<broadcast::Receiver<LogLine>>,
    /// Becomes `Some` when the instance has ended.
    pub exited: watch::Receiver<Option<ExitInfo>>,
    pub control: Box<dyn InstanceControl>,
    /// Added to a "never became ready" report (e.g. what a container needs).
    pub not_ready_hint: Option<&'static str>,
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

    /// Whether a started instance answers at `endpoint` (one readiness probe).
    /// Every real runtime uses the host's HTTP probe ([`crate::readiness`]); the
    /// fake runtime answers from its pretend world.
    async fn ready(&self, endpoint: SocketAddr) -> bool {
        crate::readiness::probe(endpoint).await
    }
}

/// Longest output line kept; longer lines are cut (marked with `…`).
pub const MAX_LINE_BYTES: usize = 8192;

/// Splits a handler's output, chunk by chunk, into lines (at most
/// [`MAX_LINE_BYTES`] each, `\r\n` or `\n`), and publishes them.
pub(crate) struct LineSplitter {
    stream: LogStream,
    tx: broadcast::Sender<LogLine>,
    instance: String,
    line: Vec<u8>,
    cut: bool,
}

impl LineSplitter {
    pub(crate) fn new(stream: LogStream, tx: broadcast::Sender<LogLine>, instance: String) -> Self {
        LineSplitter {
            stream,
            tx,
            instance,
            line: Vec::new(),
            cut: false,
        }
    }

    pub(crate) fn push(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let (part, rest, complete) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            if part.len() > room {
                self.cut = true;
            }
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            if complete {
                self.emit();
            }
            chunk = rest;
        }
    }

    /// The output ended: publish a last line without a newline.
    pub(crate) fn finish(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }

    fn emit(&mut self) {
        let mut text = String::from_utf8_lossy(&self.line)
            .trim_end_matches('\r')
            .to_string();
        if std::mem::take(&mut self.cut) {
            text.push('…');
        }
        self.line.clear();
        let instance = self.instance.as_str();
        // The Azure host logs a handler's stderr as errors.
        match self.stream {
            LogStream::Stdout => tracing::info!(target: "strom_handler", instance, "{text}"),
            LogStream::Stderr => tracing::warn!(target: "strom_handler", instance, "{text}"),
        }
        let _ = self.tx.send(LogLine {
            stream: self.stream,
            text,
        });
    }
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
    fn exit_codes_read_as_their_platform_shows_them() {
        assert_eq!(ExitInfo::Code(7).to_string(), "exited with code 7");
        // STATUS_ACCESS_VIOLATION, as Windows reports a crashed handler.
        assert_eq!(
            ExitInfo::Code(0xC000_0005_u32 as i32).to_string(),
            "exited with code 0xC0000005"
        );
    }

    #[test]
    fn output_is_split_into_lines_however_it_arrives() {
        let (tx, mut rx) = broadcast::channel(16);
        let mut s = LineSplitter::new(LogStream::Stdout, tx, "i".into());
        s.push(b"one\r\ntw");
        s.push(b"o\n\nthree");
        s.push(&vec![b'x'; MAX_LINE_BYTES + 10]);
        s.push(b"\n");
        s.push(b"tail");
        s.finish();
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            got.push(l.text);
        }
        assert_eq!(got[..3], ["one", "two", ""]);
        assert!(got[3].starts_with("three") && got[3].ends_with('…'));
        assert_eq!(got[3].len(), MAX_LINE_BYTES + '…'.len_utf8());
        assert_eq!(got[4], "tail");
        assert_eq!(got.len(), 5);
    }

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
