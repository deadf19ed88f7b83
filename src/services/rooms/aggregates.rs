//! Bundled aggregations: the summary of an event's children served in its
//! `unsigned.m.relations`.
//!
//! Spec: client-server API, "Aggregations of child events"; "Event replacements",
//! "Server-side aggregation of `m.replace` relationships" (the most recent valid
//! replacement by `origin_server_ts`, then largest event id) and "Validity of replacement
//! events" (same sender, same type, neither a state event, the original not itself an edit);
//! "Threading", "Server-side aggregation of `m.thread` relationships" (latest event, count,
//! `current_user_participated`); "Reference relations" (`chunk` of event ids).
//!
//! One record per parent (`shorteventid_aggregates`), updated in the child's write batch by
//! the room's writer, so serving a bundle costs one read. A redacted child makes the writer
//! rebuild the parent's record from its remaining children.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::event_store::StoredEvent;
use super::state_store::ShortEventId;

/// The latest valid edit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Edit {
    /// The replacement event.
    pub short: ShortEventId,
    /// Its `origin_server_ts`.
    pub ts: u64,
    /// Its event id (the tie-breaker).
    pub event_id: String,
}

/// A thread's summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThreadSummary {
    /// Events in the thread.
    pub count: u64,
    /// The latest one (in arrival order, which is topological for one server).
    pub latest: ShortEventId,
    /// Who sent events in it (the root's sender counts as participating too).
    pub participants: Vec<String>,
}

/// Everything bundled for one parent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Aggregates {
    /// `m.replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<Edit>,
    /// `m.thread`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<ThreadSummary>,
    /// `m.reference`: the referencing events' ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
}

/// A child as the aggregation sees it.
pub struct Child<'a> {
    /// Its short id.
    pub short: ShortEventId,
    /// Its event id.
    pub event_id: &'a str,
    /// Its PDU.
    pub pdu: &'a Value,
}

fn is_edit(pdu: &Value) -> bool {
    pdu.get("content")
        .and_then(|c| c.get("m.relates_to"))
        .and_then(|r| r.get("rel_type"))
        .and_then(Value::as_str)
        == Some("m.replace")
}

impl Aggregates {
    /// Whether there is nothing to bundle.
    pub fn is_empty(&self) -> bool {
        self.edit.is_none() && self.thread.is_none() && self.references.is_empty()
    }

    /// Takes a new child of `parent` with relation `rel_type` into account.
    pub fn add(&mut self, parent: &StoredEvent, rel_type: &str, child: &Child<'_>) {
        let sender = child
            .pdu
            .get("sender")
            .and_then(Value::as_str)
            .unwrap_or("");
        match rel_type {
            "m.replace" => {
                let kind = child.pdu.get("type").and_then(Value::as_str);
                let valid = sender == parent.sender()
                    && kind == Some(parent.kind())
                    && child.pdu.get("state_key").is_none()
                    && parent.state_key().is_none()
                    && !is_edit(parent.pdu());
                if !valid {
                    return;
                }
                let ts = child
                    .pdu
                    .get("origin_server_ts")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let newer = self
                    .edit
                    .as_ref()
                    .is_none_or(|e| (ts, child.event_id) > (e.ts, e.event_id.as_str()));
                if newer {
                    self.edit = Some(Edit {
                        short: child.short,
                        ts,
                        event_id: child.event_id.to_owned(),
                    });
                }
            }
            "m.thread" => {
                let thread = self.thread.get_or_insert_with(|| ThreadSummary {
                    count: 0,
                    latest: child.short,
                    participants: vec![parent.sender().to_owned()],
                });
                thread.count += 1;
                thread.latest = child.short;
                if !thread.participants.iter().any(|p| p == sender) {
                    thread.participants.push(sender.to_owned());
                }
            }
            "m.reference" if !self.references.iter().any(|r| r == child.event_id) => {
                self.references.push(child.event_id.to_owned());
            }
            _ => {}
        }
    }

    /// The `m.relations` object for `viewer`, with the edit and the thread's latest event
    /// rendered by `render`.
    pub fn bundle(
        &self,
        viewer: Option<&str>,
        render: &dyn Fn(ShortEventId) -> Option<Value>,
    ) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(edit) = &self.edit {
            if let Some(event) = render(edit.short) {
                out.insert("m.replace".into(), event);
            }
        }
        if let Some(thread) = &self.thread {
            if let Some(latest) = render(thread.latest) {
                let participated =
                    viewer.is_some_and(|v| thread.participants.iter().any(|p| p == v));
                out.insert(
                    "m.thread".into(),
                    json!({
                        "latest_event": latest,
                        "count": thread.count,
                        "current_user_participated": participated,
                    }),
                );
            }
        }
        if !self.references.is_empty() {
            let chunk: Vec<Value> = self
                .references
                .iter()
                .map(|id| json!({ "event_id": id }))
                .collect();
            out.insert("m.reference".into(), json!({ "chunk": chunk }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::rooms::records::EventMeta;

    fn stored(short: u64, sender: &str, kind: &str, content: Value) -> StoredEvent {
        StoredEvent::from_pdu(
            short,
            format!("$e{short}"),
            json!({"type": kind, "sender": sender, "content": content,
                        "origin_server_ts": short}),
            EventMeta {
                room: 1,
                pos: short,
                state_before: 0,
                state_after: 0,
                replaces: 0,
                redacted_by: 0,
            },
        )
    }

    #[test]
    fn only_valid_edits_count_and_the_latest_wins() {
        let parent = stored(1, "@a:x", "m.room.message", json!({"body": "hi"}));
        let mut agg = Aggregates::default();
        let by_other = stored(2, "@b:x", "m.room.message", json!({}));
        agg.add(
            &parent,
            "m.replace",
            &Child {
                short: 2,
                event_id: "$e2",
                pdu: by_other.pdu(),
            },
        );
        assert_eq!(agg.edit, None, "another sender's edit is not valid");
        let other_type = stored(3, "@a:x", "m.reaction", json!({}));
        agg.add(
            &parent,
            "m.replace",
            &Child {
                short: 3,
                event_id: "$e3",
                pdu: other_type.pdu(),
            },
        );
        assert_eq!(agg.edit, None, "an edit must keep the type");
        let late = stored(9, "@a:x", "m.room.message", json!({}));
        let early = stored(5, "@a:x", "m.room.message", json!({}));
        agg.add(
            &parent,
            "m.replace",
            &Child {
                short: 9,
                event_id: "$e9",
                pdu: late.pdu(),
            },
        );
        agg.add(
            &parent,
            "m.replace",
            &Child {
                short: 5,
                event_id: "$e5",
                pdu: early.pdu(),
            },
        );
        assert_eq!(
            agg.edit.as_ref().unwrap().short,
            9,
            "latest by origin_server_ts"
        );
    }

    #[test]
    fn threads_count_and_know_their_participants() {
        let root = stored(1, "@a:x", "m.room.message", json!({}));
        let mut agg = Aggregates::default();
        for (short, sender) in [(2, "@b:x"), (3, "@b:x"), (4, "@c:x")] {
            let reply = stored(short, sender, "m.room.message", json!({}));
            agg.add(
                &root,
                "m.thread",
                &Child {
                    short,
                    event_id: "$r",
                    pdu: reply.pdu(),
                },
            );
        }
        let thread = agg.thread.as_ref().unwrap();
        assert_eq!((thread.count, thread.latest), (3, 4));
        let bundle = agg.bundle(Some("@a:x"), &|s| Some(json!({"short": s})));
        assert_eq!(bundle["m.thread"]["current_user_participated"], true);
        let bundle = agg.bundle(Some("@d:x"), &|s| Some(json!({"short": s})));
        assert_eq!(bundle["m.thread"]["current_user_participated"], false);
        assert_eq!(bundle["m.thread"]["latest_event"]["short"], 4);
    }
}
