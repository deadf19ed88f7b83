//! Durable PDUs and EDUs waiting to be sent to other servers (a room's events to the
//! servers in the room, to-device messages to their users), and the wake-up of the
//! federation sender.
//!
//! Services that have something for another server write it here **in the same batch**
//! as the rest of their change (so a crash never keeps one without the other), keyed by
//! destination and stream position, and then wake the sender. The sender
//! ([`crate::services::federation::sender`]) reads each destination's queue in order and
//! deletes what the destination acknowledged. An item costs one write whatever happens
//! after. A PDU is queued by event id (the event itself is stored once, with the room);
//! the sender reads it through a [`PduStore`] when it builds the transaction.
//!
//! Owns the table `servername_pos_edu`.

use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::services::error::{ServiceError, ServiceResult};
use crate::services::stream::Write;
use crate::storage::{keys, Db, Table};

/// The field of a queued presence entry holding when it was queued (ms), replaced by
/// the time since in `last_active_ago` as the EDU leaves ([`Outbox::presence_as_sent`]).
pub const QUEUED_TS: &str = "ourwhats_queued_ts";

/// Where the sender reads the PDUs the outbox names (the rooms' event store).
pub trait PduStore: Send + Sync {
    /// The PDU of `event_id` as it goes over federation, if it is stored.
    fn pdu(&self, event_id: &str) -> Option<Value>;
}

/// A queued item: a room event (by id) or an EDU.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// The event with this id.
    Pdu(String),
    /// An EDU (`{"edu_type", "content"}`).
    Edu(Value),
}

impl Item {
    /// Reads a stored item: `{"pdu": event id}` or an EDU.
    fn parse(value: Value) -> Self {
        match value.get("pdu").and_then(Value::as_str) {
            Some(id) => Item::Pdu(id.to_owned()),
            None => Item::Edu(value),
        }
    }
}

/// The outbox's wake-up channel and table access.
pub struct Outbox {
    wake: mpsc::UnboundedSender<String>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

impl Default for Outbox {
    fn default() -> Self {
        let (wake, woken) = mpsc::unbounded_channel();
        Self {
            wake,
            woken: Mutex::new(Some(woken)),
        }
    }
}

fn prefix(destination: &str) -> Vec<u8> {
    keys::prefix(destination.as_bytes())
}

/// The key of an EDU for `destination` written at stream position `pos` (one per
/// destination and position).
pub fn edu_key(destination: &str, pos: u64) -> Vec<u8> {
    let mut key = prefix(destination);
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

impl Outbox {
    /// The write that queues `edu` (`{"edu_type", "content"}`) for `destination` at `pos`.
    pub fn queue(destination: &str, pos: u64, edu: &Value) -> Write {
        (
            Table::ServernamePosEdu,
            edu_key(destination, pos),
            Some(serde_json::to_vec(edu).unwrap_or_default()),
        )
    }

    /// The write that queues the presence EDU `edu` (`m.presence`, its `push` entries'
    /// `last_active_ago` as of `now`) for `destination` at `pos`. Each entry also keeps
    /// `now` (under [`QUEUED_TS`]) so that the sender can say how long ago the user was
    /// active when the EDU leaves, not when it was queued: a destination that was down
    /// for an hour is not told the user was active a moment ago (spec: "Presence",
    /// `last_active_ago` is "the time since the last activity").
    pub fn queue_presence(destination: &str, pos: u64, edu: &Value, now: u64) -> Write {
        let mut edu = edu.clone();
        if let Some(push) = edu
            .get_mut("content")
            .and_then(|c| c.get_mut("push"))
            .and_then(Value::as_array_mut)
        {
            for entry in push.iter_mut().filter_map(Value::as_object_mut) {
                entry.insert(QUEUED_TS.to_owned(), Value::from(now));
            }
        }
        Self::queue(destination, pos, &edu)
    }

    /// A queued EDU as it leaves at `now`: a presence entry queued earlier has the time
    /// since added to its `last_active_ago`, and loses [`QUEUED_TS`]; other EDUs are as
    /// queued.
    pub fn presence_as_sent(edu: &mut Value, now: u64) {
        if edu.get("edu_type").and_then(Value::as_str) != Some("m.presence") {
            return;
        }
        let Some(push) = edu
            .get_mut("content")
            .and_then(|c| c.get_mut("push"))
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        for entry in push.iter_mut().filter_map(Value::as_object_mut) {
            let Some(queued) = entry.remove(QUEUED_TS).and_then(|v| v.as_u64()) else {
                continue;
            };
            let since = now.saturating_sub(queued);
            if let Some(ago) = entry.get("last_active_ago").and_then(Value::as_u64) {
                entry.insert(
                    "last_active_ago".to_owned(),
                    Value::from(ago.saturating_add(since)),
                );
            }
        }
    }

    /// The write that queues the room event `event_id` for `destination` at `pos` (the
    /// event's own stream position).
    pub fn queue_pdu(destination: &str, pos: u64, event_id: &str) -> Write {
        (
            Table::ServernamePosEdu,
            edu_key(destination, pos),
            Some(serde_json::to_vec(&serde_json::json!({ "pdu": event_id })).unwrap_or_default()),
        )
    }

    /// Tells the sender that `destination` has something new.
    pub fn wake(&self, destination: &str) {
        let _ = self.wake.send(destination.to_owned());
    }

    /// The receiving end of the wake-ups (the sender takes it once).
    pub fn take_wakeups(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.woken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Up to `limit` queued items of `destination`, oldest first: `(key, item)`.
    pub fn pending(
        db: &Db,
        destination: &str,
        limit: usize,
    ) -> ServiceResult<Vec<(Vec<u8>, Item)>> {
        let mut out = Vec::new();
        for item in db.scan_prefix(Table::ServernamePosEdu, &prefix(destination)) {
            let (key, value) = item?;
            let value = serde_json::from_slice(&value)
                .map_err(|_| ServiceError::internal("corrupt record in servername_pos_edu"))?;
            out.push((key.to_vec(), Item::parse(value)));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The queued events of `destination`, oldest first: `(key, event id)`; EDUs are
    /// passed over without reading their bodies.
    pub fn queued_events<'d>(
        db: &'d Db,
        destination: &str,
    ) -> impl Iterator<Item = ServiceResult<(Vec<u8>, String)>> + 'd {
        let from = prefix(destination);
        let to = keys::prefix_successor(&from).unwrap_or_else(|| vec![0xFF; from.len() + 9]);
        db.scan_range(Table::ServernamePosEdu, &from, &to, false)
            .filter_map(|item| {
                let (key, value) = match item {
                    Ok(item) => item,
                    Err(e) => return Some(Err(e.into())),
                };
                // An event is stored as `{"pdu":"$id"}`; anything else is an EDU.
                if !value.starts_with(br#"{"pdu":"#) {
                    return None;
                }
                let value: Value = serde_json::from_slice(&value).ok()?;
                match Item::parse(value) {
                    Item::Pdu(id) => Some(Ok((key.to_vec(), id))),
                    Item::Edu(_) => None,
                }
            })
    }

    /// The destinations with queued items (at start, to resume sending): one seek per
    /// destination past all its items, so a long queue for a dead server is not read.
    pub fn destinations(db: &Db) -> ServiceResult<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        // Keys are `name 0xFF pos`; names are text, which never holds 0xFF, so `name`
        // followed by ten 0xFF bytes is past every key of that name.
        let mut from: Vec<u8> = Vec::new();
        loop {
            let Some(item) = db
                .scan_range(Table::ServernamePosEdu, &from, &[0xFF], false)
                .next()
            else {
                return Ok(out);
            };
            let (key, _) = item?;
            let Some(end) = key.iter().position(|b| *b == keys::SEP) else {
                // Not a key of ours: step past it.
                from = key.to_vec();
                from.push(0);
                continue;
            };
            out.push(String::from_utf8_lossy(&key[..end]).into_owned());
            from = key[..end].to_vec();
            from.extend_from_slice(&[0xFF; 10]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DbOptions;

    #[test]
    fn destinations_are_found_once_each_whatever_their_queues() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        let mut batch = db.batch();
        let edu = serde_json::json!({"edu_type": "m.typing", "content": {}});
        for (name, count) in [("a.example", 500u64), ("b.example:8448", 2), ("c", 1)] {
            for pos in 1..=count {
                let (table, key, value) = Outbox::queue(name, pos, &edu);
                batch.put(table, key, value.unwrap());
            }
        }
        db.commit_blocking(batch).unwrap();
        assert_eq!(
            Outbox::destinations(&db).unwrap(),
            ["a.example", "b.example:8448", "c"]
        );
        let empty = tempfile::tempdir().unwrap();
        let none = Db::open(empty.path(), &DbOptions::default()).unwrap();
        assert!(Outbox::destinations(&none).unwrap().is_empty());
    }
}
