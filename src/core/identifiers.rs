//! Matrix identifiers, parsed once at the edge and valid afterwards.
//!
//! Spec: appendices, "Identifier Grammar": server names, user ids (with the historical,
//! more lenient localparts that must still be accepted over federation), room ids (with and
//! without a domain), event ids and room aliases. Every id is at most 255 bytes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The spec's limit on the length of user ids, room ids, aliases and event ids.
pub const MAX_ID_BYTES: usize = 255;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierError {
    /// Which kind of identifier was expected.
    pub kind: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl std::fmt::Display for IdentifierError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}: {}", self.kind, self.reason)
    }
}

impl std::error::Error for IdentifierError {}

fn err<T>(kind: &'static str, reason: &'static str) -> Result<T, IdentifierError> {
    Err(IdentifierError { kind, reason })
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Consumes the identifier, answering its string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdentifierError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdentifierError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A server name: `hostname [":" port]`, the hostname an IPv4 literal, a bracketed IPv6
    /// literal or a DNS name. Spec: appendices, "Server Name".
    ServerName,
    "server name"
);
string_id!(
    /// `@localpart:server_name`. Spec: appendices, "User Identifiers".
    UserId,
    "user id"
);
string_id!(
    /// `!opaque_id[:server_name]`. Spec: appendices, "Room IDs".
    RoomId,
    "room id"
);
string_id!(
    /// `$opaque_id[:server_name]`. Spec: appendices, "Event IDs".
    EventId,
    "event id"
);
string_id!(
    /// `#localpart:server_name`. Spec: appendices, "Room Aliases".
    RoomAliasId,
    "room alias"
);

impl ServerName {
    /// Parses a server name per the spec's grammar.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        const KIND: &str = "server name";
        if s.is_empty() {
            return err(KIND, "empty");
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                return err(KIND, "unclosed IPv6 literal");
            };
            let literal = &rest[..end];
            let valid_chars = literal
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
            if !(2..=45).contains(&literal.len())
                || !valid_chars
                || literal.parse::<Ipv6Addr>().is_err()
            {
                return err(KIND, "invalid IPv6 literal");
            }
            let after = &rest[end + 1..];
            match after.strip_prefix(':') {
                Some(port) => (&s[..end + 2], Some(port)),
                None if after.is_empty() => (s, None),
                None => return err(KIND, "unexpected text after IPv6 literal"),
            }
        } else {
            match s.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        if let Some(port) = port {
            if port.is_empty()
                || port.len() > 5
                || !port.bytes().all(|b| b.is_ascii_digit())
                || port.parse::<u32>().map_or(true, |p| p > 65535)
            {
                return err(KIND, "invalid port");
            }
        }
        if !host.starts_with('[') {
            if host.is_empty() || host.len() > 255 {
                return err(KIND, "hostname must be 1 to 255 characters");
            }
            if !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return err(KIND, "hostname has characters outside [A-Za-z0-9.-]");
            }
            // Four dot-separated numbers is the IPv4 form: each must be 0..=255.
            let looks_ipv4 = host.split('.').count() == 4
                && host
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if looks_ipv4 && host.parse::<Ipv4Addr>().is_err() {
                return err(KIND, "invalid IPv4 literal");
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The host part, without the port (IPv6 literals keep their brackets).
    pub fn host(&self) -> &str {
        match self.port_start() {
            Some(i) => &self.0[..i],
            None => &self.0,
        }
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port_start().and_then(|i| self.0[i + 1..].parse().ok())
    }

    fn port_start(&self) -> Option<usize> {
        if self.0.starts_with('[') {
            let end = self.0.find(']')?;
            (self.0.len() > end + 1).then_some(end + 1)
        } else {
            self.0.rfind(':')
        }
    }
}

/// Whether `localpart` uses only the characters new user ids may have:
/// `a-z`, `0-9`, `.`, `_`, `=`, `-`, `/`, `+`. Spec: appendices, "User Identifiers".
pub fn is_valid_user_localpart(localpart: &str) -> bool {
    !localpart.is_empty()
        && localpart.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'=' | b'-' | b'/' | b'+')
        })
}

/// Splits `sigil localpart ":" server_name`, checking the length and that the localpart has
/// neither `:` nor NUL (the lenient, historical grammar all ids share).
fn split_namespaced<'a>(
    s: &'a str,
    sigil: char,
    kind: &'static str,
) -> Result<(&'a str, ServerName), IdentifierError> {
    if s.len() > MAX_ID_BYTES {
        return err(kind, "longer than 255 bytes");
    }
    let Some(rest) = s.strip_prefix(sigil) else {
        return err(kind, "wrong sigil");
    };
    let Some((localpart, server)) = rest.split_once(':') else {
        return err(kind, "missing ':server_name'");
    };
    if localpart.contains('\0') {
        return err(kind, "localpart contains NUL");
    }
    let server = ServerName::parse(server).map_err(|e| IdentifierError {
        kind,
        reason: e.reason,
    })?;
    Ok((localpart, server))
}

impl UserId {
    /// Parses a user id, accepting historical localparts (any code point but `:` and NUL),
    /// as the spec requires for ids seen over federation. Use [`UserId::is_compliant`] or
    /// [`UserId::new_local`] where only the modern grammar is allowed.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        split_namespaced(s, '@', "user id")?;
        Ok(Self(s.to_owned()))
    }

    /// A new local user id; the localpart must follow the modern grammar.
    pub fn new_local(localpart: &str, server: &ServerName) -> Result<Self, IdentifierError> {
        if !is_valid_user_localpart(localpart) {
            return err(
                "user id",
                "localpart may only contain a-z, 0-9, . _ = - / +",
            );
        }
        let id = format!("@{localpart}:{server}");
        if id.len() > MAX_ID_BYTES {
            return err("user id", "longer than 255 bytes");
        }
        Ok(Self(id))
    }

    /// The part between `@` and the first `:`.
    pub fn localpart(&self) -> &str {
        let end = self.0.find(':').expect("validated user id has ':'");
        &self.0[1..end]
    }

    /// The server that allocated the id.
    pub fn server_name(&self) -> &str {
        let start = self.0.find(':').expect("validated user id has ':'");
        &self.0[start + 1..]
    }

    /// Whether the localpart follows the modern grammar (not a historical id).
    pub fn is_compliant(&self) -> bool {
        is_valid_user_localpart(self.localpart())
    }
}

impl RoomId {
    /// Parses `!opaque:server` (room versions 1-11) or `!opaque` (version 12+).
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        const KIND: &str = "room id";
        if s.len() > MAX_ID_BYTES {
            return err(KIND, "longer than 255 bytes");
        }
        let Some(rest) = s.strip_prefix('!') else {
            return err(KIND, "wrong sigil");
        };
        if rest.contains(':') {
            split_namespaced(s, '!', KIND)?;
        } else if !is_url_safe_hash(rest) {
            return err(
                KIND,
                "domain-less room id must be an unpadded URL-safe base64 hash",
            );
        }
        Ok(Self(s.to_owned()))
    }

    /// The server part of a room id that has one (room versions before 12).
    pub fn server_name(&self) -> Option<&str> {
        self.0.find(':').map(|i| &self.0[i + 1..])
    }
}

impl EventId {
    /// Parses `$hash` (room versions 3+: standard base64 in 3, URL-safe from 4) or
    /// `$opaque:server` (versions 1 and 2).
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        const KIND: &str = "event id";
        if s.len() > MAX_ID_BYTES {
            return err(KIND, "longer than 255 bytes");
        }
        let Some(rest) = s.strip_prefix('$') else {
            return err(KIND, "wrong sigil");
        };
        if rest.contains(':') {
            split_namespaced(s, '$', KIND)?;
        } else if !is_url_safe_hash(rest) && !is_standard_hash(rest) {
            return err(KIND, "must be an unpadded base64 hash");
        }
        Ok(Self(s.to_owned()))
    }
}

impl RoomAliasId {
    /// Parses `#localpart:server`; the localpart may be any code points but `:` and NUL.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        let (localpart, _) = split_namespaced(s, '#', "room alias")?;
        if localpart.is_empty() {
            return err("room alias", "empty localpart");
        }
        Ok(Self(s.to_owned()))
    }

    /// The part between `#` and the first `:`.
    pub fn localpart(&self) -> &str {
        let end = self.0.find(':').expect("validated alias has ':'");
        &self.0[1..end]
    }

    /// The server that owns the alias.
    pub fn server_name(&self) -> &str {
        let start = self.0.find(':').expect("validated alias has ':'");
        &self.0[start + 1..]
    }
}

/// A SHA-256 in URL-safe unpadded base64 is 43 characters of `[A-Za-z0-9_-]`.
/// 43 characters of unpadded URL-safe base64 (a sha256 hash, as in v4+ event ids).
pub(crate) fn is_url_safe_hash(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// 43 characters of unpadded standard base64 (a sha256 hash, as in v3 event ids).
pub(crate) fn is_standard_hash(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec: appendices, "Server Name", the listed valid examples.
    #[test]
    fn spec_valid_server_names() {
        for name in [
            "matrix.org",
            "matrix.org:8888",
            "1.2.3.4",
            "1.2.3.4:1234",
            "[1234:5678::abcd]",
            "[1234:5678::abcd]:5678",
            "localhost",
            "LOCALHOST",
            "a-b.example",
        ] {
            assert!(ServerName::parse(name).is_ok(), "{name} should be valid");
        }
    }

    #[test]
    fn invalid_server_names() {
        for name in [
            "",
            ":8448",
            "matrix.org:",
            "matrix.org:123456",
            "matrix.org:65536",
            "matrix.org:8a",
            "matrix_org",
            "ex ample.org",
            "300.1.1.1",
            "[1234:5678::abcd",
            "[zz::1]",
            "[::1]x",
            "exämple.org",
        ] {
            assert!(
                ServerName::parse(name).is_err(),
                "{name:?} should be invalid"
            );
        }
    }

    #[test]
    fn server_name_host_and_port() {
        let s = ServerName::parse("matrix.org:8888").unwrap();
        assert_eq!((s.host(), s.port()), ("matrix.org", Some(8888)));
        let s = ServerName::parse("[1234:5678::abcd]:5678").unwrap();
        assert_eq!((s.host(), s.port()), ("[1234:5678::abcd]", Some(5678)));
        let s = ServerName::parse("[::1]").unwrap();
        assert_eq!((s.host(), s.port()), ("[::1]", None));
    }

    #[test]
    fn user_ids() {
        let id = UserId::parse("@alice:example.org").unwrap();
        assert_eq!(id.localpart(), "alice");
        assert_eq!(id.server_name(), "example.org");
        assert!(id.is_compliant());
        // Historical ids must still be accepted, but are not compliant.
        let old = UserId::parse("@Alice Smith:example.org:8448").unwrap();
        assert_eq!(old.server_name(), "example.org:8448");
        assert!(!old.is_compliant());
        for bad in [
            "alice:example.org",
            "@alice",
            "@alice:",
            "@a\0b:x.org",
            "#alice:x.org",
        ] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} should be invalid");
        }
        let long = format!("@{}:example.org", "a".repeat(250));
        assert!(UserId::parse(&long).is_err());
    }

    #[test]
    fn new_local_user_ids_follow_the_modern_grammar() {
        let server = ServerName::parse("example.org").unwrap();
        for good in ["alice", "a.b_c=d-e/f+g", "123"] {
            assert!(UserId::new_local(good, &server).is_ok(), "{good}");
        }
        for bad in ["", "Alice", "al ice", "al:ice", "ålice", "a*b", "a@b"] {
            assert!(UserId::new_local(bad, &server).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn room_ids() {
        assert!(RoomId::parse("!abc:example.org").is_ok());
        let v12 = "!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM";
        assert_eq!(RoomId::parse(v12).unwrap().server_name(), None);
        for bad in ["abc:example.org", "!", "!short", "!abc:", "!a\0:x.org"] {
            assert!(RoomId::parse(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn event_ids() {
        assert!(EventId::parse("$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg").is_ok());
        // Room version 3 (the spec's example there).
        assert!(EventId::parse("$acR1l0raoZnm60CBwAVgqbZqoO/mYU81xysh1u7XcJk").is_ok());
        assert!(EventId::parse("$0:domain").is_ok());
        for bad in [
            "Rqnc",
            "$",
            "$has+plus/slash-and_AAAAAAAAAAAAAAAAAAAAAAAA", // mixed alphabets
            "$has+plus/slashAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 44 characters
            "$abc",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn room_aliases() {
        let alias = RoomAliasId::parse("#Sommer Café:example.org").unwrap();
        assert_eq!(alias.localpart(), "Sommer Café");
        assert_eq!(alias.server_name(), "example.org");
        for bad in ["#:example.org", "room:example.org", "#room", "#a\0:x.org"] {
            assert!(
                RoomAliasId::parse(bad).is_err(),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn ids_deserialize_with_validation() {
        let ok: UserId = serde_json::from_str("\"@a:b.c\"").unwrap();
        assert_eq!(ok.as_str(), "@a:b.c");
        assert!(serde_json::from_str::<UserId>("\"nope\"").is_err());
    }
}
