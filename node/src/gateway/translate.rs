//! Requests and responses between the client's HTTP and the handler's: a JSON-mode
//! invocation built from a request, a forwarded request (forwarding mode and the
//! hop between gateways), and one way to relay a response (hop-by-hop headers
//! dropped, answered in the client's HTTP version, guards held until its body has
//! been sent).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Version};
use strom_proto::manifest::{FunctionManifest, HostConfig, Trigger};

use super::json_mode::{self, HttpRequestData, InvocationPayload};
use super::responses::{full, Body, BoxError, Guarded};
use super::HOST_VERSION;

/// Headers that belong to one connection, not to the message.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Forwarding mode applies to functions with exactly one httpTrigger in and one
/// http out, in an app with `enableForwardingHttpRequest`.
pub fn forwards(host: &HostConfig, f: &FunctionManifest) -> bool {
    host.custom_handler.enable_forwarding_http_request
        && f.bindings.len() == 2
        && matches!(&f.trigger, Trigger::Http(h) if h.output.is_some())
}

/// Relay a response: hop-by-hop headers dropped, in `version` (the client's: the
/// other side's HTTP version is its own business), with `guard` held until the
/// body has been sent completely.
pub fn relay_response<B, G>(resp: Response<B>, version: Version, guard: G) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
    G: Send + Sync + Unpin + 'static,
{
    let (mut head, body) = resp.into_parts();
    let names: Vec<HeaderName> = head
        .headers
        .keys()
        .filter(|k| is_hop_by_hop(k.as_str()))
        .cloned()
        .collect();
    for n in names {
        head.headers.remove(n);
    }
    head.version = version;
    let body = Guarded {
        inner: body.map_err(Into::into).boxed(),
        guard,
    };
    Response::from_parts(head, body.boxed())
}

/// A request to `base` (`scheme://host:port`) with the method, path, query and
/// end-to-end headers of `parts` (except `skip`).
pub fn copy_request(parts: &Parts, base: &str, skip: &HeaderName) -> hyper::http::request::Builder {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    request_to(parts, format!("{base}{pq}"), skip)
}

/// A request to `uri` with the method and end-to-end headers of `parts` (except `skip`).
fn request_to(parts: &Parts, uri: String, skip: &HeaderName) -> hyper::http::request::Builder {
    let mut builder = Request::builder().method(parts.method.clone()).uri(uri);
    for (k, v) in &parts.headers {
        if !is_hop_by_hop(k.as_str()) && k != skip {
            builder = builder.header(k, v);
        }
    }
    builder
}

/// Forwarding mode: the original request, to the handler at `addr`: at its own
/// path, or at `/{function}` with its query when `to_function` names it (the
/// legacy `httpWorker` section, as Azure sends it).
pub fn forward_request(
    parts: &Parts,
    body: &Bytes,
    addr: SocketAddr,
    id: &str,
    to_function: Option<&str>,
) -> Request<Full<Bytes>> {
    // Origin-form: the connection is the instance's own (`Endpoint::send`).
    let uri = match to_function {
        None => match parts.uri.path_and_query() {
            Some(pq) => hyper::Uri::from(pq.clone()),
            None => hyper::Uri::from_static("/"),
        },
        Some(function) => match parts.uri.query() {
            Some(q) => format!("/{function}?{q}"),
            None => format!("/{function}"),
        }
        .parse()
        .expect("a function name and a request's query make a URI"),
    };
    // Built in place, not through `request::Builder` (which parses every name and
    // value it is given again): the client's end-to-end headers as they are, and
    // the invocation's, which replace any a client sent.
    let mut request = Request::new(Full::new(body.clone()));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.reserve(parts.headers.len() + 2);
    for (k, v) in &parts.headers {
        if !is_hop_by_hop(k.as_str()) && k != hyper::header::CONTENT_LENGTH {
            headers.append(k.clone(), v.clone());
        }
    }
    if let Ok(id) = HeaderValue::from_str(id) {
        headers.insert(INVOCATION_ID, id);
    }
    headers.insert(HOST_VERSION_HEADER, HeaderValue::from_static(HOST_VERSION));
    if !headers.contains_key(hyper::header::HOST) {
        // An HTTP/2 client names the host in `:authority`; HTTP/1.1 needs `Host`.
        let host = match parts.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => HeaderValue::from_str(&addr.to_string()).ok(),
        };
        if let Some(host) = host {
            headers.insert(hyper::header::HOST, host);
        }
    }
    request
}

const INVOCATION_ID: HeaderName = HeaderName::from_static("x-azure-functions-invocationid");
const HOST_VERSION_HEADER: HeaderName = HeaderName::from_static("x-azure-functions-hostversion");

/// What a JSON-mode invocation needs besides the request.
pub struct Invocation<'a> {
    pub function: &'a str,
    pub binding: &'a str,
    pub params: &'a [(String, String)],
    pub query: &'a [(String, String)],
    /// The client's Host ("" if none).
    pub host: &'a str,
    pub id: &'a str,
}

/// JSON mode: `POST /{function}` with the request as the trigger's data.
pub fn json_request(
    parts: &Parts,
    body: &Bytes,
    addr: SocketAddr,
    call: &Invocation<'_>,
) -> Request<Full<Bytes>> {
    let data = HttpRequestData::new(
        call.host,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        parts.method.as_str(),
        call.query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        call.params,
        parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        body,
    );
    let payload = InvocationPayload {
        req: &data,
        binding: call.binding,
        function: call.function,
        utc_now: std::time::SystemTime::now(),
        rand_guid: &fast_uuid(),
    };
    // Sized for the usual payload: the body and headers twice over, and the frame.
    let mut buf = Vec::with_capacity(1024 + body.len() * 2);
    serde_json::to_writer(&mut buf, &payload).expect("a payload of strings serializes");
    invocation_request(addr, call.function, call.id, Bytes::from(buf))
}

/// JSON mode: `POST /{function}` with an invocation payload (`Data`, `Metadata`),
/// as the Azure host sends it. Built in place (no `request::Builder`, which parses
/// every name and value again).
pub fn invocation_request(
    addr: SocketAddr,
    function: &str,
    id: &str,
    payload: Bytes,
) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(payload));
    *request.method_mut() = hyper::Method::POST;
    *request.uri_mut() = format!("/{function}")
        .parse()
        .expect("a function name makes a path");
    let headers = request.headers_mut();
    headers.reserve(5);
    if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
        headers.insert(hyper::header::HOST, host);
    }
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Ok(id) = HeaderValue::from_str(id) {
        headers.insert(INVOCATION_ID, id);
    }
    headers.insert(HOST_VERSION_HEADER, HeaderValue::from_static(HOST_VERSION));
    headers.insert(
        hyper::header::USER_AGENT,
        HeaderValue::from_static(concat!(
            "Azure-Functions-Host/4.0.0-strom.",
            env!("CARGO_PKG_VERSION")
        )),
    );
    request
}

/// The HTTP response a JSON-mode handler's `http` output describes.
pub fn http_response(out: json_mode::HttpOutput) -> Response<Body> {
    let mut r = Response::new(full(out.body));
    *r.status_mut() = StatusCode::from_u16(out.status).unwrap_or(StatusCode::OK);
    for (k, v) in out.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            if !is_hop_by_hop(name.as_str()) && name != hyper::header::CONTENT_LENGTH {
                r.headers_mut().append(name, value);
            }
        }
    }
    r
}

/// A random (v4) UUID from the thread-local RNG (no system call per request).
pub fn fast_uuid() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_response_loses_its_hop_by_hop_headers_and_takes_the_client_version() {
        let resp = Response::builder()
            .version(Version::HTTP_11)
            .header("connection", "keep-alive")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "1")
            .body(Full::new(Bytes::from_static(b"hi")))
            .unwrap();
        let relayed = relay_response(resp, Version::HTTP_2, ());
        assert_eq!(relayed.version(), Version::HTTP_2);
        assert!(relayed.headers().get("connection").is_none());
        assert!(relayed.headers().get("keep-alive").is_none());
        assert_eq!(relayed.headers()["x-kept"], "1");
    }

    #[test]
    fn a_forwarded_request_keeps_end_to_end_headers_and_names_the_invocation() {
        let (parts, _) = Request::builder()
            .method("PUT")
            .uri("/api/echo/x?y=1")
            .header("content-length", "2")
            .header("transfer-encoding", "chunked")
            .header("x-app", "a")
            .body(())
            .unwrap()
            .into_parts();
        let r = forward_request(
            &parts,
            &Bytes::from_static(b"hi"),
            "127.0.0.1:9".parse().unwrap(),
            "id-1",
            None,
        );
        assert_eq!(r.method(), "PUT");
        // Origin-form on the instance's own connection; HTTP/1.1 needs a Host.
        assert_eq!(r.uri(), "/api/echo/x?y=1");
        assert_eq!(r.headers()["host"], "127.0.0.1:9");
        assert!(r.headers().get("transfer-encoding").is_none());
        assert!(r.headers().get("content-length").is_none());
        assert_eq!(r.headers()["x-app"], "a");
        assert_eq!(r.headers()["x-azure-functions-invocationid"], "id-1");
        assert!(r.headers()["x-azure-functions-hostversion"]
            .to_str()
            .unwrap()
            .starts_with("4.0.0-strom."));
        // A client cannot name the invocation to the handler.
        let (mut spoofed, _) = Request::builder()
            .uri("/api/echo")
            .header("x-azure-functions-invocationid", "forged")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .body(())
            .unwrap()
            .into_parts();
        spoofed.method = hyper::Method::GET;
        let r = forward_request(
            &spoofed,
            &Bytes::new(),
            "127.0.0.1:9".parse().unwrap(),
            "id-3",
            None,
        );
        let ids: Vec<_> = r
            .headers()
            .get_all("x-azure-functions-invocationid")
            .iter()
            .collect();
        assert_eq!(ids, ["id-3"]);
        assert_eq!(r.headers().get_all("x-multi").iter().count(), 2);
        // The client's Host reaches the handler; an HTTP/2 client's `:authority`
        // stands in for it.
        let (with_host, _) = Request::builder()
            .uri("/api/echo")
            .header("host", "fn.example:7070")
            .body(())
            .unwrap()
            .into_parts();
        let r = forward_request(
            &with_host,
            &Bytes::new(),
            "127.0.0.1:9".parse().unwrap(),
            "i",
            None,
        );
        assert_eq!(r.headers()["host"], "fn.example:7070");
        let (h2, _) = Request::builder()
            .uri("https://fn.example/api/echo?z=2")
            .version(hyper::Version::HTTP_2)
            .body(())
            .unwrap()
            .into_parts();
        let r = forward_request(
            &h2,
            &Bytes::new(),
            "127.0.0.1:9".parse().unwrap(),
            "i",
            None,
        );
        assert_eq!(r.headers()["host"], "fn.example");
        assert_eq!(r.uri(), "/api/echo?z=2");
        // The legacy httpWorker section: to /{FunctionName}, query kept.
        let r = forward_request(
            &parts,
            &Bytes::from_static(b"hi"),
            "127.0.0.1:9".parse().unwrap(),
            "id-2",
            Some("echo"),
        );
        assert_eq!(r.uri(), "/echo?y=1");
        assert_eq!(r.method(), "PUT");
        assert_eq!(r.headers()["x-app"], "a");
    }
}
