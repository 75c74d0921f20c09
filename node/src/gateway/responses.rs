//! The gateway's own answers: errors as `{"error": {"code", "message"}}` JSON,
//! and the bodies it builds.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Header on a 503 meaning "no handler saw this request": the sender may retry.
pub const UNDELIVERED: &str = "x-strom-undelivered";

/// A refusal or failure, as every Strom HTTP error is shaped.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message.into()}}),
    )
}

/// A JSON answer the gateway builds itself.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|e: Infallible| match e {}).boxed()
}

pub fn too_large(limit: usize) -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        format!("the request body is larger than {limit} bytes"),
    )
}

pub fn bad_request(message: impl Into<String>) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

pub fn unavailable(message: impl Into<String>) -> Response<Body> {
    error(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", message)
}

/// How much of a refused request body is read and dropped before the answer, so
/// that an HTTP/2 client, still sending, gets the 413 instead of a stream reset.
const DISCARD_CAP: usize = 16 << 20;
/// How long that may take.
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Read and drop what is left of a refused body (bounded by [`DISCARD_CAP`] and
/// [`DISCARD_TIME`]).
pub async fn discard<B>(body: B)
where
    B: hyper::body::Body<Data = Bytes> + Send,
{
    let mut body = std::pin::pin!(body);
    let mut seen = 0usize;
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        while let Some(Ok(frame)) = body.as_mut().frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DISCARD_CAP {
                break;
            }
        }
    })
    .await;
}

/// A request body read whole: at most `max` bytes, and no pause between its
/// bytes longer than `idle` (a client that stops sending gets 408 and the
/// connection closes: its unread rest cannot be skipped). Over `max`: 413, after
/// reading and dropping the rest when `discard_excess` (HTTP/2: the client would
/// otherwise see its stream reset instead of the answer).
pub async fn read_body<B>(
    body: B,
    max: usize,
    idle: std::time::Duration,
    discard_excess: bool,
) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut out = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.as_mut().frame()).await {
            Err(_) => {
                let mut r = error(
                    StatusCode::REQUEST_TIMEOUT,
                    "RequestTimeout",
                    format!(
                        "the request body stopped arriving for {} s",
                        idle.as_secs_f64()
                    ),
                );
                r.headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                return Err(r);
            }
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > max {
                        if discard_excess {
                            discard(body).await;
                        }
                        return Err(too_large(max));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) => {
                let e: BoxError = e.into();
                return Err(bad_request(format!("reading the request body: {e}")));
            }
        }
    }
}

/// "No handler saw this request": the sending node tries elsewhere.
pub fn undelivered(app: &strom_proto::ids::AppName) -> Response<Body> {
    let mut r = unavailable(format!("no Ready instance of app `{app}` on this node"));
    r.headers_mut()
        .insert(UNDELIVERED, HeaderValue::from_static("1"));
    r
}

/// A response body that holds guards (requests in flight, limits) until it has
/// been sent completely.
pub struct Guarded<G> {
    pub inner: Body,
    pub guard: G,
}

impl<G: Send + Sync + Unpin + 'static> hyper::body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
