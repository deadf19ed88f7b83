//! Answers for requests no route takes.
//!
//! Spec: client-server API, "Unrecognised requests": an unknown endpoint answers 404 and a
//! known endpoint with the wrong method 405, both with `M_UNRECOGNIZED`.

use crate::error::{ErrorCode, MatrixError};

/// 404 `M_UNRECOGNIZED`.
pub async fn unrecognized() -> MatrixError {
    MatrixError::unrecognized()
}

/// 405 `M_UNRECOGNIZED`.
pub async fn method_not_allowed() -> MatrixError {
    MatrixError::new(
        405,
        ErrorCode::Unrecognized,
        "Method not allowed for this endpoint",
    )
}
