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

/// A power level value: an integer, or before room v10 also a string of one (spec:
/// "`m.room.power_levels` events accept values as strings").
pub fn level_value(version: RoomVersion, value: &Value) -> Option<i64> {
    if version.power_levels_are_integers_only() {
        value.as_i64()
    } else if let (true, Some(float)) = (
        version.power_levels_may_be_floats() && !value.is_i64(),
        value.as_f64().filter(|_| value.is_f64()),
    ) {
        // Truncated at the point (`50.57` is 50); JSON has no NaN or infinities.
        Some(float.trunc() as i64)
    } else {
        integer_or_integer_string(value)
    }
}

/// An integer, or a string of one as rooms before v10 allow: base 10, an optional sign,
/// leading zeroes and surrounding whitespace allowed. Where the room version is not at
/// hand this is safe to use on stored power levels: the auth rules of v10+ rooms never
/// let a string in.
pub fn integer_or_integer_string(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let text = value.as_str()?.trim();
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.strip_prefix('+').unwrap_or(text).parse().ok()
}

/// Rewrites the levels of a power levels content as integers (strings of integers become
/// integers, values that are neither are dropped): what a room upgraded from a version
/// before 10 must carry over, since later versions reject strings. Floats (only rooms before
/// v6 let them in) become their integer part, as those rooms count them.
pub fn integers_only(content: &mut serde_json::Map<String, Value>) {
    let fix = |value: &mut Value| match level_value(RoomVersion::V5, value) {
        Some(n) => {
            *value = Value::from(n);
            true
        }
        None => false,
    };
    for key in LEVEL_KEYS_AND_MAPS {
        let keep = match content.get_mut(*key) {
            None => true,
            Some(Value::Object(map)) if MAP_KEYS.contains(key) => {
                map.retain(|_, v| fix(v));
                true
            }
            Some(_) if MAP_KEYS.contains(key) => false,
            Some(value) => fix(value),
        };
        if !keep {
            content.remove(*key);
        }
    }
}

const MAP_KEYS: &[&str] = &["users", "events", "notifications"];
const LEVEL_KEYS_AND_MAPS: &[&str] = &[
    "users",
    "events",
    "notifications",
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "kick",
    "invite",
    "redact",
];

fn int(version: RoomVersion, content: &Value, key: &str) -> Option<i64> {
    content.get(key).and_then(|v| level_value(version, v))
}

fn int_map(version: RoomVersion, content: &Value, key: &str) -> HashMap<String, i64> {
    content
        .get(key)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| level_value(version, v).map(|v| (k.clone(), v)))
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
            users: int_map(version, content, "users"),
            users_default: int(version, content, "users_default").unwrap_or(0),
            events: int_map(version, content, "events"),
            events_default: int(version, content, "events_default").unwrap_or(0),
            state_default: int(version, content, "state_default").unwrap_or(50),
            ban: int(version, content, "ban").unwrap_or(50),
            kick: int(version, content, "kick").unwrap_or(50),
            invite: int(version, content, "invite").unwrap_or(0),
            redact: int(version, content, "redact").unwrap_or(50),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Spec: rooms v1 to v5, "`m.room.power_levels` events accept values as floats": the
    /// value is truncated at the decimal point.
    #[test]
    fn floats_count_truncated_before_v6_only() {
        for (float, n) in [
            (50.57, 50),
            (5.114698E4, 51146),
            (-0.5, 0),
            (-50.9, -50),
            (100.0, 100),
        ] {
            assert_eq!(
                level_value(RoomVersion::V5, &json!(float)),
                Some(n),
                "{float}"
            );
            assert_eq!(
                level_value(RoomVersion::V3, &json!(float)),
                Some(n),
                "{float}"
            );
        }
        assert_eq!(level_value(RoomVersion::V6, &json!(50.57)), None);
        assert_eq!(level_value(RoomVersion::V5, &json!(50)), Some(50));
        assert_eq!(level_value(RoomVersion::V5, &json!("50")), Some(50));
    }

    #[test]
    fn strings_of_integers_count_before_v10_only() {
        for (text, n) in [("100", 100), ("000100", 100), ("+100", 100), ("-100", -100)] {
            assert_eq!(
                level_value(RoomVersion::V9, &json!(text)),
                Some(n),
                "{text}"
            );
            assert_eq!(level_value(RoomVersion::V10, &json!(text)), None, "{text}");
        }
        assert_eq!(level_value(RoomVersion::V6, &json!(" 00100 ")), Some(100));
        assert_eq!(level_value(RoomVersion::V6, &json!(" -100 ")), Some(-100));
        for bad in [
            json!("1.5"),
            json!("1e3"),
            json!(""),
            json!("+-1"),
            json!("abc"),
            json!(1.5),
        ] {
            assert_eq!(level_value(RoomVersion::V9, &bad), None, "{bad}");
        }
        assert_eq!(level_value(RoomVersion::V12, &json!(7)), Some(7));
    }

    #[test]
    fn stringy_levels_are_read_in_v9_rooms() {
        let event =
            json!({"content": {"ban": "75", "users": {"@a:x": " 100 "}, "users_default": "5"}});
        let create =
            json!({"type": "m.room.create", "sender": "@a:x", "content": {"creator": "@a:x"}});
        let levels = PowerLevels::new(RoomVersion::V9, Some(&create), Some(&event));
        assert_eq!(levels.ban, 75);
        assert_eq!(levels.users_default, 5);
        assert_eq!(levels.user("@a:x"), Power::from(100));
    }

    #[test]
    fn upgrading_turns_strings_into_integers() {
        let mut content = json!({
            "ban": "75", "kick": "nope", "users": {"@a:x": "100", "@b:x": "x", "@c:x": 50.57},
            "events": "not a map", "redact": 10
        });
        integers_only(content.as_object_mut().unwrap());
        assert_eq!(
            content,
            json!({"ban": 75, "users": {"@a:x": 100, "@c:x": 50}, "redact": 10})
        );
    }
}
