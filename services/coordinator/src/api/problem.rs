//! RFC 9457 problem details: every error the API returns, with a message a person can act on.

use async_nats::jetstream::context::PublishError;
use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::validation::FieldError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem (`application/problem+json`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`https://cadre.dev/problems/validation`, ...).
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person to act on.
    pub detail: String,
    /// For an invalid body: each field at fault.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For a refused state transition: the resource's status now.
    #[serde(rename = "currentStatus", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub current_status: Option<&'static str>,
}

impl Problem {
    fn new(status: StatusCode, slug: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("https://cadre.dev/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            current_status: None,
        }
    }

    pub fn invalid(detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "The request is not valid",
                detail,
            )
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// A change the resource's current status does not allow (409, with that status).
    pub fn invalid_transition(detail: impl Into<String>, current_status: &'static str) -> Self {
        Self {
            current_status: Some(current_status),
            ..Self::new(
                StatusCode::CONFLICT,
                "invalid-transition",
                "The change is not allowed in the current status",
                detail,
            )
        }
    }

    /// The infrastructure failed; the request may succeed if retried.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "A backing service is unavailable",
            detail,
        )
    }

    /// The event log refused to store the event a request would record because it is too
    /// large: a property of the request (or of the workflow it starts), not an outage, so
    /// retrying would fail the same way.
    pub fn too_large_to_record(error: &PublishError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too-large-to-record",
            "Too large to record",
            format!(
                "the event this request would record is larger than the event log accepts \
                 ({error}); nothing was written and retrying will not help: make the request \
                 smaller (to start a workflow, its definition and its agents' profiles must fit \
                 in {} KiB together)",
                cadre_proto::streams::MAX_EVENT_BYTES / 1024
            ),
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with the header 'Content-Type: application/json'",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this resource does not accept that HTTP method",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}

impl From<BytesRejection> for Problem {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                status,
                "payload-too-large",
                "Payload too large",
                format!(
                    "the body is larger than the {} KiB this API accepts",
                    crate::api::BODY_LIMIT_BYTES / 1024
                ),
            )
        } else {
            Problem::new(status, "bad-request", "Bad request", rejection.body_text())
        }
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Problem::bad_request(rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::PublishErrorKind;

    /// Which errors are "too large" is the bus's to tell (and test); this is how they read.
    #[test]
    fn a_message_too_large_is_the_request_s_fault_not_an_outage() {
        let error = PublishError::with_source(
            PublishErrorKind::MaxPayloadExceeded,
            "Payload size limit of 1048576 exceeded by message size of 1200000",
        );
        let problem = Problem::too_large_to_record(&error);
        assert_eq!(problem.status, 422);
        assert!(problem.detail.contains("retrying will not help"));
    }
}
