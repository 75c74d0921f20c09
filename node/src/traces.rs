//! Distributed traces (issue 18): OpenTelemetry spans exported over OTLP/gRPC,
//! off unless `--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector.
//!
//! One trace follows an invocation: the `gateway` span of the node the client
//! called (a child of the caller's `traceparent`, if it sent one) → a `hop` span
//! when that node sends the request to a worker → the worker's `gateway` span →
//! the `invoke` span around the call of the instance, whose context the handler
//! receives as W3C `traceparent` (and `tracestate`) in both custom-handler modes.
//! Timer runs start a `timer` span on the leader; admin writes a `raft write` span
//! (`strom_control_plane::traces`).
//!
//! The context travels inside a node in the request's extensions ([`Trace`]).
//! With tracing off, no span is made: a caller's `traceparent` is passed on to the
//! handler unchanged (so a handler's own tracing still continues the caller's
//! trace), and a request without one costs a header lookup. Spans are exported in
//! batches from a bounded queue (spans are dropped, never queued without bound,
//! when the collector is slow or gone), each export under a deadline. In memory
//! only.

use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter, while tracing is on (flushed and stopped by [`Exporter::shutdown`]).
pub struct Exporter(SdkTracerProvider);

impl Exporter {
    /// Send what is queued and stop (a node stopping).
    pub fn shutdown(self) {
        if let Err(e) = self.0.shutdown() {
            tracing::debug!("stopping the trace exporter: {e}");
        }
    }
}

/// Start exporting to `endpoint` (`http://host:4317`, or `https://…` checked
/// against the system's roots). Must run inside the Tokio runtime.
pub fn start(endpoint: &str, node_id: u64) -> Result<Exporter, String> {
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    let url: hyper::Uri = endpoint
        .parse()
        .map_err(|e| format!("--otlp-endpoint `{endpoint}`: {e}"))?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT);
    match url.scheme_str() {
        Some("http") => {}
        Some("https") => {
            builder = builder.with_tls_config(
                tonic::transport::ClientTlsConfig::new().with_native_roots(),
            );
        }
        _ => {
            return Err(format!(
                "--otlp-endpoint `{endpoint}`: use http://host:port or https://host:port (OTLP over gRPC)"
            ))
        }
    }
    let exporter = builder
        .build()
        .map_err(|e| format!("--otlp-endpoint `{endpoint}`: {e}"))?;
    let exporter = Reporting {
        inner: exporter,
        endpoint: endpoint.to_string(),
        collector: Default::default(),
    };
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("strom")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", node_id.to_string()),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    strom_control_plane::traces::set_enabled(true);
    Ok(Exporter(provider))
}

/// The OTLP exporter, saying once when exports start failing (a wrong endpoint,
/// the collector down: spans are dropped meanwhile) and once when they work again,
/// with the count of failed batches — not on every batch.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    endpoint: String,
    collector:
        std::sync::Arc<std::sync::Mutex<strom_control_plane::impl_raft_network::Reachability>>,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Reporting<E>
{
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let exported = self.inner.export(batch);
        async move {
            let result = exported.await;
            let now_ms = strom_control_plane::management::now_ms().max(0) as u64;
            let change =
                self.collector
                    .lock()
                    .expect("collector state")
                    .record(0, result.is_ok(), now_ms);
            use strom_control_plane::impl_raft_network::Change;
            match (change, &result) {
                (Some(Change::Lost), Err(e)) => tracing::warn!(
                    "exporting traces to {} fails ({e}); spans are dropped until it answers (logged again then)",
                    self.endpoint
                ),
                (Some(Change::Back { failed, .. }), _) => tracing::info!(
                    "exporting traces to {} works again after {failed} failed batches",
                    self.endpoint
                ),
                _ => {}
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Where a request is in its trace; cheap to clone.
#[derive(Clone, Debug, Default)]
pub enum Trace {
    /// Tracing is off: the caller's context, passed on as it came.
    #[default]
    None,
    Off {
        traceparent: HeaderValue,
        tracestate: Option<HeaderValue>,
    },
    /// A span of this node (its context), recording.
    On(Context),
}

impl Trace {
    /// A request arriving (from a client, or another node over the hop): a
    /// `name` server span, a child of the `traceparent` it carries.
    pub fn incoming(headers: &HeaderMap, name: &'static str, attributes: Vec<KeyValue>) -> Trace {
        if !strom_control_plane::traces::enabled() {
            return match headers.get(TRACEPARENT) {
                Some(tp) => Trace::Off {
                    traceparent: tp.clone(),
                    tracestate: headers.get(TRACESTATE).cloned(),
                },
                None => Trace::None,
            };
        }
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        Trace::start(&parent, name, SpanKind::Server, attributes)
    }

    /// A new trace on this node (a timer run the leader fires).
    pub fn root(name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>) -> Trace {
        if !strom_control_plane::traces::enabled() {
            return Trace::None;
        }
        Trace::start(&Context::new(), name, kind, attributes)
    }

    fn start(
        parent: &Context,
        name: &'static str,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Trace {
        let tracer = opentelemetry::global::tracer("strom");
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&tracer, parent);
        Trace::On(parent.with_span(span))
    }

    /// A child span (`hop`, `invoke`); with tracing off, the same context.
    pub fn child(&self, name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>) -> Trace {
        match self {
            Trace::On(cx) => Trace::start(cx, name, kind, attributes),
            other => other.clone(),
        }
    }

    /// Put this context on a request to another node or a handler.
    pub fn inject(&self, headers: &mut HeaderMap) {
        match self {
            Trace::None => {}
            Trace::Off {
                traceparent,
                tracestate,
            } => {
                headers.insert(TRACEPARENT, traceparent.clone());
                match tracestate {
                    Some(ts) => headers.insert(TRACESTATE, ts.clone()),
                    None => headers.remove(TRACESTATE),
                };
            }
            Trace::On(cx) => {
                headers.remove(TRACESTATE);
                TraceContextPropagator::new().inject_context(cx, &mut HeadersMut(headers));
            }
        }
    }

    /// Add attributes to this node's span (made only if it records).
    pub fn set(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Trace::On(cx) = self {
            cx.span().set_attributes(attributes());
        }
    }

    /// Carry this context in a request's extensions (nothing to carry: no
    /// allocation).
    pub fn attach(&self, extensions: &mut hyper::http::Extensions) {
        if !matches!(self, Trace::None) {
            extensions.insert(self.clone());
        }
    }

    /// End this node's span: `error` marks it failed.
    pub fn end(&self, error: Option<String>) {
        if let Trace::On(cx) = self {
            let span = cx.span();
            if let Some(e) = error {
                span.set_status(Status::error(e));
            }
            span.end();
        }
    }

    /// End a span around an HTTP exchange with its status (5xx: failed).
    pub fn end_http(&self, status: hyper::StatusCode) {
        if let Trace::On(cx) = self {
            cx.span().set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            self.end(status.is_server_error().then(|| status.to_string()));
        }
    }
}

/// A span's `strom.node_id` attribute value.
pub fn node(id: u64) -> KeyValue {
    KeyValue::new("strom.node_id", id as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_tracing_off_a_callers_context_is_passed_on_unchanged() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut incoming = HeaderMap::new();
        incoming.insert(TRACEPARENT, HeaderValue::from_static(tp));
        incoming.insert(TRACESTATE, HeaderValue::from_static("v=1"));
        let trace = Trace::incoming(&incoming, "gateway", vec![]);
        let invoke = trace.child("invoke", SpanKind::Client, vec![]);
        let mut out = HeaderMap::new();
        out.insert(TRACESTATE, HeaderValue::from_static("stale"));
        invoke.inject(&mut out);
        assert_eq!(out.get(TRACEPARENT).unwrap(), tp);
        assert_eq!(out.get(TRACESTATE).unwrap(), "v=1");
        // Without one: nothing is added.
        let none = Trace::incoming(&HeaderMap::new(), "gateway", vec![]);
        let mut out = HeaderMap::new();
        none.child("invoke", SpanKind::Client, vec![])
            .inject(&mut out);
        assert!(out.is_empty());
    }
}
