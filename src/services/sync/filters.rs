//! Sync filters: the `Filter` a client uploads once and names by id, or passes inline.
//!
//! Spec: client-server API, "Filtering"; `POST /user/{userId}/filter`, `GET
//! /user/{userId}/filter/{filterId}`; `GET /sync`'s `filter` parameter ("either a filter id
//! or a JSON-encoded filter object, recognised by its leading `{`").

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::core::canonical_json;
use crate::services::error::{ErrorKind, ServiceError, ServiceResult};
use crate::services::rooms::filter::RoomEventFilter;
use crate::storage::{keys, Db, Table};

/// The largest filter accepted, in bytes of JSON.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;

/// Spec: `EventFilter` (presence and global account data).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventFilter {
    /// The most events to return.
    pub limit: Option<u64>,
    /// Types to include (`*` wildcards).
    pub types: Option<Vec<String>>,
    /// Types to exclude.
    pub not_types: Vec<String>,
    /// Senders to include.
    pub senders: Option<Vec<String>>,
    /// Senders to exclude.
    pub not_senders: Vec<String>,
}

impl EventFilter {
    /// Whether an event of this type from this sender passes.
    pub fn matches(&self, kind: &str, sender: &str) -> bool {
        let as_room_filter = RoomEventFilter {
            types: self.types.clone(),
            not_types: self.not_types.clone(),
            senders: self.senders.clone(),
            not_senders: self.not_senders.clone(),
            ..Default::default()
        };
        as_room_filter.matches_type_and_sender(kind, sender)
    }
}

/// Spec: `RoomFilter`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomFilter {
    /// Rooms to include.
    pub rooms: Option<Vec<String>>,
    /// Rooms to exclude (wins over `rooms`).
    pub not_rooms: Vec<String>,
    /// Include rooms the user left.
    pub include_leave: bool,
    /// Which events of the timeline.
    pub timeline: RoomEventFilter,
    /// Which state events.
    pub state: RoomEventFilter,
    /// Which ephemeral events (receipts, typing).
    pub ephemeral: RoomEventFilter,
    /// Which room account data.
    pub account_data: RoomEventFilter,
}

impl RoomFilter {
    /// Whether a room passes `rooms` and `not_rooms`.
    pub fn matches_room(&self, room_id: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room_id)
            && self
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
    }
}

/// Spec: `event_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// The client-server format.
    #[default]
    Client,
    /// The PDU as federation sees it.
    Federation,
}

/// Spec: `Filter`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Filter {
    /// Dotted paths of the fields to keep in each event.
    pub event_fields: Option<Vec<String>>,
    /// Client or federation format.
    pub event_format: EventFormat,
    /// Presence updates to include.
    pub presence: EventFilter,
    /// Global account data to include.
    pub account_data: EventFilter,
    /// Everything about rooms.
    pub room: RoomFilter,
}

impl Filter {
    /// Parses a filter object; 400 `M_BAD_JSON` when a field has the wrong type and
    /// `M_INVALID_PARAM` when a value is not allowed, the error naming the field.
    pub fn from_json(value: &Value) -> ServiceResult<Self> {
        check_filter(value)?;
        let filter: Filter = serde_json::from_value(value.clone())
            .map_err(|e| ServiceError::bad_json(format!("Invalid filter: {e}")))?;
        if let Some(fields) = &filter.event_fields {
            if fields.iter().any(|f| f.is_empty()) {
                return Err(ServiceError::bad_json("Invalid filter: empty event field"));
            }
        }
        Ok(filter)
    }

    /// Keeps only `event_fields` of an event (all of it when the list is absent).
    pub fn project(&self, event: Value) -> Value {
        let Some(fields) = &self.event_fields else {
            return event;
        };
        let mut out = Map::new();
        for field in fields {
            let path = split_dotted(field);
            copy_path(&event, &mut out, &path);
        }
        Value::Object(out)
    }
}

/// What a filter field holds.
#[derive(Clone, Copy)]
enum FieldKind {
    Bool,
    Limit,
    Strings,
    RoomIds,
    UserIds,
    EventFilter,
    RoomEventFilter,
}

const EVENT_FILTER_FIELDS: &[(&str, FieldKind)] = &[
    ("limit", FieldKind::Limit),
    ("types", FieldKind::Strings),
    ("not_types", FieldKind::Strings),
    ("senders", FieldKind::UserIds),
    ("not_senders", FieldKind::UserIds),
];

const ROOM_EVENT_FILTER_FIELDS: &[(&str, FieldKind)] = &[
    ("limit", FieldKind::Limit),
    ("types", FieldKind::Strings),
    ("not_types", FieldKind::Strings),
    ("senders", FieldKind::UserIds),
    ("not_senders", FieldKind::UserIds),
    ("rooms", FieldKind::RoomIds),
    ("not_rooms", FieldKind::RoomIds),
    ("contains_url", FieldKind::Bool),
    ("lazy_load_members", FieldKind::Bool),
    ("include_redundant_members", FieldKind::Bool),
    ("unread_thread_notifications", FieldKind::Bool),
];

/// Spec: "Filtering": every field of a `Filter`, checked before it is stored or used,
/// so that a client learns which field is wrong (unknown fields are ignored, as the
/// spec's objects allow).
fn check_filter(value: &Value) -> ServiceResult<()> {
    let Some(filter) = value.as_object() else {
        return Err(ServiceError::bad_json("A filter must be a JSON object"));
    };
    for (name, field) in filter {
        match name.as_str() {
            "event_fields" => check_field("event_fields", field, FieldKind::Strings)?,
            "event_format" if !matches!(field.as_str(), Some("client" | "federation")) => {
                return Err(ServiceError::invalid_param(
                    "event_format must be \"client\" or \"federation\"",
                ));
            }
            "presence" | "account_data" => check_field(name, field, FieldKind::EventFilter)?,
            "room" => {
                let room = object("room", field)?;
                for (name, field) in room {
                    let path = format!("room.{name}");
                    match name.as_str() {
                        "rooms" | "not_rooms" => check_field(&path, field, FieldKind::RoomIds)?,
                        "include_leave" => check_field(&path, field, FieldKind::Bool)?,
                        "timeline" | "state" | "ephemeral" | "account_data" => {
                            check_field(&path, field, FieldKind::RoomEventFilter)?;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn object<'v>(path: &str, value: &'v Value) -> ServiceResult<&'v Map<String, Value>> {
    value
        .as_object()
        .ok_or_else(|| ServiceError::bad_json(format!("Filter field {path} must be an object")))
}

fn check_field(path: &str, value: &Value, kind: FieldKind) -> ServiceResult<()> {
    let wrong_type =
        |what: &str| ServiceError::bad_json(format!("Filter field {path} must be {what}"));
    match kind {
        FieldKind::Bool => value
            .as_bool()
            .map(|_| ())
            .ok_or_else(|| wrong_type("true or false")),
        // Spec (`EventFilter.limit`): "must be an integer greater than 0".
        FieldKind::Limit => match value.as_u64() {
            Some(1..) => Ok(()),
            _ if value.is_number() => Err(ServiceError::invalid_param(format!(
                "Filter field {path} must be a whole number, 1 or more"
            ))),
            _ => Err(wrong_type("a number")),
        },
        FieldKind::Strings | FieldKind::RoomIds | FieldKind::UserIds => {
            let items = value
                .as_array()
                .ok_or_else(|| wrong_type("a list of strings"))?;
            for item in items {
                let text = item
                    .as_str()
                    .ok_or_else(|| wrong_type("a list of strings"))?;
                let valid = match kind {
                    FieldKind::RoomIds => crate::core::RoomId::parse(text).is_ok(),
                    FieldKind::UserIds => crate::core::UserId::parse(text).is_ok(),
                    _ => true,
                };
                if !valid {
                    let what = if matches!(kind, FieldKind::RoomIds) {
                        "room"
                    } else {
                        "user"
                    };
                    return Err(ServiceError::invalid_param(format!(
                        "Filter field {path} holds {text:?}, which is not a {what} id"
                    )));
                }
            }
            Ok(())
        }
        FieldKind::EventFilter | FieldKind::RoomEventFilter => {
            let fields = if matches!(kind, FieldKind::EventFilter) {
                EVENT_FILTER_FIELDS
            } else {
                ROOM_EVENT_FILTER_FIELDS
            };
            for (name, field) in object(path, value)? {
                if let Some((_, kind)) = fields.iter().find(|(n, _)| n == name) {
                    check_field(&format!("{path}.{name}"), field, *kind)?;
                }
            }
            Ok(())
        }
    }
}

/// Spec: appendices, "Dot-separated property paths" (`\.` is a literal dot, `\\` a
/// backslash; "other escape sequences are left as-is, e.g. a `\x` would be treated as a
/// literal backslash followed by 'x'").
fn split_dotted(path: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        let part = parts.last_mut().expect("never empty");
        match c {
            '\\' => match chars.peek() {
                Some(&next @ ('.' | '\\')) => {
                    part.push(next);
                    chars.next();
                }
                _ => part.push('\\'),
            },
            '.' => parts.push(String::new()),
            c => part.push(c),
        }
    }
    parts
}

fn copy_path(from: &Value, into: &mut Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(value) = from.get(first) else {
        return;
    };
    if rest.is_empty() {
        into.insert(first.clone(), value.clone());
        return;
    }
    if !value.is_object() {
        return;
    }
    let child = into
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(child) = child.as_object_mut() {
        copy_path(value, child, rest);
    }
}

/// Stored filters: `userid_filterid_filter`.
pub struct Filters<'a> {
    db: &'a Arc<Db>,
}

impl<'a> Filters<'a> {
    /// Filters in `db`.
    pub fn new(db: &'a Arc<Db>) -> Self {
        Self { db }
    }

    /// Stores a filter and answers its id: the hash of its canonical JSON, so the same
    /// filter uploaded twice gets the same id and concurrent uploads cannot collide.
    pub async fn create(&self, user_id: &str, filter: &Value) -> ServiceResult<String> {
        Filter::from_json(filter)?;
        let canonical = canonical_json::to_canonical_string(filter)
            .map_err(|e| ServiceError::bad_json(format!("Invalid filter: {e}")))?;
        if canonical.len() > MAX_FILTER_BYTES {
            return Err(ServiceError::new(
                ErrorKind::TooLarge,
                crate::services::error::ErrorCode::TooLarge,
                "Filter too large",
            ));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        let id = crate::core::hex::encode(&digest.as_ref()[..8]);
        let mut batch = self.db.batch();
        batch.put(
            Table::UseridFilteridFilter,
            keys::join(&[user_id.as_bytes(), id.as_bytes()]),
            canonical.as_bytes(),
        );
        self.db.commit(batch).await?;
        Ok(id)
    }

    /// A stored filter as uploaded; 404 `M_NOT_FOUND` when unknown.
    pub fn get(&self, user_id: &str, filter_id: &str) -> ServiceResult<Value> {
        let bytes = self
            .db
            .get(
                Table::UseridFilteridFilter,
                keys::join(&[user_id.as_bytes(), filter_id.as_bytes()]),
            )?
            .ok_or_else(|| ServiceError::not_found("No such filter"))?;
        serde_json::from_slice(&bytes).map_err(|_| ServiceError::internal("corrupt filter record"))
    }

    /// The `filter` parameter of `/sync`: inline JSON or a stored filter's id.
    pub fn resolve(&self, user_id: &str, param: Option<&str>) -> ServiceResult<Filter> {
        match param {
            None | Some("") => Ok(Filter::default()),
            Some(text) if text.trim_start().starts_with('{') => {
                if text.len() > MAX_FILTER_BYTES {
                    return Err(ServiceError::invalid_param("Filter too large"));
                }
                let value: Value = serde_json::from_str(text)
                    .map_err(|e| ServiceError::invalid_param(format!("Invalid filter: {e}")))?;
                Filter::from_json(&value)
                    .map_err(|e| ServiceError::invalid_param(e.message.clone()))
            }
            Some(id) => {
                let value = self.get(user_id, id).map_err(|e| {
                    if e.kind == ErrorKind::NotFound {
                        ServiceError::invalid_param("Unknown filter id")
                    } else {
                        e
                    }
                })?;
                Filter::from_json(&value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_fields_keep_only_the_named_paths() {
        let filter = Filter::from_json(&json!({
            "event_fields": ["type", "content.body", "content.m\\.relates_to", "nope.x"]
        }))
        .unwrap();
        let event = json!({
            "type": "m.room.message",
            "sender": "@a:x",
            "content": {"body": "hi", "msgtype": "m.text", "m.relates_to": {"a": 1}}
        });
        assert_eq!(
            filter.project(event),
            json!({"type": "m.room.message", "content": {"body": "hi", "m.relates_to": {"a": 1}}})
        );
    }

    #[test]
    fn dotted_paths_unescape_only_dots_and_backslashes() {
        assert_eq!(
            split_dotted(r"content.m\.relates_to"),
            ["content", "m.relates_to"]
        );
        assert_eq!(split_dotted(r"content.m\\foo"), ["content", r"m\foo"]);
        // Spec: "a `\x` would be treated as a literal backslash followed by 'x'".
        assert_eq!(split_dotted(r"content.a\x.b"), ["content", r"a\x", "b"]);
        assert_eq!(split_dotted(r"content.a\"), ["content", r"a\"]);
        assert_eq!(split_dotted(r"a\\.b"), [r"a\", "b"]);
    }

    #[test]
    fn bad_filters_are_refused() {
        assert!(Filter::from_json(&json!({"room": {"timeline": {"limit": "x"}}})).is_err());
        assert!(Filter::from_json(&json!({"event_format": "other"})).is_err());
        assert!(Filter::from_json(&json!({"room": {"include_leave": true}})).is_ok());
    }
}
