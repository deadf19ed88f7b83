//! Events in the client-server API's format.
//!
//! Spec: client-server API, "Room Event Format" (`ClientEvent`): the PDU's `content`,
//! `event_id`, `origin_server_ts`, `room_id`, `sender`, `state_key`, `type`, plus `unsigned`
//! with `age`, `prev_content` and `replaces_state` (state events), `redacted_because`
//! (redacted events), `transaction_id` (only for the device that sent it) and `m.relations`
//! (bundled aggregations, see [`super::aggregates`]).

use serde_json::{json, Map, Value};

use super::aggregates::Aggregates;
use super::event_store::{EventStore, StoredEvent};
use crate::error::MatrixResult;
use crate::services::now_ms;
use crate::services::records::decode;
use crate::storage::{keys, Table};

/// Who is looking: `transaction_id` is shown to the sending device only.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    /// The requesting user.
    pub user_id: &'a str,
    /// Their device.
    pub device_id: &'a str,
}

/// `event` as a client sees it, with its bundled aggregations.
pub fn client_event(
    store: &EventStore,
    event: &StoredEvent,
    room_id: &str,
    viewer: Option<Viewer<'_>>,
) -> MatrixResult<Value> {
    render(store, event, room_id, viewer, true)
}

fn render(
    store: &EventStore,
    event: &StoredEvent,
    room_id: &str,
    viewer: Option<Viewer<'_>>,
    with_bundle: bool,
) -> MatrixResult<Value> {
    let pdu = &event.pdu;
    let mut out = Map::new();
    for key in ["content", "origin_server_ts", "sender", "type", "state_key"] {
        if let Some(v) = pdu.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert("event_id".into(), json!(event.event_id));
    out.insert("room_id".into(), json!(room_id));
    if event.kind() == "m.room.redaction" {
        // Room v11 moved `redacts` into the content; clients still read the top level.
        if let Some(target) = pdu
            .get("redacts")
            .or_else(|| event.content().get("redacts"))
        {
            out.insert("redacts".into(), target.clone());
        }
    }
    let mut unsigned = Map::new();
    let ts = pdu
        .get("origin_server_ts")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    unsigned.insert("age".into(), json!(now_ms().saturating_sub(ts)));
    if event.meta.replaces != 0 {
        let previous = store.event(event.meta.replaces)?;
        unsigned.insert("prev_content".into(), previous.content().clone());
        unsigned.insert("replaces_state".into(), json!(previous.event_id));
        unsigned.insert("prev_sender".into(), json!(previous.sender()));
    }
    if event.meta.redacted_by != 0 {
        let redaction = store.event(event.meta.redacted_by)?;
        unsigned.insert(
            "redacted_because".into(),
            render(store, &redaction, room_id, None, false)?,
        );
    } else if with_bundle {
        // Spec: "Aggregations of child events": bundled in `unsigned.m.relations`. The
        // events inside a bundle are served without bundles of their own.
        if let Some(bytes) = store
            .db
            .get(Table::ShorteventidAggregates, event.short.to_be_bytes())?
        {
            let aggregates: Aggregates = decode(Table::ShorteventidAggregates, &bytes)?;
            let child = |short| {
                store
                    .event(short)
                    .ok()
                    .and_then(|e| render(store, &e, room_id, viewer, false).ok())
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
    out.insert("unsigned".into(), Value::Object(unsigned));
    Ok(Value::Object(out))
}
