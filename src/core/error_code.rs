//! The spec's error codes (`errcode`), the vocabulary every layer shares.
//!
//! Spec: client-server API, "Standard error response" and "Common error codes"; the
//! server-server API and the key backup, join and media modules add their own.

/// The spec's error codes that ourwhats answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `M_FORBIDDEN`
    Forbidden,
    /// `M_UNKNOWN_TOKEN`
    UnknownToken,
    /// `M_MISSING_TOKEN`
    MissingToken,
    /// `M_USER_LOCKED`
    UserLocked,
    /// `M_USER_DEACTIVATED`
    UserDeactivated,
    /// `M_BAD_JSON`
    BadJson,
    /// `M_NOT_JSON`
    NotJson,
    /// `M_NOT_FOUND`
    NotFound,
    /// `M_LIMIT_EXCEEDED`
    LimitExceeded,
    /// `M_UNRECOGNIZED`
    Unrecognized,
    /// `M_UNKNOWN`
    Unknown,
    /// `M_UNAUTHORIZED`
    Unauthorized,
    /// `M_USER_IN_USE`
    UserInUse,
    /// `M_INVALID_USERNAME`
    InvalidUsername,
    /// `M_EXCLUSIVE`
    Exclusive,
    /// `M_GUEST_ACCESS_FORBIDDEN`
    GuestAccessForbidden,
    /// `M_INVALID_PARAM`
    InvalidParam,
    /// `M_MISSING_PARAM`
    MissingParam,
    /// `M_TOO_LARGE`
    TooLarge,
    /// `M_WEAK_PASSWORD`
    WeakPassword,
    /// `M_UNSUPPORTED_ROOM_VERSION`
    UnsupportedRoomVersion,
    /// `M_CANNOT_OVERWRITE_MEDIA`
    CannotOverwriteMedia,
    /// `M_NOT_YET_UPLOADED`
    NotYetUploaded,
    /// `M_ROOM_IN_USE`
    RoomInUse,
    /// `M_INVALID_ROOM_STATE`
    InvalidRoomState,
    /// `M_BAD_ALIAS`
    BadAlias,
    /// `M_BAD_STATE`
    BadState,
    /// `M_PROFILE_TOO_LARGE`
    ProfileTooLarge,
    /// `M_KEY_TOO_LARGE`
    KeyTooLarge,
    /// `M_INVALID_SIGNATURE`
    InvalidSignature,
    /// `M_WRONG_ROOM_KEYS_VERSION` (key backup; carries `current_version`)
    WrongRoomKeysVersion,
    /// `M_INCOMPATIBLE_ROOM_VERSION` (federation joins; carries `room_version`)
    IncompatibleRoomVersion,
    /// `M_UNABLE_TO_AUTHORISE_JOIN` (a restricted join no condition of which we know)
    UnableToAuthoriseJoin,
    /// `M_UNABLE_TO_GRANT_JOIN` (a restricted join whose user meets a condition, with
    /// none of our members able to authorise it: try another server)
    UnableToGrantJoin,
    /// `M_INVITE_BLOCKED` (the invitee's server blocks invites to them; passed on from
    /// another server)
    InviteBlocked,
}

impl ErrorCode {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbidden => "M_FORBIDDEN",
            Self::UnknownToken => "M_UNKNOWN_TOKEN",
            Self::MissingToken => "M_MISSING_TOKEN",
            Self::UserLocked => "M_USER_LOCKED",
            Self::UserDeactivated => "M_USER_DEACTIVATED",
            Self::BadJson => "M_BAD_JSON",
            Self::NotJson => "M_NOT_JSON",
            Self::NotFound => "M_NOT_FOUND",
            Self::LimitExceeded => "M_LIMIT_EXCEEDED",
            Self::Unrecognized => "M_UNRECOGNIZED",
            Self::Unknown => "M_UNKNOWN",
            Self::Unauthorized => "M_UNAUTHORIZED",
            Self::UserInUse => "M_USER_IN_USE",
            Self::InvalidUsername => "M_INVALID_USERNAME",
            Self::Exclusive => "M_EXCLUSIVE",
            Self::GuestAccessForbidden => "M_GUEST_ACCESS_FORBIDDEN",
            Self::InvalidParam => "M_INVALID_PARAM",
            Self::MissingParam => "M_MISSING_PARAM",
            Self::TooLarge => "M_TOO_LARGE",
            Self::WeakPassword => "M_WEAK_PASSWORD",
            Self::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            Self::CannotOverwriteMedia => "M_CANNOT_OVERWRITE_MEDIA",
            Self::NotYetUploaded => "M_NOT_YET_UPLOADED",
            Self::RoomInUse => "M_ROOM_IN_USE",
            Self::InvalidRoomState => "M_INVALID_ROOM_STATE",
            Self::BadAlias => "M_BAD_ALIAS",
            Self::BadState => "M_BAD_STATE",
            Self::ProfileTooLarge => "M_PROFILE_TOO_LARGE",
            Self::KeyTooLarge => "M_KEY_TOO_LARGE",
            Self::InvalidSignature => "M_INVALID_SIGNATURE",
            Self::WrongRoomKeysVersion => "M_WRONG_ROOM_KEYS_VERSION",
            Self::IncompatibleRoomVersion => "M_INCOMPATIBLE_ROOM_VERSION",
            Self::UnableToAuthoriseJoin => "M_UNABLE_TO_AUTHORISE_JOIN",
            Self::UnableToGrantJoin => "M_UNABLE_TO_GRANT_JOIN",
            Self::InviteBlocked => "M_INVITE_BLOCKED",
        }
    }

    /// The code of a wire form, for errors another server gave that are passed on to
    /// our clients (`None`: not one of ours).
    pub fn from_wire(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    const ALL: [Self; 35] = [
        Self::Forbidden,
        Self::UnknownToken,
        Self::MissingToken,
        Self::UserLocked,
        Self::UserDeactivated,
        Self::BadJson,
        Self::NotJson,
        Self::NotFound,
        Self::LimitExceeded,
        Self::Unrecognized,
        Self::Unknown,
        Self::Unauthorized,
        Self::UserInUse,
        Self::InvalidUsername,
        Self::Exclusive,
        Self::GuestAccessForbidden,
        Self::InvalidParam,
        Self::MissingParam,
        Self::TooLarge,
        Self::WeakPassword,
        Self::UnsupportedRoomVersion,
        Self::CannotOverwriteMedia,
        Self::NotYetUploaded,
        Self::RoomInUse,
        Self::InvalidRoomState,
        Self::BadAlias,
        Self::BadState,
        Self::ProfileTooLarge,
        Self::KeyTooLarge,
        Self::InvalidSignature,
        Self::WrongRoomKeysVersion,
        Self::IncompatibleRoomVersion,
        Self::UnableToAuthoriseJoin,
        Self::UnableToGrantJoin,
        Self::InviteBlocked,
    ];
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_code_reads_back_from_its_wire_form() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::from_wire("M_NOT_A_CODE"), None);
    }
}
