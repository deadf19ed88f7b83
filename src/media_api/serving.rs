//! Turning stored content into a safe response.
//!
//! Spec: client-server API, "Content repository" and "Serving inline content":
//! `Content-Security-Policy` sandbox, `Cross-Origin-Resource-Policy: cross-origin`,
//! `X-Content-Type-Options: nosniff`, and `Content-Disposition: inline` only for the
//! listed safe types, `attachment` otherwise.

use axum::body::Body;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::io::ReaderStream;

use crate::error::{MatrixError, MatrixResult};
use crate::services::media::Served;
use crate::services::Services;

/// The spec's recommended policy.
const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// Read size when streaming a file out.
const READ_CHUNK: usize = 256 << 10;

/// Spec: "Serving inline content", the types that may be served `inline`.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Whether `content_type` (parameters ignored) may be served inline.
pub fn is_inline_safe(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

/// `inline` or `attachment`, with the file name as a quoted ASCII string or, when it is not
/// plain ASCII, as RFC 6266 `filename*=utf-8''…`.
pub fn content_disposition(
    content_type: &str,
    filename: Option<&str>,
    force_inline: bool,
) -> String {
    let kind = if force_inline || is_inline_safe(content_type) {
        "inline"
    } else {
        "attachment"
    };
    match filename {
        None => kind.to_owned(),
        Some(name)
            if name
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') =>
        {
            format!("{kind}; filename=\"{name}\"")
        }
        Some(name) => {
            let encoded: String = name
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{kind}; filename*=utf-8''{encoded}")
        }
    }
}

/// Streams the blob behind `served` with the safety headers. `thumbnail` responses are
/// always `inline` (the spec requires it; they are images we produced).
pub async fn respond(
    services: &Services,
    served: Served,
    filename_override: Option<String>,
    thumbnail: bool,
) -> MatrixResult<Response> {
    let file = services
        .media
        .store()
        .open_read(&served.sha256)
        .await
        .map_err(|e| {
            MatrixError::internal(format!("media blob {} unreadable: {e}", served.sha256))
        })?;
    let filename = filename_override.or(served.filename);
    let disposition = content_disposition(&served.content_type, filename.as_deref(), thumbnail);
    let header = |value: &str| {
        HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("attachment"))
    };
    let mut response =
        Body::from_stream(ReaderStream::with_capacity(file, READ_CHUNK)).into_response();
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(&served.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(served.size));
    headers.insert(CONTENT_DISPOSITION, header(&disposition));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    // Content never changes under an mxc URI; authenticated media must not sit in shared caches.
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_only_for_safe_types() {
        assert_eq!(
            content_disposition("image/png", Some("a.png"), false),
            "inline; filename=\"a.png\""
        );
        assert_eq!(
            content_disposition("application/zip", Some("a.zip"), false),
            "attachment; filename=\"a.zip\""
        );
        assert_eq!(content_disposition("text/html", None, false), "attachment");
        assert_eq!(
            content_disposition("image/svg+xml", None, false),
            "attachment"
        );
        assert_eq!(
            content_disposition("text/plain; charset=utf-8", None, false),
            "inline"
        );
        assert_eq!(content_disposition("application/zip", None, true), "inline");
    }

    #[test]
    fn non_ascii_names_use_rfc_6266() {
        assert_eq!(
            content_disposition("application/pdf", Some("Été \"1\".pdf"), false),
            "attachment; filename*=utf-8''%C3%89t%C3%A9%20%221%22.pdf"
        );
    }
}
