//! The one error type that reaches the wire: `{"errcode": "M_…", "error": "…"}` plus a status.
//!
//! Spec: client-server API, "Standard error response" and "Common error codes". Services
//! return it (it holds no HTTP types: the status is a plain number); the `http` layer renders it.

use serde_json::{Map, Value};

use crate::storage::StorageError;

/// The spec's error codes that ourwhats answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `M_FORBIDDEN`
    Forbidden,
    /// `M_UNKNOWN_TOKEN`
    UnknownToken,
    /// `M_MISSING_TOKEN`
    MissingToken,
    /// `M_USER_LOCKED`
    UserLocked,
    /// `M_USER_DEACTIVATED`
    UserDeactivated,
    /// `M_BAD_JSON`
    BadJson,
    /// `M_NOT_JSON`
    NotJson,
    /// `M_NOT_FOUND`
    NotFound,
    /// `M_LIMIT_EXCEEDED`
    LimitExceeded,
    /// `M_UNRECOGNIZED`
    Unrecognized,
    /// `M_UNKNOWN`
    Unknown,
    /// `M_UNAUTHORIZED`
    Unauthorized,
    /// `M_USER_IN_USE`
    UserInUse,
    /// `M_INVALID_USERNAME`
    InvalidUsername,
    /// `M_EXCLUSIVE`
    Exclusive,
    /// `M_GUEST_ACCESS_FORBIDDEN`
    GuestAccessForbidden,
    /// `M_INVALID_PARAM`
    InvalidParam,
    /// `M_MISSING_PARAM`
    MissingParam,
    /// `M_TOO_LARGE`
    TooLarge,
    /// `M_WEAK_PASSWORD`
    WeakPassword,
    /// `M_UNSUPPORTED_ROOM_VERSION`
    UnsupportedRoomVersion,
    /// `M_CANNOT_OVERWRITE_MEDIA`
    CannotOverwriteMedia,
    /// `M_NOT_YET_UPLOADED`
    NotYetUploaded,
    /// `M_ROOM_IN_USE`
    RoomInUse,
    /// `M_INVALID_ROOM_STATE`
    InvalidRoomState,
    /// `M_BAD_ALIAS`
    BadAlias,
    /// `M_BAD_STATE`
    BadState,
    /// `M_PROFILE_TOO_LARGE`
    ProfileTooLarge,
    /// `M_KEY_TOO_LARGE`
    KeyTooLarge,
    /// `M_INVALID_SIGNATURE`
    InvalidSignature,
    /// `M_WRONG_ROOM_KEYS_VERSION` (key backup; carries `current_version`)
    WrongRoomKeysVersion,
    /// `M_INCOMPATIBLE_ROOM_VERSION` (federation joins; carries `room_version`)
    IncompatibleRoomVersion,
    /// `M_UNABLE_TO_AUTHORISE_JOIN` (a restricted join no condition of which we know)
    UnableToAuthoriseJoin,
}

impl ErrorCode {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbidden => "M_FORBIDDEN",
            Self::UnknownToken => "M_UNKNOWN_TOKEN",
            Self::MissingToken => "M_MISSING_TOKEN",
            Self::UserLocked => "M_USER_LOCKED",
            Self::UserDeactivated => "M_USER_DEACTIVATED",
            Self::BadJson => "M_BAD_JSON",
            Self::NotJson => "M_NOT_JSON",
            Self::NotFound => "M_NOT_FOUND",
            Self::LimitExceeded => "M_LIMIT_EXCEEDED",
            Self::Unrecognized => "M_UNRECOGNIZED",
            Self::Unknown => "M_UNKNOWN",
            Self::Unauthorized => "M_UNAUTHORIZED",
            Self::UserInUse => "M_USER_IN_USE",
            Self::InvalidUsername => "M_INVALID_USERNAME",
            Self::Exclusive => "M_EXCLUSIVE",
            Self::GuestAccessForbidden => "M_GUEST_ACCESS_FORBIDDEN",
            Self::InvalidParam => "M_INVALID_PARAM",
            Self::MissingParam => "M_MISSING_PARAM",
            Self::TooLarge => "M_TOO_LARGE",
            Self::WeakPassword => "M_WEAK_PASSWORD",
            Self::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            Self::CannotOverwriteMedia => "M_CANNOT_OVERWRITE_MEDIA",
            Self::NotYetUploaded => "M_NOT_YET_UPLOADED",
            Self::RoomInUse => "M_ROOM_IN_USE",
            Self::InvalidRoomState => "M_INVALID_ROOM_STATE",
            Self::BadAlias => "M_BAD_ALIAS",
            Self::BadState => "M_BAD_STATE",
            Self::ProfileTooLarge => "M_PROFILE_TOO_LARGE",
            Self::KeyTooLarge => "M_KEY_TOO_LARGE",
            Self::InvalidSignature => "M_INVALID_SIGNATURE",
            Self::WrongRoomKeysVersion => "M_WRONG_ROOM_KEYS_VERSION",
            Self::IncompatibleRoomVersion => "M_INCOMPATIBLE_ROOM_VERSION",
            Self::UnableToAuthoriseJoin => "M_UNABLE_TO_AUTHORISE_JOIN",
        }
    }
}

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

    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, ErrorCode::Forbidden, message)
    }

    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, ErrorCode::NotFound, message)
    }

    /// 401 `M_UNKNOWN_TOKEN`.
    pub fn unknown_token(message: impl Into<String>) -> Self {
        Self::new(401, ErrorCode::UnknownToken, message)
    }

    /// 400 `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(400, ErrorCode::BadJson, message)
    }

    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(400, ErrorCode::InvalidParam, message)
    }

    /// 400 `M_MISSING_PARAM`.
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(400, ErrorCode::MissingParam, message)
    }

    /// 404 `M_UNRECOGNIZED`: the endpoint does not exist here.
    pub fn unrecognized() -> Self {
        Self::new(404, ErrorCode::Unrecognized, "Unrecognized request")
    }

    /// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`.
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(429, ErrorCode::LimitExceeded, "Too many requests")
            .with("retry_after_ms", retry_after_ms)
    }

    /// 500 `M_UNKNOWN`: the detail goes to the log, never to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(500, ErrorCode::Unknown, "Internal server error")
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

impl From<StorageError> for MatrixError {
    /// A write refused while storage recovers is 503 (try again shortly); anything else
    /// is an internal error. Neither shows the detail, which goes to the log.
    fn from(e: StorageError) -> Self {
        if e.unwritable {
            tracing::warn!(error = %e, "write refused: storage does not take writes");
            Self::new(
                503,
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
    fn internal_errors_hide_the_detail() {
        let e = MatrixError::from(StorageError::new("disk on fire at /secret"));
        assert_eq!(e.status, 500);
        assert!(!e.to_json().to_string().contains("secret"));
        let e = MatrixError::from(StorageError::unwritable("no descriptors at /secret"));
        assert_eq!(e.status, 503);
        assert!(!e.to_json().to_string().contains("secret"));
    }
}
