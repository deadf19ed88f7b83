//! The user directory: finding people to talk to by name.
//!
//! Spec: client-server API, "User directory" (`POST /user_directory/search`): the users
//! who share a room with the searcher, and the users in public rooms, matched by user id
//! and display name, at most `limit` (default 10), with `limited` when there were more.
//! Synapse's behaviour, which clients expect, guides what the spec leaves open: every
//! search word must start a word of the user id or display name, ignoring case and
//! accents; people who share a room with the searcher come first.
//!
//! A public room is one anyone may join (`join_rules` public) or read
//! (`history_visibility` world_readable). The search reads the members of the searcher's
//! rooms and of every public room at the time of the query; it keeps no tables.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::core::UserId;
use crate::services::error::ServiceResult;
use crate::services::rooms::event_store::{EventStore, Room};
use crate::services::search::terms;
use crate::services::Services;

/// Results when the request names no limit.
pub const DEFAULT_LIMIT: usize = 10;
/// The most results per search.
pub const MAX_LIMIT: usize = 100;
/// Search words used at most (the rest are ignored).
const MAX_TERMS: usize = 16;

/// A user found in some room.
#[derive(Debug, Clone)]
struct Found {
    display_name: Option<String>,
    avatar_url: Option<String>,
    shares_room: bool,
}

/// The answer of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryResults {
    /// `{user_id, display_name?, avatar_url?}` each, best first.
    pub results: Vec<Value>,
    /// Whether more users matched than were returned.
    pub limited: bool,
}

/// Searches the directory for `searcher`.
pub fn search_users(
    services: &Services,
    searcher: &str,
    search_term: &str,
    limit: usize,
) -> ServiceResult<DirectoryResults> {
    let store = services.rooms.store();
    let mut wanted: Vec<String> = terms::terms(search_term);
    wanted.sort();
    wanted.dedup();
    wanted.truncate(MAX_TERMS);
    if wanted.is_empty() {
        return Ok(DirectoryResults {
            results: Vec::new(),
            limited: false,
        });
    }
    let mut found: HashMap<String, Found> = HashMap::new();
    for (room_id, record) in store.memberships_of(searcher)? {
        if record.membership != "join" {
            continue;
        }
        if let Some(room) = store.room(&room_id)? {
            collect_members(store, &room, true, &mut found)?;
        }
    }
    for room in store.all_rooms()? {
        // A room none of our users is in any more is not followed: its members as we
        // last knew them are no one's current room mates (as Synapse drops them).
        if is_public(store, &room)? && services.rooms.has_local_member(&room.record.room_id)? {
            collect_members(store, &room, false, &mut found)?;
        }
    }

    let server_name = services.config.server_name.as_str();
    let mut matches: Vec<(String, Found, usize)> = Vec::new();
    for (user_id, mut user) in found {
        let Ok(parsed) = UserId::parse(&user_id) else {
            continue;
        };
        if parsed.server_name() == server_name {
            // Local users: the global profile, and never a deactivated account.
            if !services.accounts.is_active_user(&parsed)? {
                continue;
            }
            if let Some(profile) = services.accounts.profile(&parsed)? {
                user.display_name = profile.displayname;
                user.avatar_url = profile.avatar_url;
            }
        }
        let mut words = terms::terms(&user_id);
        if let Some(name) = &user.display_name {
            words.extend(terms::terms(name));
        }
        let all_match = wanted
            .iter()
            .all(|w| words.iter().any(|word| word.starts_with(w.as_str())));
        if !all_match {
            continue;
        }
        let exact = wanted.iter().filter(|w| words.contains(w)).count();
        matches.push((user_id, user, exact));
    }
    matches.sort_by(|(a_id, a, a_exact), (b_id, b, b_exact)| {
        b.shares_room
            .cmp(&a.shares_room)
            .then(b_exact.cmp(a_exact))
            .then(b.display_name.is_some().cmp(&a.display_name.is_some()))
            .then(a_id.cmp(b_id))
    });
    let limited = matches.len() > limit;
    let results = matches
        .into_iter()
        .take(limit)
        .map(|(user_id, user, _)| {
            let mut entry = json!({ "user_id": user_id });
            if let Some(name) = user.display_name {
                entry["display_name"] = json!(name);
            }
            if let Some(avatar) = user.avatar_url {
                entry["avatar_url"] = json!(avatar);
            }
            entry
        })
        .collect();
    Ok(DirectoryResults { results, limited })
}

/// Whether anyone may join or read the room.
fn is_public(store: &EventStore, room: &Room) -> ServiceResult<bool> {
    let content_is = |kind: &str, key: &str, value: &str| -> ServiceResult<bool> {
        Ok(store
            .state_event(room.record.state, kind, "")?
            .is_some_and(|e| e.content().get(key).and_then(Value::as_str) == Some(value)))
    };
    Ok(content_is("m.room.join_rules", "join_rule", "public")?
        || content_is(
            "m.room.history_visibility",
            "history_visibility",
            "world_readable",
        )?)
}

/// Adds the room's joined members to `found`.
fn collect_members(
    store: &EventStore,
    room: &Room,
    shares_room: bool,
    found: &mut HashMap<String, Found>,
) -> ServiceResult<()> {
    for event in store.state_events(room.record.state, Some("m.room.member"))? {
        let content = event.content();
        if content.get("membership").and_then(Value::as_str) != Some("join") {
            continue;
        }
        let Some(user_id) = event.state_key() else {
            continue;
        };
        let text = |key: &str| content.get(key).and_then(Value::as_str).map(str::to_owned);
        let entry = found.entry(user_id.to_owned()).or_insert_with(|| Found {
            display_name: text("displayname"),
            avatar_url: text("avatar_url"),
            shares_room,
        });
        entry.shares_room |= shares_room;
    }
    Ok(())
}
