//! Extractors that turn requests into checked values or Matrix errors.
//!
//! - [`JsonBody`]: the body, size-limited; malformed JSON is 400 `M_NOT_JSON`, wrong field
//!   types 400 `M_BAD_JSON`, too large 413 `M_TOO_LARGE`.
//! - [`Authed`]: the access token's session; none is 401 `M_MISSING_TOKEN`, an unknown one
//!   401 `M_UNKNOWN_TOKEN`, a guest's 403 `M_GUEST_ACCESS_FORBIDDEN`. Spec: client-server
//!   API, "Using access tokens". [`AuthedAllowGuest`] lets guests in too.
//! - [`QueryParams`], [`PathParams`]: parse failures are 400 `M_INVALID_PARAM`.
//! - [`ClientIp`]: the peer address, for rate limits and device records.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::AppState;
use crate::error::{ErrorCode, MatrixError};
use crate::services::accounts::Session;

/// Body limit used when no listener set one (1 MiB).
const DEFAULT_BODY_LIMIT: u64 = 1 << 20;

/// The body limit of the listener a request came in on, set by the router's middleware.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);

/// A JSON body deserialised into `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = MatrixError;

    async fn from_request(request: Request, _state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
        let bytes = read_body(request, limit).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A JSON body that may be absent (an empty body is `None`), as for `DELETE` requests
/// whose only member is an optional `auth`.
pub struct MaybeJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for MaybeJsonBody<T> {
    type Rejection = MatrixError;

    async fn from_request(request: Request, _state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
        let bytes = read_body(request, limit).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(MaybeJsonBody(None));
        }
        parse_json(&bytes).map(|v| MaybeJsonBody(Some(v)))
    }
}

/// Reads a whole body of at most `limit` bytes.
pub async fn read_body(request: Request, limit: u64) -> Result<Bytes, MatrixError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|e| {
            // axum wraps http-body's `LengthLimitError` ("length limit exceeded") and
            // tower-http's body `TimeoutError`.
            let mut too_large = false;
            let mut timed_out = false;
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(err) = source {
                too_large |= err.to_string().contains("length limit exceeded");
                timed_out |= err.is::<tower_http::timeout::TimeoutError>();
                source = err.source();
            }
            if too_large {
                MatrixError::new(413, ErrorCode::TooLarge, "Request body is too large")
            } else if timed_out {
                MatrixError::new(
                    408,
                    ErrorCode::Unknown,
                    "The request body stopped arriving; send it faster",
                )
            } else {
                MatrixError::new(400, ErrorCode::Unknown, "Could not read the request body")
            }
        })
}

/// Parses JSON, telling syntax errors (`M_NOT_JSON`) from shape errors (`M_BAD_JSON`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MatrixError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                MatrixError::new(400, ErrorCode::NotJson, format!("Content not JSON: {e}"))
            }
            Category::Data => MatrixError::bad_json(format!("Invalid JSON: {e}")),
        }
    })
}

/// Re-reads an already parsed JSON value as `T` (`M_BAD_JSON` when the shape is wrong).
pub fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, MatrixError> {
    T::deserialize(value).map_err(|e| MatrixError::bad_json(format!("Invalid JSON: {e}")))
}

/// The session of the request's access token, which must not be a guest's: guests get
/// 403 `M_GUEST_ACCESS_FORBIDDEN`. Spec: "Guest Access", "Client behaviour": guests may
/// use only the endpoints listed there, which take [`AuthedAllowGuest`] instead, so an
/// endpoint is closed to guests unless it says otherwise.
pub struct Authed(pub Session);

impl FromRequestParts<AppState> for Authed {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let session = session(parts, state)?;
        if session.is_guest {
            return Err(MatrixError::new(
                403,
                ErrorCode::GuestAccessForbidden,
                "Guest accounts may not use this endpoint",
            ));
        }
        Ok(Authed(session))
    }
}

/// The session of the request's access token, a guest's included: for the endpoints the
/// spec's "Guest Access" module opens to guests (reading and sending in rooms they may
/// join, `/sync`, their devices, display name and encryption keys).
pub struct AuthedAllowGuest(pub Session);

impl FromRequestParts<AppState> for AuthedAllowGuest {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        session(parts, state).map(AuthedAllowGuest)
    }
}

/// An optional session: none without a token, 401 for an unknown one (endpoints open to
/// everyone that do more for a signed-in user).
impl axum::extract::OptionalFromRequestParts<AppState> for AuthedAllowGuest {
    type Rejection = MatrixError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        if access_token(parts).is_none() {
            return Ok(None);
        }
        session(parts, state).map(|s| Some(AuthedAllowGuest(s)))
    }
}

/// Whoever the access token belongs to; 401 without one or for an unknown one.
fn session(parts: &Parts, state: &AppState) -> Result<Session, MatrixError> {
    let token = access_token(parts)
        .ok_or_else(|| MatrixError::new(401, ErrorCode::MissingToken, "Missing access token"))?;
    let ip = client_ip(parts).map(|ip| ip.to_string());
    Ok(state.accounts.authenticate(&token, ip.as_deref())?)
}

/// The token from `Authorization: Bearer …`, or the deprecated `access_token` query parameter.
fn access_token(parts: &Parts) -> Option<String> {
    if let Some(header) = parts.headers.get(AUTHORIZATION) {
        let value = header.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    let query = parts.uri.query()?;
    form_urlencoded_pairs(query)
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v)
}

fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Some((percent_decode(k)?, percent_decode(v)?))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The peer's IP address, when the listener records it.
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

impl ClientIp {
    /// The address as text, or `"unknown"`, as a rate-limit key.
    pub fn key(&self) -> String {
        self.0
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }
}

fn client_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Query parameters deserialised into `T`.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|q| QueryParams(q.0))
            .map_err(|e| MatrixError::invalid_param(format!("Invalid query parameters: {e}")))
    }
}

/// Path parameters deserialised into `T` (already percent-decoded).
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| MatrixError::invalid_param(format!("Invalid path parameter: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_are_classified() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[allow(dead_code)]
            a: u32,
        }
        let not_json = parse_json::<T>(b"{nope").unwrap_err();
        assert_eq!(not_json.errcode, Some(ErrorCode::NotJson));
        let empty = parse_json::<T>(b"").unwrap_err();
        assert_eq!(empty.errcode, Some(ErrorCode::NotJson));
        let bad = parse_json::<T>(br#"{"a":"x"}"#).unwrap_err();
        assert_eq!(bad.errcode, Some(ErrorCode::BadJson));
        assert!(parse_json::<T>(br#"{"a":1}"#).is_ok());
    }

    #[test]
    fn query_decoding() {
        let pairs: Vec<_> = form_urlencoded_pairs("a=1&access_token=x%2By+z&b").collect();
        assert_eq!(pairs[1], ("access_token".into(), "x+y z".into()));
        assert_eq!(pairs[2], ("b".into(), "".into()));
        assert_eq!(percent_decode("%zz"), None);
    }
}
