//! Room aliases and the published room directory.
//!
//! Spec: client-server API, "Room aliases" (`PUT/GET/DELETE /directory/room/{roomAlias}`,
//! `GET /rooms/{roomId}/aliases`), "Published room directory" (`GET/PUT
//! /directory/list/room/{roomId}`, `GET/POST /publicRooms`), and `m.room.canonical_alias`'s
//! rule that its aliases must point to the room (`M_BAD_ALIAS`).

use serde_json::{json, Value};

use super::event_store::Room;
use super::records::AliasRecord;
use super::Rooms;
use crate::core::{RoomAliasId, UserId};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::storage::{keys, Table};

/// Rooms one `/publicRooms` page holds at most.
const MAX_PUBLIC_ROOMS_PAGE: usize = 500;

/// One `/publicRooms` request.
#[derive(Debug, Default)]
pub struct PublicRoomsQuery {
    /// Page size.
    pub limit: Option<usize>,
    /// Pagination token from a previous page.
    pub since: Option<String>,
    /// Case-insensitive text to find in name, topic or alias.
    pub search: Option<String>,
    /// Room types to include (`None` in the list stands for rooms without a type).
    pub room_types: Option<Vec<Option<String>>>,
}

fn bad_alias(message: impl Into<String>) -> ServiceError {
    ServiceError::new(ErrorKind::Invalid, ErrorCode::BadAlias, message)
}

/// Spec: `m.room.canonical_alias`: `alias` and `alt_aliases` must be valid aliases that
/// point to this room. Aliases of other servers cannot be checked without federation and
/// are refused.
pub(super) fn check_canonical_alias(
    rooms: &Rooms,
    room_id: &str,
    content: &Value,
) -> ServiceResult<()> {
    let mut aliases = Vec::new();
    match content.get("alias") {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) => aliases.push(a.as_str()),
        Some(_) => return Err(ServiceError::bad_json("alias must be a string")),
    }
    match content.get("alt_aliases") {
        None => {}
        Some(Value::Array(list)) => {
            for a in list {
                aliases.push(
                    a.as_str()
                        .ok_or_else(|| ServiceError::bad_json("alt_aliases must hold strings"))?,
                );
            }
        }
        Some(_) => return Err(ServiceError::bad_json("alt_aliases must be an array")),
    }
    for alias in aliases {
        let parsed = RoomAliasId::parse(alias)
            .map_err(|e| ServiceError::invalid_param(format!("{alias:?} is not an alias: {e}")))?;
        if parsed.server_name() != rooms.server_name.as_str() {
            return Err(bad_alias(format!(
                "{alias} belongs to another server and cannot be checked without federation"
            )));
        }
        if rooms.alias_target(alias)?.map(|r| r.room_id).as_deref() != Some(room_id) {
            return Err(bad_alias(format!("{alias} does not point to this room")));
        }
    }
    Ok(())
}

impl Rooms {
    /// Where a local alias points, if anywhere.
    pub fn alias_target(&self, alias: &str) -> ServiceResult<Option<AliasRecord>> {
        self.store
            .db
            .get(Table::AliasRoomid, alias)?
            .map(|b| decode(Table::AliasRoomid, &b))
            .transpose()
    }

    fn parse_local_alias(&self, alias: &str) -> ServiceResult<RoomAliasId> {
        let parsed = RoomAliasId::parse(alias).map_err(|e| {
            ServiceError::invalid_param(format!("{alias:?} is not a room alias: {e}"))
        })?;
        if parsed.server_name() != self.server_name.as_str() {
            return Err(ServiceError::invalid_param(
                "Room alias must be on this server",
            ));
        }
        Ok(parsed)
    }

    /// Writes an alias record (409 if the alias exists).
    pub(super) async fn put_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &str,
        creator: &str,
    ) -> ServiceResult<()> {
        let _guard = self.alias_lock.lock().await;
        if self.alias_target(alias.as_str())?.is_some() {
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                ErrorCode::Unknown,
                "Room alias already exists",
            ));
        }
        let mut batch = self.store.db.batch();
        batch.put(
            Table::AliasRoomid,
            alias.as_str(),
            encode(&AliasRecord {
                room_id: room_id.to_owned(),
                creator: creator.to_owned(),
            }),
        );
        batch.put(
            Table::RoomidAlias,
            keys::join(&[room_id.as_bytes(), alias.as_str().as_bytes()]),
            b"",
        );
        self.store.db.commit(batch).await?;
        Ok(())
    }

    pub(super) async fn remove_alias_record(
        &self,
        alias: &str,
        room_id: &str,
    ) -> ServiceResult<()> {
        let mut batch = self.store.db.batch();
        batch.delete(Table::AliasRoomid, alias);
        batch.delete(
            Table::RoomidAlias,
            keys::join(&[room_id.as_bytes(), alias.as_bytes()]),
        );
        self.store.db.commit(batch).await?;
        Ok(())
    }

    /// `PUT /directory/room/{alias}`.
    pub async fn create_alias(
        &self,
        user: &UserId,
        alias: &str,
        room_id: &str,
    ) -> ServiceResult<()> {
        let alias = self.parse_local_alias(alias)?;
        self.known_room(room_id)?;
        self.put_alias(&alias, room_id, user.as_str()).await
    }

    fn power_for_state(&self, room: &Room, user: &str, event_type: &str) -> ServiceResult<bool> {
        let levels = self.current_power_levels(room)?;
        let joined = self.membership_of(user, &room.record.room_id)?.as_deref() == Some("join");
        Ok(joined && levels.user(user) >= levels.event(event_type, true))
    }

    /// `DELETE /directory/room/{alias}`: by its creator, a server admin, or a member who
    /// may change the room's canonical alias.
    pub async fn delete_alias(
        &self,
        user: &UserId,
        is_admin: bool,
        alias: &str,
    ) -> ServiceResult<()> {
        let alias = self.parse_local_alias(alias)?;
        let _guard = self.alias_lock.lock().await;
        let record = self
            .alias_target(alias.as_str())?
            .ok_or_else(|| ServiceError::not_found("Room alias not found"))?;
        let allowed = is_admin
            || record.creator == user.as_str()
            || match self.store.room(&record.room_id)? {
                Some(room) => {
                    self.power_for_state(&room, user.as_str(), "m.room.canonical_alias")?
                }
                None => false,
            };
        if !allowed {
            return Err(ServiceError::forbidden("You may not delete this alias"));
        }
        self.remove_alias_record(alias.as_str(), &record.room_id)
            .await
    }

    /// `GET /directory/room/{alias}`: the room and the servers that know it. Aliases of
    /// other servers need a federation query, not built yet: 404.
    pub fn resolve_alias(&self, alias: &str) -> ServiceResult<(String, Vec<String>)> {
        RoomAliasId::parse(alias).map_err(|e| {
            ServiceError::invalid_param(format!("{alias:?} is not a room alias: {e}"))
        })?;
        let record = self
            .alias_target(alias)?
            .ok_or_else(|| ServiceError::not_found("Room alias not found"))?;
        Ok((record.room_id, vec![self.server_name.as_str().to_owned()]))
    }

    /// A room id, or the room an alias points to.
    pub fn resolve_room_or_alias(&self, target: &str) -> ServiceResult<String> {
        if target.starts_with('#') {
            Ok(self.resolve_alias(target)?.0)
        } else {
            crate::core::RoomId::parse(target).map_err(|e| {
                ServiceError::invalid_param(format!("{target:?} is not a room id or alias: {e}"))
            })?;
            Ok(target.to_owned())
        }
    }

    /// `GET /rooms/{roomId}/aliases`: the local aliases of a room the user is in (or that
    /// is world-readable).
    pub fn local_aliases(&self, user: &str, room_id: &str) -> ServiceResult<Vec<String>> {
        let access = self.read_access(user, room_id)?;
        let joined = access
            .membership
            .as_ref()
            .is_some_and(|m| m.membership == "join");
        if !joined
            && !super::visibility::VisibilityCheck::world_readable(&self.store, &access.room)?
        {
            return Err(ServiceError::forbidden("You are not in the room"));
        }
        let prefix = keys::prefix(room_id.as_bytes());
        let mut out = Vec::new();
        for entry in self.store.db.scan_prefix(Table::RoomidAlias, &prefix) {
            let (key, _) = entry?;
            out.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Whether the room is in the published directory.
    pub fn is_published(&self, room_id: &str) -> ServiceResult<bool> {
        self.known_room(room_id)?;
        Ok(self.store.db.contains(Table::RoomidPublished, room_id)?)
    }

    pub(super) async fn set_published(&self, room_id: &str, published: bool) -> ServiceResult<()> {
        let mut batch = self.store.db.batch();
        if published {
            batch.put(Table::RoomidPublished, room_id, b"");
        } else {
            batch.delete(Table::RoomidPublished, room_id);
        }
        self.store.db.commit(batch).await?;
        Ok(())
    }

    /// `PUT /directory/list/room/{roomId}`: members who may change the canonical alias (or
    /// server admins) publish or hide the room.
    pub async fn set_visibility(
        &self,
        user: &UserId,
        is_admin: bool,
        room_id: &str,
        published: bool,
    ) -> ServiceResult<()> {
        let room = self.known_room(room_id)?;
        if !is_admin && !self.power_for_state(&room, user.as_str(), "m.room.canonical_alias")? {
            return Err(ServiceError::forbidden(
                "You may not change this room's directory visibility",
            ));
        }
        self.set_published(room_id, published).await
    }

    /// The directory entry of one room (`PublishedRoomsChunk`).
    fn directory_entry(&self, room: &Room) -> ServiceResult<Value> {
        let snapshot = room.record.state;
        let room_id = &room.record.room_id;
        let mut entry = json!({ "room_id": room_id });
        let text = |kind: &str, key: &str| -> ServiceResult<Option<String>> {
            Ok(self.store.state_event(snapshot, kind, "")?.and_then(|e| {
                e.content()
                    .get(key)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }))
        };
        for (field, kind, key) in [
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("avatar_url", "m.room.avatar", "url"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
        ] {
            if let Some(v) = text(kind, key)?.filter(|v| !v.is_empty()) {
                entry[field] = json!(v);
            }
        }
        let join_rule = text("m.room.join_rules", "join_rule")?.unwrap_or_else(|| "invite".into());
        entry["join_rule"] = json!(join_rule);
        entry["world_readable"] = json!(
            text("m.room.history_visibility", "history_visibility")?.as_deref()
                == Some("world_readable")
        );
        entry["guest_can_join"] =
            json!(text("m.room.guest_access", "guest_access")?.as_deref() == Some("can_join"));
        if let Some(kind) = self
            .store
            .state_event(snapshot, "m.room.create", "")?
            .and_then(|e| {
                e.content()
                    .get("type")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
        {
            entry["room_type"] = json!(kind);
        }
        let joined = self
            .store
            .state_events(snapshot, Some("m.room.member"))?
            .iter()
            .filter(|e| e.content().get("membership").and_then(Value::as_str) == Some("join"))
            .count();
        entry["num_joined_members"] = json!(joined);
        Ok(entry)
    }

    /// `/publicRooms`: published rooms, most members first, filtered and paginated.
    pub fn public_rooms(&self, query: &PublicRoomsQuery) -> ServiceResult<Value> {
        let mut entries = Vec::new();
        for entry in self.store.db.scan_prefix(Table::RoomidPublished, b"") {
            let (key, _) = entry?;
            let room_id = String::from_utf8_lossy(&key).into_owned();
            let Some(room) = self.store.room(&room_id)? else {
                continue;
            };
            let entry = self.directory_entry(&room)?;
            if let Some(term) = query
                .search
                .as_deref()
                .map(str::to_lowercase)
                .filter(|t| !t.is_empty())
            {
                let hit = ["name", "topic", "canonical_alias"].iter().any(|f| {
                    entry
                        .get(*f)
                        .and_then(Value::as_str)
                        .is_some_and(|v| v.to_lowercase().contains(&term))
                });
                if !hit {
                    continue;
                }
            }
            // An empty list filters nothing (as Synapse reads it): "When not specified,
            // all applicable rooms" are returned.
            if let Some(types) = query.room_types.as_ref().filter(|t| !t.is_empty()) {
                let kind = entry
                    .get("room_type")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if !types.contains(&kind) {
                    continue;
                }
            }
            entries.push(entry);
        }
        entries.sort_by(|a, b| {
            let n = |v: &Value| v["num_joined_members"].as_u64().unwrap_or(0);
            n(b).cmp(&n(a))
                .then_with(|| a["room_id"].as_str().cmp(&b["room_id"].as_str()))
        });
        let total = entries.len();
        let offset = match &query.since {
            None => 0,
            Some(token) => token
                .strip_prefix('p')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| ServiceError::invalid_param("Invalid since token"))?,
        };
        let limit = query
            .limit
            .unwrap_or(MAX_PUBLIC_ROOMS_PAGE)
            .clamp(1, MAX_PUBLIC_ROOMS_PAGE);
        let chunk: Vec<Value> = entries.into_iter().skip(offset).take(limit).collect();
        let mut out = json!({
            "chunk": chunk,
            "total_room_count_estimate": total,
        });
        if offset.saturating_add(limit) < total {
            out["next_batch"] = json!(format!("p{}", offset + limit));
        }
        if offset > 0 {
            out["prev_batch"] = json!(format!("p{}", offset.saturating_sub(limit)));
        }
        Ok(out)
    }
}
