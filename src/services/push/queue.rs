//! The push queue, as stored: one entry per event that notified users with pushers, and
//! one cursor per pusher.
//!
//! An event that notifies local users leaves, in its own write batch, one `pos_pushqueue`
//! entry keyed by its stream position, listing those of the notified users who have
//! pushers: one write per event however many pushers it reaches (31 per-pusher entries
//! per message in a room of 32 phones made the send path 30 % slower). Each pusher keeps
//! the position it has delivered up to in `pusherkey_pushcursor` (set to the stream's
//! position when the pusher is made, so it gets only what comes after); entries every
//! cursor has passed are deleted.
//!
//! Entry value: `room (u64 BE) ++ event short id (u64 BE) ++ queued at, ms (u64 BE)`,
//! then per user `length (u16 BE) ++ user id`.

use crate::services::error::ServiceResult;
use crate::storage::{keys, Batch, Db, Table};

/// What an entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// The room's short id.
    pub room: u64,
    /// The event's short id.
    pub event: u64,
    /// When it was queued (ms, our clock).
    pub queued: u64,
    /// The notified users with pushers.
    pub users: Vec<String>,
}

impl QueuedEvent {
    /// The entry's bytes.
    pub fn encode(room: u64, event: u64, queued: u64, users: &[&str]) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + users.iter().map(|u| u.len() + 2).sum::<usize>());
        out.extend_from_slice(&room.to_be_bytes());
        out.extend_from_slice(&event.to_be_bytes());
        out.extend_from_slice(&queued.to_be_bytes());
        for user in users {
            // User ids are at most 255 bytes (spec: "Identifier Grammar").
            let bytes = &user.as_bytes()[..user.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Reads an entry; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let room = keys::read_u64(bytes.get(..8)?)?;
        let event = keys::read_u64(bytes.get(8..16)?)?;
        let queued = keys::read_u64(bytes.get(16..24)?)?;
        let mut users = Vec::new();
        let mut rest = &bytes[24..];
        while !rest.is_empty() {
            let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
            let user = rest.get(2..2 + len)?;
            users.push(String::from_utf8(user.to_vec()).ok()?);
            rest = &rest[2 + len..];
        }
        Some(Self {
            room,
            event,
            queued,
            users,
        })
    }

    /// Whether `user_id` is among the users.
    pub fn lists(&self, user_id: &str) -> bool {
        self.users.iter().any(|u| u == user_id)
    }
}

/// The key of the entry at stream position `pos`.
pub fn entry_key(pos: u64) -> [u8; 8] {
    pos.to_be_bytes()
}

/// The stream position of an entry key.
pub fn entry_pos(key: &[u8]) -> Option<u64> {
    keys::read_u64(key)
}

/// Puts the entry of the event at `pos` in `batch`.
pub fn put_entry(batch: &mut Batch<'_>, pos: u64, value: Vec<u8>) {
    batch.put(Table::PosPushqueue, entry_key(pos), value);
}

/// A pusher's cursor: the position it has delivered up to.
pub fn cursor(db: &Db, pusher_key: &[u8]) -> ServiceResult<Option<u64>> {
    Ok(db
        .get(Table::PusherkeyPushcursor, pusher_key)?
        .and_then(|v| keys::read_u64(&v)))
}

/// Sets a pusher's cursor in `batch`.
pub fn put_cursor(batch: &mut Batch<'_>, pusher_key: &[u8], pos: u64) {
    batch.put(Table::PusherkeyPushcursor, pusher_key, pos.to_be_bytes());
}

/// Removes a pusher's cursor in `batch`.
pub fn delete_cursor(batch: &mut Batch<'_>, pusher_key: &[u8]) {
    batch.delete(Table::PusherkeyPushcursor, pusher_key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_as_written() {
        let bytes = QueuedEvent::encode(7, 42, 1_000, &["@a:x", "@bob:example.org"]);
        let entry = QueuedEvent::decode(&bytes).unwrap();
        assert_eq!(
            entry,
            QueuedEvent {
                room: 7,
                event: 42,
                queued: 1_000,
                users: vec!["@a:x".into(), "@bob:example.org".into()],
            }
        );
        assert!(entry.lists("@a:x") && !entry.lists("@c:x"));
        assert_eq!(
            QueuedEvent::decode(&QueuedEvent::encode(1, 2, 3, &[]))
                .unwrap()
                .users
                .len(),
            0
        );
    }

    #[test]
    fn a_malformed_entry_is_refused() {
        let bytes = QueuedEvent::encode(7, 42, 1_000, &["@a:x"]);
        assert!(QueuedEvent::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(QueuedEvent::decode(&bytes[..20]).is_none());
        let mut bad_utf8 = QueuedEvent::encode(7, 42, 1_000, &[]);
        bad_utf8.extend_from_slice(&[0, 1, 0xff]);
        assert!(QueuedEvent::decode(&bad_utf8).is_none());
    }
}
