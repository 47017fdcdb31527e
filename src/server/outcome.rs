//! FHIR errors: every failure the server reports is an `OperationOutcome`
//! with the HTTP status that fits it and an issue code a client can act on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answered as an OperationOutcome.
#[derive(Debug, Clone)]
pub struct FhirError {
    /// HTTP status.
    pub status: StatusCode,
    /// FHIR issue code (`invalid`, `not-found`, `not-supported`, `exception`, …).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub text: String,
    /// Extra headers (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl FhirError {
    /// An error with `status`, issue `code` and `text`.
    pub fn new(status: StatusCode, code: &'static str, text: impl Into<String>) -> Self {
        Self {
            status,
            code,
            text: text.into(),
            retry_after: None,
        }
    }

    /// 400, issue `invalid`.
    pub fn invalid(text: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", text)
    }

    /// 404, issue `not-found`.
    pub fn not_found(text: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", text)
    }

    /// 429, issue `throttled`: a status URL polled faster than its
    /// `Retry-After` (half of it is tolerated).
    pub fn polled_too_often(retry_after: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            format!("polled too often: wait {retry_after} s between polls (Retry-After)"),
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// 500, issue `exception`.
    pub fn internal(text: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", text)
    }

    /// The OperationOutcome resource.
    pub fn outcome(&self) -> Value {
        operation_outcome(
            if self.status.is_server_error() {
                "fatal"
            } else {
                "error"
            },
            self.code,
            &self.text,
        )
    }
}

/// An OperationOutcome with one issue.
pub fn operation_outcome(severity: &str, code: &str, text: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text, "details": {"text": text}}]
    })
}

impl std::fmt::Display for FhirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.text)
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), code = self.code, "{}", self.text);
        } else {
            tracing::info!(status = self.status.as_u16(), code = self.code, "{}", self.text);
        }
        let mut response = fhir_json(self.status, &self.outcome());
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// The FHIR JSON media type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// `body` as `application/fhir+json` with `status`.
pub fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        text,
    )
        .into_response()
}
