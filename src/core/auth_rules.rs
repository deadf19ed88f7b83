//! The authorisation rules of room versions 3 to 12.
//!
//! Spec: `rooms/v3.md` (`fragments/v3-auth-rules.md`), `v6.md`, `v8.md` (`fragments/v8-auth-rules.md`),
//! `v10.md`, `v11.md`, `v12.md`, "Authorisation rules". Where versions differ, a
//! [`RoomVersion`] method says which rule holds. [`check`] applies the
//! rules to an event against a state (the state before the event, or its auth events);
//! [`check_auth_events`] applies the rules about the `auth_events` list itself, and
//! [`auth_event_keys`] is the server-server API's "Auth events selection". Pure: signature
//! checks that need a remote server's keys are answered by the caller through
//! [`AuthContext::signed_by`]. Rule numbers in comments are v12's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::base64;
use super::event_hashes;
use super::identifiers::UserId;
use super::power_levels::{level_value, Power, PowerLevels};
use super::room_version::RoomVersion;
use super::signatures;

/// Why an event was rejected: the rule that refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError(pub String);

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthError {}

fn reject<T>(reason: impl Into<String>) -> Result<T, AuthError> {
    Err(AuthError(reason.into()))
}

/// The state the rules consult, by `(type, state_key)`.
pub trait AuthState {
    /// The state event of that type and key, if any.
    fn get(&self, event_type: &str, state_key: &str) -> Option<&Value>;

    /// The event id of the create event [`AuthState::get`] answers, when the caller
    /// knows it (an event stored under its id, which was checked against the event's
    /// reference hash when it arrived): spares hashing it again for every event of a
    /// room whose id is made from it (v12). `None` (the default): it is computed.
    fn create_event_id(&self) -> Option<&str> {
        None
    }

    /// `PowerLevels::new(version, create, power levels)` of the create and power levels
    /// events [`AuthState::get`] answers, when the caller keeps them parsed. `None` (the
    /// default): they are parsed.
    fn power_levels(&self, _version: RoomVersion) -> Option<Arc<PowerLevels>> {
        None
    }
}

impl AuthState for HashMap<(String, String), Value> {
    fn get(&self, event_type: &str, state_key: &str) -> Option<&Value> {
        HashMap::get(self, &(event_type.to_owned(), state_key.to_owned()))
    }
}

/// What the rules need beyond the event and the state.
pub struct AuthContext<'a> {
    /// The room's version.
    pub version: RoomVersion,
    /// Whether the event carries a valid signature of this server (for
    /// `join_authorised_via_users_server`); the caller owns key fetching.
    pub signed_by: &'a dyn Fn(&str) -> bool,
}

/// The fields of an event the rules read, checked for shape.
struct Event<'a> {
    raw: &'a Value,
    kind: &'a str,
    sender: &'a str,
    state_key: Option<&'a str>,
    content: &'a Value,
}

fn parse(event: &Value) -> Result<Event<'_>, AuthError> {
    let kind = event.get("type").and_then(Value::as_str);
    let sender = event.get("sender").and_then(Value::as_str);
    let content = event.get("content").filter(|c| c.is_object());
    let (Some(kind), Some(sender), Some(content)) = (kind, sender, content) else {
        return reject("event lacks type, sender or an object content");
    };
    if UserId::parse(sender).is_err() {
        return reject("sender is not a valid user id");
    }
    let state_key = match event.get("state_key") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return reject("state_key is not a string"),
    };
    Ok(Event {
        raw: event,
        kind,
        sender,
        state_key,
        content,
    })
}

fn domain(user_id: &str) -> &str {
    user_id.split_once(':').map_or("", |(_, d)| d)
}

fn membership<'s>(state: &'s dyn AuthState, user_id: &str) -> Option<&'s str> {
    state
        .get("m.room.member", user_id)
        .and_then(|e| e.get("content"))
        .and_then(|c| c.get("membership"))
        .and_then(Value::as_str)
}

fn join_rule(state: &dyn AuthState) -> Option<&str> {
    state
        .get("m.room.join_rules", "")
        .and_then(|e| e.get("content"))
        .and_then(|c| c.get("join_rule"))
        .and_then(Value::as_str)
}

/// Spec: server-server API, "Auth events selection": the `(type, state_key)` pairs an
/// event's `auth_events` should hold.
pub fn auth_event_keys(version: RoomVersion, event: &Value) -> Vec<(String, String)> {
    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "m.room.create" {
        return Vec::new();
    }
    let sender = event.get("sender").and_then(Value::as_str).unwrap_or("");
    let mut keys = Vec::new();
    if !version.room_id_is_create_event_hash() {
        keys.push(("m.room.create".to_owned(), String::new()));
    }
    keys.push(("m.room.power_levels".to_owned(), String::new()));
    keys.push(("m.room.member".to_owned(), sender.to_owned()));
    if kind == "m.room.member" {
        let content = event.get("content");
        let target = event.get("state_key").and_then(Value::as_str).unwrap_or("");
        keys.push(("m.room.member".to_owned(), target.to_owned()));
        let membership = content
            .and_then(|c| c.get("membership"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if matches!(membership, "join" | "invite" | "knock") {
            keys.push(("m.room.join_rules".to_owned(), String::new()));
        }
        if membership == "invite" {
            if let Some(token) = content
                .and_then(|c| c.get("third_party_invite"))
                .and_then(|t| t.get("signed"))
                .and_then(|s| s.get("token"))
                .and_then(Value::as_str)
            {
                keys.push(("m.room.third_party_invite".to_owned(), token.to_owned()));
            }
        }
        if membership == "join" && version.has_restricted_joins() {
            if let Some(via) = content
                .and_then(|c| c.get("join_authorised_via_users_server"))
                .and_then(Value::as_str)
            {
                keys.push(("m.room.member".to_owned(), via.to_owned()));
            }
        }
    }
    // A handful of keys: a linear dedup, keeping the first of each.
    let mut unique: Vec<(String, String)> = Vec::with_capacity(keys.len());
    for key in keys {
        if !unique.contains(&key) {
            unique.push(key);
        }
    }
    unique
}

/// Rules about the `auth_events` list itself (v12 rule 3, v10/v11 rule 2): no duplicate
/// `(type, state_key)`, only what the selection algorithm picks, the same room, and (before
/// v12) the create event present. Rejected auth events are the caller's to exclude.
pub fn check_auth_events(
    version: RoomVersion,
    event: &Value,
    auth_events: &[&Value],
) -> Result<(), AuthError> {
    if event.get("type").and_then(Value::as_str) == Some("m.room.create") {
        // Rule 1 judges the create event whole, before any rule about auth events.
        return Ok(());
    }
    let allowed: HashSet<(String, String)> = auth_event_keys(version, event).into_iter().collect();
    let room_id = event.get("room_id").and_then(Value::as_str);
    let mut seen = HashSet::new();
    let mut has_create = false;
    for auth in auth_events {
        let kind = auth.get("type").and_then(Value::as_str).unwrap_or("");
        let key = auth.get("state_key").and_then(Value::as_str).unwrap_or("");
        let pair = (kind.to_owned(), key.to_owned());
        if !seen.insert(pair.clone()) {
            return reject(format!("duplicate auth event ({kind}, {key})"));
        }
        if !allowed.contains(&pair) {
            return reject(format!(
                "auth event ({kind}, {key}) is not one the selection algorithm picks"
            ));
        }
        has_create |= kind == "m.room.create";
        let auth_room = auth.get("room_id").and_then(Value::as_str);
        // A v12 create event has no room_id; its id is the room id, checked in rule 2.
        if kind != "m.room.create" && auth_room != room_id {
            return reject("an auth event belongs to another room");
        }
        if kind == "m.room.create"
            && !version.room_id_is_create_event_hash()
            && auth_room != room_id
        {
            return reject("the create auth event belongs to another room");
        }
    }
    if !version.room_id_is_create_event_hash() && !has_create {
        return reject("auth events lack the m.room.create event");
    }
    Ok(())
}

/// Checks `event` against `state` (the room state before it) under the version's rules.
pub fn check(ctx: &AuthContext<'_>, event: &Value, state: &dyn AuthState) -> Result<(), AuthError> {
    let version = ctx.version;
    let ev = parse(event)?;

    // Rule 1: the create event.
    if ev.kind == "m.room.create" {
        return check_create(version, &ev);
    }

    let Some(create) = state.get("m.room.create", "") else {
        return reject("the room has no create event");
    };
    // v12 rule 2: the room id is the create event's id.
    if version.room_id_is_create_event_hash() {
        let matches = match state.create_event_id().and_then(|id| id.strip_prefix('$')) {
            Some(hash) => {
                let room_id = event.get("room_id").and_then(Value::as_str);
                room_id.and_then(|r| r.strip_prefix('!')) == Some(hash)
            }
            None => {
                let expected = event_hashes::room_id_from_create_event(create, version)
                    .map_err(|e| AuthError(format!("create event: {e}")))?;
                event.get("room_id").and_then(Value::as_str) == Some(expected.as_str())
            }
        };
        if !matches {
            return reject("room_id is not the create event's id");
        }
    }

    // Rule 4: m.federate.
    let create_sender = create.get("sender").and_then(Value::as_str).unwrap_or("");
    let federate = create
        .get("content")
        .and_then(|c| c.get("m.federate"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if !federate && domain(ev.sender) != domain(create_sender) {
        return reject("the room does not federate and the sender is from another server");
    }

    // v3 to v5 rule 4: m.room.aliases names the sender's server.
    if ev.kind == "m.room.aliases" && version.has_aliases_auth_rule() {
        return match ev.state_key {
            None => reject("an m.room.aliases event needs a state_key"),
            Some(key) if key != domain(ev.sender) => {
                reject("an m.room.aliases state_key must be the sender's server")
            }
            Some(_) => Ok(()),
        };
    }

    let kept = state.power_levels(version);
    let parsed;
    let levels = match &kept {
        Some(levels) => &**levels,
        None => {
            parsed = PowerLevels::new(version, Some(create), state.get("m.room.power_levels", ""));
            &parsed
        }
    };

    // Rule 5: membership.
    if ev.kind == "m.room.member" {
        return check_member(ctx, &ev, state, create, levels);
    }

    // Rule 6.
    if membership(state, ev.sender) != Some("join") {
        return reject("the sender is not joined to the room");
    }
    let sender_level = levels.user(ev.sender);

    // Rule 7.
    if ev.kind == "m.room.third_party_invite" {
        return if sender_level >= Power::from(levels.invite) {
            Ok(())
        } else {
            reject("the sender's power is below the invite level")
        };
    }

    // Rule 8.
    if levels.event(ev.kind, ev.state_key.is_some()) > sender_level {
        return reject(format!(
            "the sender's power is below the level for {}",
            ev.kind
        ));
    }

    // Rule 9.
    if let Some(key) = ev.state_key {
        if key.starts_with('@') && key != ev.sender {
            return reject("a state key starting with @ must be the sender's user id");
        }
    }

    // Rule 10.
    if ev.kind == "m.room.power_levels" {
        return check_power_levels(version, &ev, state, create, sender_level);
    }

    // v1 and v2 rule 11: a redaction needs the redact level, or its own event id and
    // the redacted event's naming the same server.
    if ev.kind == "m.room.redaction" && version.redaction_authorised_by_event_id_server() {
        if sender_level >= Power::from(levels.redact) {
            return Ok(());
        }
        let server_of = |key: &str| {
            event
                .get(key)
                .and_then(Value::as_str)
                .and_then(event_hashes::event_id_server)
        };
        return match (server_of("event_id"), server_of("redacts")) {
            (Some(own), Some(target)) if own == target => Ok(()),
            _ => reject("the sender's power is below the redact level"),
        };
    }

    // Rule 11 (rule 12 in v1 and v2).
    Ok(())
}

/// Rule 1.
fn check_create(version: RoomVersion, ev: &Event<'_>) -> Result<(), AuthError> {
    let has_prev = ev
        .raw
        .get("prev_events")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    if has_prev {
        return reject("a create event has no prev_events");
    }
    if version.room_id_is_create_event_hash() {
        if ev.raw.get("room_id").is_some() {
            return reject("a v12 create event has no room_id");
        }
    } else {
        let room_domain = ev
            .raw
            .get("room_id")
            .and_then(Value::as_str)
            .and_then(|r| r.split_once(':'))
            .map(|(_, d)| d);
        if room_domain != Some(domain(ev.sender)) {
            return reject("the room id's domain is not the sender's");
        }
    }
    if let Some(room_version) = ev.content.get("room_version") {
        if room_version
            .as_str()
            .and_then(RoomVersion::from_id)
            .is_none()
        {
            return reject("unknown room_version");
        }
    }
    if version.create_event_has_creator_key() && ev.content.get("creator").is_none() {
        return reject("a v10 create event needs a creator");
    }
    if version.creators_have_infinite_power() {
        if let Some(extra) = ev.content.get("additional_creators") {
            let valid = extra.as_array().is_some_and(|list| {
                list.iter()
                    .all(|u| u.as_str().is_some_and(|u| UserId::parse(u).is_ok()))
            });
            if !valid {
                return reject("additional_creators is not a list of user ids");
            }
        }
    }
    Ok(())
}

/// Rule 5.
fn check_member(
    ctx: &AuthContext<'_>,
    ev: &Event<'_>,
    state: &dyn AuthState,
    create: &Value,
    levels: &PowerLevels,
) -> Result<(), AuthError> {
    let version = ctx.version;
    // 5.1
    let Some(target) = ev.state_key else {
        return reject("a member event needs a state_key");
    };
    let Some(new_membership) = ev.content.get("membership").and_then(Value::as_str) else {
        return reject("a member event needs content.membership");
    };
    // 5.2 (v8+)
    let via = ev
        .content
        .get("join_authorised_via_users_server")
        .and_then(Value::as_str)
        .filter(|_| version.has_restricted_joins());
    if let Some(via) = via {
        let server = UserId::parse(via)
            .map_err(|_| AuthError("join_authorised_via_users_server is not a user id".into()))?;
        if !(ctx.signed_by)(server.server_name()) {
            return reject("not signed by the server of join_authorised_via_users_server");
        }
    }
    let sender_membership = membership(state, ev.sender);
    let target_membership = membership(state, target);
    let sender_level = levels.user(ev.sender);
    let target_level = levels.user(target);
    let rule = join_rule(state);
    match new_membership {
        // 5.3
        "join" => {
            // 5.3.1: the creator's first join, right after the create event.
            let prev: Vec<&str> = super::pdu::event_ids(ev.raw, "prev_events").collect();
            if prev.len() == 1 {
                let create_id = match state.create_event_id() {
                    Some(id) => id.to_owned(),
                    None => event_hashes::event_id(create, version)
                        .map_err(|e| AuthError(format!("create event: {e}")))?,
                };
                let creator = super::power_levels::creators(version, Some(create));
                if prev[0] == create_id && creator.first().map(String::as_str) == Some(target) {
                    return Ok(());
                }
            }
            if ev.sender != target {
                return reject("only the user themselves can join");
            }
            if sender_membership == Some("ban") {
                return reject("the sender is banned");
            }
            let rule = rule.filter(|r| join_rule_exists(version, r));
            match rule {
                Some("invite") | Some("knock") => {
                    if matches!(sender_membership, Some("invite") | Some("join")) {
                        Ok(())
                    } else {
                        reject("the room is invite-only")
                    }
                }
                Some("restricted") | Some("knock_restricted") => {
                    if matches!(sender_membership, Some("invite") | Some("join")) {
                        return Ok(());
                    }
                    let Some(via) = via else {
                        return reject("a restricted join needs join_authorised_via_users_server");
                    };
                    if membership(state, via) != Some("join")
                        || levels.user(via) < Power::from(levels.invite)
                    {
                        return reject("the authorising user cannot invite or is not joined");
                    }
                    Ok(())
                }
                Some("public") => Ok(()),
                _ => reject("the join rule does not allow joining"),
            }
        }
        // 5.4
        "invite" => {
            if let Some(third_party) = ev.content.get("third_party_invite") {
                return check_third_party_invite(ev, state, target, target_membership, third_party);
            }
            if sender_membership != Some("join") {
                return reject("the inviter is not joined");
            }
            if matches!(target_membership, Some("join") | Some("ban")) {
                return reject("the target is joined or banned");
            }
            if sender_level >= Power::from(levels.invite) {
                Ok(())
            } else {
                reject("the sender's power is below the invite level")
            }
        }
        // 5.5
        "leave" => {
            if ev.sender == target {
                return if matches!(
                    sender_membership,
                    Some("invite") | Some("join") | Some("knock")
                ) {
                    Ok(())
                } else {
                    reject("cannot leave a room one is not in, invited to or knocking on")
                };
            }
            if sender_membership != Some("join") {
                return reject("the sender is not joined");
            }
            if target_membership == Some("ban") && sender_level < Power::from(levels.ban) {
                return reject("unbanning needs the ban level");
            }
            if sender_level >= Power::from(levels.kick) && target_level < sender_level {
                Ok(())
            } else {
                reject("kicking needs the kick level and more power than the target")
            }
        }
        // 5.6
        "ban" => {
            if sender_membership != Some("join") {
                return reject("the sender is not joined");
            }
            if sender_level >= Power::from(levels.ban) && target_level < sender_level {
                Ok(())
            } else {
                reject("banning needs the ban level and more power than the target")
            }
        }
        // 5.7
        "knock" if version.has_knocking() => {
            let rule = rule.filter(|r| join_rule_exists(version, r));
            if !matches!(rule, Some("knock") | Some("knock_restricted")) {
                return reject("the join rule does not allow knocking");
            }
            if ev.sender != target {
                return reject("only the user themselves can knock");
            }
            if matches!(
                sender_membership,
                Some("ban") | Some("invite") | Some("join")
            ) {
                reject("cannot knock when banned, invited or joined")
            } else {
                Ok(())
            }
        }
        // 5.8
        _ => reject("unknown membership"),
    }
}

/// Whether a join rule means anything in this room version: `knock` from v7,
/// `restricted` from v8, `knock_restricted` from v10 (before, they are unknown rules and
/// let nobody in).
fn join_rule_exists(version: RoomVersion, rule: &str) -> bool {
    match rule {
        "knock" => version.has_knocking(),
        "restricted" => version.has_restricted_joins(),
        "knock_restricted" => version.has_knock_restricted(),
        _ => true,
    }
}

/// Rule 5.4.1: an invite for a third-party identifier.
fn check_third_party_invite(
    ev: &Event<'_>,
    state: &dyn AuthState,
    target: &str,
    target_membership: Option<&str>,
    third_party: &Value,
) -> Result<(), AuthError> {
    if target_membership == Some("ban") {
        return reject("the target is banned");
    }
    let Some(signed) = third_party.get("signed").and_then(Value::as_object) else {
        return reject("third_party_invite lacks signed");
    };
    let (Some(mxid), Some(token)) = (
        signed.get("mxid").and_then(Value::as_str),
        signed.get("token").and_then(Value::as_str),
    ) else {
        return reject("signed lacks mxid or token");
    };
    if mxid != target {
        return reject("signed.mxid is not the invited user");
    }
    let Some(invite) = state.get("m.room.third_party_invite", token) else {
        return reject("no m.room.third_party_invite for this token");
    };
    if invite.get("sender").and_then(Value::as_str) != Some(ev.sender) {
        return reject("the third-party invite was sent by someone else");
    }
    let content = invite.get("content");
    let mut keys: Vec<&str> = Vec::new();
    if let Some(key) = content
        .and_then(|c| c.get("public_key"))
        .and_then(Value::as_str)
    {
        keys.push(key);
    }
    if let Some(list) = content
        .and_then(|c| c.get("public_keys"))
        .and_then(Value::as_array)
    {
        keys.extend(
            list.iter()
                .filter_map(|k| k.get("public_key").and_then(Value::as_str)),
        );
    }
    let signatures: Vec<&str> = signed
        .get("signatures")
        .and_then(Value::as_object)
        .map(|by_entity| {
            by_entity
                .values()
                .filter_map(Value::as_object)
                .flat_map(|sigs| sigs.values().filter_map(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    for key in keys {
        let Ok(bytes) = base64::decode(key).or_else(|_| base64::decode_url_safe(key)) else {
            continue;
        };
        let Ok(bytes) = <[u8; 32]>::try_from(bytes) else {
            continue;
        };
        let Ok(public) = ed25519_dalek::VerifyingKey::from_bytes(&bytes) else {
            continue;
        };
        if signatures
            .iter()
            .any(|sig| signatures::verify_signature(signed, sig, &public).is_ok())
        {
            return Ok(());
        }
    }
    reject("no signature in signed matches the third-party invite's keys")
}

const LEVEL_KEYS: [&str; 7] = [
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
];

/// Rule 10: a new `m.room.power_levels`.
fn check_power_levels(
    version: RoomVersion,
    ev: &Event<'_>,
    state: &dyn AuthState,
    create: &Value,
    sender_level: Power,
) -> Result<(), AuthError> {
    let new = ev.content;
    let level = |v: &Value| level_value(version, v);
    if version.power_levels_are_integers_only() {
        // 10.1
        for key in LEVEL_KEYS {
            if new.get(key).is_some_and(|v| level(v).is_none()) {
                return reject(format!("{key} is not an integer"));
            }
        }
        // 10.2
        for key in ["events", "notifications"] {
            if let Some(v) = new.get(key) {
                let ok = v
                    .as_object()
                    .is_some_and(|m| m.values().all(|x| level(x).is_some()));
                if !ok {
                    return reject(format!("{key} is not an object of integers"));
                }
            }
        }
    }
    // 10.3 (v6 to v9: rule 9.1, where an integer may be written as a string)
    if let Some(users) = new.get("users") {
        let ok = users.as_object().is_some_and(|m| {
            m.iter()
                .all(|(k, v)| UserId::parse(k).is_ok() && level(v).is_some())
        });
        if !ok {
            return reject("users is not an object of user ids to integers");
        }
    }
    // 10.4 (v12)
    if version.creators_have_infinite_power() {
        let users = new.get("users").and_then(Value::as_object);
        for creator in super::power_levels::creators(version, Some(create)) {
            if users.is_some_and(|u| u.contains_key(&creator)) {
                return reject("room creators cannot be listed in users");
            }
        }
    }
    // 10.5
    let Some(old_event) = state.get("m.room.power_levels", "") else {
        return Ok(());
    };
    let empty = Value::Object(Default::default());
    let old = old_event.get("content").unwrap_or(&empty);
    let too_high = |v: Option<i64>| v.is_some_and(|v| Power::from(v) > sender_level);
    // 10.6
    for key in LEVEL_KEYS {
        let (before, after) = (old.get(key).and_then(level), new.get(key).and_then(level));
        if before != after && (too_high(before) || too_high(after)) {
            return reject(format!("changing {key} beyond one's own power"));
        }
    }
    // 10.7, 10.8 (`notifications` from room version 6)
    let guarded: &[&str] = if version.power_levels_guard_notifications() {
        &["events", "notifications"]
    } else {
        &["events"]
    };
    for &key in guarded {
        let before = old.get(key).and_then(Value::as_object);
        let after = new.get(key).and_then(Value::as_object);
        let names: HashSet<&String> = before
            .into_iter()
            .flat_map(|m| m.keys())
            .chain(after.into_iter().flat_map(|m| m.keys()))
            .collect();
        for name in names {
            let b = before.and_then(|m| m.get(name)).and_then(level);
            let a = after.and_then(|m| m.get(name)).and_then(level);
            if b != a && (too_high(b) || too_high(a)) {
                return reject(format!("changing {key}.{name} beyond one's own power"));
            }
        }
    }
    // 10.9, 10.10
    let before = old.get("users").and_then(Value::as_object);
    let after = new.get("users").and_then(Value::as_object);
    let names: HashSet<&String> = before
        .into_iter()
        .flat_map(|m| m.keys())
        .chain(after.into_iter().flat_map(|m| m.keys()))
        .collect();
    for name in names {
        let b = before.and_then(|m| m.get(name)).and_then(level);
        let a = after.and_then(|m| m.get(name)).and_then(level);
        if b == a {
            continue;
        }
        if name != ev.sender && b.is_some_and(|b| Power::from(b) >= sender_level) {
            return reject(format!(
                "changing the level of {name}, who is not below the sender"
            ));
        }
        if too_high(a) {
            return reject(format!("raising {name} above the sender's own power"));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "auth_rules_tests.rs"]
mod tests;
