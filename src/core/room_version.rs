//! Room versions and the per-version answers the rest of the code asks for.
//!
//! Spec: "Room Versions" (`rooms/v1.md` to `v12.md`). Every version-dependent rule is a
//! method here, so no other module compares version strings. Versions 1 and 2 share the
//! original event format: the sending server chooses the event id (`$opaque:server`, a
//! field of the PDU), `prev_events` and `auth_events` are `[id, {"sha256": hash}]` pairs,
//! the server named in the event id signs too, and a redaction is authorised by its own
//! event id's server (auth rule 11); they differ in state resolution (v1: the original
//! algorithm; v2: the one every later version builds on). Versions 3 to 11 share one
//! event format (event ids are reference hashes, `prev_events` and `auth_events` plain
//! lists of ids) and state resolution v2, and differ in: the base64 alphabet of event ids
//! (standard in 3, URL-safe from 4), signing-key validity (enforced from 5), the special
//! auth rule and redaction of `m.room.aliases` and the `notifications` power level (6
//! drops the first two and enforces the third), knocking (7), restricted joins (8, and
//! their redaction fix in 9), power levels given as strings (before 10).

/// A room version this server can take part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoomVersion {
    /// Room version 1: event ids chosen by the sender, state resolution v1.
    V1,
    /// Room version 2: as 1, with state resolution v2.
    V2,
    /// Room version 3: event ids are the reference hash in standard unpadded base64.
    V3,
    /// Room version 4: event ids in URL-safe unpadded base64.
    V4,
    /// Room version 5: signing keys are only valid until their `valid_until_ts`.
    V5,
    /// Room version 6: strict canonical JSON, `notifications` power levels enforced.
    V6,
    /// Room version 7: knocking.
    V7,
    /// Room version 8: restricted joins.
    V8,
    /// Room version 9: restricted joins keep their authorising user through redaction.
    V9,
    /// Room version 10: `knock_restricted`, power levels only as integers.
    V10,
    /// Room version 11: redaction clarified, `creator` dropped, `redacts` moved to content.
    V11,
    /// Room version 12: room id derived from the create event, creators have infinite power.
    V12,
}

impl RoomVersion {
    /// Every version we support, oldest first.
    pub const ALL: [RoomVersion; 12] = [
        RoomVersion::V1,
        RoomVersion::V2,
        RoomVersion::V3,
        RoomVersion::V4,
        RoomVersion::V5,
        RoomVersion::V6,
        RoomVersion::V7,
        RoomVersion::V8,
        RoomVersion::V9,
        RoomVersion::V10,
        RoomVersion::V11,
        RoomVersion::V12,
    ];

    /// The version a new room gets unless configured otherwise.
    pub const DEFAULT: RoomVersion = RoomVersion::V12;

    /// Parses a version identifier (`"1"` to `"12"`).
    pub fn from_id(id: &str) -> Option<Self> {
        match id {
            "1" => Some(Self::V1),
            "2" => Some(Self::V2),
            "3" => Some(Self::V3),
            "4" => Some(Self::V4),
            "5" => Some(Self::V5),
            "6" => Some(Self::V6),
            "7" => Some(Self::V7),
            "8" => Some(Self::V8),
            "9" => Some(Self::V9),
            "10" => Some(Self::V10),
            "11" => Some(Self::V11),
            "12" => Some(Self::V12),
            _ => None,
        }
    }

    /// The version identifier as the spec writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "1",
            Self::V2 => "2",
            Self::V3 => "3",
            Self::V4 => "4",
            Self::V5 => "5",
            Self::V6 => "6",
            Self::V7 => "7",
            Self::V8 => "8",
            Self::V9 => "9",
            Self::V10 => "10",
            Self::V11 => "11",
            Self::V12 => "12",
        }
    }

    /// All supported versions are stable ones.
    pub fn is_stable(self) -> bool {
        true
    }

    /// Spec v3: the event id is the event's reference hash; in versions 1 and 2 it is
    /// the PDU's `event_id` field, chosen by the sending server.
    pub fn event_ids_are_reference_hashes(self) -> bool {
        self >= Self::V3
    }

    /// Spec v1 and v2: `prev_events` and `auth_events` list `[event id, hashes]` pairs
    /// (from v3, plain event ids).
    pub fn event_references_carry_hashes(self) -> bool {
        self <= Self::V2
    }

    /// Spec v1 and v2 ("Validating hashes and signatures on received events"): the
    /// server named in the event id must sign the event as well as the sender's.
    pub fn event_id_server_signs(self) -> bool {
        self <= Self::V2
    }

    /// Spec v1 and v2 auth rule 11: a redaction is allowed by the redact level or when
    /// the redacted event's id and its own name the same server (from v3, redactions
    /// pass the auth rules and are checked when applied).
    pub fn redaction_authorised_by_event_id_server(self) -> bool {
        self <= Self::V2
    }

    /// Spec v1: state resolution v1 (versions 2 to 11 use v2, version 12 v2.1).
    pub fn state_res_v1(self) -> bool {
        self == Self::V1
    }

    /// Spec v4: event ids are URL-safe base64 (`-` and `_`); v3 uses the standard
    /// alphabet (`+` and `/`).
    pub fn event_ids_are_url_safe(self) -> bool {
        self >= Self::V4
    }

    /// Spec v5 ("Signing key validity period"): a signature counts only if the key's
    /// `valid_until_ts` is at least the event's `origin_server_ts`.
    pub fn enforces_key_validity(self) -> bool {
        self >= Self::V5
    }

    /// Spec v3 to v5 auth rule 4: an `m.room.aliases` event needs a `state_key` naming
    /// the sender's server (v6 removes the rule).
    pub fn has_aliases_auth_rule(self) -> bool {
        self <= Self::V5
    }

    /// Spec v1 to v5 redaction: `m.room.aliases` keeps `aliases` (v6 drops it).
    pub fn redaction_keeps_aliases(self) -> bool {
        self <= Self::V5
    }

    /// Spec v6 ("Canonical JSON"): events must be strict canonical JSON (integers within
    /// ±(2^53 - 1), no floats); before, servers must not enforce it.
    pub fn strict_canonical_json(self) -> bool {
        self >= Self::V6
    }

    /// Spec v1 to v5 ("`m.room.power_levels` events accept values as floats"): a float
    /// level counts as its integer part.
    pub fn power_levels_may_be_floats(self) -> bool {
        self <= Self::V5
    }

    /// Spec v6: the auth rules for power levels also guard the `notifications` levels.
    pub fn power_levels_guard_notifications(self) -> bool {
        self >= Self::V6
    }

    /// Spec v11+ redaction: `origin`, `membership` and `prev_state` are no longer protected.
    pub fn redaction_keeps_origin_membership_prev_state(self) -> bool {
        self <= Self::V10
    }

    /// Spec v8+ redaction: `m.room.join_rules` keeps `allow`.
    pub fn redaction_keeps_join_rules_allow(self) -> bool {
        self >= Self::V8
    }

    /// Spec v9+ redaction: `m.room.member` keeps `join_authorised_via_users_server`.
    pub fn redaction_keeps_join_authorised_via(self) -> bool {
        self >= Self::V9
    }

    /// Spec v7: the `knock` membership and join rule exist.
    pub fn has_knocking(self) -> bool {
        self >= Self::V7
    }

    /// Spec v8: the `restricted` join rule exists.
    pub fn has_restricted_joins(self) -> bool {
        self >= Self::V8
    }

    /// Spec v10: the `knock_restricted` join rule exists.
    pub fn has_knock_restricted(self) -> bool {
        self >= Self::V10
    }

    /// Spec v10: power levels are integers only (before, strings of integers count too).
    pub fn power_levels_are_integers_only(self) -> bool {
        self >= Self::V10
    }

    /// Spec v11+ redaction: the create event keeps its whole content (v10 keeps `creator`).
    pub fn redaction_keeps_all_create_content(self) -> bool {
        self >= Self::V11
    }

    /// Spec v11+ redaction: power levels keep `invite`.
    pub fn redaction_keeps_power_levels_invite(self) -> bool {
        self >= Self::V11
    }

    /// Spec v11+ redaction: a member event keeps `third_party_invite.signed`;
    /// a redaction keeps `content.redacts`.
    pub fn redaction_keeps_signed_invite_and_redacts(self) -> bool {
        self >= Self::V11
    }

    /// Spec v11: `m.room.redaction` carries `redacts` in `content`, not at the top level.
    pub fn redacts_in_content(self) -> bool {
        self >= Self::V11
    }

    /// Spec v11: the create event no longer has a `creator`; the sender is the creator.
    pub fn create_event_has_creator_key(self) -> bool {
        self <= Self::V10
    }

    /// Spec v12: the create event has no `room_id`; the room id is its reference hash with `!`.
    pub fn room_id_is_create_event_hash(self) -> bool {
        self >= Self::V12
    }

    /// Spec v12: the creators (sender and `additional_creators`) have infinite power and
    /// are not listed in `m.room.power_levels`.
    pub fn creators_have_infinite_power(self) -> bool {
        self >= Self::V12
    }
}

impl RoomVersion {
    /// Whether state resolution is version 2.1 (`rooms/v12.md`): step 2 starts from an
    /// empty state map and the full conflicted set holds the conflicted state subgraph.
    pub fn state_res_starts_empty(self) -> bool {
        self >= RoomVersion::V12
    }
}

impl std::fmt::Display for RoomVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for v in RoomVersion::ALL {
            assert_eq!(RoomVersion::from_id(v.as_str()), Some(v));
        }
        assert_eq!(RoomVersion::from_id("0"), None);
        assert_eq!(RoomVersion::from_id("13"), None);
        assert_eq!(RoomVersion::from_id("org.matrix.msc0000"), None);
        assert_eq!(RoomVersion::DEFAULT.as_str(), "12");
    }
}
