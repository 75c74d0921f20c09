//! How a gRPC status reads as an HTTP answer (the HTTP endpoints that call the
//! admin API's code: the publishing endpoint, the key management API).

use tonic::codegen::http::StatusCode;
use tonic::Code;

/// The HTTP status and the JSON error `code` for a gRPC status code.
pub fn of(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "InvalidArgument"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        Code::Aborted => (StatusCode::CONFLICT, "Conflict"),
        Code::FailedPrecondition => (StatusCode::CONFLICT, "FailedPrecondition"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        Code::ResourceExhausted => (StatusCode::PAYLOAD_TOO_LARGE, "TooLarge"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_4xx_and_outages_5xx() {
        assert_eq!(of(Code::NotFound).0, StatusCode::NOT_FOUND);
        assert_eq!(of(Code::Aborted), (StatusCode::CONFLICT, "Conflict"));
        assert_eq!(of(Code::Unavailable).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(of(Code::DataLoss).0, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
