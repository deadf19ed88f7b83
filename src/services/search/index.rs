//! The full-text index, written in each event's own batch, so an acknowledged message is
//! searchable and a redacted one is not.
//!
//! Table `shortroomid_term_pos_posting`: `short room id (u64 BE) ++ term ++ 0xFF ++
//! position (u64 BE) -> field (1 byte) ++ short event id (u64 BE) ++ term count (u16 BE)
//! ++ words in the field (u16 BE)`. Keys start with the room, so a search reads only the
//! rooms the searcher may read, and a term's postings sort by position; every term that
//! starts with a search word is one contiguous range (prefix search).
//!
//! Spec: client-server API, "Server Side Search": `content.body` of `m.room.message`,
//! `content.name` of `m.room.name`, and `content.topic` with the `text/plain` body of
//! `content["m.topic"]` of `m.room.topic`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::terms;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::rooms::event_store::{EventStore, StoredEvent};
use crate::services::rooms::writer::{NewEvent, NewEventHook};
use crate::storage::{keys, Batch, Db, Table};

/// The version of the index's layout; a database without it is indexed at start-up.
const INDEX_VERSION: u64 = 1;
const VERSION_KEY: &[u8] = b"search_index_version";
/// Events read per batch while indexing an existing database.
const BACKFILL_BATCH: usize = 512;

/// Which key of the event matched (the request's `keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `content.body`.
    Body = 1,
    /// `content.name`.
    Name = 2,
    /// `content.topic`.
    Topic = 4,
}

impl Field {
    /// The field for a request key; `None` for a key the spec doesn't list.
    pub fn from_key(key: &str) -> Option<Self> {
        match key {
            "content.body" => Some(Field::Body),
            "content.name" => Some(Field::Name),
            "content.topic" => Some(Field::Topic),
            _ => None,
        }
    }
}

/// One posting: an event holding a term.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Posting {
    /// The field the term is in.
    pub field: u8,
    /// The event's short id.
    pub short: u64,
    /// How many times the term occurs there.
    pub count: u16,
    /// How many words the field has.
    pub length: u16,
}

const POSTING_LEN: usize = 13;

impl Posting {
    fn encode(&self) -> [u8; POSTING_LEN] {
        let mut out = [0u8; POSTING_LEN];
        out[0] = self.field;
        out[1..9].copy_from_slice(&self.short.to_be_bytes());
        out[9..11].copy_from_slice(&self.count.to_be_bytes());
        out[11..13].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// The stored form read back.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != POSTING_LEN {
            return None;
        }
        Some(Self {
            field: bytes[0],
            short: keys::read_u64(&bytes[1..9])?,
            count: u16::from_be_bytes([bytes[9], bytes[10]]),
            length: u16::from_be_bytes([bytes[11], bytes[12]]),
        })
    }
}

/// The key prefix of every posting of the terms that start with `term` in `room`.
pub fn term_prefix(room: u64, term: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + term.len());
    key.extend_from_slice(&room.to_be_bytes());
    key.extend_from_slice(term.as_bytes());
    key
}

fn posting_key(room: u64, term: &str, pos: u64) -> Vec<u8> {
    let mut key = term_prefix(room, term);
    key.push(keys::SEP);
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

/// Splits a posting key (after the room) into the term and the position.
pub fn split_key(rest: &[u8]) -> Option<(&[u8], u64)> {
    let split = rest.len().checked_sub(9)?;
    if rest[split] != keys::SEP {
        return None;
    }
    Some((&rest[..split], keys::read_u64(&rest[split + 1..])?))
}

/// The searchable text of an event and the field it is in.
pub fn searchable_text(pdu: &Value) -> Option<(Field, String)> {
    let content = pdu.get("content")?;
    let text = |key: &str| content.get(key).and_then(Value::as_str);
    match pdu.get("type")?.as_str()? {
        "m.room.message" => Some((Field::Body, text("body")?.to_owned())),
        "m.room.name" if pdu.get("state_key")?.as_str()?.is_empty() => {
            Some((Field::Name, text("name")?.to_owned()))
        }
        "m.room.topic" if pdu.get("state_key")?.as_str()?.is_empty() => {
            let mut topic = text("topic").unwrap_or("").to_owned();
            let plain = content
                .get("m.topic")
                .and_then(|t| t.get("m.text"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|r| {
                    r.get("mimetype")
                        .and_then(Value::as_str)
                        .unwrap_or("text/plain")
                        == "text/plain"
                })
                .and_then(|r| r.get("body"))
                .and_then(Value::as_str);
            if let Some(plain) = plain.filter(|p| *p != topic) {
                topic.push('\n');
                topic.push_str(plain);
            }
            Some((Field::Topic, topic))
        }
        _ => None,
    }
}

/// The postings of an event: `(key, value)` for each distinct term.
fn postings(room: u64, pos: u64, short: u64, pdu: &Value) -> Vec<(Vec<u8>, [u8; POSTING_LEN])> {
    let Some((field, text)) = searchable_text(pdu) else {
        return Vec::new();
    };
    let terms = terms::terms(&text);
    let length = u16::try_from(terms.len()).unwrap_or(u16::MAX);
    let mut counts: BTreeMap<String, u16> = BTreeMap::new();
    for term in terms {
        let count = counts.entry(term).or_default();
        *count = count.saturating_add(1);
    }
    counts
        .into_iter()
        .map(|(term, count)| {
            let posting = Posting {
                field: field as u8,
                short,
                count,
                length,
            };
            (posting_key(room, &term, pos), posting.encode())
        })
        .collect()
}

/// Adds an event's postings to a batch.
fn index_event(batch: &mut Batch<'_>, room: u64, pos: u64, short: u64, pdu: &Value) {
    for (key, value) in postings(room, pos, short, pdu) {
        batch.put(Table::ShortroomidTermPosPosting, key, value);
    }
}

/// Removes a redacted event's postings.
fn unindex_event(batch: &mut Batch<'_>, event: &StoredEvent) {
    for (key, _) in postings(event.meta.room, event.meta.pos, event.short, event.pdu()) {
        batch.delete(Table::ShortroomidTermPosPosting, key);
    }
}

/// The hook that keeps the index in step with the rooms' writers.
#[derive(Debug, Default)]
pub struct SearchIndex;

impl NewEventHook for SearchIndex {
    fn new_event(&self, event: &NewEvent<'_>, batch: &mut Batch<'_>) -> ServiceResult<()> {
        if let Some(redacted) = event.redacted {
            unindex_event(batch, redacted);
        }
        index_event(batch, event.room, event.pos, event.short, event.pdu);
        Ok(())
    }
}

/// Indexes every stored event, once, when the database predates the index (the events
/// stored since are indexed as they are written). Redacted events have nothing left to
/// index.
pub fn index_existing_events(db: &Db, store: &EventStore) -> ServiceResult<()> {
    let version = db
        .get(Table::Meta, VERSION_KEY)?
        .and_then(|v| keys::read_u64(&v));
    if version == Some(INDEX_VERSION) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut count = 0usize;
    let mut chunk: Vec<u64> = Vec::with_capacity(BACKFILL_BATCH);
    let mut flush = |chunk: &mut Vec<u64>| -> ServiceResult<()> {
        let mut batch = db.batch();
        for event in store.events(chunk)? {
            index_event(
                &mut batch,
                event.meta.room,
                event.meta.pos,
                event.short,
                event.pdu(),
            );
        }
        count += chunk.len();
        chunk.clear();
        db.write_relaxed(batch)?;
        Ok(())
    };
    for entry in db.scan_prefix(Table::ShortroomidPosShorteventid, &[]) {
        let (_, value) = entry?;
        let (short, _) = crate::services::rooms::event_store::read_timeline_value(&value)
            .ok_or_else(|| ServiceError::internal("corrupt timeline entry"))?;
        chunk.push(short);
        if chunk.len() == BACKFILL_BATCH {
            flush(&mut chunk)?;
        }
    }
    flush(&mut chunk)?;
    let mut batch = db.batch();
    batch.put(Table::Meta, VERSION_KEY, INDEX_VERSION.to_be_bytes());
    db.commit_blocking(batch)?;
    if count > 0 {
        tracing::info!(
            events = count,
            ms = started.elapsed().as_millis() as u64,
            "indexed the stored events for search"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn postings_round_trip_and_keys_split() {
        let posting = Posting {
            field: Field::Body as u8,
            short: 77,
            count: 2,
            length: 9,
        };
        assert_eq!(Posting::decode(&posting.encode()), Some(posting));
        let key = posting_key(5, "été", 42);
        assert_eq!(split_key(&key[8..]), Some(("été".as_bytes(), 42)));
    }

    #[test]
    fn only_the_spec_keys_are_searchable() {
        let message =
            json!({"type": "m.room.message", "content": {"body": "Hello", "msgtype": "m.text"}});
        assert_eq!(
            searchable_text(&message),
            Some((Field::Body, "Hello".into()))
        );
        let topic = json!({"type": "m.room.topic", "state_key": "", "content": {
            "topic": "Plans",
            "m.topic": {"m.text": [{"mimetype": "text/html", "body": "<b>x</b>"}, {"body": "Plans for 2027"}]}
        }});
        assert_eq!(
            searchable_text(&topic),
            Some((Field::Topic, "Plans\nPlans for 2027".into()))
        );
        let name = json!({"type": "m.room.name", "state_key": "", "content": {"name": "Team"}});
        assert_eq!(searchable_text(&name), Some((Field::Name, "Team".into())));
        let encrypted = json!({"type": "m.room.encrypted", "content": {"ciphertext": "abc"}});
        assert_eq!(searchable_text(&encrypted), None);
        let member =
            json!({"type": "m.room.member", "state_key": "@a:x", "content": {"displayname": "A"}});
        assert_eq!(searchable_text(&member), None);
        let repeated = postings(
            1,
            2,
            3,
            &json!({"type": "m.room.message", "content": {"body": "la la land"}}),
        );
        assert_eq!(repeated.len(), 2);
        let la = Posting::decode(&repeated[0].1).unwrap();
        assert_eq!((la.count, la.length), (2, 3));
    }
}
