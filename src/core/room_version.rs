//! Room versions and the per-version answers the rest of the code asks for.
//!
//! Spec: "Room Versions" (`rooms/v10.md`, `v11.md`, `v12.md`). Every version-dependent rule
//! is a method here, so no other module compares version strings.

/// A room version this server can take part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoomVersion {
    /// Room version 10.
    V10,
    /// Room version 11: redaction clarified, `creator` dropped, `redacts` moved to content.
    V11,
    /// Room version 12: room id derived from the create event, creators have infinite power.
    V12,
}

impl RoomVersion {
    /// Every version we support, oldest first.
    pub const ALL: [RoomVersion; 3] = [RoomVersion::V10, RoomVersion::V11, RoomVersion::V12];

    /// The version a new room gets unless configured otherwise.
    pub const DEFAULT: RoomVersion = RoomVersion::V12;

    /// Parses a version identifier (`"10"`, `"11"`, `"12"`).
    pub fn from_id(id: &str) -> Option<Self> {
        match id {
            "10" => Some(Self::V10),
            "11" => Some(Self::V11),
            "12" => Some(Self::V12),
            _ => None,
        }
    }

    /// The version identifier as the spec writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V10 => "10",
            Self::V11 => "11",
            Self::V12 => "12",
        }
    }

    /// All supported versions are stable ones.
    pub fn is_stable(self) -> bool {
        true
    }

    /// Spec v11+ redaction: `origin`, `membership` and `prev_state` are no longer protected.
    pub fn redaction_keeps_origin_membership_prev_state(self) -> bool {
        self == Self::V10
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
        self == Self::V10
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
        assert_eq!(RoomVersion::from_id("9"), None);
        assert_eq!(RoomVersion::from_id("org.matrix.msc0000"), None);
        assert_eq!(RoomVersion::DEFAULT.as_str(), "12");
    }
}
