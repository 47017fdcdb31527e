//! The kinds of error: every library error of fhirlake says which of these
//! it is, and each front (HTTP, the CLI) maps a kind to its protocol once
//! (an HTTP status and OperationOutcome issue code; an exit message).

/// What kind of failure an error is, independent of the front that reports
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request or input is wrong (bad syntax, a rule broken).
    Invalid,
    /// Something the request names does not exist.
    NotFound,
    /// Valid, but fhirlake does not do it.
    NotSupported,
    /// It conflicts with the current state (a concurrent commit, a
    /// resource others depend on).
    Conflict,
    /// The request's precondition does not hold (`If-Match` names a
    /// version that is no longer current).
    PreconditionFailed,
    /// Well formed, but it cannot be applied to the resource as it is (a
    /// patch whose test fails or whose path selects nothing).
    Unprocessable,
    /// The caller may not do it.
    Forbidden,
    /// Too many at once (rate or concurrency limits).
    TooMany,
    /// Temporary: retrying later may succeed (no data yet, memory exhausted
    /// by other work, a store unreachable).
    Transient,
    /// fhirlake's own fault (a bug, corrupt stored data, I/O).
    Internal,
}

/// An error that knows its [`ErrorKind`].
pub trait HasKind: std::error::Error {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;

    /// Whether the message names server-side places (store URLs, file
    /// paths) a remote caller should not see: a front logs it and answers
    /// with a general text.
    fn is_private(&self) -> bool {
        false
    }

    /// Seconds after which a retry may succeed, for errors of kind
    /// [`ErrorKind::TooMany`] (`Retry-After`).
    fn retry_after(&self) -> Option<u64> {
        None
    }

    /// The text a remote caller is shown: the message, or for a private
    /// one a general text (the full message is logged here).
    fn public_message(&self) -> String {
        if self.is_private() {
            tracing::error!(error = %self, "storage failure");
            "the server's storage failed (see the server log)".to_string()
        } else {
            self.to_string()
        }
    }
}
