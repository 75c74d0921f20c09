//! Azure's admin invoke: `POST /admin/functions/{name}` with the app's master key
//! runs a non-HTTP function now. Like Azure, it answers 202 Accepted once the
//! invocation is handed to an instance and runs it in the background; the answer
//! names the invocation (`x-ms-invocation-id`), whose record `strom fn logs` shows.
//! For a timer function the body's `input` is ignored and `IsPastDue` is false;
//! a RabbitMQ function gets it as a message body (`Data.{name}`).
//! Also Azure's `GET /admin/host/status` (master key) of an app.

use crate::traces::Trace;
use opentelemetry::trace::SpanKind;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use strom_proto::invocations::{InvocationRecord, InvocationStatus};
use tokio::time::Instant;

use super::admission::AdminTarget;
use super::invoke::{answer_failed, record_answer};
use super::json_mode::parse_answer_capturing;
use super::recorder::Pending;
use super::responses::{bad_request, full, Body, BoxError};
use super::translate::{fast_uuid, invocation_request};
use super::Gateway;

/// The header that names the invocation an admin invoke started.
pub const INVOCATION_ID_HEADER: &str = "x-ms-invocation-id";

/// Azure's `ScriptHostState` for an app, as this node sees it: `Error` when its
/// instances here cannot start (a crash loop: the reason is in `errors`),
/// `Running` when it is served here or placed on an Up worker, else `Offline`
/// (scaled to 0, or no worker can take it).
pub fn host_state(
    unavailable_here: Option<&str>,
    served_here: bool,
    placed_up: bool,
) -> (&'static str, Vec<String>) {
    match unavailable_here {
        Some(why) => ("Error", vec![why.to_string()]),
        None if served_here || placed_up => ("Running", Vec::new()),
        None => ("Offline", Vec::new()),
    }
}

fn computer_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .unwrap_or_default()
}

/// One run of a non-HTTP function: its invocation id, `Data` and `Metadata`,
/// what started it (`timer`, `admin`), and its trace.
pub(super) struct NonHttpRun {
    pub id: String,
    pub data: serde_json::Map<String, serde_json::Value>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub trigger: &'static str,
    pub trace: Trace,
}

impl Gateway {
    /// `GET /admin/host/status` (Azure's `HostStatus`) of `app`.
    pub(super) fn host_status(&self, app: &strom_proto::ids::AppName) -> Response<Body> {
        let inner = &self.inner;
        let local = inner.routing.load();
        let routes = inner.routes.load();
        let serving = local.apps.get(app);
        let placed_up = routes.apps.get(app).is_some_and(|a| {
            a.placements
                .iter()
                .any(|(node, n)| *n > 0 && routes.workers.get(node).is_some_and(|w| w.up))
        });
        let (state, errors) = host_state(
            serving.and_then(|s| s.unavailable.as_deref()),
            serving.is_some_and(|s| !s.endpoints.is_empty()),
            placed_up,
        );
        let body = json!({
            "id": app.as_str(),
            "state": state,
            "version": super::HOST_VERSION,
            "versionDetails": format!("{} (Strom {})", super::HOST_VERSION, env!("CARGO_PKG_VERSION")),
            "platformVersion": "",
            "instanceId": inner.config.node_id.to_string(),
            "computerName": computer_name(),
            "processUptime": inner.started.elapsed().as_millis() as u64,
            "functionAppContentEditingState": "NotAllowed",
            "extensionBundle": null,
            "errors": errors,
        });
        super::responses::json(StatusCode::OK, &body)
    }

    /// Hand `target` to a local instance and answer 202; the invocation runs on.
    pub(super) async fn admin_invoke<B>(
        &self,
        req: Request<B>,
        target: AdminTarget,
        wait: bool,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = match self.whole_request(req).await {
            Ok(r) => r,
            Err(refused) => return refused,
        };
        let trace = parts.extensions.get::<Trace>().cloned().unwrap_or_default();
        // Azure's body is `{"input": "…"}`; none at all is accepted too.
        if !body.iter().all(u8::is_ascii_whitespace) {
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&body) {
                return bad_request(format!(
                    "the body must be JSON like {{\"input\": \"…\"}}: {e}"
                ));
            }
        }
        let endpoint = match self.ready_endpoint(&target.app, &[], wait).await {
            Ok(e) => e,
            Err(r) => return r,
        };
        let id = fast_uuid();
        let mut data = serde_json::Map::new();
        let queue = self
            .inner
            .routing
            .load()
            .apps
            .get(&target.app)
            .and_then(|s| {
                s.manifest
                    .functions
                    .iter()
                    .find(|f| f.name == target.function)
            })
            .is_some_and(|f| matches!(f.trigger, strom_proto::manifest::Trigger::RabbitMq(_)));
        let value = if queue {
            // A RabbitMQ function gets `input` as a message body.
            let input = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("input").and_then(|i| i.as_str().map(str::to_string)))
                .unwrap_or_default();
            strom_messaging::delivery::body_value(input.as_bytes())
        } else {
            strom_proto::timers::timer_info(chrono_tz::Tz::UTC, None, false)
        };
        data.insert(target.binding.clone(), value);
        let run = NonHttpRun {
            id: id.clone(),
            data,
            metadata: serde_json::Map::new(),
            trigger: "admin",
            trace,
        };
        tokio::spawn(self.clone().run_non_http(target, endpoint, run));
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::ACCEPTED;
        if let Ok(v) = HeaderValue::from_str(&id) {
            r.headers_mut().insert(INVOCATION_ID_HEADER, v);
        }
        r
    }

    /// Run a non-HTTP function on `endpoint` in JSON mode with `data` as `Data`
    /// (and `metadata` in `Metadata` next to `sys`), record it for `strom fn
    /// logs`, and return how it ended. `functionTimeout`
    /// applies (the instance is recycled after it), as for HTTP invocations.
    pub(super) async fn run_non_http(
        self,
        target: AdminTarget,
        endpoint: std::sync::Arc<strom_actors::routing::Endpoint>,
        run: NonHttpRun,
    ) -> InvocationRecord {
        let NonHttpRun {
            id,
            data,
            mut metadata,
            trigger,
            trace,
        } = run;
        let inner = &self.inner;
        let span = trace.child(
            "invoke",
            SpanKind::Client,
            super::invoke::invoke_attributes(
                &trace,
                inner.config.node_id,
                &target.app,
                &target.function,
                &id,
                trigger,
            ),
        );
        let (timeout, unsupported, messages, messaging) =
            match inner.routing.load().apps.get(&target.app) {
                Some(serving) => {
                    let f = serving
                        .manifest
                        .functions
                        .iter()
                        .find(|f| f.name == target.function);
                    (
                        serving
                            .manifest
                            .host
                            .function_timeout_ms
                            .map(Duration::from_millis),
                        f.map(|f| {
                            f.unsupported_outputs()
                                .map(|(n, t)| (n.to_string(), t.to_string()))
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default(),
                        f.map(|f| {
                            super::outputs::message_outputs(f)
                                .into_iter()
                                .map(str::to_string)
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default(),
                        serving.messaging.clone(),
                    )
                }
                None => (None, Vec::new(), Vec::new(), Default::default()),
            };
        let message_refs: Vec<&str> = messages.iter().map(String::as_str).collect();
        metadata.insert(
            "sys".into(),
            json!({
                "MethodName": target.function,
                "UtcNow": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                "RandGuid": fast_uuid(),
            }),
        );
        let payload = json!({"Data": data, "Metadata": metadata});
        let payload = Bytes::from(payload.to_string());
        let mut request = invocation_request(endpoint.addr, &target.function, &id, payload);
        span.inject(request.headers_mut());
        let (in_flight, from_line) = endpoint.begin_invocation(&id);
        let started_at_ms = super::invoke::now_ms();
        let start = Instant::now();
        let mut record = InvocationRecord::started(
            id,
            target.app.clone(),
            target.function.clone(),
            endpoint.instance_id.clone(),
            started_at_ms,
            trigger,
        );
        let sent = endpoint.send(request);
        let answered = match timeout {
            Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| t),
            None => Ok(sent.await),
        };
        let mut died = false;
        match answered {
            Err(t) => {
                record.status = InvocationStatus::TimedOut;
                record.http_status = StatusCode::GATEWAY_TIMEOUT.as_u16();
                record.error = Some(format!(
                    "exceeded functionTimeout ({t:?}); the instance is recycled"
                ));
                endpoint.recycle(format!(
                    "function `{}` exceeded functionTimeout ({t:?})",
                    target.function
                ));
            }
            Ok(Err(e)) => {
                died = true;
                record.status = InvocationStatus::Failed;
                record.http_status = StatusCode::INTERNAL_SERVER_ERROR.as_u16();
                record.error = Some(format!("calling the handler failed: {e}"));
            }
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                record.http_status = status;
                match resp.into_body().collect().await {
                    Err(e) => {
                        answer_failed(&mut record, &target.function, e.to_string());
                    }
                    Ok(bytes) => {
                        let refs: Vec<(&str, &str)> = unsupported
                            .iter()
                            .map(|(n, t)| (n.as_str(), t.as_str()))
                            .collect();
                        let parsed = parse_answer_capturing(
                            status,
                            &bytes.to_bytes(),
                            None,
                            &refs,
                            &message_refs,
                        );
                        if let Ok((_, values)) = record_answer(&mut record, parsed) {
                            if values.iter().any(|v| !v.is_null()) {
                                // A failed publish fails the run (and its retry policy applies).
                                let _ = self
                                    .send_outputs(
                                        &target.app,
                                        &messaging,
                                        &message_refs,
                                        values,
                                        &mut record,
                                    )
                                    .await;
                            }
                        }
                    }
                }
            }
        }
        drop(in_flight);
        record.duration_us = start.elapsed().as_micros() as u64;
        let outcome = InvocationRecord {
            logs: Vec::new(),
            ..record.clone()
        };
        span.end(record.error.clone());
        inner
            .recorder
            .submit(Pending::new(record, endpoint, from_line), died);
        outcome
    }
}
