//! FHIR errors: every failure the server reports is an `OperationOutcome`
//! with the HTTP status that fits it and an issue code a client can act on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhirlake_engine::error::{ErrorKind, HasKind};
use fhirlake_engine::jobs::JobFailure;
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
    /// The OperationOutcome recorded for a job by an earlier release,
    /// answered as it was.
    pub recorded: Option<Value>,
}

impl FhirError {
    /// An error with `status`, issue `code` and `text`.
    pub fn new(status: StatusCode, code: &'static str, text: impl Into<String>) -> Self {
        Self {
            status,
            code,
            text: text.into(),
            retry_after: None,
            recorded: None,
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
        if let Some(recorded) = &self.recorded {
            return recorded.clone();
        }
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

/// The HTTP status and OperationOutcome issue code of each error kind: the
/// one place the front decides them.
pub fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not-found"),
        ErrorKind::NotSupported => (StatusCode::BAD_REQUEST, "not-supported"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ErrorKind::PreconditionFailed => (StatusCode::PRECONDITION_FAILED, "conflict"),
        ErrorKind::Unprocessable => (StatusCode::UNPROCESSABLE_ENTITY, "processing"),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorKind::TooMany => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
        ErrorKind::Transient => (StatusCode::SERVICE_UNAVAILABLE, "transient"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
    }
}

/// Every library error reaches the client through here: its kind decides
/// the status and issue code. A message naming server-side places (store
/// URLs) is logged in full and answered with a general text.
impl<E: HasKind> From<E> for FhirError {
    fn from(error: E) -> Self {
        let (status, code) = status_of(error.kind());
        let mut answer = Self::new(status, code, error.public_message());
        answer.retry_after = error.retry_after();
        answer
    }
}

impl FhirError {
    /// The answer to a job that failed: its kind's status and the message,
    /// or, for a record of fhirlake 0.1, the status and OperationOutcome it
    /// recorded.
    pub fn from_failure(failure: &JobFailure) -> Self {
        let (status, code) = status_of(failure.kind.unwrap_or(ErrorKind::Internal));
        let status = failure
            .status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(status);
        let text = failure
            .message
            .clone()
            .or_else(|| {
                let issue = failure.outcome.as_ref()?.get("issue")?.get(0)?;
                issue.get("diagnostics")?.as_str().map(str::to_string)
            })
            .unwrap_or_else(|| "the job failed".to_string());
        let mut error = Self::new(status, code, text);
        error.recorded = failure.outcome.clone();
        error
    }
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
