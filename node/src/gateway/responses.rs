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
    let body = serde_json::json!({"error": {"code": code, "message": message.into()}});
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

/// A request body read whole: at most `max` bytes, and no pause between its
/// bytes longer than `idle` (a client that stops sending gets 408 and the
/// connection closes: its unread rest cannot be skipped).
pub async fn read_body<B>(
    body: B,
    max: usize,
    idle: std::time::Duration,
) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let body = std::pin::pin!(body);
    let mut body = http_body_util::Limited::new(body, max);
    let mut body = std::pin::Pin::new(&mut body);
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
                    out.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e)))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(too_large(max))
            }
            Ok(Some(Err(e))) => return Err(bad_request(format!("reading the request body: {e}"))),
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
