//! A stored event as the services read it: the few fields every reader needs are taken
//! out when it is loaded; the rest of the PDU is parsed only if someone asks for it.
//!
//! Serving events to clients (a `/sync` of hundreds of rooms, a page of `/messages`)
//! needs the type, sender, state key and timestamp of each, and the content only to copy
//! it out. Parsing every PDU into a `serde_json::Value` tree (hashes, signatures,
//! `auth_events`, `prev_events` included) and dropping it again was most of the cost of
//! an initial sync; here the PDU stays the JSON text it was stored as, and
//! [`StoredEvent::content_json`] hands out the content as it is.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use serde_json::value::RawValue;
use serde_json::Value;

use crate::core::power_levels::PowerLevels;
use crate::core::RoomVersion;

use super::records::EventMeta;
use super::state_store::ShortEventId;

/// A stored event: its ids, its PDU and where it sits.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The short id.
    pub short: ShortEventId,
    /// The event id.
    pub event_id: String,
    /// Room, position, state snapshots.
    pub meta: EventMeta,
    head: Head,
    /// The PDU's JSON text, for an event read from storage.
    json: Option<Box<str>>,
    /// The PDU parsed: at once for an event built in memory, on first use otherwise.
    pdu: OnceLock<Value>,
    /// For a power levels event, its levels parsed on first use, with the short id of the
    /// create event they were parsed with (0 for none). A redaction replaces the
    /// redacted event's `StoredEvent` in every cache, and this with it.
    levels: OnceLock<(ShortEventId, Arc<PowerLevels>)>,
}

/// The fields taken out at load.
#[derive(Debug, Clone)]
struct Head {
    kind: String,
    sender: String,
    state_key: Option<String>,
    origin_server_ts: u64,
    /// Where `content` sits in the JSON text.
    content: Option<Range<usize>>,
}

/// The top-level fields read at load; everything else is skipped without being kept.
#[derive(serde::Deserialize)]
struct HeadFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    sender: Option<&'a RawValue>,
    #[serde(borrow)]
    state_key: Option<&'a RawValue>,
    #[serde(borrow)]
    origin_server_ts: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// A JSON string field; anything else counts as absent, as it did for a parsed PDU.
pub(super) fn string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

fn empty_object() -> &'static Value {
    static EMPTY: OnceLock<Value> = OnceLock::new();
    EMPTY.get_or_init(|| Value::Object(Default::default()))
}

impl StoredEvent {
    /// An event read from storage, from its PDU's JSON text. `None` when the text is not
    /// a JSON object.
    pub fn from_json(
        short: ShortEventId,
        event_id: String,
        json: Vec<u8>,
        meta: EventMeta,
    ) -> Option<Self> {
        let json = String::from_utf8(json).ok()?.into_boxed_str();
        // A struct would also be read from a JSON array; a PDU is an object.
        if !json.trim_start().starts_with('{') {
            return None;
        }
        let fields: HeadFields<'_> = serde_json::from_str(&json).ok()?;
        let start = json.as_ptr() as usize;
        let head = Head {
            kind: string(fields.kind).unwrap_or_default(),
            sender: string(fields.sender).unwrap_or_default(),
            state_key: string(fields.state_key),
            origin_server_ts: fields
                .origin_server_ts
                .and_then(|r| serde_json::from_str(r.get()).ok())
                .unwrap_or(0),
            // The content borrows from `json`: its offset is where it sits in the text
            // (checked, so a copy instead of a borrow would only cost a full parse later).
            content: fields.content.and_then(|c| {
                let offset = (c.get().as_ptr() as usize).checked_sub(start)?;
                let range = offset..offset + c.get().len();
                (json.get(range.clone()) == Some(c.get())).then_some(range)
            }),
        };
        Some(Self {
            short,
            event_id,
            meta,
            head,
            json: Some(json),
            pdu: OnceLock::new(),
            levels: OnceLock::new(),
        })
    }

    /// An event built in memory from its PDU.
    pub fn from_pdu(short: ShortEventId, event_id: String, pdu: Value, meta: EventMeta) -> Self {
        let text = |key: &str| pdu.get(key).and_then(Value::as_str).map(str::to_owned);
        let head = Head {
            kind: text("type").unwrap_or_default(),
            sender: text("sender").unwrap_or_default(),
            state_key: text("state_key"),
            origin_server_ts: pdu
                .get("origin_server_ts")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            content: None,
        };
        Self {
            short,
            event_id,
            meta,
            head,
            json: None,
            pdu: OnceLock::from(pdu),
            levels: OnceLock::new(),
        }
    }

    /// The PDU in federation format (redacted if a redaction applied).
    pub fn pdu(&self) -> &Value {
        self.pdu.get_or_init(|| {
            // The text parsed as an object when the event was loaded, so this cannot fail;
            // if it did, the event would read as empty rather than bring the server down.
            self.json
                .as_deref()
                .and_then(|json| serde_json::from_str(json).ok())
                .unwrap_or_else(|| Value::Object(Default::default()))
        })
    }

    /// This power levels event's levels in a room of `version` created by `create`
    /// (`PowerLevels::new` of the two), parsed once and kept: the auth rules read them for
    /// every event, and a big room's `users` map is long.
    pub fn power_levels(
        &self,
        version: RoomVersion,
        create: Option<&StoredEvent>,
    ) -> Arc<PowerLevels> {
        let create_short = create.map_or(0, |c| c.short);
        if let Some((short, parsed)) = self.levels.get() {
            if *short == create_short {
                return Arc::clone(parsed);
            }
        }
        let parsed = Arc::new(PowerLevels::new(
            version,
            create.map(StoredEvent::pdu),
            Some(self.pdu()),
        ));
        // A parse with another create event (never in one room) is not kept.
        let _ = self.levels.set((create_short, Arc::clone(&parsed)));
        parsed
    }

    /// The PDU's JSON text, as stored (for an event read from storage).
    pub fn pdu_json(&self) -> Option<&RawValue> {
        let json = self.json.as_deref()?;
        serde_json::from_str(json).ok()
    }

    /// The event's type.
    pub fn kind(&self) -> &str {
        &self.head.kind
    }

    /// The state key, for state events.
    pub fn state_key(&self) -> Option<&str> {
        self.head.state_key.as_deref()
    }

    /// Whether the event has a place in its room's timeline: outliers, rejected and
    /// soft-failed events (stored at position 0) have none and are not shown to clients.
    pub fn has_timeline_place(&self) -> bool {
        self.meta.pos != 0
    }

    /// The sender.
    pub fn sender(&self) -> &str {
        &self.head.sender
    }

    /// `origin_server_ts` (0 if absent).
    pub fn origin_server_ts(&self) -> u64 {
        self.head.origin_server_ts
    }

    /// The content (an empty object if absent).
    pub fn content(&self) -> &Value {
        self.pdu().get("content").unwrap_or_else(|| empty_object())
    }

    /// The content's JSON text as stored, without parsing it (`None` for an event built
    /// in memory, or one without content).
    pub fn content_json(&self) -> Option<&RawValue> {
        let json = self.json.as_deref()?;
        let text = json.get(self.head.content.clone()?)?;
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta() -> EventMeta {
        EventMeta {
            room: 1,
            pos: 2,
            state_before: 3,
            state_after: 4,
            replaces: 0,
            redacted_by: 0,
        }
    }

    #[test]
    fn loaded_and_built_events_read_the_same() {
        let pdu = json!({
            "type": "m.room.member",
            "state_key": "@a:x",
            "sender": "@b:x",
            "origin_server_ts": 1234,
            "content": {"membership": "join", "displayname": "Été \"quoted\""},
            "auth_events": ["$a", "$b"],
            "hashes": {"sha256": "abc"},
        });
        let loaded =
            StoredEvent::from_json(5, "$e".into(), serde_json::to_vec(&pdu).unwrap(), meta())
                .unwrap();
        let built = StoredEvent::from_pdu(5, "$e".into(), pdu.clone(), meta());
        for event in [&loaded, &built] {
            assert_eq!(event.kind(), "m.room.member");
            assert_eq!(event.state_key(), Some("@a:x"));
            assert_eq!(event.sender(), "@b:x");
            assert_eq!(event.origin_server_ts(), 1234);
            assert_eq!(event.content(), &pdu["content"]);
            assert_eq!(event.pdu(), &pdu);
        }
        let raw = loaded.content_json().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(raw.get()).unwrap(),
            pdu["content"]
        );
        assert!(built.content_json().is_none());
        assert_eq!(
            serde_json::from_str::<Value>(loaded.pdu_json().unwrap().get()).unwrap(),
            pdu
        );
    }

    #[test]
    fn odd_fields_read_as_absent_and_non_objects_are_refused() {
        let pdu = json!({"type": 7, "sender": null, "origin_server_ts": 1.5, "content": "x"});
        let event =
            StoredEvent::from_json(1, "$e".into(), serde_json::to_vec(&pdu).unwrap(), meta())
                .unwrap();
        assert_eq!(event.kind(), "");
        assert_eq!(event.sender(), "");
        assert_eq!(event.state_key(), None);
        assert_eq!(event.origin_server_ts(), 0);
        assert_eq!(event.content(), &json!("x"));
        let array = b"[null, null, null, null, null]";
        for bad in [
            &b"[1,2]"[..],
            array,
            b"not json",
            b"{\"type\":",
            &[0xff, 0xfe],
        ] {
            assert!(StoredEvent::from_json(1, "$e".into(), bad.to_vec(), meta()).is_none());
        }
    }
}
