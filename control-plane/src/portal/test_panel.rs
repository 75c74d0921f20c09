//! The function page's test panel: the node sends the request the form describes
//! to the function through its own gateway (the function port, as any caller
//! would, with the function's key unless the form gives one), and shows the
//! answer, its duration and that invocation's record with its logs.
//!
//! Which record is the test's: the gateway does not name an invocation in its
//! answer (Azure does not either), so it is the HTTP invocation of this function
//! that started between sending and the answer with the answer's status; when
//! other traffic matched too, the page says so.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strom_proto::admin_v1 as pb;
use strom_proto::admin_v1::admin_service_server::AdminService;
use strom_proto::ids::AppName;
use tonic::codegen::http::{self, header, HeaderName, HeaderValue, Method, StatusCode};

use super::{Ctx, Form, Problem};
use crate::management::now_ms;

/// The longest a test request may take (Azure's HTTP limit is 230 s).
const DEADLINE: Duration = Duration::from_secs(100);
/// Most of the answer's body shown.
const MAX_SHOWN: usize = 64 * 1024;
/// Most of the answer read.
const MAX_READ: usize = 1024 * 1024;

/// What the panel shows after a request.
pub struct TestResult {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body was cut at [`MAX_SHOWN`] bytes, or was not text.
    pub body_note: Option<String>,
    pub duration_ms: f64,
    pub invocation: Option<pb::InvocationInfo>,
    pub invocation_note: Option<String>,
}

/// The form's request, checked.
pub struct TestRequest {
    pub method: Method,
    pub path_and_query: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: String,
}

/// Read and check the form: every problem names its field (and line).
pub fn parse(form: &Form) -> Result<TestRequest, Problem> {
    let method_text = form
        .get("method")
        .unwrap_or("GET")
        .trim()
        .to_ascii_uppercase();
    let method = match method_text.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => {
            Method::from_bytes(method_text.as_bytes()).expect("a standard method")
        }
        other => {
            return Err(Problem::bad(format!(
                "method: `{other}` is not GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS"
            )))
        }
    };
    let path = form.get("path").unwrap_or("").trim();
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        return Err(Problem::bad(format!(
            "path: `{path}` must start with / and hold no ?, # or spaces (put the query in \
             the query field)"
        )));
    }
    let query = form
        .get("query")
        .unwrap_or("")
        .trim()
        .trim_start_matches('?');
    let path_and_query = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    path_and_query
        .parse::<http::uri::PathAndQuery>()
        .map_err(|e| Problem::bad(format!("path and query `{path_and_query}`: {e}")))?;
    let mut headers = Vec::new();
    for (n, line) in form.get("headers").unwrap_or("").lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Problem::bad(format!(
                "headers, line {}: `{line}` is not `Name: value`",
                n + 1
            )));
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            Problem::bad(format!(
                "headers, line {}: `{}` is not a header name",
                n + 1,
                name.trim()
            ))
        })?;
        if name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
        {
            return Err(Problem::bad(format!(
                "headers, line {}: {name} is set by the panel",
                n + 1
            )));
        }
        let value = HeaderValue::from_str(value.trim()).map_err(|_| {
            Problem::bad(format!(
                "headers, line {}: the value of {name} is not a header value",
                n + 1
            ))
        })?;
        headers.push((name, value));
    }
    Ok(TestRequest {
        method,
        path_and_query,
        headers,
        body: form.get("body").unwrap_or("").to_string(),
    })
}

/// Run the panel's request and find its invocation.
pub async fn run(
    ctx: &Ctx,
    app: &AppName,
    function: &str,
    form: &Form,
) -> Result<TestResult, Problem> {
    let info = super::pages::function_info(&ctx.api, app, function).await?;
    if info.trigger_type != "httpTrigger" {
        return Err(Problem::bad(format!(
            "{function} has a {} trigger: the test panel sends HTTP requests (use Run now)",
            info.trigger_type
        )));
    }
    let request = parse(form)?;
    let shared: http::Uri = ctx.api.node.config.public_http_url.parse().map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the node's function address: {e}"),
        )
    })?;
    // The app's own address: `scheme://{app}.{domain}:port/…route…` (the route
    // may hold `{…}`, which is not URI syntax: only the authority is taken).
    let own_authority = info
        .app_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .filter(|a| !a.is_empty())
        .map(str::to_string);
    let scheme = shared.scheme_str().unwrap_or("http");
    let authority = shared
        .authority()
        .map(|a| a.as_str())
        .unwrap_or("127.0.0.1");
    let target = format!("{scheme}://{authority}{}", request.path_and_query);
    let shown_url = format!(
        "{scheme}://{}{}",
        own_authority.as_deref().unwrap_or(authority),
        request.path_and_query
    );
    let mut builder = http::Request::builder()
        .method(request.method.clone())
        .uri(&target);
    // The app's own address: the route is the app's even where another app has it.
    if let Some(a) = &own_authority {
        builder = builder.header(header::HOST, a.as_str());
    }
    let has_key = request
        .headers
        .iter()
        .any(|(n, _)| n.as_str().eq_ignore_ascii_case("x-functions-key"))
        || request
            .path_and_query
            .split_once('?')
            .is_some_and(|(_, q)| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "code"));
    if !has_key && !info.key.is_empty() {
        builder = builder.header("x-functions-key", info.key.as_str());
    }
    for (n, v) in &request.headers {
        builder = builder.header(n, v);
    }
    let outgoing = builder
        .body(Full::new(Bytes::from(request.body.clone())))
        .map_err(|e| Problem::bad(format!("the request cannot be built: {e}")))?;
    let client = client();
    let t0_ms = now_ms();
    let t0 = Instant::now();
    let answer = tokio::time::timeout(DEADLINE, async {
        let response = client.request(outgoing).await.map_err(|e| {
            Problem::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "no answer from the function port {authority}: {}",
                    crate::tls::error_chain(&e)
                ),
            )
        })?;
        let (parts, body) = response.into_parts();
        let body = match http_body_util::Limited::new(body, MAX_READ).collect().await {
            Ok(c) => (c.to_bytes(), None),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => (
                Bytes::new(),
                Some(format!(
                    "the body is longer than {MAX_READ} bytes: not shown"
                )),
            ),
            Err(e) => (
                Bytes::new(),
                Some(format!("the body could not be read: {e}")),
            ),
        };
        Ok::<_, Problem>((parts, body))
    })
    .await
    .map_err(|_| {
        Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the function did not answer within {} s",
                DEADLINE.as_secs()
            ),
        )
    })??;
    let duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let t1_ms = now_ms();
    let (parts, (bytes, unread)) = answer;
    let mut body_note = None;
    let body = if let Some(why) = unread {
        body_note = Some(why);
        String::new()
    } else {
        match std::str::from_utf8(&bytes) {
            Ok(text) if text.len() > MAX_SHOWN => {
                body_note = Some(format!("{} bytes; the first {MAX_SHOWN} shown", text.len()));
                text.char_indices()
                    .take_while(|(i, _)| *i < MAX_SHOWN)
                    .map(|(_, c)| c)
                    .collect()
            }
            Ok(text) => text.to_string(),
            Err(_) => {
                body_note = Some(format!(
                    "{} bytes that are not UTF-8 text: not shown",
                    bytes.len()
                ));
                String::new()
            }
        }
    };
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let status = parts.status.as_u16();
    let (invocation, invocation_note) =
        find_invocation(ctx, app, &info.name, t0_ms, t1_ms, status).await;
    Ok(TestResult {
        method: request.method.to_string(),
        url: shown_url,
        status,
        headers,
        body,
        body_note,
        duration_ms,
        invocation,
        invocation_note,
    })
}

fn client() -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    http.enforce_http(false);
    let tls = crate::tls::current()
        .and_then(|t| t.rustls_client().ok())
        .unwrap_or_else(crate::tls::plain_http_only);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

/// The record of the test's invocation (records are written just after the
/// answer: asked a few times).
async fn find_invocation(
    ctx: &Ctx,
    app: &AppName,
    function: &str,
    t0_ms: i64,
    t1_ms: i64,
    status: u16,
) -> (Option<pb::InvocationInfo>, Option<String>) {
    let mut last_error = None;
    for attempt in 0..8 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let answer = ctx
            .api
            .list_invocations(tonic::Request::new(pb::ListInvocationsRequest {
                app_name: app.to_string(),
                function_name: function.to_string(),
                limit: Some(100),
                since_ms: Some(t0_ms - 1_000),
                ..Default::default()
            }))
            .await;
        let list = match answer {
            Ok(a) => a.into_inner().invocations,
            Err(e) => {
                last_error = Some(e.message().to_string());
                continue;
            }
        };
        let mut matching: Vec<pb::InvocationInfo> = list
            .into_iter()
            .filter(|i| {
                i.trigger == "http"
                    && i.http_status == u32::from(status)
                    && i.started_at_ms >= t0_ms - 5
                    && i.started_at_ms <= t1_ms + 5
            })
            .collect();
        if matching.is_empty() {
            continue;
        }
        matching.sort_by_key(|i| (i.started_at_ms - t0_ms).abs());
        let note = (matching.len() > 1).then(|| {
            format!(
                "{} invocations of this function with this status ran while the test \
                 waited; this is the one that started closest to it",
                matching.len()
            )
        });
        return (matching.into_iter().next(), note);
    }
    let note = match last_error {
        Some(e) => format!("its record could not be read: {e}"),
        None => "no record of it was found (a request refused before it reached an \
                 instance — a wrong key, a 404, a 429 — has none)"
            .to_string(),
    };
    (None, Some(note))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &[(&str, &str)]) -> Form {
        Form(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_good_form_becomes_a_request() {
        let r = parse(&form(&[
            ("method", "post"),
            ("path", "/api/hello"),
            ("query", "?name=ada"),
            ("headers", "X-One: 1\n\nContent-Type: text/plain"),
            ("body", "hi"),
        ]))
        .unwrap();
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.path_and_query, "/api/hello?name=ada");
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.body, "hi");
    }

    #[test]
    fn every_bad_field_is_named() {
        for (fields, says) in [
            (vec![("method", "BREW"), ("path", "/x")], "method"),
            (vec![("path", "x")], "path"),
            (vec![("path", "/a?b")], "path"),
            (vec![("path", "/a"), ("headers", "no colon")], "line 1"),
            (
                vec![("path", "/a"), ("headers", "A: 1\nBad Name: 2")],
                "line 2",
            ),
            (
                vec![("path", "/a"), ("headers", "Host: evil")],
                "set by the panel",
            ),
            (
                vec![("path", "/a"), ("headers", "X: a\u{7}b")],
                "not a header value",
            ),
        ] {
            let e = parse(&form(&fields)).err().expect("refused");
            assert!(e.message.contains(says), "{fields:?}: {}", e.message);
        }
    }
}
