//! Profiles: display name, avatar and other fields.
//!
//! Spec: client-server API, "Profiles" (`profile.yaml`): `GET /profile/{userId}`, `GET/PUT/
//! DELETE /profile/{userId}/{keyName}` where the key is `displayname`, `avatar_url`, `m.tz`
//! or a namespaced custom key (`[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+`); key names up to 255
//! bytes (`M_KEY_TOO_LARGE`), the whole profile under 64 KiB (`M_PROFILE_TOO_LARGE`),
//! `avatar_url` an MXC URI, `displayname` a string.

use serde_json::{json, Map, Value};

use super::records::Profile;
use super::Accounts;
use crate::core::UserId;
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::records::encode;
use crate::storage::Table;

/// Spec: the whole profile must stay under 64 KiB.
const MAX_PROFILE_BYTES: usize = 64 * 1024;
/// Spec: key names are at most 255 bytes.
const MAX_KEY_BYTES: usize = 255;
/// Display names longer than this are refused (Synapse's limit).
const MAX_DISPLAYNAME_CHARS: usize = 256;

/// Whether `key` is a profile key the spec allows.
pub fn is_valid_key(key: &str) -> bool {
    if matches!(key, "displayname" | "avatar_url" | "m.tz") {
        return true;
    }
    let parts: Vec<&str> = key.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            let mut chars = p.chars();
            chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

fn check_key(key: &str) -> ServiceResult<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(ServiceError::new(
            ErrorKind::Invalid,
            ErrorCode::KeyTooLarge,
            "Profile keys are at most 255 bytes",
        ));
    }
    if !is_valid_key(key) {
        return Err(ServiceError::invalid_param(format!(
            "Invalid profile key {key:?}"
        )));
    }
    Ok(())
}

fn as_map(profile: &Profile) -> Map<String, Value> {
    let mut out: Map<String, Value> = profile
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(name) = &profile.displayname {
        out.insert("displayname".into(), json!(name));
    }
    if let Some(url) = &profile.avatar_url {
        out.insert("avatar_url".into(), json!(url));
    }
    out
}

impl Accounts {
    fn existing_profile(&self, user_id: &UserId) -> ServiceResult<Profile> {
        if !self.is_active_user(user_id)? {
            return Err(ServiceError::not_found("Profile not found"));
        }
        Ok(self.profile(user_id)?.unwrap_or_default())
    }

    /// Every field of a local user's profile; 404 for unknown or deactivated users.
    pub fn profile_fields(&self, user_id: &UserId) -> ServiceResult<Map<String, Value>> {
        Ok(as_map(&self.existing_profile(user_id)?))
    }

    /// One field; 404 when it is not set.
    pub fn profile_field(&self, user_id: &UserId, key: &str) -> ServiceResult<Value> {
        check_key(key)?;
        as_map(&self.existing_profile(user_id)?)
            .remove(key)
            .ok_or_else(|| ServiceError::not_found(format!("No {key} in this profile")))
    }

    /// Sets (`Some`) or deletes (`None`) a field of the user's own profile; answers the
    /// profile as it now is.
    pub async fn set_profile_field(
        &self,
        user_id: &UserId,
        key: &str,
        value: Option<Value>,
    ) -> ServiceResult<Profile> {
        check_key(key)?;
        let _guard = self.account_lock.lock().await;
        let mut profile = self.existing_profile(user_id)?;
        match (key, value) {
            ("displayname", None) | ("displayname", Some(Value::Null)) => {
                profile.displayname = None
            }
            ("displayname", Some(Value::String(name))) => {
                if name.chars().count() > MAX_DISPLAYNAME_CHARS {
                    return Err(ServiceError::invalid_param(format!(
                        "displayname is longer than {MAX_DISPLAYNAME_CHARS} characters"
                    )));
                }
                profile.displayname = Some(name);
            }
            ("displayname", Some(_)) => {
                return Err(ServiceError::bad_json("displayname must be a string"))
            }
            ("avatar_url", None) | ("avatar_url", Some(Value::Null)) => profile.avatar_url = None,
            ("avatar_url", Some(Value::String(url))) => {
                let valid = url
                    .strip_prefix("mxc://")
                    .and_then(|rest| rest.split_once('/'))
                    .is_some_and(|(server, id)| !server.is_empty() && !id.is_empty());
                if !valid {
                    return Err(ServiceError::bad_json("avatar_url must be an mxc:// URI"));
                }
                profile.avatar_url = Some(url);
            }
            ("avatar_url", Some(_)) => {
                return Err(ServiceError::bad_json("avatar_url must be an mxc:// URI"))
            }
            (other, None) => {
                profile.fields.remove(other);
            }
            (other, Some(value)) => {
                profile.fields.insert(other.to_owned(), value);
            }
        }
        let bytes = encode(&profile);
        if bytes.len() >= MAX_PROFILE_BYTES {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                ErrorCode::ProfileTooLarge,
                "The profile would exceed 64 KiB",
            ));
        }
        let mut batch = self.db.batch();
        batch.put(Table::UseridProfile, user_id.as_str(), bytes);
        self.db.commit(batch).await?;
        Ok(profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_keys_follow_the_spec_grammar() {
        for good in [
            "displayname",
            "avatar_url",
            "m.tz",
            "org.example.pronouns",
            "a.b_2",
        ] {
            assert!(is_valid_key(good), "{good}");
        }
        for bad in [
            "",
            "pronouns",
            "Org.example",
            "org..x",
            "org.ex-ample",
            "1a.b",
        ] {
            assert!(!is_valid_key(bad), "{bad}");
        }
    }
}
