//! Guests in rooms: who may join, and who must leave when guest access ends.
//!
//! Spec: client-server API, "Guest Access", "Server behaviour": "Servers MUST only allow
//! guest users to join rooms if the `m.room.guest_access` state event is present on the
//! room, and has the `guest_access` value `can_join`. If the `m.room.guest_access` event is
//! changed to stop this from being the case, the server MUST set those users'
//! `m.room.member` state to `leave`."
//!
//! As Synapse does, a guest's join carries `"kind": "guest"` in its content, so the room
//! writer can apply both rules against the state it holds (no race with a change of guest
//! access), and a guest whose access ends leaves by its own `leave` event (no power level
//! needed, and the decision stays with the guest's server).

use serde_json::Value;

/// The content field that marks a guest's membership.
pub const KIND_FIELD: &str = "kind";
/// Its value for guests.
pub const GUEST: &str = "guest";

/// Whether a member event's content is a guest's.
pub fn is_guest_membership(content: &Value) -> bool {
    content.get(KIND_FIELD).and_then(Value::as_str) == Some(GUEST)
}

/// Whether `m.room.guest_access` (its content, if the room has one) lets guests join.
pub fn guests_can_join(guest_access: Option<&Value>) -> bool {
    guest_access
        .and_then(|c| c.get("guest_access"))
        .and_then(Value::as_str)
        == Some("can_join")
}

/// Whether a member event joins a guest to the room (its own join: `state_key` is the
/// sender).
pub fn is_guest_join(sender: &str, state_key: Option<&str>, content: &Value) -> bool {
    state_key == Some(sender)
        && content.get("membership").and_then(Value::as_str) == Some("join")
        && is_guest_membership(content)
}

/// Whether a member of the room is a guest who must leave once guest access ends: a
/// guest that is joined or invited.
pub fn must_leave_without_access(content: &Value) -> bool {
    matches!(
        content.get("membership").and_then(Value::as_str),
        Some("join" | "invite")
    ) && is_guest_membership(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_can_join_lets_guests_in() {
        assert!(guests_can_join(Some(&json!({"guest_access": "can_join"}))));
        assert!(!guests_can_join(Some(
            &json!({"guest_access": "forbidden"})
        )));
        assert!(!guests_can_join(Some(&json!({"guest_access": 1}))));
        assert!(!guests_can_join(Some(&json!({}))));
        assert!(!guests_can_join(None), "no event: no guests");
    }

    #[test]
    fn a_guest_join_is_its_own_join_marked_guest() {
        let join = json!({"membership": "join", "kind": "guest"});
        assert!(is_guest_join("@g:x", Some("@g:x"), &join));
        assert!(!is_guest_join("@a:x", Some("@g:x"), &join), "not its own");
        assert!(!is_guest_join(
            "@g:x",
            Some("@g:x"),
            &json!({"membership": "join"})
        ));
        assert!(!is_guest_join(
            "@g:x",
            Some("@g:x"),
            &json!({"membership": "leave", "kind": "guest"})
        ));
    }

    #[test]
    fn joined_and_invited_guests_leave() {
        for membership in ["join", "invite"] {
            assert!(must_leave_without_access(
                &json!({"membership": membership, "kind": "guest"})
            ));
        }
        assert!(!must_leave_without_access(
            &json!({"membership": "leave", "kind": "guest"})
        ));
        assert!(!must_leave_without_access(&json!({"membership": "join"})));
    }
}
