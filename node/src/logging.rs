//! The node's log lines (issue 18): human-readable by default, one JSON object per
//! line with `--log-format json` (`STROM_LOG_FORMAT`); the filter from
//! `--log-level` or `STROM_LOG` (`tracing` syntax). Once a node knows its id, every
//! line carries it (`node=3 …`, `"node_id": 3`); fields an event has (app,
//! function, invocation id, …) are on its line.

use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

static NODE_ID: OnceLock<u64> = OnceLock::new();

/// From now on every line carries this node's id.
pub fn set_node_id(id: u64) {
    let _ = NODE_ID.set(id);
}

/// The value of `--flag V` or `--flag=V` among the raw arguments (read before the
/// command line is parsed: logging starts first).
pub fn peek(args: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_string)
        }
    })
}

/// The log filter (`--log-level`, else `STROM_LOG`, else
/// [`crate::DEFAULT_LOG_FILTER`]) and whether lines are JSON (`--log-format`, else
/// `STROM_LOG_FORMAT`), from the raw arguments.
pub fn filter_and_format(args: &[String]) -> Result<(tracing_subscriber::EnvFilter, bool), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match peek(args, "--log-level") {
        Some(level) => {
            EnvFilter::try_new(&level).map_err(|e| format!("--log-level `{level}`: {e}"))?
        }
        None => EnvFilter::try_from_env("STROM_LOG")
            .unwrap_or_else(|_| EnvFilter::new(crate::DEFAULT_LOG_FILTER)),
    };
    let format = peek(args, "--log-format")
        .or_else(|| std::env::var("STROM_LOG_FORMAT").ok())
        .unwrap_or_else(|| "text".into());
    match format.as_str() {
        "text" => Ok((filter, false)),
        "json" => Ok((filter, true)),
        other => Err(format!("--log-format `{other}`: use text or json")),
    }
}

/// Send this process's log lines to `writer`.
pub fn init<W>(filter: tracing_subscriber::EnvFilter, json: bool, ansi: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let ansi = ansi && !json;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .event_format(Lines {
            json,
            text: tracing_subscriber::fmt::format().with_ansi(ansi),
        })
        .init();
}

/// How each line is written.
pub struct Lines {
    pub json: bool,
    pub text: Format<Full>,
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if !self.json {
            if let Some(id) = NODE_ID.get() {
                write!(writer, "node={id} ")?;
            }
            return self.text.format_event(ctx, writer, event);
        }
        let meta = event.metadata();
        let mut line = serde_json::Map::new();
        line.insert(
            "ts".into(),
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(id) = NODE_ID.get() {
            line.insert("node_id".into(), (*id).into());
        }
        event.record(&mut Fields(&mut line));
        let mut text = serde_json::Value::Object(line).to_string();
        text.push('\n');
        writer.write_str(&text)
    }
}

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_read_before_the_command_line_is_parsed() {
        let args: Vec<String> = [
            "strom",
            "serve",
            "--log-format",
            "json",
            "--log-level=debug",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(peek(&args, "--log-format").as_deref(), Some("json"));
        assert_eq!(peek(&args, "--log-level").as_deref(), Some("debug"));
        assert_eq!(peek(&args, "--other"), None);
    }
}
