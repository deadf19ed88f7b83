//! Pushers: where a user's devices want their notifications sent.
//!
//! Spec: client-server API, "Push Notifications", `GET /pushers` and `POST /pushers/set`.
//! A pusher is named by `(user, app_id, pushkey)` and belongs to the device whose session
//! set it (deleted with that device). Only `http` pushers exist here: their `data.url` is
//! a push gateway's `/_matrix/push/v1/notify`; `email` pushers are refused. Every pusher is
//! also kept in memory, so that the send path can tell in a lookup which members have any.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::services::error::{ServiceError, ServiceResult};
use crate::storage::keys;

/// The path every push gateway serves (spec: push gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// Spec: `pushkey` "Max length, 512 bytes".
const MAX_PUSHKEY_BYTES: usize = 512;
/// Spec: `app_id` "Max length, 64 chars".
const MAX_APP_ID_CHARS: usize = 64;
/// Spec: `profile_tag` "Max length, 32 bytes" (older versions of the spec).
const MAX_PROFILE_TAG_BYTES: usize = 32;
/// Free-text fields (display names, language) longer than this are refused.
const MAX_TEXT_BYTES: usize = 1_024;
/// Pushers one user may have.
pub const MAX_PUSHERS_PER_USER: usize = 50;

/// A pusher as stored (`userid_appid_pushkey_pusher`) and as `GET /pushers` shows it
/// (without `device_id` and `pushkey_ts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pusher {
    /// The user it pushes for.
    pub user_id: String,
    /// The device whose session set it.
    pub device_id: String,
    /// Unique per app and device (the app's push token).
    pub pushkey: String,
    /// `http`.
    pub kind: String,
    /// Reverse-DNS name of the app.
    pub app_id: String,
    /// Shown to the user.
    pub app_display_name: String,
    /// Shown to the user.
    pub device_display_name: String,
    /// Which device-specific rules apply (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_tag: Option<String>,
    /// The language notifications should be in.
    pub lang: String,
    /// `url`, `format` and anything else the app wants passed to its gateway.
    pub data: Map<String, Value>,
    /// When the pushkey was last set (ms since the epoch).
    pub pushkey_ts: u64,
}

impl Pusher {
    /// The key of its record (and the tail of its queue entries).
    pub fn key(&self) -> Vec<u8> {
        pusher_key(&self.user_id, &self.app_id, &self.pushkey)
    }

    /// The gateway's URL.
    pub fn url(&self) -> &str {
        self.data.get("url").and_then(Value::as_str).unwrap_or("")
    }

    /// Whether the gateway wants only ids and counts (`data.format: event_id_only`).
    pub fn event_id_only(&self) -> bool {
        self.data.get("format").and_then(Value::as_str) == Some("event_id_only")
    }

    /// As `GET /pushers` shows it.
    pub fn to_client(&self) -> Value {
        let mut out = serde_json::json!({
            "pushkey": self.pushkey,
            "kind": self.kind,
            "app_id": self.app_id,
            "app_display_name": self.app_display_name,
            "device_display_name": self.device_display_name,
            "lang": self.lang,
            "data": self.data,
        });
        if let Some(tag) = &self.profile_tag {
            out["profile_tag"] = Value::from(tag.as_str());
        }
        out
    }
}

/// `user_id 0xFF app_id 0xFF pushkey`.
pub fn pusher_key(user_id: &str, app_id: &str, pushkey: &str) -> Vec<u8> {
    keys::join(&[user_id.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()])
}

/// What `POST /pushers/set` asks.
#[derive(Debug, Clone, PartialEq)]
pub enum PusherChange {
    /// Set (create or replace) a pusher; with `append` false, the same app id and pushkey
    /// of other users are removed.
    Set {
        /// The pusher.
        pusher: Box<Pusher>,
        /// Whether other users' pushers of the same app id and pushkey stay.
        append: bool,
    },
    /// `kind: null`: remove the caller's pusher of this app id and pushkey.
    Delete {
        /// The app.
        app_id: String,
        /// The pushkey.
        pushkey: String,
    },
}

fn text<'a>(body: &'a Map<String, Value>, key: &str) -> ServiceResult<&'a str> {
    match body.get(key) {
        None | Some(Value::Null) => Err(ServiceError::missing_param(format!("{key} is required"))),
        Some(Value::String(s)) if s.len() <= MAX_TEXT_BYTES => Ok(s),
        Some(Value::String(_)) => Err(ServiceError::invalid_param(format!(
            "{key} is longer than {MAX_TEXT_BYTES} bytes"
        ))),
        Some(_) => Err(ServiceError::invalid_param(format!(
            "{key} must be a string"
        ))),
    }
}

/// Reads a `POST /pushers/set` body for `user_id`'s `device_id` at `now` (ms).
pub fn parse_change(
    body: &Value,
    user_id: &str,
    device_id: &str,
    now: u64,
) -> ServiceResult<PusherChange> {
    let body = body
        .as_object()
        .ok_or_else(|| ServiceError::bad_json("The body must be a JSON object"))?;
    let pushkey = text(body, "pushkey")?;
    if pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(ServiceError::invalid_param(format!(
            "pushkey is longer than {MAX_PUSHKEY_BYTES} bytes"
        )));
    }
    let app_id = text(body, "app_id")?;
    if app_id.chars().count() > MAX_APP_ID_CHARS || app_id.is_empty() {
        return Err(ServiceError::invalid_param(format!(
            "app_id must be 1 to {MAX_APP_ID_CHARS} characters"
        )));
    }
    let kind = match body.get("kind") {
        None => return Err(ServiceError::missing_param("kind is required")),
        Some(Value::Null) => {
            return Ok(PusherChange::Delete {
                app_id: app_id.to_owned(),
                pushkey: pushkey.to_owned(),
            })
        }
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(ServiceError::invalid_param("kind must be a string or null")),
    };
    match kind {
        "http" => {}
        "email" => {
            return Err(ServiceError::invalid_param(
                "email pushers are not supported by this server; use an http pusher",
            ))
        }
        other => {
            return Err(ServiceError::invalid_param(format!(
                "unknown pusher kind {other:?} (only http is supported)"
            )))
        }
    }
    let data = match body.get("data") {
        None | Some(Value::Null) => return Err(ServiceError::missing_param("data is required")),
        Some(Value::Object(data)) => data.clone(),
        Some(_) => return Err(ServiceError::invalid_param("data must be an object")),
    };
    let url = match data.get("url") {
        None => {
            return Err(ServiceError::missing_param(
                "data.url is required for http pushers",
            ))
        }
        Some(Value::String(url)) => url.as_str(),
        Some(_) => return Err(ServiceError::invalid_param("data.url must be a string")),
    };
    check_gateway_url(url)?;
    match data.get("format") {
        None => {}
        Some(Value::String(f)) if f == "event_id_only" => {}
        Some(_) => {
            return Err(ServiceError::invalid_param(
                "data.format may only be \"event_id_only\"",
            ))
        }
    }
    let profile_tag = match body.get("profile_tag") {
        None | Some(Value::Null) => None,
        Some(Value::String(tag)) if tag.len() <= MAX_PROFILE_TAG_BYTES => Some(tag.clone()),
        Some(_) => {
            return Err(ServiceError::invalid_param(format!(
                "profile_tag must be a string of at most {MAX_PROFILE_TAG_BYTES} bytes"
            )))
        }
    };
    let append = match body.get("append") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(append)) => *append,
        Some(_) => return Err(ServiceError::invalid_param("append must be a boolean")),
    };
    Ok(PusherChange::Set {
        pusher: Box::new(Pusher {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            pushkey: pushkey.to_owned(),
            kind: kind.to_owned(),
            app_id: app_id.to_owned(),
            app_display_name: text(body, "app_display_name")?.to_owned(),
            device_display_name: text(body, "device_display_name")?.to_owned(),
            profile_tag,
            lang: text(body, "lang")?.to_owned(),
            data,
            pushkey_ts: now,
        }),
        append,
    })
}

/// Spec: `data.url` "MUST be an HTTPS URL with a path of `/_matrix/push/v1/notify`"
/// (Synapse takes plain HTTP too; we follow the spec: notifications carry message content
/// and the pushkey). Where the host leads is judged when a notification is sent (the
/// address guard). Parsed as the delivery parses it, so what is checked is where requests
/// go.
fn check_gateway_url(url: &str) -> ServiceResult<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| ServiceError::invalid_param("data.url is not a URL"))?;
    if parsed.scheme() != "https" {
        return Err(ServiceError::invalid_param(
            "data.url must be an https:// URL",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty)
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return Err(ServiceError::invalid_param(
            "data.url must name a host, without user information",
        ));
    }
    if parsed.path() != NOTIFY_PATH || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ServiceError::invalid_param(format!(
            "data.url must have the path {NOTIFY_PATH} and no query or fragment"
        )));
    }
    Ok(())
}

/// Every pusher, by user: what the send path and the delivery worker read.
#[derive(Debug, Default, Clone)]
pub struct PusherIndex {
    by_user: HashMap<String, Vec<Pusher>>,
}

impl PusherIndex {
    /// The index of `pushers`.
    pub fn new(pushers: impl IntoIterator<Item = Pusher>) -> Self {
        let mut index = Self::default();
        for pusher in pushers {
            index.insert(pusher);
        }
        index
    }

    /// The user's pushers.
    pub fn of(&self, user_id: &str) -> &[Pusher] {
        self.by_user.get(user_id).map_or(&[], Vec::as_slice)
    }

    /// Every pusher.
    pub fn all(&self) -> impl Iterator<Item = &Pusher> {
        self.by_user.values().flatten()
    }

    /// Whether the user has any pusher.
    pub fn has_any(&self, user_id: &str) -> bool {
        self.by_user.contains_key(user_id)
    }

    /// The pusher stored under `key`.
    pub fn find(&self, user_id: &str, key: &[u8]) -> Option<&Pusher> {
        self.of(user_id).iter().find(|p| p.key() == key)
    }

    /// Adds or replaces a pusher.
    pub fn insert(&mut self, pusher: Pusher) {
        let list = self.by_user.entry(pusher.user_id.clone()).or_default();
        list.retain(|p| p.key() != pusher.key());
        list.push(pusher);
    }

    /// Removes the pushers `keep` refuses; answers them.
    pub fn remove_where(&mut self, user_id: &str, drop: impl Fn(&Pusher) -> bool) -> Vec<Pusher> {
        let Some(list) = self.by_user.get_mut(user_id) else {
            return Vec::new();
        };
        let (gone, kept): (Vec<Pusher>, Vec<Pusher>) = list.drain(..).partition(|p| drop(p));
        *list = kept;
        if list.is_empty() {
            self.by_user.remove(user_id);
        }
        gone
    }

    /// Other users' pushers with this app id and pushkey.
    pub fn others_with(&self, user_id: &str, app_id: &str, pushkey: &str) -> Vec<Pusher> {
        self.by_user
            .iter()
            .filter(|(user, _)| user.as_str() != user_id)
            .flat_map(|(_, list)| list.iter())
            .filter(|p| p.app_id == app_id && p.pushkey == pushkey)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> Value {
        json!({
            "pushkey": "token", "kind": "http", "app_id": "org.example.app",
            "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
            "data": {"url": "https://push.example.org/_matrix/push/v1/notify", "format": "event_id_only"},
        })
    }

    #[test]
    fn a_valid_http_pusher_is_read() {
        let PusherChange::Set { pusher, append } = parse_change(&body(), "@a:x", "D", 5).unwrap()
        else {
            panic!("a set");
        };
        assert!(!append);
        assert!(pusher.event_id_only());
        assert_eq!(
            pusher.url(),
            "https://push.example.org/_matrix/push/v1/notify"
        );
        assert_eq!(pusher.to_client()["app_id"], "org.example.app");
        assert!(pusher.to_client().get("device_id").is_none());
    }

    #[test]
    fn deletion_email_and_bad_fields_are_told_apart() {
        let mut delete = body();
        delete["kind"] = Value::Null;
        assert!(matches!(
            parse_change(&delete, "@a:x", "D", 5).unwrap(),
            PusherChange::Delete { .. }
        ));
        let refused = |change: &dyn Fn(&mut Value), code: &str| {
            let mut b = body();
            change(&mut b);
            let e = parse_change(&b, "@a:x", "D", 5).unwrap_err();
            assert_eq!(
                e.errcode.map(|c| c.as_str()),
                Some(code),
                "{b}: {}",
                e.message
            );
        };
        refused(&|b| b["kind"] = json!("email"), "M_INVALID_PARAM");
        refused(&|b| b["kind"] = json!("sms"), "M_INVALID_PARAM");
        refused(
            &|b| drop(b.as_object_mut().unwrap().remove("kind")),
            "M_MISSING_PARAM",
        );
        refused(
            &|b| drop(b["data"].as_object_mut().unwrap().remove("url")),
            "M_MISSING_PARAM",
        );
        refused(
            &|b| b["data"]["url"] = json!("https://push.example.org/other"),
            "M_INVALID_PARAM",
        );
        refused(
            &|b| b["data"]["url"] = json!("ftp://push.example.org/_matrix/push/v1/notify"),
            "M_INVALID_PARAM",
        );
        refused(
            &|b| b["data"]["url"] = json!("https://u@push.example.org/_matrix/push/v1/notify"),
            "M_INVALID_PARAM",
        );
        refused(&|b| b["data"]["format"] = json!("full"), "M_INVALID_PARAM");
        for sneaky in [
            "https://victim.example?/_matrix/push/v1/notify",
            "https://victim.example#/_matrix/push/v1/notify",
            "https://victim.example/_matrix/push/v1/notify?x=1",
            "https://victim.example\\@push.example.org/_matrix/push/v1/notify",
            "https:///_matrix/push/v1/notify",
        ] {
            refused(&|b| b["data"]["url"] = json!(sneaky), "M_INVALID_PARAM");
        }
        refused(
            &|b| b["pushkey"] = json!("k".repeat(513)),
            "M_INVALID_PARAM",
        );
        refused(&|b| b["app_id"] = json!("a".repeat(65)), "M_INVALID_PARAM");
        refused(
            &|b| drop(b.as_object_mut().unwrap().remove("lang")),
            "M_MISSING_PARAM",
        );
        refused(&|b| b["append"] = json!("yes"), "M_INVALID_PARAM");
    }

    #[test]
    fn the_index_finds_replaces_and_removes() {
        let PusherChange::Set { pusher, .. } = parse_change(&body(), "@a:x", "D", 5).unwrap()
        else {
            panic!("a set");
        };
        let pusher = *pusher;
        let mut other = pusher.clone();
        other.user_id = "@b:x".into();
        let mut index = PusherIndex::new([pusher.clone(), other]);
        assert!(index.has_any("@a:x"));
        assert_eq!(
            index.others_with("@a:x", "org.example.app", "token").len(),
            1
        );
        let mut renamed = pusher.clone();
        renamed.device_display_name = "New".into();
        index.insert(renamed);
        assert_eq!(index.of("@a:x").len(), 1);
        assert_eq!(
            index
                .find("@a:x", &pusher.key())
                .unwrap()
                .device_display_name,
            "New"
        );
        assert_eq!(index.remove_where("@a:x", |p| p.device_id == "D").len(), 1);
        assert!(!index.has_any("@a:x"));
    }
}
