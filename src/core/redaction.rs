//! The redaction algorithm per room version.
//!
//! Spec: rooms v1 to v5 (`fragments/v1-redactions.md`), v6 and v7
//! (`fragments/v6-redactions.md`), v8 to v10 (`fragments/v9-redactions.md`) and v11/v12
//! (`fragments/v11-redactions.md`), "Redactions". Used for redacted events served to
//! clients and for reference hashes and signatures, which cover the redacted form.

use serde_json::{Map, Value};

use super::room_version::RoomVersion;

/// Top-level keys every supported version keeps.
const KEPT_KEYS: &[&str] = &[
    "event_id",
    "type",
    "room_id",
    "sender",
    "state_key",
    "content",
    "hashes",
    "signatures",
    "depth",
    "prev_events",
    "auth_events",
    "origin_server_ts",
];

/// Top-level keys only room versions up to 10 keep.
const KEPT_KEYS_V10_ONLY: &[&str] = &["origin", "membership", "prev_state"];

/// Answers the redacted form of `event` under `version`'s rules. A non-object answers as is.
pub fn redact(event: &Value, version: RoomVersion) -> Value {
    let Some(object) = event.as_object() else {
        return event.clone();
    };
    let mut redacted = Map::new();
    for (key, value) in object {
        let kept = KEPT_KEYS.contains(&key.as_str())
            || (version.redaction_keeps_origin_membership_prev_state()
                && KEPT_KEYS_V10_ONLY.contains(&key.as_str()));
        if kept && key != "content" {
            redacted.insert(key.clone(), value.clone());
        }
    }
    let event_type = object.get("type").and_then(Value::as_str).unwrap_or("");
    let content = object.get("content").and_then(Value::as_object);
    let redacted_content = match content {
        Some(content) => redact_content(event_type, content, version),
        None => Map::new(),
    };
    if object.contains_key("content") || !redacted_content.is_empty() {
        redacted.insert("content".to_owned(), Value::Object(redacted_content));
    }
    Value::Object(redacted)
}

/// The content keys a redacted event of `event_type` keeps.
pub fn redact_content(
    event_type: &str,
    content: &Map<String, Value>,
    version: RoomVersion,
) -> Map<String, Value> {
    let keep = |keys: &[&str]| -> Map<String, Value> {
        content
            .iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    match event_type {
        "m.room.member" => {
            let mut kept = if version.redaction_keeps_join_authorised_via() {
                keep(&["membership", "join_authorised_via_users_server"])
            } else {
                keep(&["membership"])
            };
            if version.redaction_keeps_signed_invite_and_redacts() {
                if let Some(signed) = content
                    .get("third_party_invite")
                    .and_then(|invite| invite.get("signed"))
                {
                    let mut invite = Map::new();
                    invite.insert("signed".to_owned(), signed.clone());
                    kept.insert("third_party_invite".to_owned(), Value::Object(invite));
                }
            }
            kept
        }
        "m.room.create" => {
            if version.redaction_keeps_all_create_content() {
                content.clone()
            } else {
                keep(&["creator"])
            }
        }
        "m.room.join_rules" if version.redaction_keeps_join_rules_allow() => {
            keep(&["join_rule", "allow"])
        }
        "m.room.join_rules" => keep(&["join_rule"]),
        "m.room.power_levels" => {
            if version.redaction_keeps_power_levels_invite() {
                keep(&[
                    "ban",
                    "events",
                    "events_default",
                    "invite",
                    "kick",
                    "redact",
                    "state_default",
                    "users",
                    "users_default",
                ])
            } else {
                keep(&[
                    "ban",
                    "events",
                    "events_default",
                    "kick",
                    "redact",
                    "state_default",
                    "users",
                    "users_default",
                ])
            }
        }
        "m.room.history_visibility" => keep(&["history_visibility"]),
        "m.room.aliases" if version.redaction_keeps_aliases() => keep(&["aliases"]),
        "m.room.redaction" if version.redaction_keeps_signed_invite_and_redacts() => {
            keep(&["redacts"])
        }
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member_event() -> Value {
        json!({
            "type": "m.room.member",
            "state_key": "@a:x",
            "sender": "@a:x",
            "room_id": "!r:x",
            "origin": "x",
            "membership": "join",
            "prev_state": [],
            "unsigned": {"age": 1},
            "custom": true,
            "content": {
                "membership": "invite",
                "displayname": "A",
                "third_party_invite": {"display_name": "a", "signed": {"token": "t"}}
            }
        })
    }

    #[test]
    fn v10_keeps_origin_membership_prev_state_but_not_signed_invite() {
        let r = redact(&member_event(), RoomVersion::V10);
        assert_eq!(r["origin"], "x");
        assert_eq!(r["membership"], "join");
        assert!(r.get("prev_state").is_some());
        assert!(r.get("unsigned").is_none());
        assert!(r.get("custom").is_none());
        assert_eq!(r["content"], json!({"membership": "invite"}));
    }

    #[test]
    fn v11_and_v12_drop_origin_and_keep_signed_invite() {
        for version in [RoomVersion::V11, RoomVersion::V12] {
            let r = redact(&member_event(), version);
            assert!(r.get("origin").is_none());
            assert!(r.get("membership").is_none());
            assert!(r.get("prev_state").is_none());
            assert_eq!(
                r["content"],
                json!({"membership": "invite", "third_party_invite": {"signed": {"token": "t"}}})
            );
        }
    }

    #[test]
    fn create_content_per_version() {
        let create = json!({"type": "m.room.create", "content": {"creator": "@a:x", "room_version": "10", "m.federate": false}});
        assert_eq!(
            redact(&create, RoomVersion::V10)["content"],
            json!({"creator": "@a:x"})
        );
        assert_eq!(
            redact(&create, RoomVersion::V11)["content"],
            create["content"]
        );
    }

    #[test]
    fn power_levels_invite_kept_from_v11() {
        let pl = json!({"type": "m.room.power_levels", "content": {"invite": 50, "ban": 50, "notifications": {"room": 50}}});
        assert_eq!(redact(&pl, RoomVersion::V10)["content"], json!({"ban": 50}));
        assert_eq!(
            redact(&pl, RoomVersion::V12)["content"],
            json!({"ban": 50, "invite": 50})
        );
    }

    #[test]
    fn redaction_event_keeps_redacts_from_v11() {
        let ev = json!({"type": "m.room.redaction", "redacts": "$e", "content": {"redacts": "$e", "reason": "spam"}});
        assert_eq!(redact(&ev, RoomVersion::V10)["content"], json!({}));
        assert_eq!(
            redact(&ev, RoomVersion::V11)["content"],
            json!({"redacts": "$e"})
        );
        // The top-level `redacts` is not protected in any supported version.
        assert!(redact(&ev, RoomVersion::V10).get("redacts").is_none());
    }

    #[test]
    fn other_content_is_emptied() {
        let ev =
            json!({"type": "m.room.message", "content": {"body": "hi"}, "hashes": {"sha256": "x"}});
        let r = redact(&ev, RoomVersion::V12);
        assert_eq!(r["content"], json!({}));
        assert_eq!(r["hashes"], json!({"sha256": "x"}));
        let jr = json!({"type": "m.room.join_rules", "content": {"join_rule": "restricted", "allow": [], "x": 1}});
        assert_eq!(
            redact(&jr, RoomVersion::V10)["content"],
            json!({"join_rule": "restricted", "allow": []})
        );
        let hv = json!({"type": "m.room.history_visibility", "content": {"history_visibility": "shared", "x": 1}});
        assert_eq!(
            redact(&hv, RoomVersion::V11)["content"],
            json!({"history_visibility": "shared"})
        );
    }

    #[test]
    fn aliases_kept_up_to_v5_only() {
        let ev = json!({"type": "m.room.aliases", "state_key": "x",
                        "content": {"aliases": ["#a:x"], "other": 1}});
        for version in [RoomVersion::V3, RoomVersion::V4, RoomVersion::V5] {
            assert_eq!(
                redact(&ev, version)["content"],
                json!({"aliases": ["#a:x"]})
            );
        }
        assert_eq!(redact(&ev, RoomVersion::V6)["content"], json!({}));
    }
}
