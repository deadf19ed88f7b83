//! Events in the client-server API's format.
//!
//! Spec: client-server API, "Room Event Format" (`ClientEvent`): the PDU's `content`,
//! `event_id`, `origin_server_ts`, `room_id`, `sender`, `state_key`, `type`, plus `unsigned`
//! with `age`, `prev_content` and `replaces_state` (state events), `redacted_because`
//! (redacted events), `transaction_id` (only for the device that sent it) and `m.relations`
//! (bundled aggregations, see [`super::aggregates`]). What `unsigned` holds of other
//! events (the redaction, the edits and thread replies bundled) passes the same history
//! visibility check as the event itself, so a user who left a room never learns of what
//! was sent after through an older event.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

use super::event_store::{EventStore, EventSummary, StoredEvent};
use super::relations::{stored_aggregates, visible_aggregates};
use super::state_store::ShortEventId;
use super::visibility::VisibilityCheck;
use crate::core::pdu;
use crate::core::redaction::redact;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::now_ms;
use crate::storage::{keys, Table};

/// Who is looking: `transaction_id` is shown to the sending device only.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    /// The requesting user.
    pub user_id: &'a str,
    /// Their device.
    pub device_id: &'a str,
}

/// `event` as a client sees it. With `check` (the viewer's visibility check in the
/// event's room) it carries its bundled aggregations and `redacted_because`, as far as
/// the viewer may see them; without, neither (state listings, events inside a bundle).
pub fn client_event(
    store: &EventStore,
    event: &StoredEvent,
    room_id: &str,
    viewer: Option<Viewer<'_>>,
    check: Option<&mut VisibilityCheck<'_>>,
) -> ServiceResult<Value> {
    render(store, event, room_id, viewer, check)
}

/// A client event that serializes straight from the stored PDU: nothing of the PDU is
/// copied, only `unsigned` is built. For answers written out whole (`/sync`), where a
/// `Value` copy of every event would be built only to be serialized and dropped.
pub struct ClientEventView<'e> {
    event: &'e StoredEvent,
    room_id: &'e str,
    unsigned: Map<String, Value>,
    /// The content to show instead of the stored one (an erased sender's event, redacted
    /// for a viewer who joined after the erasure; a redaction's, with its target).
    content: Option<Value>,
    /// A redaction's target, shown at the top level in every room version.
    redacts: Option<String>,
}

impl<'e> ClientEventView<'e> {
    /// `event` with its `unsigned` section, and what `check` lets the viewer see of its
    /// bundled aggregations and redaction (see [`client_event`]).
    ///
    /// `loaded`: events loaded with it, where its replaced state event is looked for
    /// before it is read (see [`replaced`]).
    pub fn new(
        store: &EventStore,
        (event, loaded): (&'e StoredEvent, &[StoredEvent]),
        room_id: &'e str,
        viewer: Option<Viewer<'_>>,
        check: Option<&mut VisibilityCheck<'_>>,
    ) -> ServiceResult<Self> {
        let content = erased_content(store, event, check.as_deref())?;
        let (redacts, content) = redaction_shown(store, event, content)?;
        let unsigned = unsigned(store, (event, loaded), room_id, viewer, check)?;
        Ok(Self {
            event,
            room_id,
            unsigned,
            content,
            redacts,
        })
    }
}

impl Serialize for ClientEventView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.event;
        let mut map = serializer.serialize_map(None)?;
        match (&self.content, event.content_json()) {
            (Some(content), _) => map.serialize_entry("content", content)?,
            (None, Some(content)) => map.serialize_entry("content", content)?,
            (None, None) => map.serialize_entry("content", event.content())?,
        }
        map.serialize_entry("origin_server_ts", &event.origin_server_ts())?;
        map.serialize_entry("sender", event.sender())?;
        map.serialize_entry("type", event.kind())?;
        if let Some(key) = event.state_key() {
            map.serialize_entry("state_key", key)?;
        }
        map.serialize_entry("event_id", &self.event.event_id)?;
        map.serialize_entry("room_id", self.room_id)?;
        if let Some(target) = &self.redacts {
            map.serialize_entry("redacts", target)?;
        }
        map.serialize_entry("unsigned", &self.unsigned)?;
        map.end()
    }
}

/// A redaction's target as a client is shown it, and the content to show with it
/// (`content`, or the stored one, with `redacts` set to the target when it says
/// otherwise or nothing). Spec: room version 11, "Moving the `redacts` property": servers
/// should serve `redacts` at the top level (older clients) and in the content (newer
/// clients) in every room version. The target is read where the room version puts it
/// ([`pdu::redaction_target`]): the other place is the sender's to fill and names
/// nothing the server redacted.
fn redaction_shown(
    store: &EventStore,
    event: &StoredEvent,
    content: Option<Value>,
) -> ServiceResult<(Option<String>, Option<Value>)> {
    if event.kind() != "m.room.redaction" {
        return Ok((None, content));
    }
    let version = store.room_by_short(event.meta.room)?.version;
    let Some(target) = pdu::redaction_target(event.pdu(), version) else {
        // No target where the room version puts it (a malformed one, or a redacted
        // redaction before v11): none is shown, not even one the content names.
        let shown = content.as_ref().unwrap_or_else(|| event.content());
        if shown.get("redacts").is_none() {
            return Ok((None, content));
        }
        let mut content = content.unwrap_or_else(|| event.content().clone());
        if let Value::Object(map) = &mut content {
            map.remove("redacts");
        }
        return Ok((None, Some(content)));
    };
    let shown = content.as_ref().unwrap_or_else(|| event.content());
    if shown.get("redacts").and_then(Value::as_str) == Some(target) {
        return Ok((Some(target.to_owned()), content));
    }
    let mut content = content.unwrap_or_else(|| event.content().clone());
    match &mut content {
        Value::Object(map) => {
            map.insert("redacts".into(), Value::from(target));
        }
        other => *other = json!({ "redacts": target }),
    }
    Ok((Some(target.to_owned()), Some(content)))
}

/// `event` as a `Value` (see [`client_event`]). Written from the same view `/sync`
/// serializes, so only the content is parsed, not the whole PDU.
fn render(
    store: &EventStore,
    event: &StoredEvent,
    room_id: &str,
    viewer: Option<Viewer<'_>>,
    check: Option<&mut VisibilityCheck<'_>>,
) -> ServiceResult<Value> {
    let content = erased_content(store, event, check.as_deref())?;
    render_with_content(store, event, room_id, viewer, check, content)
}

/// `event` as a `Value`, showing `content` (when given) instead of the stored content.
fn render_with_content(
    store: &EventStore,
    event: &StoredEvent,
    room_id: &str,
    viewer: Option<Viewer<'_>>,
    check: Option<&mut VisibilityCheck<'_>>,
    content: Option<Value>,
) -> ServiceResult<Value> {
    let (redacts, content) = redaction_shown(store, event, content)?;
    let view = ClientEventView {
        event,
        room_id,
        unsigned: unsigned(store, (event, &[]), room_id, viewer, check)?,
        content,
        redacts,
    };
    serde_json::to_value(view).map_err(|e| ServiceError::internal(format!("client event: {e}")))
}

/// Whether `event`'s sender was erased before the viewer of `check` could see the event,
/// so that the viewer is shown its content redacted and search does not find it.
/// Spec: `POST /account/deactivate`, `erase`: "hide all of the user's messages from users
/// who did not already have access to them".
pub fn erased_for(
    store: &EventStore,
    event: &StoredEvent,
    check: &VisibilityCheck<'_>,
) -> ServiceResult<bool> {
    match store.erased_at(event.sender()) {
        Some(erased_at) => Ok(!check.saw_before(event, erased_at)?),
        None => Ok(false),
    }
}

/// The redacted content of an erased sender's event, for a viewer who was not in the room
/// before the erasure (`None`: show the event as stored).
fn erased_content(
    store: &EventStore,
    event: &StoredEvent,
    check: Option<&VisibilityCheck<'_>>,
) -> ServiceResult<Option<Value>> {
    let Some(check) = check else {
        return Ok(None);
    };
    if event.meta.redacted_by != 0 || !erased_for(store, event, check)? {
        return Ok(None);
    }
    let version = store.room_by_short(event.meta.room)?.version;
    let mut redacted = redact(event.pdu(), version);
    Ok(Some(
        redacted
            .get_mut("content")
            .map(Value::take)
            .unwrap_or_default(),
    ))
}

/// The id, content and sender of the state event `short` that an event replaced: taken
/// from `loaded` (events read with it) when it is there, else read. An initial `/sync`
/// showed these reads at 7 % of its CPU; in most rooms the timeline holds the invite the
/// join replaced.
fn replaced(
    store: &EventStore,
    short: ShortEventId,
    loaded: &[StoredEvent],
) -> ServiceResult<EventSummary> {
    let Some(event) = loaded.iter().find(|e| e.short == short) else {
        return store.content_and_sender(short);
    };
    // As `content_and_sender` reads it: the stored content's text parsed alone, `{}` when
    // the stored PDU has none (or `null`); an event built in memory has no text.
    let content = match (event.content_json(), event.pdu_json()) {
        (Some(raw), _) => serde_json::from_str(raw.get())
            .map_err(|_| ServiceError::internal("stored content is not JSON"))?,
        (None, Some(_)) => Value::Object(Map::new()),
        (None, None) => match event.content() {
            Value::Object(content) => Value::Object(content.clone()),
            _ => Value::Object(Map::new()),
        },
    };
    Ok(EventSummary {
        event_id: event.event_id.clone(),
        content,
        sender: event.sender().to_owned(),
    })
}

/// The `unsigned` section: `age`, `prev_content`, `replaces_state` and `prev_sender`
/// (state events), `redacted_because`, `m.relations` and `transaction_id`.
fn unsigned(
    store: &EventStore,
    (event, loaded): (&StoredEvent, &[StoredEvent]),
    room_id: &str,
    viewer: Option<Viewer<'_>>,
    check: Option<&mut VisibilityCheck<'_>>,
) -> ServiceResult<Map<String, Value>> {
    let mut unsigned = Map::new();
    let age = now_ms().saturating_sub(event.origin_server_ts());
    unsigned.insert("age".into(), json!(age));
    if event.meta.replaces != 0 {
        let previous = replaced(store, event.meta.replaces, loaded)?;
        unsigned.insert("prev_content".into(), previous.content);
        unsigned.insert("replaces_state".into(), json!(previous.event_id));
        unsigned.insert("prev_sender".into(), json!(previous.sender));
    }
    if let Some(check) = check {
        if event.meta.redacted_by != 0 {
            // The redaction is an event like any other: shown only to those who may see
            // it (the content stays redacted for everyone).
            let redaction = store.event(event.meta.redacted_by)?;
            if check.can_see(&redaction)? {
                unsigned.insert(
                    "redacted_because".into(),
                    render(store, &redaction, room_id, None, None)?,
                );
            }
        } else if let Some(stored) = stored_aggregates(store, event.short)? {
            // Spec: "Aggregations of child events": bundled in `unsigned.m.relations`,
            // counting only the children the viewer may see. The events inside a bundle
            // are served without bundles of their own.
            let aggregates = visible_aggregates(store, event, stored, check)?;
            // A bundled edit or thread reply by an erased sender is shown redacted like
            // the event would be on its own.
            let check: &VisibilityCheck<'_> = check;
            let child = |short| {
                let e = store.event(short).ok()?;
                let content = erased_content(store, &e, Some(check)).ok()?;
                render_with_content(store, &e, room_id, viewer, None, content).ok()
            };
            let bundle = aggregates.bundle(viewer.map(|v| v.user_id), &child);
            if !bundle.is_empty() {
                unsigned.insert("m.relations".into(), Value::Object(bundle));
            }
        }
    }
    if let Some(viewer) = viewer {
        if viewer.user_id == event.sender() {
            if let Some(bytes) = store
                .db
                .get(Table::ShorteventidTxnid, event.short.to_be_bytes())?
            {
                let mut parts = keys::split(&bytes);
                if let (Some(device), Some(txn)) = (parts.next(), parts.next()) {
                    if device == viewer.device_id.as_bytes() {
                        unsigned
                            .insert("transaction_id".into(), json!(String::from_utf8_lossy(txn)));
                    }
                }
            }
        }
    }
    Ok(unsigned)
}
