//! Notifications: what each event's push actions leave for the room's local members, the
//! unread counts `/sync` shows, and `GET /notifications`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Push;
use crate::core::push_rules::{self, PushContext};
use crate::error::{MatrixError, MatrixResult};
use crate::services::records::{decode, encode};
use crate::services::rooms::writer::{NewEvent, NewEventHook};
use crate::storage::{keys, Batch, Table};

/// Unread entries counted at most per room (clients show "99+" long before).
const MAX_COUNTED: usize = 10_000;

/// `userid_pos_notification`: one notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    /// The room's id.
    pub room_id: String,
    /// The room's short id.
    pub room: u64,
    /// The event.
    pub event_id: String,
    /// The actions of the rule that matched.
    pub actions: Vec<Value>,
    /// When the event was sent.
    pub ts: u64,
    /// Its stream position.
    pub pos: u64,
}

fn room_key(user_id: &str, room: u64, pos: u64) -> Vec<u8> {
    let mut key = keys::prefix(user_id.as_bytes());
    key.extend_from_slice(&room.to_be_bytes());
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

fn user_key(user_id: &str, pos: u64) -> Vec<u8> {
    let mut key = keys::prefix(user_id.as_bytes());
    key.extend_from_slice(&pos.to_be_bytes());
    key
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
        // The client format the rules see: the PDU has every field they match on.
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
            batch.put(
                Table::UseridShortroomidPosNotify,
                room_key(&member.user_id, event.room, event.pos),
                [u8::from(outcome.highlight)],
            );
            let record = Notification {
                room_id: event.room_id.to_owned(),
                room: event.room,
                event_id: event.event_id.to_owned(),
                actions: rule.actions.clone(),
                ts,
                pos: event.pos,
            };
            batch.put(
                Table::UseridPosNotification,
                user_key(&member.user_id, event.pos),
                encode(&record),
            );
        }
        Ok(())
    }
}

impl Push {
    /// The notifying events after position `read_up_to` in a room.
    pub fn unread_counts(
        &self,
        user_id: &str,
        room: u64,
        read_up_to: u64,
    ) -> MatrixResult<UnreadCounts> {
        let from = room_key(user_id, room, read_up_to.saturating_add(1));
        let to = room_key(user_id, room, u64::MAX);
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
    /// only highlights if asked; with the position to continue from.
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
        let from = user_key(user_id, 0);
        let to = user_key(user_id, before.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        let mut next = None;
        for entry in self
            .db
            .scan_range(Table::UseridPosNotification, &from, &to, true)
        {
            let (_, value) = entry?;
            let record: Notification = decode(Table::UseridPosNotification, &value)?;
            if only_highlight && !push_rules::outcome(&record.actions).highlight {
                continue;
            }
            if out.len() >= limit {
                next = out.last().map(|n: &Notification| n.pos);
                break;
            }
            out.push(record);
        }
        Ok((out, next))
    }
}
