//! Receipts and read markers.
//!
//! Spec: client-server API, "Receipts" (`POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`,
//! `m.read`, `m.read.private`, threaded receipts with `thread_id`), "Fully read markers"
//! (`POST /rooms/{roomId}/read_markers`, `m.fully_read` room account data). Each user keeps
//! one receipt per (type, thread) per room; a receipt never moves back to an earlier event.
//! Private receipts are shown to their owner only.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::Ephemeral;
use crate::services::accounts::Accounts;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::now_ms;
use crate::services::records::{decode, encode};
use crate::services::rooms::Rooms;
use crate::services::stream::StreamChange;
use crate::storage::{keys, Batch, Table};

/// A receipt type clients may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptType {
    /// `m.read`: public.
    Read,
    /// `m.read.private`: seen by its owner only.
    ReadPrivate,
}

impl ReceiptType {
    /// Parses the path segment (`m.fully_read` is a read marker, not a receipt).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "m.read" => Some(Self::Read),
            "m.read.private" => Some(Self::ReadPrivate),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "m.read",
            Self::ReadPrivate => "m.read.private",
        }
    }
}

/// `shortroomid_userid_receipt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReceiptRecord {
    event_id: String,
    /// The receipted event's stream position (receipts only move forward).
    event_pos: u64,
    ts: u64,
    /// The receipt's own stream position.
    pos: u64,
}

/// A user's read receipts in a room, as stream positions (0: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPositions {
    /// The receipt without a thread: everything before it is read.
    pub unthreaded: u64,
    /// The main timeline's receipt.
    pub main: u64,
    /// Each thread's receipt, by thread root event id.
    pub threads: std::collections::HashMap<String, u64>,
}

impl ReadPositions {
    /// Whether the event at `pos` (in the thread of `root`, if any) is read.
    pub fn has_read(&self, pos: u64, root: Option<&str>) -> bool {
        let own = match root {
            None => self.main,
            Some(root) => self.threads.get(root).copied().unwrap_or(0),
        };
        pos <= self.unthreaded.max(own)
    }

    /// Receipts at these positions (tests).
    #[cfg(test)]
    pub fn at(unthreaded: u64, main: u64, threads: &[(&str, u64)]) -> Self {
        Self {
            unthreaded,
            main,
            threads: threads.iter().map(|(r, p)| (r.to_string(), *p)).collect(),
        }
    }

    /// Whether every receipt here is at or after where it was in `earlier` (receipts only
    /// move forward, so this holds for the same user's later positions).
    pub fn covers(&self, earlier: &ReadPositions) -> bool {
        self.unthreaded >= earlier.unthreaded
            && self.main >= earlier.main
            && earlier
                .threads
                .iter()
                .all(|(root, pos)| self.threads.get(root).is_some_and(|now| now >= pos))
    }
}

/// Records, in the batch of an event a local user sent, the event as their implicit read
/// receipt in its thread (`None`: the main timeline). Spec, "Marking notifications as
/// read": "When the user updates their read receipt (either by using the API or by sending
/// an event), notifications prior to and including that event MUST be marked as read".
/// Like a threaded receipt it reads only its own thread: a reply in the main timeline
/// leaves a thread's notifications unread, and a thread reply the main timeline's. It is
/// no receipt others see (Synapse keeps none: its clients infer it).
pub fn put_sent_position(
    batch: &mut Batch<'_>,
    room: u64,
    user_id: &str,
    thread: Option<&str>,
    pos: u64,
) {
    let mut key = room.to_be_bytes().to_vec();
    key.extend_from_slice(&keys::join(&[
        user_id.as_bytes(),
        IMPLICIT,
        thread.unwrap_or("main").as_bytes(),
    ]));
    batch.put(Table::ShortroomidUseridReceipt, key, pos.to_be_bytes());
}

/// The receipt type of implicit receipts (see [`put_sent_position`]).
const IMPLICIT: &[u8] = b"implicit";

fn receipt_key(room: u64, user_id: &str, kind: &str, thread: &str) -> Vec<u8> {
    let mut key = room.to_be_bytes().to_vec();
    key.extend_from_slice(&keys::join(&[
        user_id.as_bytes(),
        kind.as_bytes(),
        thread.as_bytes(),
    ]));
    key
}

fn pos_key(room: u64, pos: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&room.to_be_bytes());
    key[8..].copy_from_slice(&pos.to_be_bytes());
    key
}

fn corrupt() -> ServiceError {
    ServiceError::internal("corrupt receipt record")
}

/// One receipt as `/sync` shows it.
struct ShownReceipt {
    user: String,
    kind: String,
    thread: String,
    record: ReceiptRecord,
}

impl Ephemeral {
    /// Sets a user's receipt on an event they can see in a room they are joined to, in
    /// a thread (`thread_id`) or not, read at `ts` (milliseconds; `None`: now, as for
    /// our users; another server's receipt says when its user read the event).
    pub async fn set_receipt(
        &self,
        rooms: &Rooms,
        user_id: &str,
        room_id: &str,
        kind: ReceiptType,
        event_id: &str,
        (thread_id, ts): (Option<&str>, Option<u64>),
    ) -> ServiceResult<()> {
        if thread_id.is_some_and(str::is_empty) {
            return Err(ServiceError::invalid_param(
                "thread_id field must be a non-empty string",
            ));
        }
        let access = rooms.read_access(user_id, room_id)?;
        if access.membership.as_ref().map(|m| m.membership.as_str()) != Some("join") {
            return Err(ServiceError::forbidden("You aren't joined to the room"));
        }
        let mut check = rooms.visibility_check(user_id, &access);
        let event = rooms.visible_event_for(&access, &mut check, event_id)?;
        if let Some(thread) = thread_id.filter(|t| *t != "main") {
            let in_thread = event.event_id == thread
                || event
                    .content()
                    .get("m.relates_to")
                    .filter(|r| r.get("rel_type").and_then(Value::as_str) == Some("m.thread"))
                    .and_then(|r| r.get("event_id"))
                    .and_then(Value::as_str)
                    == Some(thread);
            if !in_thread {
                return Err(ServiceError::invalid_param(
                    "The event is not related to the thread_id",
                ));
            }
        }
        let room = access.room.short;
        let key = receipt_key(room, user_id, kind.as_str(), thread_id.unwrap_or(""));
        let _guard = self.receipt_locks.lock(&key).await;
        let previous: Option<ReceiptRecord> = self
            .db
            .get(Table::ShortroomidUseridReceipt, &key)?
            .map(|b| decode(Table::ShortroomidUseridReceipt, &b))
            .transpose()?;
        if previous
            .as_ref()
            .is_some_and(|p| p.event_pos >= event.meta.pos)
        {
            // Spec: a receipt for an event before the current one changes nothing.
            return Ok(());
        }
        let event_id = event.event_id.clone();
        let event_pos = event.meta.pos;
        let ts = ts.unwrap_or_else(now_ms);
        // A public receipt of one of our users goes to the room's other servers too.
        let ours = user_id
            .split_once(':')
            .is_some_and(|(_, server)| server == rooms.server_name().as_str());
        let edu = (ours && kind == ReceiptType::Read).then(|| {
            let mut data = serde_json::Map::new();
            data.insert("ts".into(), ts.into());
            if let Some(thread) = thread_id {
                data.insert("thread_id".into(), thread.into());
            }
            serde_json::json!({
                "edu_type": "m.receipt",
                "content": {room_id: {"m.read": {user_id: {
                    "event_ids": [event_id.clone()],
                    "data": data,
                }}}},
            })
        });
        self.stream
            .write_at_new_position(
                move |pos| {
                    let record = ReceiptRecord {
                        event_id,
                        event_pos,
                        ts,
                        pos,
                    };
                    let mut writes = Vec::with_capacity(3);
                    if let Some(previous) = &previous {
                        writes.push((
                            Table::ShortroomidPosReceipt,
                            pos_key(room, previous.pos).to_vec(),
                            None,
                        ));
                    }
                    writes.push((
                        Table::ShortroomidPosReceipt,
                        pos_key(room, pos).to_vec(),
                        Some(key[8..].to_vec()),
                    ));
                    writes.push((Table::ShortroomidUseridReceipt, key, Some(encode(&record))));
                    writes
                },
                vec![StreamChange::RoomEphemeral { room }],
            )
            .await?;
        if let Some(edu) = edu {
            self.send_room_edu(rooms, room_id, edu).await?;
        }
        Ok(())
    }

    /// `POST /read_markers`: the fully read marker (room account data) and receipts.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_read_markers(
        &self,
        rooms: &Rooms,
        accounts: &Accounts,
        user_id: &str,
        room_id: &str,
        fully_read: Option<&str>,
        read: Option<&str>,
        read_private: Option<&str>,
    ) -> ServiceResult<()> {
        // Every event named is checked before anything is written: a bad one leaves
        // all the markers as they were.
        let access = rooms.read_access(user_id, room_id)?;
        if access.membership.as_ref().map(|m| m.membership.as_str()) != Some("join") {
            return Err(ServiceError::forbidden("You aren't joined to the room"));
        }
        let mut check = rooms.visibility_check(user_id, &access);
        let mut marker = None;
        for (event_id, is_marker) in [(fully_read, true), (read, false), (read_private, false)] {
            if let Some(event_id) = event_id {
                let event = rooms.visible_event_for(&access, &mut check, event_id)?;
                if is_marker {
                    marker = Some(event);
                }
            }
        }
        if let (Some(event_id), Some(event)) = (fully_read, marker) {
            // The marker only moves forward (as Synapse keeps it): a client that sends
            // an older event (another device behind) does not take it back.
            let current = accounts
                .account_data(user_id, Some(room_id), "m.fully_read")?
                .and_then(|c| c.get("event_id").and_then(Value::as_str).map(str::to_owned))
                .map(|id| rooms.store().event_by_id(&id))
                .transpose()?
                .flatten();
            let behind = current
                .is_some_and(|c| c.meta.room == event.meta.room && c.meta.pos > event.meta.pos);
            if !behind {
                accounts
                    .set_account_data(
                        user_id,
                        Some(room_id),
                        "m.fully_read",
                        Some(json!({ "event_id": event_id })),
                    )
                    .await?;
            }
        }
        if let Some(event_id) = read {
            self.set_receipt(
                rooms,
                user_id,
                room_id,
                ReceiptType::Read,
                event_id,
                (None, None),
            )
            .await?;
        }
        if let Some(event_id) = read_private {
            self.set_receipt(
                rooms,
                user_id,
                room_id,
                ReceiptType::ReadPrivate,
                event_id,
                (None, None),
            )
            .await?;
        }
        Ok(())
    }

    /// The position of the latest receipt change in a room (0: none).
    pub fn last_receipt_pos(&self, room: u64) -> ServiceResult<u64> {
        let from = pos_key(room, 0);
        let to = pos_key(room, u64::MAX);
        match self
            .db
            .scan_range(Table::ShortroomidPosReceipt, &from, &to, true)
            .next()
        {
            Some(entry) => {
                let (key, _) = entry?;
                Ok(key.get(8..16).and_then(keys::read_u64).unwrap_or(0))
            }
            None => Ok(0),
        }
    }

    /// How far the user has read in a room: their unthreaded, main-timeline and per-thread
    /// `m.read`/`m.read.private` receipts, as stream positions.
    pub fn read_positions(&self, room: u64, user_id: &str) -> ServiceResult<ReadPositions> {
        let mut prefix = room.to_be_bytes().to_vec();
        prefix.extend_from_slice(&keys::prefix(user_id.as_bytes()));
        let mut out = ReadPositions::default();
        for entry in self
            .db
            .scan_prefix(Table::ShortroomidUseridReceipt, &prefix)
        {
            let (key, value) = entry?;
            let mut parts = keys::split(&key[prefix.len()..]);
            let (Some(kind), thread) = (parts.next(), parts.next().unwrap_or(b"")) else {
                continue;
            };
            let pos = match kind {
                b"m.read" | b"m.read.private" => {
                    decode::<ReceiptRecord>(Table::ShortroomidUseridReceipt, &value)?.event_pos
                }
                // What the user sent reads what came before it in its thread.
                IMPLICIT => keys::read_u64(&value).ok_or_else(corrupt)?,
                _ => continue,
            };
            let slot = match thread {
                b"" => &mut out.unthreaded,
                b"main" => &mut out.main,
                root => out
                    .threads
                    .entry(String::from_utf8_lossy(root).into_owned())
                    .or_default(),
            };
            *slot = (*slot).max(pos);
        }
        Ok(out)
    }

    /// The `m.receipt` event of a room for `viewer`: receipts that changed in `(after,
    /// upto]`, or all of them when `after` is `None`. `None` when there is nothing to show.
    pub fn receipts_for(
        &self,
        room: u64,
        viewer: &str,
        after: Option<u64>,
        upto: u64,
    ) -> ServiceResult<Option<Value>> {
        let mut shown = Vec::new();
        match after {
            Some(after) => {
                let from = pos_key(room, after.saturating_add(1));
                let to = pos_key(room, upto.saturating_add(1));
                for entry in self
                    .db
                    .scan_range(Table::ShortroomidPosReceipt, &from, &to, false)
                {
                    let (_, value) = entry?;
                    let mut key = room.to_be_bytes().to_vec();
                    key.extend_from_slice(&value);
                    if let Some(bytes) = self.db.get(Table::ShortroomidUseridReceipt, &key)? {
                        shown.extend(shown_receipt(&key, &bytes)?);
                    }
                }
            }
            None => {
                for entry in self
                    .db
                    .scan_prefix(Table::ShortroomidUseridReceipt, &room.to_be_bytes())
                {
                    let (key, value) = entry?;
                    shown.extend(shown_receipt(&key, &value)?);
                }
            }
        }
        let mut content = Map::new();
        for receipt in shown {
            if receipt.record.pos > upto
                || (receipt.kind == "m.read.private" && receipt.user != viewer)
            {
                continue;
            }
            let mut body = json!({ "ts": receipt.record.ts });
            if !receipt.thread.is_empty() {
                body["thread_id"] = json!(receipt.thread);
            }
            let by_type = content
                .entry(receipt.record.event_id.clone())
                .or_insert_with(|| json!({}));
            let by_user = by_type
                .as_object_mut()
                .expect("inserted as an object")
                .entry(receipt.kind)
                .or_insert_with(|| json!({}));
            if let Some(by_user) = by_user.as_object_mut() {
                by_user.insert(receipt.user, body);
            }
        }
        if content.is_empty() {
            return Ok(None);
        }
        Ok(Some(json!({ "type": "m.receipt", "content": content })))
    }
}

/// A receipt as stored, `None` for an implicit one (shown to no one).
fn shown_receipt(key: &[u8], value: &[u8]) -> ServiceResult<Option<ShownReceipt>> {
    let mut parts = keys::split(key.get(8..).ok_or_else(corrupt)?);
    let (Some(user), Some(kind), Some(thread)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(corrupt());
    };
    if kind == IMPLICIT {
        return Ok(None);
    }
    Ok(Some(ShownReceipt {
        user: String::from_utf8_lossy(user).into_owned(),
        kind: String::from_utf8_lossy(kind).into_owned(),
        thread: String::from_utf8_lossy(thread).into_owned(),
        record: decode(Table::ShortroomidUseridReceipt, value)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::ReadPositions;

    #[test]
    fn later_receipts_cover_earlier_ones() {
        let before = ReadPositions::at(10, 20, &[("$t", 15)]);
        assert!(before.covers(&before));
        assert!(ReadPositions::at(11, 21, &[("$t", 16), ("$u", 1)]).covers(&before));
        // Receipts that went back (a thread forgotten) are not covered.
        assert!(!ReadPositions::at(10, 20, &[]).covers(&before));
        assert!(!ReadPositions::at(9, 20, &[("$t", 15)]).covers(&before));
        assert!(!ReadPositions::at(10, 19, &[("$t", 15)]).covers(&before));
    }
}
