//! The services' own error: an outcome the caller can act on, never an HTTP status.
//!
//! A service says *what* went wrong ([`ErrorKind`]: the request is invalid, the caller may not,
//! nothing by that name, another server failed, storage cannot write now, …) and which of the
//! spec's error codes names it; the `http` layer alone turns a kind into a status
//! (`crate::error::MatrixError`'s `From<ServiceError>`). Nothing in `services` branches on a
//! status, so a handler for another transport (or a test) reads the same outcomes.

use serde_json::{Map, Value};

pub use crate::core::error_code::ErrorCode;
use crate::storage::StorageError;

/// What went wrong, as the service sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed, incomplete or asks for something this server will not do.
    Invalid,
    /// The caller is not who it claims, or must authenticate (further) first.
    Unauthenticated,
    /// The caller may not do this.
    Forbidden,
    /// Nothing by that name, or nothing the caller may see.
    NotFound,
    /// The server owns this and clients may not change it through this request.
    ServerControlled,
    /// Something already exists under that name, or is being made.
    Conflict,
    /// The request or what it would store is larger than allowed.
    TooLarge,
    /// The caller asks too often; it may retry after a while.
    RateLimited,
    /// A bug or a storage failure; the detail went to the log.
    Internal,
    /// Another server asked on the caller's behalf failed or answered badly.
    RemoteFailed,
    /// Storage does not take writes right now; retrying shortly may work.
    Unavailable,
    /// What was waited for did not arrive in time.
    TimedOut,
}

impl ErrorKind {
    /// Whether the fault is on this server's side (or a server it asked), not the request's:
    /// such an error must not be mistaken for a judgement of the request.
    pub fn is_server_side(self) -> bool {
        matches!(
            self,
            Self::Internal | Self::RemoteFailed | Self::Unavailable | Self::TimedOut
        )
    }
}

/// A service's error: its kind, the spec's error code, a message for the caller and any
/// further members the answer carries (`retry_after_ms`, a UIA challenge's `flows`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The `errcode`; `None` only for a bare user-interactive auth challenge.
    pub errcode: Option<ErrorCode>,
    /// The human-readable `error`.
    pub message: String,
    /// Further members of the answer.
    pub extra: Map<String, Value>,
}

/// Result of a service call.
pub type ServiceResult<T> = Result<T, ServiceError>;

impl ServiceError {
    /// An error of a kind, with a code and message.
    pub fn new(kind: ErrorKind, errcode: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            kind,
            errcode: Some(errcode),
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// Adds a member to the answer.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// Replaces the message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Replaces the error code.
    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.errcode = Some(code);
        self
    }

    /// The caller may not: `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, ErrorCode::Forbidden, message)
    }

    /// Nothing by that name: `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, ErrorCode::NotFound, message)
    }

    /// The access token is not (or no longer) valid: `M_UNKNOWN_TOKEN`.
    pub fn unknown_token(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, ErrorCode::UnknownToken, message)
    }

    /// The body is not what the request needs: `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, ErrorCode::BadJson, message)
    }

    /// A parameter has a value that is not allowed: `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, ErrorCode::InvalidParam, message)
    }

    /// A required parameter is missing: `M_MISSING_PARAM`.
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, ErrorCode::MissingParam, message)
    }

    /// Too many requests: `M_LIMIT_EXCEEDED` with `retry_after_ms`.
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(
            ErrorKind::RateLimited,
            ErrorCode::LimitExceeded,
            "Too many requests",
        )
        .with("retry_after_ms", retry_after_ms)
    }

    /// Another server could not give the answer the caller needs: `M_UNKNOWN`.
    pub fn remote_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RemoteFailed, ErrorCode::Unknown, message)
    }

    /// A bug or storage failure: the detail goes to the log, never to the caller.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            ErrorKind::Internal,
            ErrorCode::Unknown,
            "Internal server error",
        )
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.errcode.map_or("(none)", ErrorCode::as_str);
        write!(f, "{:?} {}: {}", self.kind, code, self.message)
    }
}

impl std::error::Error for ServiceError {}

impl From<StorageError> for ServiceError {
    /// A write refused while storage recovers is [`ErrorKind::Unavailable`] (try again
    /// shortly); anything else is internal. Neither shows the detail, which goes to the log.
    fn from(e: StorageError) -> Self {
        if e.unwritable {
            tracing::warn!(error = %e, "write refused: storage does not take writes");
            Self::new(
                ErrorKind::Unavailable,
                ErrorCode::Unknown,
                "The server cannot store anything right now; try again shortly",
            )
        } else {
            Self::internal(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_hide_the_detail() {
        let e = ServiceError::from(StorageError::new("disk on fire at /secret"));
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(!e.message.contains("secret"));
        let e = ServiceError::from(StorageError::unwritable("no descriptors at /secret"));
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.kind.is_server_side());
        assert!(!e.message.contains("secret"));
    }
}
