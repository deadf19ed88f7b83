//! Power levels as the auth rules read them, with the spec's defaults.
//!
//! Spec: `m.room.power_levels` (client-server API, event schema) and the room versions'
//! authorisation rules. Without a power levels event the creator has 100 and everyone else
//! 0 (rooms v10, v11); from v12 the creators (the create event's sender and
//! `additional_creators`) have infinite power, with or without a power levels event.

use std::collections::HashMap;

use serde_json::Value;

use super::room_version::RoomVersion;

/// A user's power: an integer, or infinite for v12 creators. `i128` holds both, with
/// `i128::MAX` as infinity, so comparisons need no special case.
pub type Power = i128;

/// Infinite power (v12 room creators).
pub const INFINITE: Power = i128::MAX;

/// The levels of one `m.room.power_levels` content, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerLevels {
    users: HashMap<String, i64>,
    users_default: i64,
    events: HashMap<String, i64>,
    events_default: i64,
    state_default: i64,
    /// Level needed to ban.
    pub ban: i64,
    /// Level needed to kick.
    pub kick: i64,
    /// Level needed to invite.
    pub invite: i64,
    /// Level needed to redact others' events (not used by the auth rules).
    pub redact: i64,
    /// Users with infinite power (v12 creators), or the one user with 100 when there is no
    /// power levels event (v10/v11 creator).
    creators: Vec<String>,
    creators_infinite: bool,
    exists: bool,
}

fn int(content: &Value, key: &str) -> Option<i64> {
    content.get(key).and_then(Value::as_i64)
}

fn int_map(content: &Value, key: &str) -> HashMap<String, i64> {
    content
        .get(key)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_i64().map(|v| (k.clone(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The room's creators: v10 the create content's `creator`; v11 the create event's sender;
/// v12 the sender plus `additional_creators`.
pub fn creators(version: RoomVersion, create_event: Option<&Value>) -> Vec<String> {
    let Some(create) = create_event else {
        return Vec::new();
    };
    let mut creators = Vec::new();
    let sender = create.get("sender").and_then(Value::as_str);
    if version.create_event_has_creator_key() {
        if let Some(c) = create
            .get("content")
            .and_then(|c| c.get("creator"))
            .and_then(Value::as_str)
        {
            creators.push(c.to_owned());
        }
    } else if let Some(sender) = sender {
        creators.push(sender.to_owned());
    }
    if version.creators_have_infinite_power() {
        if let Some(extra) = create
            .get("content")
            .and_then(|c| c.get("additional_creators"))
            .and_then(Value::as_array)
        {
            creators.extend(extra.iter().filter_map(Value::as_str).map(str::to_owned));
        }
    }
    creators
}

impl PowerLevels {
    /// The levels in force given the room's create event and power levels event (if any).
    pub fn new(
        version: RoomVersion,
        create_event: Option<&Value>,
        power_levels: Option<&Value>,
    ) -> Self {
        let creators = creators(version, create_event);
        let creators_infinite = version.creators_have_infinite_power();
        let Some(content) = power_levels.and_then(|e| e.get("content")) else {
            return Self {
                users: HashMap::new(),
                users_default: 0,
                events: HashMap::new(),
                events_default: 0,
                state_default: 50,
                ban: 50,
                kick: 50,
                invite: 0,
                redact: 50,
                creators,
                creators_infinite,
                exists: false,
            };
        };
        Self {
            users: int_map(content, "users"),
            users_default: int(content, "users_default").unwrap_or(0),
            events: int_map(content, "events"),
            events_default: int(content, "events_default").unwrap_or(0),
            state_default: int(content, "state_default").unwrap_or(50),
            ban: int(content, "ban").unwrap_or(50),
            kick: int(content, "kick").unwrap_or(50),
            invite: int(content, "invite").unwrap_or(0),
            redact: int(content, "redact").unwrap_or(50),
            creators,
            creators_infinite,
            exists: true,
        }
    }

    /// A user's power.
    pub fn user(&self, user_id: &str) -> Power {
        if self.creators_infinite && self.creators.iter().any(|c| c == user_id) {
            return INFINITE;
        }
        if !self.exists {
            // Spec: without a power levels event the creator has 100, others 0.
            return if self.creators.iter().any(|c| c == user_id) {
                100
            } else {
                0
            };
        }
        Power::from(*self.users.get(user_id).unwrap_or(&self.users_default))
    }

    /// The level needed to send an event of `event_type` (state or not).
    pub fn event(&self, event_type: &str, is_state: bool) -> Power {
        let level = self.events.get(event_type).copied().unwrap_or(if is_state {
            self.state_default
        } else {
            self.events_default
        });
        Power::from(level)
    }
}
