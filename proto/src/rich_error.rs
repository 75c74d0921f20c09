//! Validation errors in gRPC's rich error model: `grpc-status-details-bin` holds a
//! `google.rpc.Status` whose details are a standard `google.rpc.BadRequest` (one
//! field violation per problem: `field` is `file: json path`, `description` what is
//! wrong) — what grpcurl, Python's `grpc_status` and tonic-types read — and Strom's
//! own `strom.admin.v1.ValidationErrors` (file and JSON path apart) for the CLI.

use prost::Message;
use tonic_types::{BadRequest, ErrorDetail, ErrorDetails, FieldViolation, StatusExt};

use crate::admin_v1 as pb;

/// The type URL of Strom's own detail.
pub const VALIDATION_ERRORS_TYPE: &str = "type.googleapis.com/strom.admin.v1.ValidationErrors";

/// An INVALID_ARGUMENT carrying `errors` as both details.
pub fn validation_status(message: String, errors: &pb::ValidationErrors) -> tonic::Status {
    let violations: Vec<FieldViolation> = errors
        .errors
        .iter()
        .map(|e| {
            let field = if e.json_path.is_empty() {
                e.file.clone()
            } else {
                format!("{}: {}", e.file, e.json_path)
            };
            FieldViolation::new(field, e.message.clone())
        })
        .collect();
    let standard = tonic::Status::with_error_details_vec(
        tonic::Code::InvalidArgument,
        message.clone(),
        vec![ErrorDetail::from(BadRequest::new(violations))],
    );
    // Re-encode with Strom's detail added beside the standard one.
    let mut status = tonic_types::pb::Status::decode(standard.details()).unwrap_or_default();
    status.details.push(prost_types::Any {
        type_url: VALIDATION_ERRORS_TYPE.to_string(),
        value: errors.encode_to_vec(),
    });
    tonic::Status::with_details(
        tonic::Code::InvalidArgument,
        message,
        status.encode_to_vec().into(),
    )
}

/// The validation errors a status carries: Strom's detail, else the standard
/// BadRequest's violations (from another server), else none.
pub fn validation_errors(status: &tonic::Status) -> Vec<pb::ValidationError> {
    if let Ok(rich) = tonic_types::pb::Status::decode(status.details()) {
        if let Some(ours) = rich
            .details
            .iter()
            .find(|d| d.type_url == VALIDATION_ERRORS_TYPE)
            .and_then(|d| pb::ValidationErrors::decode(d.value.as_slice()).ok())
        {
            return ours.errors;
        }
    }
    let details: ErrorDetails = status.get_error_details();
    details
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| pb::ValidationError {
                    file: v.field.clone(),
                    json_path: String::new(),
                    message: v.description.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::ValidationErrors {
        pb::ValidationErrors {
            errors: vec![
                pb::ValidationError {
                    file: "f/function.json".into(),
                    json_path: "bindings[0].route".into(),
                    message: "not closed".into(),
                },
                pb::ValidationError {
                    file: "host.json".into(),
                    json_path: String::new(),
                    message: "missing".into(),
                },
            ],
        }
    }

    #[test]
    fn standard_clients_read_a_bad_request() {
        let status = validation_status("the app is invalid".into(), &sample());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("a google.rpc.BadRequest");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("f/function.json: bindings[0].route", "not closed"),
                ("host.json", "missing")
            ]
        );
    }

    #[test]
    fn strom_reads_its_own_detail_back() {
        let status = validation_status("x".into(), &sample());
        assert_eq!(validation_errors(&status), sample().errors);
        // A status with no details has no validation errors.
        assert!(validation_errors(&tonic::Status::invalid_argument("x")).is_empty());
    }
}
