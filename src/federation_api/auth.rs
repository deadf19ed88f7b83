//! The extractor of signed server-server requests.
//!
//! Spec: server-server API, "Request Authentication". Every request another server makes
//! carries `Authorization: X-Matrix …`; we check, in order: the header parses; its
//! `destination`, when given, is us; the origin is a server name (and not us); the key it
//! names is a current key of the origin (fetched once when unknown; before the body is
//! read, so a made-up origin costs no body); the signature covers
//! this request's method, target (path and query as sent), origin, destination and JSON
//! body. Any failure is 401 `M_UNAUTHORIZED` (a key we cannot fetch included), never a
//! 500. Verified requests count against the origin's rate limit (`rate_limits.federation_*`,
//! 429 `M_LIMIT_EXCEEDED` beyond).

use axum::extract::{FromRequest, Request};
use axum::http::header::AUTHORIZATION;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::core::x_matrix::{self, XMatrix};
use crate::core::ServerName;
use crate::error::{ErrorCode, MatrixError};
use crate::http::extract::{parse_json, read_body, typed, BodyLimit};
use crate::http::AppState;
use crate::services::rate_limit::RateAction;

/// A request another server signed: who, and its body as `T` (`T` = `Value` reads
/// `Null` for an empty body).
pub struct Signed<T> {
    /// The server that made the request.
    pub origin: ServerName,
    /// The body.
    pub body: T,
}

fn unauthorized(message: impl Into<String>) -> MatrixError {
    MatrixError::new(401, ErrorCode::Unauthorized, message)
}

/// Body limit when the listener set none.
const DEFAULT_LIMIT: u64 = 1 << 20;

impl<T: DeserializeOwned> FromRequest<AppState> for Signed<T> {
    type Rejection = MatrixError;

    async fn from_request(request: Request, services: &AppState) -> Result<Self, Self::Rejection> {
        let method = request.method().as_str().to_owned();
        let target = request.uri().path_and_query().map_or_else(
            || request.uri().path().to_owned(),
            |p| p.as_str().to_owned(),
        );
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .ok_or_else(|| unauthorized("Missing X-Matrix Authorization header"))?
            .to_str()
            .map_err(|_| unauthorized("The Authorization header is not text"))?;
        let header = XMatrix::parse(header)
            .map_err(|e| unauthorized(format!("Bad X-Matrix header: {e}")))?;
        let us = services.config.server_name.as_str();
        if header.destination.as_deref().is_some_and(|d| d != us) {
            return Err(unauthorized("The request is meant for another server"));
        }
        let origin = ServerName::parse(&header.origin)
            .map_err(|_| unauthorized("The origin is not a server name"))?;
        if origin.as_str() == us {
            return Err(unauthorized("Requests from ourselves are not accepted"));
        }
        // The key first: a request naming a server or key that cannot be found is
        // refused before its body (up to the listener's limit) is read and parsed.
        let Some(key) = services
            .federation
            .keys
            .request_key(origin.as_str(), &header.key)
            .await
        else {
            return Err(unauthorized(format!(
                "No current key {} of {origin} could be found",
                header.key
            )));
        };
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(DEFAULT_LIMIT, |l| l.0);
        let bytes = read_body(request, limit).await?;
        let content: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(parse_json(&bytes)?)
        };
        x_matrix::verify_request(&header, (&method, &target), us, content.as_ref(), &key)
            .map_err(|_| unauthorized("The request's signature does not verify"))?;
        // Per origin, once we know the request is really the origin's (a forger cannot
        // spend another server's allowance).
        services
            .rate_limiter
            .check(RateAction::Federation, origin.as_str())?;
        // The origin is up: whatever waits for it goes now, not after its back-off.
        services.federation.sender.contacted(origin.as_str());
        let body = typed(content.as_ref().unwrap_or(&Value::Null))?;
        Ok(Signed { origin, body })
    }
}
