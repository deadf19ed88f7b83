//! Notifications: what each event's push actions leave for the room's local members, the
//! unread counts `/sync` shows, and `GET /notifications`.
//!
//! One entry per (user, room, position) of an event that notifies the user, in the event's
//! own write batch: `highlight (1 byte) ++ event short id (u64 BE) ++ origin_server_ts
//! (u64 BE) ++ actions (JSON)`. Counts scan a room's entries after the read receipt;
//! `/notifications` merges the newest entries of each room.

use serde_json::Value;

use super::Push;
use crate::core::push_rules::{self, PushContext};
use crate::error::{MatrixError, MatrixResult};
use crate::services::rooms::writer::{NewEvent, NewEventHook};
use crate::storage::{keys, Batch, Table};

/// Unread entries counted at most per room (clients show "99+" long before).
const MAX_COUNTED: usize = 10_000;
/// Bytes before the actions in an entry.
const HEADER: usize = 17;

/// One notification, as stored.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The room's short id.
    pub room: u64,
    /// The event's short id.
    pub event: u64,
    /// When the event was sent.
    pub ts: u64,
    /// Its stream position.
    pub pos: u64,
    /// The actions of the rule that matched.
    pub actions: Vec<Value>,
}

fn user_prefix(user_id: &str) -> Vec<u8> {
    keys::prefix(user_id.as_bytes())
}

fn entry_key(user_id: &str, room: u64, pos: u64) -> Vec<u8> {
    let mut key = user_prefix(user_id);
    key.extend_from_slice(&room.to_be_bytes());
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

fn corrupt() -> MatrixError {
    MatrixError::internal("corrupt notification entry")
}

/// Unread counts of one room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnreadCounts {
    /// Events that notify.
    pub notifications: u64,
    /// Of those, events that highlight.
    pub highlights: u64,
}

impl NewEventHook for Push {
    fn new_event(&self, event: &NewEvent<'_>, batch: &mut Batch<'_>) -> MatrixResult<()> {
        let sender = event
            .pdu
            .get("sender")
            .and_then(Value::as_str)
            .unwrap_or("");
        let ts = event
            .pdu
            .get("origin_server_ts")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        for member in event.local_members {
            if member.user_id == sender {
                continue;
            }
            let ruleset = self.ruleset(&member.user_id)?;
            let ctx = PushContext {
                user_id: &member.user_id,
                display_name: member.display_name.as_deref(),
                room_member_count: event.joined_count,
                sender_power: event.power_levels.user(sender),
                notification_levels: event.notification_levels,
            };
            let Some(rule) = push_rules::evaluate(&ruleset, event.pdu, &ctx) else {
                continue;
            };
            let outcome = push_rules::outcome(&rule.actions);
            if !outcome.notify {
                continue;
            }
            let mut value = Vec::with_capacity(HEADER + 16);
            value.push(u8::from(outcome.highlight));
            value.extend_from_slice(&event.short.to_be_bytes());
            value.extend_from_slice(&ts.to_be_bytes());
            value.extend_from_slice(&serde_json::to_vec(&rule.actions).unwrap_or_default());
            batch.put(
                Table::UseridShortroomidPosNotify,
                entry_key(&member.user_id, event.room, event.pos),
                value,
            );
        }
        Ok(())
    }
}

fn parse_entry(key: &[u8], value: &[u8], prefix_len: usize) -> MatrixResult<Notification> {
    let ids = key.get(prefix_len..prefix_len + 16).ok_or_else(corrupt)?;
    let (room, pos) = (
        keys::read_u64(&ids[..8]).ok_or_else(corrupt)?,
        keys::read_u64(&ids[8..]).ok_or_else(corrupt)?,
    );
    let header = value.get(..HEADER).ok_or_else(corrupt)?;
    Ok(Notification {
        room,
        pos,
        event: keys::read_u64(&header[1..9]).ok_or_else(corrupt)?,
        ts: keys::read_u64(&header[9..17]).ok_or_else(corrupt)?,
        actions: serde_json::from_slice(&value[HEADER..]).map_err(|_| corrupt())?,
    })
}

impl Push {
    /// The notifying events after position `read_up_to` in a room.
    pub fn unread_counts(
        &self,
        user_id: &str,
        room: u64,
        read_up_to: u64,
    ) -> MatrixResult<UnreadCounts> {
        let from = entry_key(user_id, room, read_up_to.saturating_add(1));
        let to = entry_key(user_id, room, u64::MAX);
        let mut counts = UnreadCounts::default();
        for entry in self
            .db
            .scan_range(Table::UseridShortroomidPosNotify, &from, &to, false)
            .take(MAX_COUNTED)
        {
            let (_, value) = entry?;
            counts.notifications += 1;
            if value.first() == Some(&1) {
                counts.highlights += 1;
            }
        }
        Ok(counts)
    }

    /// The user's notifications before position `before` (newest first), at most `limit`,
    /// only highlights if asked; with the position to continue from. Visits each room the
    /// user has notifications in (a skip scan), taking at most `limit` from each.
    pub fn notifications(
        &self,
        user_id: &str,
        before: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> MatrixResult<(Vec<Notification>, Option<u64>)> {
        if limit == 0 {
            return Err(MatrixError::invalid_param("limit must be positive"));
        }
        let prefix = user_prefix(user_id);
        let before = before.unwrap_or(u64::MAX);
        let end = keys::prefix_successor(&prefix).unwrap_or_else(|| vec![0xff; prefix.len() + 1]);
        let mut found: Vec<Notification> = Vec::new();
        let mut room = 0u64;
        loop {
            // The next room with entries.
            let start = entry_key(user_id, room, 0);
            let Some(first) = self
                .db
                .scan_range(Table::UseridShortroomidPosNotify, &start, &end, false)
                .next()
            else {
                break;
            };
            let (key, _) = first?;
            let found_room = key
                .get(prefix.len()..prefix.len() + 8)
                .and_then(keys::read_u64)
                .ok_or_else(corrupt)?;
            let lower = entry_key(user_id, found_room, 0);
            let upper = entry_key(user_id, found_room, before);
            let mut taken = 0;
            for entry in self
                .db
                .scan_range(Table::UseridShortroomidPosNotify, &lower, &upper, true)
            {
                let (key, value) = entry?;
                if only_highlight && value.first() != Some(&1) {
                    continue;
                }
                found.push(parse_entry(&key, &value, prefix.len())?);
                taken += 1;
                if taken > limit {
                    break;
                }
            }
            match found_room.checked_add(1) {
                Some(next) => room = next,
                None => break,
            }
        }
        found.sort_unstable_by_key(|n| std::cmp::Reverse(n.pos));
        let next = (found.len() > limit).then(|| found[limit - 1].pos);
        found.truncate(limit);
        Ok((found, next))
    }
}
