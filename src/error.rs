//! The one error type that reaches the wire: `{"errcode": "M_…", "error": "…"}` plus a status.
//!
//! Spec: client-server API, "Standard error response" and "Common error codes". Handlers
//! build it at the edge: from their own checks, or from a service's [`ServiceError`], whose
//! [`ErrorKind`] this module alone maps to a status. The `http` layer renders it.

use serde_json::{Map, Value};

pub use crate::core::error_code::ErrorCode;
use crate::services::error::{ErrorKind, ServiceError};
use crate::storage::StorageError;

/// An error as the client or remote server will see it.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixError {
    /// HTTP status code.
    pub status: u16,
    /// The `errcode`; `None` only for a bare user-interactive auth challenge.
    pub errcode: Option<ErrorCode>,
    /// The human-readable `error`.
    pub message: String,
    /// Further members of the body (`retry_after_ms`, UIA `flows`, `soft_logout`, …).
    pub extra: Map<String, Value>,
}

/// Result of a service call.
pub type MatrixResult<T> = Result<T, MatrixError>;

impl MatrixError {
    /// An error with a status, code and message.
    pub fn new(status: u16, errcode: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode: Some(errcode),
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// Adds a member to the body.
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

    // The shorthands are the services' outcomes, turned into statuses by `status_of`: one
    // place says which status each outcome has.

    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ServiceError::forbidden(message).into()
    }

    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        ServiceError::not_found(message).into()
    }

    /// 401 `M_UNKNOWN_TOKEN`.
    pub fn unknown_token(message: impl Into<String>) -> Self {
        ServiceError::unknown_token(message).into()
    }

    /// 400 `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        ServiceError::bad_json(message).into()
    }

    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        ServiceError::invalid_param(message).into()
    }

    /// 400 `M_MISSING_PARAM`.
    pub fn missing_param(message: impl Into<String>) -> Self {
        ServiceError::missing_param(message).into()
    }

    /// 404 `M_UNRECOGNIZED`: the endpoint does not exist here.
    pub fn unrecognized() -> Self {
        ServiceError::new(
            ErrorKind::NotFound,
            ErrorCode::Unrecognized,
            "Unrecognized request",
        )
        .into()
    }

    /// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`.
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        ServiceError::limit_exceeded(retry_after_ms).into()
    }

    /// 500 `M_UNKNOWN`: the detail goes to the log, never to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ServiceError::internal(detail).into()
    }

    /// The JSON body.
    pub fn to_json(&self) -> Value {
        let mut body = self.extra.clone();
        if let Some(code) = self.errcode {
            body.insert("errcode".into(), Value::String(code.as_str().into()));
            body.insert("error".into(), Value::String(self.message.clone()));
        }
        Value::Object(body)
    }
}

impl std::fmt::Display for MatrixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.errcode.map_or("(none)", ErrorCode::as_str);
        write!(f, "{} {}: {}", self.status, code, self.message)
    }
}

impl std::error::Error for MatrixError {}

impl From<ServiceError> for MatrixError {
    fn from(e: ServiceError) -> Self {
        Self {
            status: status_of(e.kind),
            errcode: e.errcode,
            message: e.message,
            extra: e.extra,
        }
    }
}

/// The HTTP status of each kind of service outcome (the spec's status for each error the
/// services name; where the spec gives a code a status of its own, e.g. `M_USER_IN_USE` is
/// 400, the service reports the kind that has it).
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::Invalid => 400,
        ErrorKind::Unauthenticated => 401,
        ErrorKind::Forbidden => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::ServerControlled => 405,
        ErrorKind::Conflict => 409,
        ErrorKind::TooLarge => 413,
        ErrorKind::RateLimited => 429,
        ErrorKind::Internal => 500,
        ErrorKind::RemoteFailed => 502,
        ErrorKind::Unavailable => 503,
        ErrorKind::TimedOut => 504,
    }
}

impl From<StorageError> for MatrixError {
    /// As the services see it: 503 while storage refuses writes, else 500; no detail shown.
    fn from(e: StorageError) -> Self {
        ServiceError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_the_standard_body() {
        let e = MatrixError::limit_exceeded(1500);
        assert_eq!(e.status, 429);
        assert_eq!(
            e.to_json(),
            json!({"errcode": "M_LIMIT_EXCEEDED", "error": "Too many requests", "retry_after_ms": 1500})
        );
    }

    #[test]
    fn service_outcomes_get_their_status_at_the_edge() {
        let e = MatrixError::from(ServiceError::forbidden("no"));
        assert_eq!((e.status, e.errcode), (403, Some(ErrorCode::Forbidden)));
        let e = MatrixError::from(ServiceError::limit_exceeded(10));
        assert_eq!(e.status, 429);
        assert_eq!(e.extra.get("retry_after_ms"), Some(&serde_json::json!(10)));
        let e = MatrixError::from(ServiceError::remote_failed("down"));
        assert_eq!((e.status, e.errcode), (502, Some(ErrorCode::Unknown)));
    }

    #[test]
    fn internal_errors_hide_the_detail() {
        let e = MatrixError::from(StorageError::new("disk on fire at /secret"));
        assert_eq!(e.status, 500);
        assert!(!e.to_json().to_string().contains("secret"));
        let e = MatrixError::from(StorageError::unwritable("no descriptors at /secret"));
        assert_eq!(e.status, 503);
        assert!(!e.to_json().to_string().contains("secret"));
    }
}
