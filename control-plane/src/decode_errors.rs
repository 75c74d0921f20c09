//! A request the control port cannot decode (not protobuf, or not the message the
//! method takes) is the caller's mistake: INVALID_ARGUMENT, not the INTERNAL that
//! tonic's codec answers (which tells a client the server failed and invites a
//! retry). A layer around every service rewrites exactly that answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderValue, Request, Response};

/// Wraps the control port's services; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeErrorsLayer;

impl<S> tower_layer::Layer<S> for DecodeErrorsLayer {
    type Service = DecodeErrors<S>;

    fn layer(&self, inner: S) -> DecodeErrors<S> {
        DecodeErrors(inner)
    }
}

#[derive(Debug, Clone)]
pub struct DecodeErrors<S>(S);

impl<S, B, RB> tower_service::Service<Request<B>> for DecodeErrors<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move { answer.await.map(decode_error_is_invalid_argument) })
    }
}

/// tonic answers a request it cannot decode at once, with the status in the
/// headers (grpc-status 13, grpc-message "failed to decode Protobuf message…").
pub fn decode_error_is_invalid_argument<RB>(mut response: Response<RB>) -> Response<RB> {
    let headers = response.headers();
    let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let decode = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| {
            m.starts_with("failed%20to%20decode") || m.starts_with("failed to decode")
        });
    if internal && decode {
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("3"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &str, message: &str) -> Response<()> {
        let mut r = Response::new(());
        r.headers_mut()
            .insert("grpc-status", HeaderValue::from_str(status).unwrap());
        r.headers_mut()
            .insert("grpc-message", HeaderValue::from_str(message).unwrap());
        r
    }

    #[test]
    fn only_a_decode_failure_becomes_invalid_argument() {
        let fixed = decode_error_is_invalid_argument(answer(
            "13",
            "failed%20to%20decode%20Protobuf%20message%3A%20invalid%20wire%20type",
        ));
        assert_eq!(fixed.headers()["grpc-status"], "3");
        let other = decode_error_is_invalid_argument(answer("13", "raft%20stopped"));
        assert_eq!(other.headers()["grpc-status"], "13");
        let ok = decode_error_is_invalid_argument(answer("0", "failed to decode"));
        assert_eq!(ok.headers()["grpc-status"], "0");
    }
}
