//! Trace spans of the management role (issue 18): a `raft write` span around
//! every write proposed through [`crate::ManagementNode::propose`] (forwarded to
//! the leader when this node does not lead, committed, applied), with the
//! command's kind and its log index. Spans are made only while tracing is on
//! (`strom` sets it when it exports to a collector: `node/src/traces.rs`); off,
//! a write costs one atomic load. In memory only.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{Span, SpanKind, Status, Tracer};
use opentelemetry::KeyValue;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are recorded and exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// A `raft write` span of `kind`, or `None` with tracing off.
pub fn write_span(kind: &'static str, node_id: u64) -> Option<opentelemetry::global::BoxedSpan> {
    if !enabled() {
        return None;
    }
    let tracer = opentelemetry::global::tracer("strom");
    Some(
        tracer
            .span_builder("raft write")
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("strom.command", kind),
                KeyValue::new("strom.node_id", node_id as i64),
            ])
            .start(&tracer),
    )
}

/// End a write's span with its outcome.
pub fn end_write<T, E: std::fmt::Display>(
    span: Option<opentelemetry::global::BoxedSpan>,
    result: &Result<(u64, T), E>,
) {
    let Some(mut span) = span else { return };
    match result {
        Ok((index, _)) => span.set_attribute(KeyValue::new("strom.log_index", *index as i64)),
        Err(e) => span.set_status(Status::error(e.to_string())),
    }
    span.end();
}
