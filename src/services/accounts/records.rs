//! The records the accounts service keeps, as stored (JSON) in its tables.

use serde::{Deserialize, Serialize};

/// `userid_account`: one per user id ever registered (deactivated ones stay, so the id is
/// never handed out again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// Argon2id PHC string; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    /// Milliseconds since the epoch.
    pub created_ts: u64,
    /// Server administrator.
    #[serde(default)]
    pub is_admin: bool,
    /// Guest account (restricted; registered with `kind=guest`).
    #[serde(default)]
    pub is_guest: bool,
    /// Deactivated accounts cannot log in and keep their id reserved.
    #[serde(default)]
    pub deactivated: bool,
    /// The stream position at which the user asked for erasure (`deactivate` with
    /// `erase`): their events are served redacted to users who join rooms afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<u64>,
}

/// `tokenhash_session`: what an access token (by its SHA-256) stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenSession {
    /// The token's owner.
    pub user_id: String,
    /// The device the token belongs to.
    pub device_id: String,
    /// Whether the owner is a guest.
    #[serde(default)]
    pub is_guest: bool,
}

/// `userid_deviceid_device`: a logged-in device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    /// Name chosen by the user.
    pub display_name: Option<String>,
    /// Hex SHA-256 of the device's current access token.
    pub token_hash: String,
}

/// `userid_deviceid_lastseen`: when and from where a device was last used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastSeen {
    /// Milliseconds since the epoch.
    pub ts: u64,
    /// Client IP, when known.
    pub ip: Option<String>,
}

/// `userid_profile`: public profile fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    /// Display name.
    pub displayname: Option<String>,
    /// `mxc://` URI of the avatar.
    pub avatar_url: Option<String>,
    /// Other fields (`m.tz`, custom namespaced keys), by key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, serde_json::Value>,
}
