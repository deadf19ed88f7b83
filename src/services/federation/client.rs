//! Requests to other servers: HTTPS with verified certificates, signed with our key.
//!
//! Spec: server-server API, "TLS", "Request Authentication" (every request carries an
//! `X-Matrix` header signed by us; key fetches may go unsigned) and "Resolving server
//! names" (see [`super::discovery`]). Certificates are verified against the system's
//! roots plus `federation.trusted_ca`; `federation.verify_tls = false` (tests only)
//! accepts any. Every address a request may reach passes the [`IpGuard`]: hostnames in
//! the resolver, IP literals here, redirects of `.well-known` in the redirect policy;
//! federation requests themselves follow no redirect.

use crate::services::error::{ErrorKind, ServiceError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::discovery::{Discovery, GuardedResolver};
use super::ip_guard::IpGuard;
use crate::config::FederationConfig;
use crate::core::{x_matrix, ServerName, SigningKeyPair};

/// The largest answer read from another server, unless a caller asks for less.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request to another server failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FederationError {
    /// No answer: not resolvable, not reachable, refused by the address guard, TLS
    /// failed, timed out.
    Unreachable(String),
    /// The server answered with an error status (its Matrix error body, if any).
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's JSON (`Null` when not JSON).
        body: Value,
    },
    /// The answer was not what the API defines (not JSON, too large).
    BadResponse(String),
}

impl std::fmt::Display for FederationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "unreachable: {why}"),
            Self::Refused { status, body } => write!(f, "refused with {status}: {body}"),
            Self::BadResponse(why) => write!(f, "bad response: {why}"),
        }
    }
}

impl std::error::Error for FederationError {}

impl FederationError {
    /// The error a client sees when a request to another server on its behalf failed:
    /// the other server's 404 as `M_NOT_FOUND` (`what` is not found), anything else as a
    /// remote failure (that server could not give an answer).
    pub fn for_client(self, what: &str) -> ServiceError {
        match self {
            Self::Refused { status: 404, .. } => {
                ServiceError::not_found(format!("{what} not found"))
            }
            other => {
                tracing::info!(error = %other, "a request to another server failed");
                ServiceError::remote_failed(format!("The other server could not be asked: {other}"))
            }
        }
    }
}

/// What another server's 4xx refusal means for the request we made on a caller's behalf.
pub fn refusal_kind(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        405 => ErrorKind::ServerControlled,
        409 => ErrorKind::Conflict,
        413 => ErrorKind::TooLarge,
        429 => ErrorKind::RateLimited,
        _ => ErrorKind::Invalid,
    }
}

/// Reads a response body of at most `limit` bytes.
pub async fn read_limited(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, FederationError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(FederationError::BadResponse(format!(
            "the answer is larger than {limit} bytes"
        )));
    }
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| FederationError::Unreachable(e.to_string()))?;
        if out.len() + chunk.len() > limit {
            return Err(FederationError::BadResponse(format!(
                "the answer is larger than {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The outbound client.
pub struct FederationClient {
    http: reqwest::Client,
    discovery: Discovery,
    guard: IpGuard,
    server_name: ServerName,
    key: Arc<SigningKeyPair>,
}

/// A client builder with our TLS settings and resolver.
fn builder(
    config: &FederationConfig,
    resolver: GuardedResolver,
) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder()
        .dns_resolver(resolver)
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("ourwhats/", env!("CARGO_PKG_VERSION")))
        .local_address(config.outbound_address);
    if !config.verify_tls {
        builder = builder.tls_danger_accept_invalid_certs(true);
    } else if let Some(path) = &config.trusted_ca {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read federation.trusted_ca {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("federation.trusted_ca {}: {e}", path.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    Ok(builder)
}

impl FederationClient {
    /// The client for `config`, speaking as `server_name` with `key`.
    pub fn new(
        config: &FederationConfig,
        server_name: ServerName,
        key: Arc<SigningKeyPair>,
    ) -> Result<Self, String> {
        // Our TLS stack uses ring (installing it again is harmless; commands that open the
        // services without starting a server need it too).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if !config.verify_tls {
            tracing::warn!("federation.verify_tls is false: other servers' certificates are not checked (for tests only)");
        }
        let guard = IpGuard::new(config.ip_range_allowlist.clone());
        let dns = hickory_resolver::TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
            .build()
            .map_err(|e| format!("cannot start the DNS resolver: {e}"))?;
        let srv = Arc::new(Mutex::new(Default::default()));
        let resolver = GuardedResolver::new(dns.clone(), guard.clone(), Arc::clone(&srv));
        let http = builder(config, resolver.clone())?
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the federation HTTP client: {e}"))?;
        let redirect_guard = guard.clone();
        let well_known_client = builder(config, resolver)?
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                let literal = attempt
                    .url()
                    .host_str()
                    .and_then(|h| h.trim_matches(|c| c == '[' || c == ']').parse().ok());
                if attempt.previous().len() >= 5 {
                    attempt.error("too many redirects")
                } else if literal.is_some_and(|ip| !redirect_guard.permits(ip)) {
                    attempt.error("redirect to an address federation may not reach")
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|e| format!("cannot build the federation HTTP client: {e}"))?;
        Ok(Self {
            http,
            discovery: Discovery::new(dns, well_known_client, srv),
            guard,
            server_name,
            key,
        })
    }

    /// Our server name.
    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// A signed request to `destination`; answers its JSON body.
    pub async fn request(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, FederationError> {
        self.send(
            destination,
            method,
            path_and_query,
            body,
            true,
            MAX_RESPONSE_BYTES,
        )
        .await
    }

    /// A signed request to `destination` whose answer may be up to `limit` bytes (a
    /// room's whole state); answers its JSON body.
    pub async fn request_limited(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        limit: usize,
    ) -> Result<Value, FederationError> {
        self.send(destination, method, path_and_query, body, true, limit)
            .await
    }

    /// `https://authority` of requests to `destination` (discovery).
    pub async fn base_url(&self, destination: &ServerName) -> String {
        self.discovery.resolve(destination).await.base_url
    }

    /// A signed `GET` whose answer is streamed (media): the response once its status is
    /// 200, else the error the JSON answer describes.
    pub async fn get_stream(
        &self,
        destination: &ServerName,
        path_and_query: &str,
    ) -> Result<reqwest::Response, FederationError> {
        self.check_destination(destination)?;
        let target = self.discovery.resolve(destination).await;
        let header = x_matrix::sign_request(
            &self.key,
            ("GET", path_and_query),
            (self.server_name.as_str(), destination.as_str()),
            None,
        )
        .map_err(|e| FederationError::BadResponse(format!("cannot sign the request: {e:?}")))?;
        let response = self
            .http
            .get(format!("{}{path_and_query}", target.base_url))
            .header(reqwest::header::AUTHORIZATION, header)
            .send()
            .await
            .map_err(|e| FederationError::Unreachable(error_chain(&e)))?;
        refused_unless_ok(response).await
    }

    /// An unsigned `GET` of any URL (a media `Location`, the deprecated media endpoints),
    /// redirects followed within the address guard; the response once its status is 200.
    pub async fn get_url_stream(&self, url: &str) -> Result<reqwest::Response, FederationError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| FederationError::BadResponse(format!("bad URL {url:?}: {e}")))?;
        if parsed.scheme() != "https" {
            return Err(FederationError::BadResponse(format!(
                "not an https URL: {url:?}"
            )));
        }
        if let Some(ip) = parsed
            .host_str()
            .and_then(|h| h.trim_matches(|c| c == '[' || c == ']').parse().ok())
        {
            if !self.guard.permits(ip) {
                return Err(FederationError::Unreachable(format!(
                    "{url} is an address federation may not reach"
                )));
            }
        }
        let response = self
            .discovery
            .http()
            .get(parsed)
            .send()
            .await
            .map_err(|e| FederationError::Unreachable(error_chain(&e)))?;
        refused_unless_ok(response).await
    }

    fn check_destination(&self, destination: &ServerName) -> Result<(), FederationError> {
        if destination == &self.server_name {
            return Err(FederationError::Unreachable(
                "a request to ourselves".into(),
            ));
        }
        let host = destination.host().trim_matches(|c| c == '[' || c == ']');
        if let Ok(ip) = host.parse() {
            if !self.guard.permits(ip) {
                return Err(FederationError::Unreachable(format!(
                    "{destination} is an address federation may not reach (see federation.ip_range_allowlist)"
                )));
            }
        }
        Ok(())
    }

    /// An unsigned `GET` (key documents), answering at most `limit` bytes of JSON.
    pub async fn get_unsigned(
        &self,
        destination: &ServerName,
        path: &str,
        limit: usize,
    ) -> Result<Value, FederationError> {
        self.send(destination, Method::GET, path, None, false, limit)
            .await
    }

    async fn send(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        signed: bool,
        limit: usize,
    ) -> Result<Value, FederationError> {
        if destination == &self.server_name {
            return Err(FederationError::Unreachable(
                "a request to ourselves".into(),
            ));
        }
        let host = destination.host().trim_matches(|c| c == '[' || c == ']');
        if let Ok(ip) = host.parse() {
            if !self.guard.permits(ip) {
                return Err(FederationError::Unreachable(format!(
                    "{destination} is an address federation may not reach (see federation.ip_range_allowlist)"
                )));
            }
        }
        let target = self.discovery.resolve(destination).await;
        let url = format!("{}{path_and_query}", target.base_url);
        let mut request = self.http.request(method.clone(), &url);
        if signed {
            let header = x_matrix::sign_request(
                &self.key,
                (method.as_str(), path_and_query),
                (self.server_name.as_str(), destination.as_str()),
                body,
            )
            .map_err(|e| FederationError::BadResponse(format!("cannot sign the request: {e:?}")))?;
            request = request.header(reqwest::header::AUTHORIZATION, header);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| FederationError::Unreachable(error_chain(&e)))?;
        let status = response.status();
        let bytes = read_limited(response, limit).await?;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status != StatusCode::OK {
            return Err(FederationError::Refused {
                status: status.as_u16(),
                body: json.unwrap_or(Value::Null),
            });
        }
        json.ok_or_else(|| FederationError::BadResponse("the answer is not JSON".into()))
    }
}

/// The response when its status is 200, else [`FederationError::Refused`] with its JSON.
async fn refused_unless_ok(
    response: reqwest::Response,
) -> Result<reqwest::Response, FederationError> {
    if response.status() == StatusCode::OK {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let bytes = read_limited(response, 64 * 1024).await.unwrap_or_default();
    Err(FederationError::Refused {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    })
}

/// An error with its causes, for logs ("error sending request" alone says nothing).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
