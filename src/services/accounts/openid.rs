//! OpenID tokens: a user proves their identity to a third party (a widget, an
//! integration manager), which asks our federation API who the token belongs to.
//!
//! Spec: client-server API, "OpenID" (`POST /user/{userId}/openid/request_token`) and
//! server-server API, "OpenID" (`GET /_matrix/federation/v1/openid/userinfo`). Tokens are
//! kept hashed, expire after an hour, and prove nothing else: they are not access tokens.
//!
//! Owns the table `tokenhash_openid`.

use serde::{Deserialize, Serialize};

use super::secrets::{new_access_token, token_hash};
use super::Accounts;
use crate::core::UserId;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::now_ms;
use crate::services::records::{decode, encode};
use crate::storage::Table;

/// How long an OpenID token is valid (Synapse uses an hour too).
pub const OPENID_TOKEN_SECS: u64 = 3600;

/// A token's record.
#[derive(Debug, Serialize, Deserialize)]
struct OpenIdToken {
    user_id: String,
    /// Milliseconds since the epoch.
    expires_at: u64,
}

/// A token handed out.
#[derive(Debug, Clone)]
pub struct IssuedOpenIdToken {
    /// The token itself.
    pub token: String,
    /// Seconds it stays valid.
    pub expires_in: u64,
}

impl Accounts {
    /// A new OpenID token for `user_id`.
    pub async fn issue_openid_token(&self, user_id: &UserId) -> ServiceResult<IssuedOpenIdToken> {
        let token = new_access_token();
        let record = OpenIdToken {
            user_id: user_id.as_str().to_owned(),
            expires_at: now_ms() + OPENID_TOKEN_SECS * 1000,
        };
        let mut batch = self.db.batch();
        batch.put(Table::TokenhashOpenid, token_hash(&token), encode(&record));
        self.db.commit(batch).await?;
        self.sweep_openid_tokens()?;
        Ok(IssuedOpenIdToken {
            token,
            expires_in: OPENID_TOKEN_SECS,
        })
    }

    /// Whose token this is; 401 `M_UNKNOWN_TOKEN` for a token never issued or expired
    /// (an expired one is deleted).
    pub fn openid_user(&self, token: &str) -> ServiceResult<String> {
        let unknown =
            || ServiceError::unknown_token("The OpenID token is not known or has expired");
        if token.is_empty() || token.len() > 512 {
            return Err(unknown());
        }
        let key = token_hash(token);
        let Some(bytes) = self.db.get(Table::TokenhashOpenid, key)? else {
            return Err(unknown());
        };
        let record: OpenIdToken = decode(Table::TokenhashOpenid, &bytes)?;
        // A deactivated account's tokens prove nothing any more (its access tokens are
        // gone too).
        let deactivated = || -> ServiceResult<bool> {
            Ok(self.account(&record.user_id)?.is_none_or(|a| a.deactivated))
        };
        if record.expires_at <= now_ms() || deactivated()? {
            let mut batch = self.db.batch();
            batch.delete(Table::TokenhashOpenid, key);
            self.db.write_relaxed(batch)?;
            return Err(unknown());
        }
        Ok(record.user_id)
    }

    /// Deletes the expired tokens, at most once every [`OPENID_TOKEN_SECS`]: tokens
    /// nobody asks about again would otherwise stay forever.
    fn sweep_openid_tokens(&self) -> ServiceResult<()> {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        let last = self.openid_swept.load(Ordering::Relaxed);
        if now < last + OPENID_TOKEN_SECS * 1000
            || self
                .openid_swept
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for entry in self.db.scan_prefix(Table::TokenhashOpenid, b"") {
            let (key, value) = entry?;
            let expired = decode::<OpenIdToken>(Table::TokenhashOpenid, &value)
                .map_or(true, |record| record.expires_at <= now);
            if expired {
                batch.delete(Table::TokenhashOpenid, key);
            }
        }
        self.db.write_relaxed(batch)?;
        Ok(())
    }
}
