//! Membership changes: join, invite, leave, kick, ban, unban, knock, forget.
//!
//! Spec: client-server API, "Room membership" (`/join`, `/rooms/{roomId}/join`, `/invite`,
//! `/leave`, `/kick`, `/ban`, `/unban`, `/knock`, `/forget`). Each change is an
//! `m.room.member` event the auth rules judge; a refusal is 403 `M_FORBIDDEN` naming the
//! rule. Restricted joins are satisfied locally: a user joined to one of the rooms in the
//! `allow` list gets `join_authorised_via_users_server` set to a local member who may invite.

use serde_json::{json, Map, Value};

use super::guests;
use super::writer::{EventDraft, JobStart, Writers};
use super::Rooms;
use crate::core::pdu::BuiltPdu;
use crate::core::UserId;
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};

/// The profile copied into a member event.
#[derive(Debug, Clone, Default)]
pub struct MemberProfile {
    /// Display name.
    pub displayname: Option<String>,
    /// Avatar `mxc://` URI.
    pub avatar_url: Option<String>,
}

/// The content of a member event: membership, the profile, the reason.
pub fn member_content(
    membership: &str,
    profile: Option<&MemberProfile>,
    reason: Option<String>,
) -> Map<String, Value> {
    let mut content = Map::new();
    content.insert("membership".into(), json!(membership));
    if let Some(profile) = profile {
        if let Some(name) = &profile.displayname {
            content.insert("displayname".into(), json!(name));
        }
        if let Some(avatar) = &profile.avatar_url {
            content.insert("avatar_url".into(), json!(avatar));
        }
    }
    if let Some(reason) = reason {
        content.insert("reason".into(), json!(reason));
    }
    content
}

/// How long a membership change waits for a room joined with a partial state to be
/// whole.
const SETTLED_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Rooms {
    /// Waits for the room's member list when it is held with a partial state: another
    /// member's join, an invite, a kick or a ban is judged on the members, which the
    /// partial state lacks (a user banned there would get in here). 503 when the list
    /// does not come in time.
    async fn members_settled(&self, room_id: &str) -> ServiceResult<()> {
        if self.wait_full_state(room_id, SETTLED_WAIT).await? {
            return Ok(());
        }
        Err(ServiceError::new(
            ErrorKind::Unavailable,
            ErrorCode::Unknown,
            "The room's member list is still being fetched from other servers; try again shortly",
        ))
    }

    /// Sends the member event for `target` (the writer checks the room exists).
    async fn set_membership(
        &self,
        sender: &UserId,
        room_id: &str,
        target: &str,
        content: Map<String, Value>,
    ) -> ServiceResult<()> {
        let draft = EventDraft::new(
            sender.as_str(),
            "m.room.member",
            Some(target),
            Value::Object(content),
        );
        self.append(room_id, vec![draft]).await?;
        Ok(())
    }

    /// Joins `user` to a room this server knows (joining over federation is not built
    /// yet: an unknown room is 404 `M_NOT_FOUND`). A guest's join is marked as one and
    /// needs the room's guest access to be `can_join` (see [`super::guests`]).
    pub async fn join(
        &self,
        user: &UserId,
        room_id: &str,
        reason: Option<String>,
        profile: &MemberProfile,
        is_guest: bool,
    ) -> ServiceResult<()> {
        let room = self
            .store
            .room(room_id)?
            .ok_or_else(|| ServiceError::not_found("No known servers for this room"))?;
        let current = self.membership_of(user.as_str(), room_id)?;
        if current.as_deref() == Some("join") {
            return Ok(());
        }
        self.members_settled(room_id).await?;
        let mut content = member_content("join", Some(profile), reason);
        if is_guest {
            content.insert(guests::KIND_FIELD.into(), json!(guests::GUEST));
        }
        let join_rule = self
            .store
            .state_event(room.record.state, "m.room.join_rules", "")?;
        let rule = join_rule
            .as_ref()
            .and_then(|e| e.content().get("join_rule"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if matches!(rule, "restricted" | "knock_restricted") && current.as_deref() != Some("invite")
        {
            let allow = join_rule
                .as_ref()
                .and_then(|e| e.content().get("allow"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let allowed_by_membership = allow.iter().any(|entry| {
                entry.get("type").and_then(Value::as_str) == Some("m.room_membership")
                    && entry
                        .get("room_id")
                        .and_then(Value::as_str)
                        .and_then(|r| self.membership_of(user.as_str(), r).ok().flatten())
                        .as_deref()
                        == Some("join")
            });
            if allowed_by_membership {
                // None of ours may: another server's member may (see
                // `Federation::join_authorised_elsewhere`).
                let via = self.local_inviter(room_id)?.ok_or_else(|| {
                    ServiceError::new(
                        ErrorKind::Invalid,
                        ErrorCode::UnableToGrantJoin,
                        "No member of this server may authorise the join",
                    )
                })?;
                content.insert("join_authorised_via_users_server".into(), json!(via));
            } else if rule == "restricted" {
                return Err(ServiceError::forbidden(
                    "You are not joined to any room that grants access to this one",
                ));
            }
        }
        self.set_membership(user, room_id, user.as_str(), content)
            .await
    }

    /// Spec: "Profiles", "Events on Change of Profile Information": a new display name or
    /// avatar is sent as a new `m.room.member` join event in every room the user is
    /// joined to. A room that refuses it (its rules forbid the change) is skipped.
    pub async fn update_member_profile(
        &self,
        user: &UserId,
        profile: &MemberProfile,
    ) -> ServiceResult<()> {
        for room_id in self.joined_rooms(user.as_str())? {
            let Some(room) = self.store.room(&room_id)? else {
                continue;
            };
            let mut content = self
                .store
                .state_event(room.record.state, "m.room.member", user.as_str())?
                .and_then(|e| e.content().as_object().cloned())
                .unwrap_or_default();
            content.insert("membership".into(), json!("join"));
            for (key, value) in [
                ("displayname", &profile.displayname),
                ("avatar_url", &profile.avatar_url),
            ] {
                match value {
                    Some(v) => content.insert(key.into(), json!(v)),
                    None => content.remove(key),
                };
            }
            content.remove("reason");
            // The join's authoriser (a restricted join) authorised that join only: named
            // again, the change would need its server's signature, which another
            // server's member never gives for this event (Synapse drops it too).
            content.remove("join_authorised_via_users_server");
            if let Err(e) = self
                .send_state(
                    user,
                    &room_id,
                    "m.room.member",
                    user.as_str(),
                    Value::Object(content),
                )
                .await
            {
                tracing::info!(room = %room_id, user = %user, "profile change not sent: {}", e.message);
            }
        }
        Ok(())
    }

    /// The other servers with a joined member who may invite, who can authorise a
    /// restricted join none of ours can: the most powerful member's server first.
    pub fn remote_authorisers(&self, room_id: &str) -> ServiceResult<Vec<String>> {
        let room = self.known_room(room_id)?;
        let levels = self.current_power_levels(&room)?;
        let own = self.server_name.as_str();
        let mut found: Vec<(i128, &str)> = Vec::new();
        let members = self
            .store
            .state_events(room.record.state, Some("m.room.member"))?;
        for member in &members {
            let Some(user) = member.state_key() else {
                continue;
            };
            let joined = member.content().get("membership").and_then(Value::as_str) == Some("join");
            let power = levels.user(user);
            match user.split_once(':') {
                Some((_, server))
                    if joined && server != own && power >= i128::from(levels.invite) =>
                {
                    found.push((power, server));
                }
                _ => {}
            }
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut servers: Vec<String> = Vec::new();
        for (_, server) in found {
            if !servers.iter().any(|s| s == server) {
                servers.push(server.to_owned());
            }
        }
        Ok(servers)
    }

    /// A local joined member with the power to invite (for restricted joins).
    pub(super) fn local_inviter(&self, room_id: &str) -> ServiceResult<Option<String>> {
        let room = self.known_room(room_id)?;
        let snapshot = room.record.state;
        let levels = self.current_power_levels(&room)?;
        let suffix = format!(":{}", self.server_name.as_str());
        let mut best: Option<(i128, String)> = None;
        for member in self.store.state_events(snapshot, Some("m.room.member"))? {
            let Some(user) = member.state_key() else {
                continue;
            };
            let joined = member.content().get("membership").and_then(Value::as_str) == Some("join");
            let power = levels.user(user);
            if joined
                && user.ends_with(&suffix)
                && power >= i128::from(levels.invite)
                && best.as_ref().is_none_or(|(p, _)| power > *p)
            {
                best = Some((power, user.to_owned()));
            }
        }
        Ok(best.map(|(_, user)| user))
    }

    /// Invites `target`, a user of this server; answers the invite's event id.
    pub async fn invite(
        &self,
        sender: &UserId,
        room_id: &str,
        target: &UserId,
        reason: Option<String>,
        is_direct: bool,
        target_profile: Option<&MemberProfile>,
    ) -> ServiceResult<String> {
        self.members_settled(room_id).await?;
        let draft =
            self.invite_draft(sender, room_id, target, reason, is_direct, target_profile)?;
        self.append(room_id, vec![draft])
            .await?
            .pop()
            .ok_or_else(|| ServiceError::internal("the invite was not written"))
    }

    /// The invite of `target`, a user of another server, built, signed and checked on
    /// the room's current state but not kept: that server signs it first (spec:
    /// server-server API, "Inviting to a room"; see [`Rooms::keep_signed_invite`]).
    pub async fn build_invite(
        &self,
        sender: &UserId,
        room_id: &str,
        target: &UserId,
        reason: Option<String>,
        is_direct: bool,
    ) -> ServiceResult<BuiltPdu> {
        self.members_settled(room_id).await?;
        let draft = self.invite_draft(sender, room_id, target, reason, is_direct, None)?;
        self.writers.build(room_id, draft).await
    }

    fn invite_draft(
        &self,
        sender: &UserId,
        room_id: &str,
        target: &UserId,
        reason: Option<String>,
        is_direct: bool,
        target_profile: Option<&MemberProfile>,
    ) -> ServiceResult<EventDraft> {
        self.known_room(room_id)?;
        match self.membership_of(target.as_str(), room_id)?.as_deref() {
            Some("join") => {
                return Err(ServiceError::forbidden(format!(
                    "{target} is already in the room"
                )))
            }
            Some("ban") => {
                return Err(ServiceError::forbidden(format!(
                    "{target} is banned from the room"
                )))
            }
            _ => {}
        }
        let mut content = member_content("invite", target_profile, reason);
        if is_direct {
            content.insert("is_direct".into(), json!(true));
        }
        Ok(EventDraft::new(
            sender.as_str(),
            "m.room.member",
            Some(target.as_str()),
            Value::Object(content),
        ))
    }

    /// Leaves a room (or rejects an invite, or withdraws a knock).
    pub async fn leave(
        &self,
        user: &UserId,
        room_id: &str,
        reason: Option<String>,
    ) -> ServiceResult<()> {
        let content = member_content("leave", None, reason);
        self.set_membership(user, room_id, user.as_str(), content)
            .await
    }

    /// Kicks `target`: a leave event by someone else.
    pub async fn kick(
        &self,
        sender: &UserId,
        room_id: &str,
        target: &UserId,
        reason: Option<String>,
    ) -> ServiceResult<()> {
        self.members_settled(room_id).await?;
        self.known_room(room_id)?;
        match self.membership_of(target.as_str(), room_id)?.as_deref() {
            Some("join" | "invite" | "knock") => {}
            _ => {
                return Err(ServiceError::forbidden(format!(
                    "{target} is not in the room, invited or knocking"
                )))
            }
        }
        let content = member_content("leave", None, reason);
        self.set_membership(sender, room_id, target.as_str(), content)
            .await
    }

    /// Bans `target`.
    pub async fn ban(
        &self,
        sender: &UserId,
        room_id: &str,
        target: &UserId,
        reason: Option<String>,
    ) -> ServiceResult<()> {
        self.members_settled(room_id).await?;
        let content = member_content("ban", None, reason);
        self.set_membership(sender, room_id, target.as_str(), content)
            .await
    }

    /// Lifts a ban (the target's membership becomes `leave`).
    pub async fn unban(
        &self,
        sender: &UserId,
        room_id: &str,
        target: &UserId,
        reason: Option<String>,
    ) -> ServiceResult<()> {
        self.members_settled(room_id).await?;
        self.known_room(room_id)?;
        if self.membership_of(target.as_str(), room_id)?.as_deref() != Some("ban") {
            return Err(ServiceError::forbidden(format!("{target} is not banned")));
        }
        let content = member_content("leave", None, reason);
        self.set_membership(sender, room_id, target.as_str(), content)
            .await
    }

    /// Knocks on a room whose join rule allows it.
    pub async fn knock(
        &self,
        user: &UserId,
        room_id: &str,
        reason: Option<String>,
        profile: &MemberProfile,
    ) -> ServiceResult<()> {
        self.store
            .room(room_id)?
            .ok_or_else(|| ServiceError::not_found("No known servers for this room"))?;
        let content = member_content("knock", Some(profile), reason);
        self.set_membership(user, room_id, user.as_str(), content)
            .await
    }

    /// Forgets a room the user left: it no longer shows in their lists.
    pub async fn forget(&self, user: &UserId, room_id: &str) -> ServiceResult<()> {
        self.store
            .membership(user.as_str(), room_id)?
            .ok_or_else(|| ServiceError::not_found("You have never been in this room"))?;
        self.writers
            .submit(
                room_id,
                Writers::job(JobStart::Forget(user.as_str().to_owned()), Vec::new()),
            )
            .await?;
        Ok(())
    }
}
