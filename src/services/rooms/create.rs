//! Creating rooms.
//!
//! Spec: client-server API, `POST /createRoom`: the events in the spec's order (create,
//! creator's join, power levels, canonical alias, preset events, `initial_state`, name and
//! topic, invites), presets `private_chat`, `trusted_private_chat` and `public_chat`, and
//! room version 12's creators (the sender plus `additional_creators`, which
//! `trusted_private_chat` extends with the invitees) who are not listed in power levels.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::membership::{member_content, MemberProfile};
use super::writer::{EventDraft, JobStart, Writers};
use super::Rooms;
use crate::core::auth_rules::{self, AuthContext};
use crate::core::canonical_json;
use crate::core::pdu::{self, PduTemplate};
use crate::core::{event_hashes, RoomAliasId, RoomVersion, UserId};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::{now_ms, random_bytes};

/// One `initial_state` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct InitialStateEvent {
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// State key (default empty).
    #[serde(default)]
    pub state_key: String,
    /// Content.
    pub content: Value,
}

/// The `/createRoom` request body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CreateRoomRequest {
    /// `public` or `private` (default): whether to publish the room in the directory.
    pub visibility: Option<String>,
    /// Localpart of an alias to create.
    pub room_alias_name: Option<String>,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// Users to invite.
    pub invite: Vec<String>,
    /// Third-party invites (need an identity server; refused).
    pub invite_3pid: Vec<Value>,
    /// Room version (default: the configured one).
    pub room_version: Option<String>,
    /// Extra keys of the create event's content.
    pub creation_content: Option<Map<String, Value>>,
    /// State events to set.
    pub initial_state: Vec<InitialStateEvent>,
    /// `private_chat`, `trusted_private_chat` or `public_chat`.
    pub preset: Option<String>,
    /// Mark invites as direct chats.
    pub is_direct: bool,
    /// Applied on top of the default power levels.
    pub power_level_content_override: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preset {
    Private,
    TrustedPrivate,
    Public,
}

fn random_localpart() -> String {
    random_bytes::<18>()
        .iter()
        .map(|b| {
            let i = b % 52;
            char::from(if i < 26 { b'A' + i } else { b'a' + i - 26 })
        })
        .collect()
}

fn invalid_state(message: impl Into<String>) -> ServiceError {
    ServiceError::new(ErrorKind::Invalid, ErrorCode::InvalidRoomState, message)
}

/// Spec (room v12): the tombstone level must be above `state_default`.
fn default_power_levels(
    version: RoomVersion,
    creator: &str,
    preset: Preset,
    invitees: &[UserId],
) -> Map<String, Value> {
    let mut users = Map::new();
    if !version.creators_have_infinite_power() {
        users.insert(creator.to_owned(), json!(100));
        if preset == Preset::TrustedPrivate {
            for invitee in invitees {
                users.insert(invitee.as_str().to_owned(), json!(100));
            }
        }
    }
    let tombstone = if version.creators_have_infinite_power() {
        150
    } else {
        100
    };
    let invite = if preset == Preset::Public { 50 } else { 0 };
    let content = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": tombstone,
            "m.room.server_acl": 100,
            "m.room.encryption": 100
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": invite
    });
    match content {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object literal"),
    }
}

/// Spec: `/createRoom` "MUST apply the normal state resolution rules when creating the new
/// room, including checking power levels for each event": the whole sequence is checked
/// against the auth rules (and canonical JSON) before anything is written, so a refused
/// request leaves no half-built room behind. The writer checks each event again as it
/// builds it.
pub(super) fn check_drafts(
    version: RoomVersion,
    room_id: &str,
    create: &Value,
    drafts: &[EventDraft],
    server_name: &str,
) -> ServiceResult<()> {
    let mut state: HashMap<(String, String), Value> = HashMap::new();
    state.insert(("m.room.create".into(), String::new()), create.clone());
    let signed_by = |name: &str| name == server_name;
    let ctx = AuthContext {
        version,
        signed_by: &signed_by,
    };
    // The creator's join is allowed as the event right after the create event.
    let create_id = event_hashes::event_id(create, version).map_err(ServiceError::internal)?;
    for (i, draft) in drafts.iter().enumerate() {
        canonical_json::validate(&draft.content)
            .map_err(|e| ServiceError::bad_json(format!("{}: {e}", draft.kind)))?;
        let prev_events = if i == 0 {
            vec![create_id.clone()]
        } else {
            Vec::new()
        };
        let mut event = json!({
            "type": draft.kind,
            "sender": draft.sender,
            "content": draft.content,
            "room_id": room_id,
            "prev_events": prev_events,
        });
        if let Some(key) = &draft.state_key {
            event["state_key"] = json!(key);
        }
        auth_rules::check(&ctx, &event, &state)
            .map_err(|e| invalid_state(format!("{} refused: {e}", draft.kind)))?;
        if let Some(key) = &draft.state_key {
            state.insert((draft.kind.clone(), key.clone()), event);
        }
    }
    Ok(())
}

/// A room just made.
#[derive(Debug)]
pub struct CreatedRoom {
    /// Its id.
    pub room_id: String,
    /// Invitees of other servers, not invited yet.
    pub remote_invitees: Vec<UserId>,
    /// Whether the invites are to a direct chat.
    pub is_direct: bool,
}

impl Rooms {
    /// A new room's create event, signed, and the room id (v12: derived from the event).
    pub(super) fn build_create_event(
        &self,
        version: RoomVersion,
        creator: &UserId,
        content: Map<String, Value>,
    ) -> ServiceResult<(crate::core::pdu::BuiltPdu, String)> {
        let now = now_ms();
        let previous = self
            .last_create_ts
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        let origin_server_ts = now.max(previous + 1);
        let room_id_v10 = (!version.room_id_is_create_event_hash())
            .then(|| format!("!{}:{}", random_localpart(), self.server_name.as_str()));
        let create = pdu::build(
            version,
            PduTemplate {
                room_id: room_id_v10.clone(),
                sender: creator.as_str().to_owned(),
                kind: "m.room.create".into(),
                state_key: Some(String::new()),
                content: Value::Object(content),
                prev_events: Vec::new(),
                auth_events: Vec::new(),
                depth: 1,
                origin_server_ts,
                redacts: None,
            },
            self.server_name.as_str(),
            &self.signing_key,
        )
        .map_err(|e| ServiceError::bad_json(format!("creation_content: {e}")))?;
        let room_id = match room_id_v10 {
            Some(id) => id,
            None => event_hashes::room_id_from_create_event(&create.pdu, version)
                .map_err(ServiceError::internal)?,
        };
        Ok((create, room_id))
    }

    /// Creates a room as `creator` asks; answers its id and the invitees of other
    /// servers, whose invites the caller sends through federation.
    pub async fn create_room(
        &self,
        creator: &UserId,
        request: CreateRoomRequest,
        creator_profile: &MemberProfile,
        invitee_profiles: &(dyn Fn(&UserId) -> Option<MemberProfile> + Sync),
    ) -> ServiceResult<CreatedRoom> {
        let version = match &request.room_version {
            None => self.default_version,
            Some(v) => RoomVersion::from_id(v)
                .filter(|v| v.is_stable())
                .ok_or_else(|| {
                    ServiceError::new(
                        ErrorKind::Invalid,
                        ErrorCode::UnsupportedRoomVersion,
                        format!("Room version {v:?} is not supported (10, 11 and 12 are)"),
                    )
                })?,
        };
        let public = match request.visibility.as_deref() {
            None | Some("private") => false,
            Some("public") => true,
            Some(other) => {
                return Err(ServiceError::invalid_param(format!(
                    "visibility must be public or private, not {other:?}"
                )))
            }
        };
        let preset = match request.preset.as_deref() {
            None if public => Preset::Public,
            None => Preset::Private,
            Some("private_chat") => Preset::Private,
            Some("trusted_private_chat") => Preset::TrustedPrivate,
            Some("public_chat") => Preset::Public,
            Some(other) => {
                return Err(ServiceError::invalid_param(format!(
                    "Unknown preset {other:?}"
                )))
            }
        };
        if !request.invite_3pid.is_empty() {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                ErrorCode::Unrecognized,
                "Third-party invites need an identity server, which this server does not use",
            ));
        }
        let mut invitees = Vec::new();
        for invitee in &request.invite {
            let user = UserId::parse(invitee).map_err(|e| {
                ServiceError::invalid_param(format!("invite: {invitee:?} is not a user id: {e}"))
            })?;
            if &user != creator && !invitees.contains(&user) {
                invitees.push(user);
            }
        }
        for state in &request.initial_state {
            if state.kind.is_empty() || !state.content.is_object() {
                return Err(ServiceError::bad_json(
                    "initial_state entries need a type and an object content",
                ));
            }
            if matches!(state.kind.as_str(), "m.room.create" | "m.room.member") {
                return Err(invalid_state(format!(
                    "initial_state cannot set {}",
                    state.kind
                )));
            }
        }
        let alias = match &request.room_alias_name {
            None => None,
            Some(name) => {
                let alias = format!("#{name}:{}", self.server_name.as_str());
                let parsed = RoomAliasId::parse(&alias).map_err(|e| {
                    ServiceError::invalid_param(format!("room_alias_name is not valid: {e}"))
                })?;
                if name.contains(':') || name.chars().any(char::is_whitespace) {
                    return Err(ServiceError::invalid_param(
                        "room_alias_name may not contain ':' or whitespace",
                    ));
                }
                if self.alias_target(parsed.as_str())?.is_some() {
                    return Err(ServiceError::new(
                        ErrorKind::Invalid,
                        ErrorCode::RoomInUse,
                        "Room alias already taken",
                    ));
                }
                Some(parsed)
            }
        };

        // 1. The create event; in v12 its id is the room id.
        let mut create_content = request.creation_content.clone().unwrap_or_default();
        create_content.insert("room_version".into(), json!(version.as_str()));
        if version.create_event_has_creator_key() {
            create_content.insert("creator".into(), json!(creator.as_str()));
        } else {
            create_content.remove("creator");
        }
        if version.creators_have_infinite_power() {
            let mut extra: Vec<String> = Vec::new();
            if let Some(listed) = create_content.get("additional_creators") {
                let listed = listed.as_array().ok_or_else(|| {
                    ServiceError::bad_json("additional_creators must be an array of user ids")
                })?;
                for user in listed {
                    let user = user
                        .as_str()
                        .and_then(|u| UserId::parse(u).ok())
                        .ok_or_else(|| {
                            ServiceError::bad_json(
                                "additional_creators must be an array of user ids",
                            )
                        })?;
                    extra.push(user.into_string());
                }
            }
            if preset == Preset::TrustedPrivate {
                extra.extend(invitees.iter().map(|u| u.as_str().to_owned()));
            }
            let mut seen = HashSet::new();
            extra.retain(|u| u != creator.as_str() && seen.insert(u.clone()));
            if extra.is_empty() {
                create_content.remove("additional_creators");
            } else {
                create_content.insert("additional_creators".into(), json!(extra));
            }
        }
        let (create, room_id) = self.build_create_event(version, creator, create_content)?;

        let sender = creator.as_str();
        let mut drafts = Vec::new();
        // 2. The creator joins.
        let join = member_content("join", Some(creator_profile), None);
        drafts.push(EventDraft::new(
            sender,
            "m.room.member",
            Some(sender),
            Value::Object(join),
        ));
        // 3. Power levels: `initial_state`'s if given, else the defaults; then the override.
        let mut levels = request
            .initial_state
            .iter()
            .rev()
            .find(|s| s.kind == "m.room.power_levels" && s.state_key.is_empty())
            .and_then(|s| s.content.as_object().cloned())
            .unwrap_or_else(|| default_power_levels(version, sender, preset, &invitees));
        if let Some(overrides) = &request.power_level_content_override {
            for (key, value) in overrides {
                levels.insert(key.clone(), value.clone());
            }
        }
        drafts.push(EventDraft::new(
            sender,
            "m.room.power_levels",
            Some(""),
            Value::Object(levels),
        ));
        // 4. The canonical alias.
        if let Some(alias) = &alias {
            drafts.push(EventDraft::new(
                sender,
                "m.room.canonical_alias",
                Some(""),
                json!({ "alias": alias.as_str() }),
            ));
        }
        // 5. Preset events, unless `initial_state` sets the same.
        let in_initial = |kind: &str| {
            request
                .initial_state
                .iter()
                .any(|s| s.kind == kind && s.state_key.is_empty())
        };
        let (join_rule, guest_access) = match preset {
            Preset::Public => ("public", "forbidden"),
            Preset::Private | Preset::TrustedPrivate => ("invite", "can_join"),
        };
        for (kind, content) in [
            ("m.room.join_rules", json!({ "join_rule": join_rule })),
            (
                "m.room.history_visibility",
                json!({ "history_visibility": "shared" }),
            ),
            (
                "m.room.guest_access",
                json!({ "guest_access": guest_access }),
            ),
        ] {
            if !in_initial(kind) {
                drafts.push(EventDraft::new(sender, kind, Some(""), content));
            }
        }
        // 6. `initial_state`, in order (power levels were sent in step 3).
        for state in &request.initial_state {
            if state.kind == "m.room.power_levels" && state.state_key.is_empty() {
                continue;
            }
            drafts.push(EventDraft::new(
                sender,
                &state.kind,
                Some(&state.state_key),
                state.content.clone(),
            ));
        }
        // 7. Name and topic.
        if let Some(name) = &request.name {
            drafts.push(EventDraft::new(
                sender,
                "m.room.name",
                Some(""),
                json!({ "name": name }),
            ));
        }
        if let Some(topic) = &request.topic {
            drafts.push(EventDraft::new(
                sender,
                "m.room.topic",
                Some(""),
                json!({
                    "topic": topic,
                    "m.topic": [{ "mimetype": "text/plain", "body": topic }]
                }),
            ));
        }
        // 8. Invites of our users (those of other servers follow, once the room is made).
        let (local_invitees, remote_invitees): (Vec<&UserId>, Vec<&UserId>) = invitees
            .iter()
            .partition(|u| u.server_name() == self.server_name.as_str());
        for invitee in local_invitees {
            let profile = invitee_profiles(invitee);
            let mut content = member_content("invite", profile.as_ref(), None);
            if request.is_direct {
                content.insert("is_direct".into(), json!(true));
            }
            drafts.push(EventDraft::new(
                sender,
                "m.room.member",
                Some(invitee.as_str()),
                Value::Object(content),
            ));
        }

        check_drafts(
            version,
            &room_id,
            &create.pdu,
            &drafts,
            self.server_name.as_str(),
        )?;
        if let Some(alias) = &alias {
            self.put_alias(alias, &room_id, creator.as_str())
                .await
                .map_err(|e| {
                    if e.kind == ErrorKind::Conflict {
                        ServiceError::new(
                            ErrorKind::Invalid,
                            ErrorCode::RoomInUse,
                            "Room alias already taken",
                        )
                    } else {
                        e
                    }
                })?;
        }
        let created = self
            .writers
            .submit(
                &room_id,
                Writers::job(JobStart::Create(Box::new(create), version), drafts),
            )
            .await;
        if let Err(e) = created {
            if let Some(alias) = &alias {
                let _ = self.remove_alias_record(alias.as_str(), &room_id).await;
            }
            // The auth rules refusing the requested state is the client's mistake.
            return Err(if e.kind == ErrorKind::Forbidden {
                invalid_state(e.message)
            } else {
                e
            });
        }
        if public {
            self.set_published(&room_id, true).await?;
        }
        Ok(CreatedRoom {
            remote_invitees: remote_invitees.into_iter().cloned().collect(),
            is_direct: request.is_direct,
            room_id,
        })
    }
}
