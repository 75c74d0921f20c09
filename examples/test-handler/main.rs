//! `strom-test-handler`: a small, fast Azure Functions custom handler for Strom's
//! end-to-end tests and benchmarks. Tests rely on the contract below; change it only
//! together with them.
//!
//! # Start-up
//!
//! - `FUNCTIONS_CUSTOMHANDLER_PORT` (required, 1..=65535): listens on `127.0.0.1:<port>`,
//!   HTTP/1.1 with keep-alive (h2c with prior knowledge also works). Missing or invalid:
//!   a message on stderr and exit code 2.
//! - `FUNCTIONS_CUSTOMHANDLER_WORKER_ID` (optional): echoed as `worker` (else `null`).
//! - `TEST_HANDLER_MODE` (an app setting in tests):
//!   - unset or empty: listen at once;
//!   - `never-ready`: never listens; sleeps until SIGTERM/Ctrl-C, then exits 0;
//!   - `exit-at-once`: prints `exiting at once` to stderr and exits with code 3;
//!   - `ready-after-ms=N`: sleeps N ms, then listens (SIGTERM meanwhile exits 0);
//!   - anything else: a message on stderr and exit code 2.
//! - If the port cannot be bound: a message on stderr and exit code 1.
//!
//! # Requests
//!
//! - `GET /` answers 200 `text/plain` `ok` (the host's readiness probe).
//! - **JSON mode**: `POST /{name}` (one path segment, no query string) whose body is a
//!   JSON object with a `"Data"` key. The action is `Data.<b>.Query.action`, where `<b>`
//!   is the first binding (`serde_json` map order, i.e. sorted by name) whose value is an
//!   object holding a `"Query"` object; default `echo`. The host always gets
//!   `Content-Type: application/json` unless the action says otherwise:
//!   - `echo`: 200 `{"Outputs":{"res":{"statusCode":200,"headers":{"Content-Type":
//!     "application/json","x-test-handler":"json"},"body":"<JSON text>"}},
//!     "Logs":["echo <name>"],"ReturnValue":null}`; the body text is the JSON object
//!     `{"function","invocationId","hostVersion","traceparent","worker","pid","data",
//!     "metadata"}` (`invocationId`/`hostVersion`/`traceparent` from the
//!     `X-Azure-Functions-InvocationId`/`X-Azure-Functions-HostVersion`/`traceparent`
//!     headers, `data`/`metadata` the request's `Data`/
//!     `Metadata`; absent values are `null`);
//!   - `status=N` (100..=999): like `echo` with `statusCode` N;
//!   - `sleep=MS`: sleeps MS ms, then like `echo`;
//!   - `binary`: like `echo`, but the output body is the base64 of bytes 0..=255 and its
//!     `Content-Type` is `application/octet-stream`;
//!   - `return`: 200 `{"Outputs":{},"Logs":["return value"],
//!     "ReturnValue":{"statusCode":201,"body":"from return value"}}`;
//!   - `no-output`: 200 `{"Outputs":{},"Logs":["nothing to say"]}`;
//!   - `not-json`: 200 `text/plain` `oops`;
//!   - `fail`: 500 `{"Logs":["about to fail"],"Outputs":{}}`;
//!   - `crash`: prints `crashing` to stderr and exits with code 1; no response;
//!   - anything else: 400 `{"Logs":["unknown action"]}`.
//! - **Forwarding mode**: every other request. The action is the query parameter
//!   `action` (percent-decoded; default `echo`):
//!   - `echo`, `status=N`, `sleep=MS`: status 200 (or N), headers
//!     `Content-Type: application/json` and `x-test-handler: forwarded`, body
//!     `{"method","path","query","headers","body","worker","pid"}`: `path` without the
//!     query, `query` the raw query string (`null` without `?`), `headers` lower-case
//!     name → `[values]`, `body` the request body as (lossy) UTF-8;
//!   - `binary`: 200 `application/octet-stream`, bytes 0..=255, `x-test-handler: forwarded`;
//!   - `crash`: as in JSON mode;
//!   - anything else: 400 `application/json` `{"Logs":["unknown action"]}`.
//! - Every invocation in either mode except `crash` first prints the whole, flushed
//!   lines `stdout <invocation id>` to stdout and `stderr <invocation id>` to stderr
//!   (`-` when the `X-Azure-Functions-InvocationId` header is missing).
//!
//! # Shutdown
//!
//! On SIGTERM (or Ctrl-C) it stops accepting, lets in-flight requests finish (idle
//! keep-alive connections are closed), and exits 0.

use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Map, Value};

const INVOCATION_ID: &str = "x-azure-functions-invocationid";
const HOST_VERSION: &str = "x-azure-functions-hostversion";
const APPLICATION_JSON: &str = "application/json";

/// What `TEST_HANDLER_MODE` asks for at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    NeverReady,
    ExitAtOnce,
    ReadyAfter(Duration),
}

/// Everything read from the environment, parsed once.
#[derive(Debug)]
struct Config {
    port: u16,
    worker: Option<String>,
    mode: Mode,
    default_action: Action,
    record: Option<std::path::PathBuf>,
}

/// Who answers: echoed in every echo body.
#[derive(Debug)]
struct Identity {
    worker: Option<String>,
    /// `TEST_HANDLER_ACTION`.
    default_action: Action,
    /// `TEST_HANDLER_RECORD`.
    record: Option<std::path::PathBuf>,
    pid: u32,
}

/// What an invocation asks the handler to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Echo,
    Status(u16),
    Sleep(Duration),
    Binary,
    Return,
    NoOutput,
    NotJson,
    Fail,
    Crash,
    Unknown,
}

/// A response as plain data; the shell turns it into a hyper response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", APPLICATION_JSON)],
            body: value.to_string().into_bytes(),
        }
    }
}

fn main() -> ExitCode {
    let config = match Config::from_env(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("strom-test-handler: {message}");
            return ExitCode::from(2);
        }
    };
    if config.mode == Mode::ExitAtOnce {
        eprintln!("exiting at once");
        return ExitCode::from(3);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("strom-test-handler: cannot start the tokio runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("strom-test-handler: {err:#}");
            ExitCode::from(1)
        }
    }
}

impl Config {
    /// Reads the configuration; the error names every problem found.
    fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut problems = Vec::new();
        let port = match var("FUNCTIONS_CUSTOMHANDLER_PORT") {
            None => {
                problems.push("FUNCTIONS_CUSTOMHANDLER_PORT is not set".to_owned());
                0
            }
            Some(raw) => match raw.trim().parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => {
                    problems.push(format!(
                        "FUNCTIONS_CUSTOMHANDLER_PORT `{raw}` is not a port in 1..=65535"
                    ));
                    0
                }
            },
        };
        let mode = match parse_mode(var("TEST_HANDLER_MODE").as_deref().unwrap_or("")) {
            Ok(mode) => mode,
            Err(problem) => {
                problems.push(problem);
                Mode::Normal
            }
        };
        let default_action = match var("TEST_HANDLER_ACTION").filter(|a| !a.is_empty()) {
            None => Action::Echo,
            Some(raw) => match parse_action(&raw) {
                Action::Unknown => {
                    problems.push(format!("TEST_HANDLER_ACTION `{raw}` is not an action"));
                    Action::Echo
                }
                action => action,
            },
        };
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let worker = var("FUNCTIONS_CUSTOMHANDLER_WORKER_ID").filter(|w| !w.is_empty());
        let record = var("TEST_HANDLER_RECORD")
            .filter(|r| !r.is_empty())
            .map(std::path::PathBuf::from);
        Ok(Self {
            port,
            worker,
            mode,
            default_action,
            record,
        })
    }
}

fn parse_mode(raw: &str) -> Result<Mode, String> {
    match raw.trim() {
        "" => Ok(Mode::Normal),
        "never-ready" => Ok(Mode::NeverReady),
        "exit-at-once" => Ok(Mode::ExitAtOnce),
        other => other
            .strip_prefix("ready-after-ms=")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(|ms| Mode::ReadyAfter(Duration::from_millis(ms)))
            .ok_or_else(|| {
                format!(
                    "TEST_HANDLER_MODE `{raw}` is not one of never-ready, exit-at-once, \
                     ready-after-ms=N"
                )
            }),
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut shutdown = Box::pin(shutdown_signal().context("installing signal handlers")?);
    match config.mode {
        Mode::Normal | Mode::ExitAtOnce => {}
        Mode::NeverReady => {
            shutdown.await;
            return Ok(());
        }
        Mode::ReadyAfter(delay) => {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut shutdown => return Ok(()),
            }
        }
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let identity = Arc::new(Identity {
        worker: config.worker,
        default_action: config.default_action,
        record: config.record,
        pid: std::process::id(),
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else {
                    // ECONNABORTED, EMFILE, …: keep serving, without spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let identity = Arc::clone(&identity);
                let service = hyper::service::service_fn(move |req| {
                    let identity = Arc::clone(&identity);
                    async move { Ok::<_, Infallible>(handle(req, &identity).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // A client that goes away mid-request is not our problem.
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM, Ctrl-Break (Windows) or Ctrl-C. The SIGTERM handler is installed at once, so a
/// SIGTERM during start-up delays is caught too.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
    }
    // Windows: Strom's process runtime sends Ctrl-Break to the handler's process
    // group (its SIGTERM); Ctrl-C from a console works too.
    #[cfg(windows)]
    {
        let mut brk = tokio::signal::windows::ctrl_break()?;
        Ok(async move {
            tokio::select! {
                _ = brk.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
    }
    #[cfg(not(any(unix, windows)))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

async fn handle(req: Request<Incoming>, identity: &Identity) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if parts.method == Method::GET && parts.uri.path() == "/" {
        return into_response(Reply {
            status: 200,
            headers: vec![("content-type", "text/plain")],
            body: b"ok".to_vec(),
        });
    }
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            return into_response(Reply {
                status: 400,
                headers: vec![("content-type", "text/plain")],
                body: format!("cannot read the request body: {err}").into_bytes(),
            })
        }
    };
    let invocation_id = header(&parts.headers, INVOCATION_ID);

    if let Some((name, payload)) = json_mode_request(&parts.method, &parts.uri, &body) {
        let action = json_mode_action(&payload).unwrap_or_else(|| identity.default_action.clone());
        let record = |event: &str, data: Option<&Value>| {
            if let Some(path) = &identity.record {
                record_line(path, event, &name, invocation_id.as_deref(), data);
            }
        };
        record("start", payload.get("Data"));
        let action = perform_effects(action, invocation_id.as_deref()).await;
        record("end", None);
        let context = JsonModeContext {
            name,
            invocation_id,
            host_version: header(&parts.headers, HOST_VERSION),
            traceparent: header(&parts.headers, "traceparent"),
            identity,
            payload,
        };
        return into_response(json_mode_reply(&action, &context));
    }

    let query = parts.uri.query();
    let action = query
        .and_then(|q| query_param(q, "action"))
        .map_or(Action::Echo, |a| parse_action(&a));
    let action = perform_effects(action, invocation_id.as_deref()).await;
    let request = ForwardedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query,
        headers: &parts.headers,
        body: &body,
    };
    into_response(forwarded_reply(&action, &request, identity))
}

/// Performs what an action does besides answering: crash, sleep, and the
/// `stdout`/`stderr` lines. Returns the action that decides the answer.
async fn perform_effects(action: Action, invocation_id: Option<&str>) -> Action {
    if action == Action::Crash {
        eprintln!("crashing");
        let _ = std::io::stderr().flush();
        std::process::exit(1);
    }
    let id = invocation_id.unwrap_or("-");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "stdout {id}");
        let _ = out.flush();
    }
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "stderr {id}");
        let _ = err.flush();
    }
    match action {
        Action::Sleep(delay) => {
            tokio::time::sleep(delay).await;
            Action::Sleep(delay)
        }
        other => other,
    }
}

/// `Some((function name, payload))` when the request is a JSON-mode invocation.
fn json_mode_request(
    method: &Method,
    uri: &hyper::Uri,
    body: &[u8],
) -> Option<(String, Map<String, Value>)> {
    if method != Method::POST || uri.query().is_some() {
        return None;
    }
    let name = uri.path().strip_prefix('/')?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(payload)) if payload.contains_key("Data") => {
            Some((name.to_owned(), payload))
        }
        _ => None,
    }
}

/// Append one `TEST_HANDLER_RECORD` line (one write, so lines never interleave).
fn record_line(
    path: &std::path::Path,
    event: &str,
    function: &str,
    invocation_id: Option<&str>,
    data: Option<&Value>,
) {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut line = json!({
        "event": event,
        "function": function,
        "invocationId": invocation_id,
        "pid": std::process::id(),
        "atMs": at_ms,
    });
    if let Some(data) = data {
        line["data"] = data.clone();
    }
    let mut text = line.to_string();
    text.push('\n');
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        eprintln!("TEST_HANDLER_RECORD {}: {e}", path.display());
    }
}

/// The action a JSON-mode request names (`None`: it names none).
fn json_mode_action(payload: &Map<String, Value>) -> Option<Action> {
    let query = payload
        .get("Data")
        .and_then(Value::as_object)
        .and_then(|data| {
            data.values()
                .find_map(|binding| binding.get("Query").filter(|q| q.is_object()))
        });
    match query.and_then(|q| q.get("action")) {
        None | Some(Value::Null) => None,
        Some(Value::String(action)) => Some(parse_action(action)),
        Some(_) => Some(Action::Unknown),
    }
}

fn parse_action(raw: &str) -> Action {
    match raw {
        "echo" => Action::Echo,
        "return" => Action::Return,
        "no-output" => Action::NoOutput,
        "crash" => Action::Crash,
        "not-json" => Action::NotJson,
        "fail" => Action::Fail,
        "binary" => Action::Binary,
        other => {
            if let Some(n) = other.strip_prefix("status=") {
                match n.parse::<u16>() {
                    Ok(code) if (100..=999).contains(&code) => Action::Status(code),
                    _ => Action::Unknown,
                }
            } else if let Some(ms) = other.strip_prefix("sleep=") {
                ms.parse::<u64>().map_or(Action::Unknown, |ms| {
                    Action::Sleep(Duration::from_millis(ms))
                })
            } else {
                Action::Unknown
            }
        }
    }
}

#[derive(Debug)]
struct JsonModeContext<'a> {
    name: String,
    invocation_id: Option<String>,
    host_version: Option<String>,
    traceparent: Option<String>,
    identity: &'a Identity,
    payload: Map<String, Value>,
}

fn json_mode_reply(action: &Action, cx: &JsonModeContext<'_>) -> Reply {
    let echo_output = |status: u16, content_type: &str, body: String| {
        json!({
            "Outputs": {"res": {
                "statusCode": status,
                "headers": {"Content-Type": content_type, "x-test-handler": "json"},
                "body": body,
            }},
            "Logs": [format!("echo {}", cx.name)],
            "ReturnValue": null,
        })
    };
    let echo_body = || {
        json!({
            "function": cx.name,
            "invocationId": cx.invocation_id,
            "hostVersion": cx.host_version,
            "traceparent": cx.traceparent,
            "worker": cx.identity.worker,
            "pid": cx.identity.pid,
            "data": cx.payload.get("Data").cloned().unwrap_or(Value::Null),
            "metadata": cx.payload.get("Metadata").cloned().unwrap_or(Value::Null),
        })
        .to_string()
    };
    match action {
        Action::Echo | Action::Sleep(_) => {
            Reply::json(200, &echo_output(200, APPLICATION_JSON, echo_body()))
        }
        Action::Status(code) => {
            Reply::json(200, &echo_output(*code, APPLICATION_JSON, echo_body()))
        }
        Action::Binary => Reply::json(
            200,
            &echo_output(200, "application/octet-stream", base64(&all_bytes())),
        ),
        Action::Return => Reply::json(
            200,
            &json!({
                "Outputs": {},
                "Logs": ["return value"],
                "ReturnValue": {"statusCode": 201, "body": "from return value"},
            }),
        ),
        Action::NoOutput => Reply::json(200, &json!({"Outputs": {}, "Logs": ["nothing to say"]})),
        Action::NotJson => Reply {
            status: 200,
            headers: vec![("content-type", "text/plain")],
            body: b"oops".to_vec(),
        },
        Action::Fail => Reply::json(500, &json!({"Logs": ["about to fail"], "Outputs": {}})),
        // Crash never gets here; answer as if unknown rather than panic.
        Action::Crash | Action::Unknown => Reply::json(400, &json!({"Logs": ["unknown action"]})),
    }
}

#[derive(Debug)]
struct ForwardedRequest<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

fn forwarded_reply(action: &Action, req: &ForwardedRequest<'_>, identity: &Identity) -> Reply {
    let status = match action {
        Action::Echo | Action::Sleep(_) => 200,
        Action::Status(code) => *code,
        Action::Binary => {
            return Reply {
                status: 200,
                headers: vec![
                    ("content-type", "application/octet-stream"),
                    ("x-test-handler", "forwarded"),
                ],
                body: all_bytes(),
            }
        }
        _ => {
            return Reply {
                status: 400,
                headers: vec![
                    ("content-type", APPLICATION_JSON),
                    ("x-test-handler", "forwarded"),
                ],
                body: json!({"Logs": ["unknown action"]}).to_string().into_bytes(),
            }
        }
    };
    let mut headers = Map::new();
    for (name, value) in req.headers {
        let values = headers
            .entry(name.as_str().to_ascii_lowercase())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = values {
            values.push(Value::String(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
    }
    let body = json!({
        "method": req.method,
        "path": req.path,
        "query": req.query,
        "headers": headers,
        "body": String::from_utf8_lossy(req.body),
        "worker": identity.worker,
        "pid": identity.pid,
    });
    Reply {
        status,
        headers: vec![
            ("content-type", APPLICATION_JSON),
            ("x-test-handler", "forwarded"),
        ],
        body: body.to_string().into_bytes(),
    }
}

fn into_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    // Parsing validated 100..=999, so this only falls back on a bug.
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in reply.headers {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
    }
    response
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The first value of `name` in a raw query string, percent- and `+`-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
