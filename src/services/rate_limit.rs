//! Token-bucket rate limits per action and per user or client IP.
//!
//! Spec: client-server API, "Rate limiting": over the limit answers 429
//! `M_LIMIT_EXCEEDED` with `retry_after_ms`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;
use crate::services::error::ServiceError;

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateAction {
    /// `POST /login`, per client IP.
    Login,
    /// `POST /register` and token checks, per client IP.
    Register,
    /// Sending events, per user.
    Message,
    /// Creating rooms (`createRoom`, upgrades), per user.
    RoomCreate,
    /// Requests from another server (after their signature is checked), per origin.
    Federation,
    /// Joins and knocks through other servers, per user.
    RemoteJoin,
    /// Invites sent, per inviting user.
    InviteSent,
    /// Invites received, per invited user of ours and inviting server (so that one server's
    /// flood leaves others' invites through).
    InviteReceived,
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    per_second: f64,
    burst: f64,
}

impl Rule {
    /// `rate` a second, bursts of `burst` (at least 1).
    fn per_second(rate: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(rate),
            burst: f64::from(burst.max(1)),
        }
    }

    /// `rate` a minute, bursts of `burst` (at least 1).
    fn per_minute(rate: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(rate) / 60.0,
            burst: f64::from(burst.max(1)),
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The [`RateAction::InviteReceived`] bucket of an invitee of ours and the inviting server.
pub fn invite_bucket(invitee: &str, inviting_server: &str) -> String {
    format!("{invitee}|{inviting_server}")
}

/// Buckets beyond this many are pruned of the full ones.
const PRUNE_THRESHOLD: usize = 10_000;

/// The limiter; one per server.
pub struct RateLimiter {
    enabled: bool,
    rules: HashMap<RateAction, Rule>,
    buckets: Mutex<HashMap<(RateAction, String), Bucket>>,
}

impl RateLimiter {
    /// A limiter with the configured rules.
    pub fn new(config: &RateLimitConfig) -> Self {
        let rules = HashMap::from([
            (
                RateAction::Login,
                Rule::per_minute(config.login_per_minute, config.login_burst),
            ),
            (
                RateAction::Register,
                Rule::per_minute(config.register_per_minute, config.register_burst),
            ),
            (
                RateAction::Message,
                Rule::per_second(config.message_per_second, config.message_burst),
            ),
            (
                RateAction::RoomCreate,
                Rule::per_minute(config.room_create_per_minute, config.room_create_burst),
            ),
            (
                RateAction::Federation,
                Rule::per_second(config.federation_per_second, config.federation_burst),
            ),
            (
                RateAction::RemoteJoin,
                Rule::per_minute(config.remote_join_per_minute, config.remote_join_burst),
            ),
            (
                RateAction::InviteSent,
                Rule::per_minute(config.invite_per_minute, config.invite_burst),
            ),
            (
                RateAction::InviteReceived,
                Rule::per_minute(
                    config.invites_received_per_minute,
                    config.invites_received_burst,
                ),
            ),
        ]);
        Self {
            enabled: config.enabled,
            rules,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `action` by `who`, or answers 429 with the wait until one refills.
    pub fn check(&self, action: RateAction, who: &str) -> Result<(), ServiceError> {
        self.take(action, who, true)
    }

    /// Whether [`RateLimiter::check`] would pass now, taking nothing: for what is counted
    /// only once it proves valid ([`RateLimiter::count`] then takes the token).
    pub fn peek(&self, action: RateAction, who: &str) -> Result<(), ServiceError> {
        self.take(action, who, false)
    }

    /// Takes one token (possibly the last) for what [`RateLimiter::peek`] let through.
    pub fn count(&self, action: RateAction, who: &str) {
        let _ = self.take(action, who, true);
    }

    fn take(&self, action: RateAction, who: &str, consume: bool) -> Result<(), ServiceError> {
        if !self.enabled {
            return Ok(());
        }
        let rule = self.rules[&action];
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock poisoned");
        if buckets.len() > PRUNE_THRESHOLD {
            buckets.retain(|(a, _), b| {
                let r = self.rules[a];
                b.tokens + now.duration_since(b.updated).as_secs_f64() * r.per_second < r.burst
            });
        }
        let bucket = buckets.entry((action, who.to_owned())).or_insert(Bucket {
            tokens: rule.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rule.per_second).min(rule.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            if consume {
                bucket.tokens -= 1.0;
            }
            return Ok(());
        }
        let wait_ms = if rule.per_second > 0.0 {
            ((1.0 - bucket.tokens) / rule.per_second * 1000.0).ceil() as u64
        } else {
            // A zero rate never refills: ask to wait an hour.
            3_600_000
        };
        Err(ServiceError::limit_exceeded(wait_ms.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(enabled: bool) -> RateLimitConfig {
        RateLimitConfig {
            enabled,
            login_per_minute: 60,
            login_burst: 3,
            register_per_minute: 0,
            register_burst: 1,
            message_per_second: 10,
            message_burst: 2,
            room_create_per_minute: 1,
            room_create_burst: 2,
            remote_join_per_minute: 1,
            remote_join_burst: 2,
            invite_per_minute: 1,
            invite_burst: 2,
            invites_received_per_minute: 1,
            invites_received_burst: 2,
            federation_per_second: 1,
            federation_burst: 2,
        }
    }

    #[test]
    fn burst_then_429_with_retry_after() {
        let limiter = RateLimiter::new(&config(true));
        for _ in 0..3 {
            limiter.check(RateAction::Login, "1.2.3.4").unwrap();
        }
        let err = limiter.check(RateAction::Login, "1.2.3.4").unwrap_err();
        assert_eq!(err.kind, crate::services::error::ErrorKind::RateLimited);
        let retry = err.extra["retry_after_ms"].as_u64().unwrap();
        assert!(retry > 0 && retry <= 1000, "{retry}");
        // Another IP and another action have their own buckets.
        limiter.check(RateAction::Login, "5.6.7.8").unwrap();
        limiter.check(RateAction::Message, "1.2.3.4").unwrap();
    }

    #[test]
    fn peek_takes_nothing_and_count_takes_one() {
        let limiter = RateLimiter::new(&config(true));
        // Invites received: burst 2, one a minute.
        for _ in 0..10 {
            limiter
                .peek(RateAction::InviteReceived, "@a:x|evil.example")
                .unwrap();
        }
        limiter.count(RateAction::InviteReceived, "@a:x|evil.example");
        limiter.count(RateAction::InviteReceived, "@a:x|evil.example");
        assert!(limiter
            .peek(RateAction::InviteReceived, "@a:x|evil.example")
            .is_err());
        // Another server's invites to the same user have their own bucket.
        limiter
            .peek(RateAction::InviteReceived, "@a:x|good.example")
            .unwrap();
    }

    #[test]
    fn zero_rate_never_refills() {
        let limiter = RateLimiter::new(&config(true));
        limiter.check(RateAction::Register, "ip").unwrap();
        let err = limiter.check(RateAction::Register, "ip").unwrap_err();
        assert_eq!(err.extra["retry_after_ms"], 3_600_000);
    }

    #[test]
    fn disabled_never_limits() {
        let limiter = RateLimiter::new(&config(false));
        for _ in 0..100 {
            limiter.check(RateAction::Register, "ip").unwrap();
        }
    }
}
