//! Calling a local instance: wait for a Ready endpoint (a cold start waits up to
//! the start-up limit; a crash-looping app answers 503 at once), send the request
//! in JSON or forwarding mode under `functionTimeout` (504, the instance is
//! recycled), and turn what happened into the response and an invocation record.
//!
//! A request is sent again, to another instance, only when it provably never
//! reached a handler ([`resend`]): the connection could not be established, or
//! the instance had already ended when it was sent (a stale keep-alive
//! connection; the worker noticed the exit before the send). Anything else that
//! fails is the invocation failing (500), never re-sent.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use strom_actors::handler_conns::SendError;
use strom_actors::routing::InFlight;
use strom_actors::Endpoint;
use strom_proto::ids::AppName;
use strom_proto::invocations::{InvocationRecord, InvocationStatus, LogEntry};
use strom_proto::manifest::Trigger;
use tokio::time::Instant;

use super::admission::Target;
use super::json_mode::{parse_answer_capturing, Answer, AnswerError, HttpOutput};
use super::recorder::Pending;
use super::responses::{
    bad_request, error, full, read_body, unavailable, undelivered, Body, BoxError, UNDELIVERED,
};
use super::translate::{
    fast_uuid, forward_request, forwards, http_response, json_request, relay_response, Invocation,
};
use super::Gateway;
use crate::traces::Trace;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

/// The attributes of an `invoke` span (none when tracing is off).
pub(super) fn invoke_attributes(
    trace: &Trace,
    node: u64,
    app: &AppName,
    function: &str,
    invocation_id: &str,
    trigger: &'static str,
) -> Vec<KeyValue> {
    if !matches!(trace, Trace::On(_)) {
        return Vec::new();
    }
    vec![
        crate::traces::node(node),
        KeyValue::new("strom.app", app.to_string()),
        KeyValue::new("faas.name", function.to_string()),
        KeyValue::new("faas.invocation_id", invocation_id.to_string()),
        KeyValue::new("faas.trigger", trigger),
    ]
}

/// Instances one request may find unreachable before it fails.
const MAX_UNREACHABLE: usize = 8;
/// How long to wait for the worker to notice an instance's exit, when a send
/// failed and it may have ended before.
const EXIT_NOTICE: Duration = Duration::from_millis(50);

/// Why sending to an instance failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// The connection could not be established.
    Connect,
    /// The instance had ended before the request was sent.
    EndedBeforeSend,
    /// Anything else: a handler may have seen the request.
    Other,
}

/// Whether a request whose send failed goes to another instance, given how many
/// instances it already found unreachable.
pub fn resend(failure: SendFailure, unreachable: usize) -> bool {
    failure != SendFailure::Other && unreachable < MAX_UNREACHABLE
}

/// How a call of an instance ended.
enum Outcome {
    Answered {
        resp: Response<Incoming>,
        in_flight: InFlight,
    },
    TimedOut(Duration),
    Failed(String),
}

/// Whether this node still serves `app` (it may be starting an instance): not
/// gone, not scaled to 0 or crash-looping here.
fn served_here(snapshot: &strom_actors::routing::RoutingSnapshot, app: &AppName) -> bool {
    snapshot
        .apps
        .get(app)
        .is_some_and(|s| s.unavailable.is_none())
}

impl Gateway {
    /// Call `target` with a local instance (`query`: the request's, parsed once by
    /// admission). `wait`: a client's request waits for a cold start; one from
    /// another gateway is answered "undelivered" at once.
    pub(super) async fn invoke<B>(
        &self,
        req: Request<B>,
        query: Vec<(String, String)>,
        target: Target,
        wait: bool,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        let snapshot = inner.routing.load();
        let Some(serving) = snapshot.apps.get(&target.app) else {
            // Admitted while served here, and no longer since (a drain, a
            // scale-down moved it off this node in between): a client's request,
            // which no handler saw, goes to another worker that runs the app; a
            // peer's is "undelivered", and its gateway tries elsewhere.
            if !wait {
                return undelivered(&target.app);
            }
            return self.proxy_elsewhere(req, &target.app).await;
        };
        let fmanifest = &serving.manifest.functions[target.function_index];
        let Trigger::Http(http) = &fmanifest.trigger else {
            return bad_request("not an HTTP function");
        };
        let host = &serving.manifest.host;
        let limiter = inner.limiters.of(&target.app, &serving.version, host);
        let Some(admitted) = limiter.admit().await else {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "maxOutstandingRequests reached; retry later",
            );
        };

        let host_header = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (parts, body) = req.into_parts();
        let trace = parts.extensions.get::<Trace>().cloned().unwrap_or_default();
        let max = inner.config.max_body_bytes;
        let http2 = parts.version == hyper::Version::HTTP_2;
        let body = match read_body(body, max, inner.config.http.body_read, http2).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };

        let app = &target.app;
        let function = target.function.as_str();
        let invocation_id = fast_uuid();
        let started_at_ms = now_ms();
        let start = Instant::now();
        let forwarding = forwards(host, fmanifest);
        let timeout = host.function_timeout_ms.map(Duration::from_millis);
        let call = Invocation {
            function,
            binding: &http.binding_name,
            params: &target.params,
            query: &query,
            host: &host_header,
            id: &invocation_id,
        };

        let span = trace.child(
            "invoke",
            SpanKind::Client,
            invoke_attributes(
                &trace,
                inner.config.node_id,
                app,
                function,
                &invocation_id,
                "http",
            ),
        );
        // Instances this request could not reach: skipped until the routing
        // snapshot offers another (a restarted instance has a new id).
        let mut unreachable: Vec<String> = Vec::new();
        let (endpoint, from_line, outcome) = loop {
            let endpoint = match self.ready_endpoint(app, &unreachable, wait).await {
                Ok(e) => e,
                // A client's request no handler has seen, whose app stopped being
                // served here after it was admitted (a drain, a scale-down): another
                // worker that runs the app takes it over the hop.
                Err(r) if wait && !served_here(&inner.routing.load(), app) => {
                    match self.proxy(app, &parts, &body).await {
                        Ok(elsewhere) => return elsewhere,
                        Err(()) => return r,
                    }
                }
                Err(r) => return r,
            };
            let (in_flight, from_line) = endpoint.begin_invocation(&invocation_id);
            let mut request = if forwarding {
                let to_function = serving.http_worker.then_some(function);
                forward_request(&parts, &body, endpoint.addr, &invocation_id, to_function)
            } else {
                json_request(&parts, &body, endpoint.addr, &call)
            };
            span.inject(request.headers_mut());
            let sent_at = Instant::now();
            let sent = endpoint.send(request);
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, sent).await {
                    Ok(r) => r,
                    Err(_) => {
                        endpoint.recycle(format!(
                            "function `{function}` exceeded functionTimeout ({t:?})"
                        ));
                        break (endpoint, from_line, Outcome::TimedOut(t));
                    }
                },
                None => sent.await,
            };
            let e = match result {
                Ok(resp) => break (endpoint, from_line, Outcome::Answered { resp, in_flight }),
                Err(e) => e,
            };
            let failure = if let SendError::Connect { .. } = e {
                SendFailure::Connect
            } else if matches!(e, SendError::Ended)
                || (unreachable.len() < MAX_UNREACHABLE
                    && endpoint.ended_before(sent_at, EXIT_NOTICE).await)
            {
                SendFailure::EndedBeforeSend
            } else {
                SendFailure::Other
            };
            if resend(failure, unreachable.len()) {
                tracing::debug!(instance = %endpoint.instance_id, ?failure, "not delivered ({e}); trying another instance");
                unreachable.push(endpoint.instance_id.clone());
                continue;
            }
            break (endpoint, from_line, Outcome::Failed(e.to_string()));
        };

        let mut record = InvocationRecord::started(
            invocation_id.clone(),
            app.clone(),
            function.to_string(),
            endpoint.instance_id.clone(),
            started_at_ms,
            "http",
        );
        // The instance may have died under the request (out of memory, a crash):
        // its record says how, once the worker has noticed.
        let died_under_call = matches!(outcome, Outcome::Failed(_));
        let messages = super::outputs::message_outputs(fmanifest);
        let (mut response, values) = match outcome {
            Outcome::TimedOut(t) => {
                record.status = InvocationStatus::TimedOut;
                record.error = Some(format!(
                    "exceeded functionTimeout ({t:?}); the instance is recycled"
                ));
                let r = error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "FunctionTimeout",
                    format!("function `{function}` did not finish within functionTimeout ({t:?})"),
                );
                (r, Vec::new())
            }
            Outcome::Failed(e) => {
                record.status = InvocationStatus::Failed;
                record.error = Some(format!("calling the handler failed: {e}"));
                let r = error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InvocationFailed",
                    format!("function `{function}` failed: the handler did not answer ({e})"),
                );
                (r, Vec::new())
            }
            Outcome::Answered { resp, in_flight } if forwarding => {
                record.http_status = resp.status().as_u16();
                // The request counts as in flight (for drains and limits) until its
                // streamed body has been relayed.
                let r = relay_response(resp, parts.version, (in_flight, admitted));
                (r, Vec::new())
            }
            Outcome::Answered {
                resp,
                in_flight: _in_flight,
            } => {
                let unsupported: Vec<(&str, &str)> = fmanifest.unsupported_outputs().collect();
                json_answer(
                    resp,
                    timeout,
                    function,
                    http.output.as_deref(),
                    &unsupported,
                    &messages,
                    &mut record,
                )
                .await
            }
        };
        // Sent, and confirmed, before the client hears of success.
        if record.status == InvocationStatus::Succeeded && values.iter().any(|v| !v.is_null()) {
            if let Err(e) = self
                .send_outputs(app, &serving.messaging, &messages, values, &mut record)
                .await
            {
                response = error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InvocationFailed",
                    format!("function `{function}` failed: {e}"),
                );
            }
        }
        if record.status != InvocationStatus::Succeeded || !forwarding {
            record.http_status = response.status().as_u16();
        }
        record.duration_us = start.elapsed().as_micros() as u64;
        inner.recorder.submit(
            Pending::new(record, endpoint.clone(), from_line),
            died_under_call,
        );
        // A handler cannot claim "undelivered": that would make a gateway re-send a
        // request a handler already saw.
        response.headers_mut().remove(UNDELIVERED);
        span.set(|| {
            vec![KeyValue::new(
                "strom.instance",
                endpoint.instance_id.clone(),
            )]
        });
        span.end_http(response.status());
        response
    }

    /// A client's request for `app`, which is no longer served here, sent over
    /// the hop to a worker that runs it (503 if none can take it).
    async fn proxy_elsewhere<B>(&self, req: Request<B>, app: &AppName) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        let (parts, body) = req.into_parts();
        let http2 = parts.version == hyper::Version::HTTP_2;
        let max = inner.config.max_body_bytes;
        let body = match read_body(body, max, inner.config.http.body_read, http2).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        match self.proxy(app, &parts, &body).await {
            Ok(elsewhere) => elsewhere,
            Err(()) => unavailable(format!(
                "no Ready instance of app `{app}` on this node, and no other worker took the request"
            )),
        }
    }

    /// A Ready endpoint for `app`, waiting for a cold start if none is Ready yet
    /// (unless `wait` is false: a request from another node is answered
    /// "undelivered" at once, and that node tries elsewhere).
    pub(super) async fn ready_endpoint(
        &self,
        app: &AppName,
        unreachable: &[String],
        wait: bool,
    ) -> Result<Arc<Endpoint>, Response<Body>> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.cold_start_timeout;
        loop {
            let changed = inner.routing.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let snapshot = inner.routing.load();
            if let Some(e) = snapshot.pick_except(app, &inner.tick, unreachable) {
                return Ok(e);
            }
            if !wait {
                return Err(undelivered(app));
            }
            match snapshot.apps.get(app) {
                None => {
                    return Err(error(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("app `{app}` is not served here"),
                    ));
                }
                Some(s) => {
                    if let Some(why) = &s.unavailable {
                        return Err(unavailable(why.clone()));
                    }
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(unavailable(format!(
                    "no instance of app `{app}` became ready in time"
                )));
            }
        }
    }
}

/// A JSON-mode handler's answer as the client's response; the record gets its
/// `Logs` (kept even when the invocation failed) and its outcome.
/// Also returns the values of the `captured` outputs (the messages to send).
async fn json_answer(
    resp: Response<Incoming>,
    timeout: Option<Duration>,
    function: &str,
    output_binding: Option<&str>,
    unsupported: &[(&str, &str)],
    captured: &[&str],
    record: &mut InvocationRecord,
) -> (Response<Body>, Vec<serde_json::Value>) {
    let status = resp.status().as_u16();
    let read = match timeout {
        Some(t) => tokio::time::timeout(t, resp.into_body().collect())
            .await
            .map_err(|_| "timed out reading the answer".to_string()),
        None => Ok(resp.into_body().collect().await),
    };
    let bytes = match read {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return (answer_failed(record, function, e.to_string()), Vec::new()),
        Err(e) => return (answer_failed(record, function, e), Vec::new()),
    };
    match record_answer(
        record,
        parse_answer_capturing(status, &bytes, output_binding, unsupported, captured),
    ) {
        Ok((None, values)) => {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            (r, values)
        }
        Ok((Some(out), values)) => (http_response(out), values),
        Err(e) => (
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InvocationFailed",
                format!("function `{function}` failed: {e}"),
            ),
            Vec::new(),
        ),
    }
}

/// A JSON-mode answer into its invocation's record: the handler's `Logs` (kept
/// when it failed too), the values dropped for unsupported outputs, the outcome.
/// Returns the `http` output and the captured outputs' values, or why the
/// invocation failed.
pub(super) fn record_answer(
    record: &mut InvocationRecord,
    parsed: Result<Answer, AnswerError>,
) -> Result<(Option<HttpOutput>, Vec<serde_json::Value>), AnswerError> {
    let line = |source: &str, text: String| LogEntry {
        source: source.into(),
        text,
    };
    match parsed {
        Ok(answer) => {
            record
                .logs
                .extend(answer.logs.into_iter().map(|t| line("handler", t)));
            record
                .logs
                .extend(answer.dropped.into_iter().map(|t| line("host", t)));
            Ok((answer.output, answer.captured))
        }
        Err(e) => {
            record.status = InvocationStatus::Failed;
            record
                .logs
                .extend(e.logs().iter().map(|t| line("handler", t.clone())));
            record.error = Some(e.to_string());
            Err(e)
        }
    }
}

pub(super) fn answer_failed(
    record: &mut InvocationRecord,
    function: &str,
    e: String,
) -> Response<Body> {
    record.status = InvocationStatus::Failed;
    record.error = Some(format!("reading the handler's answer failed: {e}"));
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InvocationFailed",
        format!("function `{function}` failed"),
    )
}

/// Milliseconds since the Unix epoch (an invocation's start, as records show it).
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_provably_never_reached_a_handler_is_sent_again() {
        assert!(resend(SendFailure::Connect, 0));
        assert!(resend(SendFailure::EndedBeforeSend, 7));
        assert!(!resend(SendFailure::Other, 0));
        // A request that found every instance unreachable fails in the end.
        assert!(!resend(SendFailure::Connect, MAX_UNREACHABLE));
    }
}
