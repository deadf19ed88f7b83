//! Room upgrades.
//!
//! Spec: client-server API, "Room Upgrades", "Server behaviour": check the user may send
//! `m.room.tombstone`; create the new room with `predecessor` in its create event; copy the
//! state the spec lists (and the bans); tombstone the old room; restrict it
//! (`events_default` and `invite` raised to `max(50, users_default + 1)`); move local
//! aliases and the directory listing to the new room.

use serde_json::{json, Map, Value};

use super::create::check_drafts;
use super::membership::{member_content, MemberProfile};
use super::writer::{EventDraft, JobStart, Writers};
use super::Rooms;
use crate::core::power_levels;
use crate::core::{RoomVersion, UserId};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::storage::{keys, Table};

/// State carried into the new room.
const COPIED_STATE: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

/// The highest finite level a power levels content names (users, events, and the rest).
fn highest_level(content: &Map<String, Value>) -> i64 {
    let mut top = 0;
    for (key, value) in content {
        match value {
            Value::Object(map) if matches!(key.as_str(), "users" | "events" | "notifications") => {
                for v in map.values() {
                    top = top.max(power_levels::integer_or_integer_string(v).unwrap_or(0));
                }
            }
            v => top = top.max(power_levels::integer_or_integer_string(v).unwrap_or(0)),
        }
    }
    top
}

impl Rooms {
    /// Upgrades `room_id` to `new_version`; answers the replacement room's id.
    pub async fn upgrade(
        &self,
        user: &UserId,
        room_id: &str,
        new_version: &str,
        additional_creators: Vec<String>,
        profile: &MemberProfile,
    ) -> ServiceResult<String> {
        let version = RoomVersion::from_id(new_version)
            .filter(|v| v.is_stable())
            .ok_or_else(|| {
                ServiceError::new(
                    ErrorKind::Invalid,
                    ErrorCode::UnsupportedRoomVersion,
                    format!("Room version {new_version:?} is not supported (10, 11 and 12 are)"),
                )
            })?;
        let old = self.known_room(room_id)?;
        if self.membership_of(user.as_str(), room_id)?.as_deref() != Some("join") {
            return Err(ServiceError::forbidden("You are not in the room"));
        }
        let levels = self.current_power_levels(&old)?;
        let levels_content = self
            .store
            .state_event(old.record.state, "m.room.power_levels", "")?
            .map(|e| e.content().clone());
        if levels.user(user.as_str()) < levels.event("m.room.tombstone", true) {
            return Err(ServiceError::forbidden(
                "You may not upgrade this room (sending m.room.tombstone needs more power)",
            ));
        }
        let snapshot = old.record.state;
        let old_create = self
            .store
            .state_event(snapshot, "m.room.create", "")?
            .ok_or_else(|| ServiceError::internal("room without a create event"))?;

        // The new room's create event.
        let mut create_content = Map::new();
        for key in ["type", "m.federate"] {
            if let Some(v) = old_create.content().get(key) {
                create_content.insert(key.into(), v.clone());
            }
        }
        create_content.insert("room_version".into(), json!(version.as_str()));
        if version.create_event_has_creator_key() {
            create_content.insert("creator".into(), json!(user.as_str()));
        }
        let mut predecessor = json!({ "room_id": room_id });
        if !version.room_id_is_create_event_hash() {
            // Before v12 the predecessor names the old room's last event too.
            if let Some(last) = old.record.extremities.first() {
                predecessor["event_id"] = json!(last);
            }
        }
        create_content.insert("predecessor".into(), predecessor);
        let mut creators: Vec<String> = Vec::new();
        if version.creators_have_infinite_power() {
            for extra in additional_creators {
                UserId::parse(&extra).map_err(|e| {
                    ServiceError::invalid_param(format!("additional_creators: {extra:?}: {e}"))
                })?;
                if extra != user.as_str() && !creators.contains(&extra) {
                    creators.push(extra);
                }
            }
            if !creators.is_empty() {
                create_content.insert("additional_creators".into(), json!(creators));
            }
        }
        let (create, new_room_id) = self.build_create_event(version, user, create_content)?;

        let sender = user.as_str();
        let mut drafts = Vec::new();
        let join = member_content("join", Some(profile), None);
        drafts.push(EventDraft::new(
            sender,
            "m.room.member",
            Some(sender),
            Value::Object(join),
        ));
        // Power levels: the old ones; in v12 the creators are not listed.
        let had_levels = levels_content.is_some();
        let mut new_levels = levels_content
            .and_then(|c| c.as_object().cloned())
            .unwrap_or_default();
        power_levels::integers_only(&mut new_levels);
        // The levels the new room ends with, when the upgrader's is raised only to copy.
        let mut final_levels = None;
        if version.creators_have_infinite_power() {
            if let Some(users) = new_levels.get_mut("users").and_then(Value::as_object_mut) {
                users.remove(sender);
                for c in &creators {
                    users.remove(c);
                }
            }
        } else {
            // The upgrader (and, coming from v12, the old room's creators, whose power was
            // infinite) get the highest level the content names, so every copied event is
            // theirs to send.
            let top = highest_level(&new_levels).max(100);
            let old_creators = if old.version.creators_have_infinite_power() {
                power_levels::creators(old.version, Some(old_create.pdu()))
            } else {
                Vec::new()
            };
            let levels_as_copied = new_levels.clone();
            let users = new_levels
                .entry("users")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .ok_or_else(|| ServiceError::internal("power levels users is not an object"))?;
            // Their own level comes back once everything is copied (as Synapse does): a
            // moderator who may send the tombstone does not come out an admin. The old
            // room's v12 creators keep the highest, the nearest to their infinite power.
            // (An old room without power levels has no level of theirs to give back: the
            // defaults would leave no one able to change the new room's state.)
            if had_levels
                && levels.user(sender) < i128::from(top)
                && old_creators.iter().all(|c| c != sender)
            {
                let mut restored = levels_as_copied;
                let users = restored.entry("users").or_insert_with(|| json!({}));
                if let Some(users) = users.as_object_mut() {
                    for creator in &old_creators {
                        users.insert(creator.clone(), json!(top));
                    }
                }
                final_levels = Some(restored);
            }
            users.insert(sender.to_owned(), json!(top));
            for creator in old_creators {
                users.insert(creator, json!(top));
            }
        }
        drafts.push(EventDraft::new(
            sender,
            "m.room.power_levels",
            Some(""),
            Value::Object(new_levels),
        ));
        for kind in COPIED_STATE {
            if let Some(event) = self.store.state_event(snapshot, kind, "")? {
                if event.meta.redacted_by == 0 {
                    drafts.push(EventDraft::new(
                        sender,
                        kind,
                        Some(""),
                        event.content().clone(),
                    ));
                }
            }
        }
        for member in self.store.state_events(snapshot, Some("m.room.member"))? {
            if member.content().get("membership").and_then(Value::as_str) == Some("ban") {
                if let Some(target) = member.state_key() {
                    let mut content = json!({ "membership": "ban" });
                    if let Some(reason) = member.content().get("reason") {
                        content["reason"] = reason.clone();
                    }
                    drafts.push(EventDraft::new(
                        sender,
                        "m.room.member",
                        Some(target),
                        content,
                    ));
                }
            }
        }
        if let Some(levels) = final_levels {
            drafts.push(EventDraft::new(
                sender,
                "m.room.power_levels",
                Some(""),
                Value::Object(levels),
            ));
        }
        check_drafts(
            version,
            &new_room_id,
            &create.pdu,
            &drafts,
            self.server_name.as_str(),
        )?;
        self.writers
            .submit(
                &new_room_id,
                Writers::job(JobStart::Create(Box::new(create), version), drafts),
            )
            .await?;

        // Tombstone and restrict the old room.
        let tombstone = EventDraft::new(
            sender,
            "m.room.tombstone",
            Some(""),
            json!({
                "body": "This room has been replaced",
                "replacement_room": new_room_id,
            }),
        );
        self.append(room_id, vec![tombstone]).await?;
        // The rest is best effort (as Synapse): the room is upgraded once the tombstone
        // is in; a restriction the auth rules refuse (the upgrader may lack the power to
        // set `events_default` or `invite` that high) does not undo that.
        let mut old_drafts = Vec::new();
        if let Some(mut content) = self
            .store
            .state_event(snapshot, "m.room.power_levels", "")?
            .and_then(|e| e.content().as_object().cloned())
        {
            let users_default = content
                .get("users_default")
                .and_then(|v| power_levels::level_value(old.version, v))
                .unwrap_or(0);
            let restricted = (users_default + 1).max(50);
            let mut changed = false;
            for key in ["events_default", "invite"] {
                let current = content
                    .get(key)
                    .and_then(|v| power_levels::level_value(old.version, v))
                    .unwrap_or(0);
                if current < restricted {
                    content.insert(key.into(), json!(restricted));
                    changed = true;
                }
            }
            if changed && levels.user(sender) >= levels.event("m.room.power_levels", true) {
                old_drafts.push(EventDraft::new(
                    sender,
                    "m.room.power_levels",
                    Some(""),
                    Value::Object(content),
                ));
            }
        }
        if !old_drafts.is_empty() {
            if let Err(e) = self.append(room_id, old_drafts).await {
                tracing::info!(room = %room_id, "the replaced room was not restricted: {}", e.message);
            }
        }
        self.transfer_directory(room_id, &new_room_id).await?;
        if let Some(alias) = self
            .store
            .state_event(snapshot, "m.room.canonical_alias", "")?
            .filter(|e| e.content().as_object().is_some_and(|c| !c.is_empty()))
        {
            // Best effort, as Synapse: aliases of other servers cannot be checked, so the
            // new room may refuse them; the room is upgraded either way.
            let content = alias.content().clone();
            if let Err(e) = self
                .send_state(user, &new_room_id, "m.room.canonical_alias", "", content)
                .await
            {
                tracing::info!(room = %new_room_id, "canonical alias not carried over: {}", e.message);
            }
            if let Err(e) = self
                .send_state(user, room_id, "m.room.canonical_alias", "", json!({}))
                .await
            {
                tracing::info!(room = %room_id, "the replaced room's alias was not cleared: {}", e.message);
            }
        }
        Ok(new_room_id)
    }

    /// Moves our aliases of room `old` to `new`, and its place in our room directory,
    /// if it has one (spec: "Room Upgrades", server behaviour).
    pub async fn transfer_directory(&self, old: &str, new: &str) -> ServiceResult<()> {
        self.move_aliases(old, new).await?;
        if self.store.db.contains(Table::RoomidPublished, old)? {
            self.set_published(new, true).await?;
            self.set_published(old, false).await?;
        }
        Ok(())
    }

    async fn move_aliases(&self, old: &str, new: &str) -> ServiceResult<()> {
        let _guard = self.alias_lock.lock().await;
        let prefix = keys::prefix(old.as_bytes());
        let mut batch = self.store.db.batch();
        for entry in self.store.db.scan_prefix(Table::RoomidAlias, &prefix) {
            let (key, _) = entry?;
            let alias = &key[prefix.len()..];
            let Some(mut record) = self.alias_target(&String::from_utf8_lossy(alias))? else {
                continue;
            };
            record.room_id = new.to_owned();
            batch.put(
                Table::AliasRoomid,
                alias,
                crate::services::records::encode(&record),
            );
            batch.delete(Table::RoomidAlias, &key);
            batch.put(
                Table::RoomidAlias,
                keys::join(&[new.as_bytes(), alias]),
                b"",
            );
        }
        self.store.db.commit(batch).await?;
        Ok(())
    }
}
