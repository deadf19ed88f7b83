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
//! Entry value: `1 (format) ++ room (u64 BE) ++ event short id (u64 BE) ++ queued at, ms
//! (u64 BE)`, then per user a 4-byte tag ([`user_tag`], u32 BE): 4 bytes a user instead
//! of the id (~25 bytes), since every byte of the entry is written to the WAL and the
//! memtable on the send path, then flushed and compacted. A tag names a user only
//! probably: the worker hands an entry to the pushers of the users whose tag it lists,
//! and a delivery sends only what the user's own notification entry says notified them
//! (a user whose tag only collides with a listed one has none, and gets nothing).
//! Entries written before the tags (the users' ids, `length (u16 BE) ++ user id` each,
//! after the room's short id, whose first byte is 0) are read too.

use crate::services::error::ServiceResult;
use crate::storage::{keys, Batch, Db, Table};

/// The first byte of an entry with tags.
const TAGGED: u8 = 1;
/// Bytes before the tags.
const TAGGED_HEADER: usize = 25;

/// What an entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// The room's short id.
    pub room: u64,
    /// The event's short id.
    pub event: u64,
    /// When it was queued (ms, our clock).
    pub queued: u64,
    /// The tags of the notified users with pushers.
    pub tags: Vec<u32>,
}

/// A user's tag in queue entries: the 32-bit FNV-1a hash of the user id. Stored, so it
/// must never change.
pub fn user_tag(user_id: &str) -> u32 {
    crate::core::fnv::fnv1a_32(user_id.bytes())
}

impl QueuedEvent {
    /// The entry's bytes.
    pub fn encode<'a>(
        room: u64,
        event: u64,
        queued: u64,
        users: impl ExactSizeIterator<Item = &'a str>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(TAGGED_HEADER + 4 * users.len());
        out.push(TAGGED);
        out.extend_from_slice(&room.to_be_bytes());
        out.extend_from_slice(&event.to_be_bytes());
        out.extend_from_slice(&queued.to_be_bytes());
        for user in users {
            out.extend_from_slice(&user_tag(user).to_be_bytes());
        }
        out
    }

    /// Reads an entry; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (with_tags, rest) = match bytes.split_first() {
            Some((&TAGGED, rest)) => (true, rest),
            _ => (false, bytes),
        };
        let room = keys::read_u64(rest.get(..8)?)?;
        let event = keys::read_u64(rest.get(8..16)?)?;
        let queued = keys::read_u64(rest.get(16..24)?)?;
        let users = &rest[24..];
        let tags = if with_tags {
            if users.len() % 4 != 0 {
                return None;
            }
            users
                .chunks_exact(4)
                .map(|t| u32::from_be_bytes([t[0], t[1], t[2], t[3]]))
                .collect()
        } else {
            Self::tags_of_ids(users)?
        };
        Some(Self {
            room,
            event,
            queued,
            tags,
        })
    }

    /// The tags of the users listed by id, as entries written before the tags list them.
    fn tags_of_ids(mut rest: &[u8]) -> Option<Vec<u32>> {
        let mut tags = Vec::new();
        while !rest.is_empty() {
            let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
            let user = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
            tags.push(user_tag(user));
            rest = &rest[2 + len..];
        }
        Some(tags)
    }

    /// Whether the entry lists `tag` (a user's [`user_tag`]).
    pub fn lists(&self, tag: u32) -> bool {
        self.tags.contains(&tag)
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

/// Deletes the entries after position `after` and up to `upto`, in `batch`.
pub fn delete_entries(batch: &mut Batch<'_>, after: u64, upto: u64) {
    if after >= upto {
        return;
    }
    batch.delete_range(
        Table::PosPushqueue,
        entry_key(after.saturating_add(1)),
        entry_key(upto.saturating_add(1)),
    );
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
        let users = ["@a:x", "@bob:example.org"];
        let bytes = QueuedEvent::encode(7, 42, 1_000, users.into_iter());
        assert_eq!(bytes.len(), TAGGED_HEADER + 8);
        let entry = QueuedEvent::decode(&bytes).unwrap();
        assert_eq!(
            entry,
            QueuedEvent {
                room: 7,
                event: 42,
                queued: 1_000,
                tags: vec![user_tag("@a:x"), user_tag("@bob:example.org")],
            }
        );
        assert!(entry.lists(user_tag("@a:x")) && !entry.lists(user_tag("@c:x")));
        let empty = QueuedEvent::encode(1, 2, 3, std::iter::empty());
        assert!(QueuedEvent::decode(&empty).unwrap().tags.is_empty());
    }

    #[test]
    fn tags_are_the_fnv_1a_hash_of_the_user_id() {
        // FNV-1a 32 reference values ("" and "a"); stored tags depend on them.
        assert_eq!(user_tag(""), 0x811c_9dc5);
        assert_eq!(user_tag("a"), 0xe40c_292c);
        assert_ne!(user_tag("@a:x"), user_tag("@b:x"));
    }

    #[test]
    fn an_entry_written_with_user_ids_still_reads() {
        let mut old = Vec::new();
        old.extend_from_slice(&7u64.to_be_bytes());
        old.extend_from_slice(&42u64.to_be_bytes());
        old.extend_from_slice(&1_000u64.to_be_bytes());
        for user in ["@a:x", "@bob:example.org"] {
            old.extend_from_slice(&(user.len() as u16).to_be_bytes());
            old.extend_from_slice(user.as_bytes());
        }
        let entry = QueuedEvent::decode(&old).unwrap();
        assert_eq!((entry.room, entry.event, entry.queued), (7, 42, 1_000));
        assert!(entry.lists(user_tag("@bob:example.org")) && entry.lists(user_tag("@a:x")));
        assert!(QueuedEvent::decode(&old[..old.len() - 1]).is_none());
        let mut bad_utf8 = old[..24].to_vec();
        bad_utf8.extend_from_slice(&[0, 1, 0xff]);
        assert!(QueuedEvent::decode(&bad_utf8).is_none());
    }

    #[test]
    fn a_malformed_entry_is_refused() {
        let bytes = QueuedEvent::encode(7, 42, 1_000, ["@a:x"].into_iter());
        assert!(QueuedEvent::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(QueuedEvent::decode(&bytes[..20]).is_none());
        assert!(QueuedEvent::decode(&[]).is_none());
    }
}
