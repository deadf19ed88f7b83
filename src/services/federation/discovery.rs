//! Where another server is reached: server name resolution, and the DNS resolver our
//! HTTP client uses (SRV answers, and the address guard on every lookup).
//!
//! Spec: server-server API, "Resolving server names". The outcome is the base URL of a
//! request: its authority is what TLS verifies (and sends as SNI unless it is an IP) and
//! what the `Host` header carries, as the spec asks in each case:
//! 1. an IP literal: `https://ip:port` (8448 by default);
//! 2. a hostname with a port: `https://host:port`;
//! 3. `/.well-known/matrix/server` (cached as the spec advises: its `Cache-Control`
//!    max-age, 24 hours by default, at most 48; errors for an hour) naming
//!    `<delegated>[:port]`: with an IP or a port, as 1 and 2; otherwise an SRV record of
//!    `_matrix-fed._tcp.<delegated>` (then the deprecated `_matrix._tcp`) gives target and
//!    port, reached as `https://<delegated>` (its certificate, its Host) with the
//!    resolver answering the SRV target's addresses; without one, `https://<delegated>:8448`;
//! 4. to 6. without a `.well-known`, the same SRV steps and 8448 fallback for the hostname.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::Value;

use super::ip_guard::IpGuard;
use crate::core::ServerName;

/// The default port of federation.
pub const DEFAULT_PORT: u16 = 8448;
/// How long a `.well-known` answer is kept without a `Cache-Control` max-age.
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a `.well-known` answer is kept.
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// How long the absence of a `.well-known` is kept.
const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(3600);
/// How long SRV answers are kept.
const SRV_TTL: Duration = Duration::from_secs(3600);
/// The largest `.well-known` answer read.
const WELL_KNOWN_MAX_BYTES: usize = 64 * 1024;

/// SRV answers by hostname: `(target, port)`, best first.
type SrvMap = HashMap<String, (Vec<(String, u16)>, Instant)>;

/// Server name resolution with its caches.
pub struct Discovery {
    dns: TokioResolver,
    /// The client for `.well-known` lookups (redirects followed, guarded).
    well_known_client: reqwest::Client,
    well_known: Mutex<HashMap<String, (Option<String>, Instant)>>,
    srv: Arc<Mutex<SrvMap>>,
}

/// How a base URL was found (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://authority`, without a trailing slash.
    pub base_url: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `host` as a URL authority (IPv6 literals in brackets).
fn authority(host: &str, port: Option<u16>) -> String {
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) if !host.starts_with('[') => format!("[{host}]"),
        _ => host.to_owned(),
    };
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .is_ok()
}

impl Discovery {
    /// A resolver from the system's DNS configuration, sharing its SRV answers with
    /// [`GuardedResolver`].
    pub fn new(
        dns: TokioResolver,
        well_known_client: reqwest::Client,
        srv: Arc<Mutex<SrvMap>>,
    ) -> Self {
        Self {
            dns,
            well_known_client,
            well_known: Mutex::new(HashMap::new()),
            srv,
        }
    }

    /// The client that follows redirects within the address guard (`.well-known`, media
    /// `Location`s).
    pub fn http(&self) -> &reqwest::Client {
        &self.well_known_client
    }

    /// The base URL of requests to `server`.
    pub async fn resolve(&self, server: &ServerName) -> Target {
        let host = server.host();
        if is_ip_literal(host) || server.port().is_some() {
            return Target {
                base_url: format!(
                    "https://{}",
                    authority(host, Some(server.port().unwrap_or(DEFAULT_PORT)))
                ),
            };
        }
        if let Some(delegated) = self.well_known(host).await {
            if let Ok(delegated) = ServerName::parse(&delegated) {
                let d_host = delegated.host();
                if is_ip_literal(d_host) || delegated.port().is_some() {
                    return Target {
                        base_url: format!(
                            "https://{}",
                            authority(d_host, Some(delegated.port().unwrap_or(DEFAULT_PORT)))
                        ),
                    };
                }
                return self.by_srv(d_host).await;
            }
            tracing::info!(%server, %delegated, "ignoring an invalid m.server in .well-known");
        }
        self.by_srv(host).await
    }

    /// Steps 3.3 to 3.5 and 4 to 6: an SRV record for `host`, or port 8448.
    async fn by_srv(&self, host: &str) -> Target {
        let targets = self.srv_targets(host).await;
        if targets.is_empty() {
            Target {
                base_url: format!("https://{}", authority(host, Some(DEFAULT_PORT))),
            }
        } else {
            // No port in the URL: the resolver answers the SRV target's addresses with
            // the SRV port, and TLS and Host use `host`.
            Target {
                base_url: format!("https://{}", authority(host, None)),
            }
        }
    }

    async fn srv_targets(&self, host: &str) -> Vec<(String, u16)> {
        if let Some((targets, at)) = lock(&self.srv).get(host) {
            if at.elapsed() < SRV_TTL {
                return targets.clone();
            }
        }
        let mut targets = Vec::new();
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            match self.dns.srv_lookup(format!("{service}.{host}.")).await {
                Ok(lookup) => {
                    let mut found: Vec<(u16, u16, String, u16)> = lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::SRV(s) if !s.target.is_root() => Some((
                                s.priority,
                                u16::MAX - s.weight,
                                s.target.to_ascii().trim_end_matches('.').to_owned(),
                                s.port,
                            )),
                            _ => None,
                        })
                        .collect();
                    found.sort();
                    targets = found.into_iter().map(|(_, _, t, p)| (t, p)).collect();
                }
                Err(e) => {
                    if !e.is_no_records_found() {
                        tracing::debug!(%host, error = %e, "SRV lookup failed");
                    }
                }
            }
            if !targets.is_empty() {
                break;
            }
        }
        lock(&self.srv).insert(host.to_owned(), (targets.clone(), Instant::now()));
        targets
    }

    /// The `m.server` of `https://host/.well-known/matrix/server`, cached.
    async fn well_known(&self, host: &str) -> Option<String> {
        if let Some((answer, until)) = lock(&self.well_known).get(host) {
            if Instant::now() < *until {
                return answer.clone();
            }
        }
        let (answer, ttl) = self.fetch_well_known(host).await;
        lock(&self.well_known).insert(host.to_owned(), (answer.clone(), Instant::now() + ttl));
        answer
    }

    async fn fetch_well_known(&self, host: &str) -> (Option<String>, Duration) {
        let url = format!("https://{host}/.well-known/matrix/server");
        let failed = (None, WELL_KNOWN_ERROR_TTL);
        let Ok(response) = self.well_known_client.get(&url).send().await else {
            return failed;
        };
        if !response.status().is_success() {
            return failed;
        }
        let ttl = max_age(response.headers())
            .map_or(WELL_KNOWN_DEFAULT_TTL, |ttl| ttl.min(WELL_KNOWN_MAX_TTL));
        let Ok(bytes) = super::client::read_limited(response, WELL_KNOWN_MAX_BYTES).await else {
            return failed;
        };
        let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
            return failed;
        };
        match body.get("m.server").and_then(Value::as_str) {
            Some(server) => (Some(server.to_owned()), ttl),
            None => failed,
        }
    }
}

/// The `max-age` of a `Cache-Control` header.
fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    value.split(',').find_map(|part| {
        let (name, secs) = part.trim().split_once('=')?;
        name.eq_ignore_ascii_case("max-age")
            .then(|| secs.trim().parse().ok().map(Duration::from_secs))?
    })
}

/// The DNS resolver of our HTTP clients: SRV targets for hosts discovery resolved by SRV,
/// A/AAAA records otherwise, and only addresses the guard permits.
#[derive(Clone)]
pub struct GuardedResolver {
    dns: TokioResolver,
    guard: IpGuard,
    srv: Arc<Mutex<SrvMap>>,
}

impl GuardedResolver {
    /// A resolver over `dns`, sharing SRV answers with [`Discovery`].
    pub fn new(dns: TokioResolver, guard: IpGuard, srv: Arc<Mutex<SrvMap>>) -> Self {
        Self { dns, guard, srv }
    }

    /// A resolver of A/AAAA records only, over the system's DNS configuration, answering
    /// only addresses `guard` permits: for other user-given URLs (push gateways).
    pub fn plain(guard: IpGuard) -> Result<Self, String> {
        let dns = TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
            .build()
            .map_err(|e| format!("cannot start the DNS resolver: {e}"))?;
        Ok(Self::new(dns, guard, Arc::default()))
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let srv = lock(&this.srv)
                .get(&host)
                .map(|(t, _)| t.clone())
                .unwrap_or_default();
            let lookups: Vec<(String, u16)> = if srv.is_empty() {
                vec![(host.clone(), 0)]
            } else {
                srv
            };
            let mut addrs = Vec::new();
            let mut refused = 0;
            for (target, port) in lookups {
                let found = this.dns.lookup_ip(format!("{target}.")).await;
                let Ok(found) = found else { continue };
                for ip in found.iter() {
                    if this.guard.permits(ip) {
                        addrs.push(SocketAddr::new(ip, port));
                    } else {
                        refused += 1;
                    }
                }
            }
            if addrs.is_empty() {
                let reason = if refused > 0 {
                    format!("{host} resolves only to addresses federation may not reach")
                } else {
                    format!("{host} does not resolve")
                };
                return Err(reason.into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_bracket_ipv6_and_keep_ports() {
        assert_eq!(authority("example.org", None), "example.org");
        assert_eq!(authority("example.org", Some(8448)), "example.org:8448");
        assert_eq!(authority("::1", Some(8448)), "[::1]:8448");
        assert_eq!(authority("[::1]", Some(443)), "[::1]:443");
        assert_eq!(authority("127.0.0.1", Some(1)), "127.0.0.1:1");
    }

    #[test]
    fn cache_control_max_age_is_read() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::CACHE_CONTROL,
            "public, max-age=600".parse().unwrap(),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(600)));
        headers.insert(reqwest::header::CACHE_CONTROL, "no-cache".parse().unwrap());
        assert_eq!(max_age(&headers), None);
    }
}
