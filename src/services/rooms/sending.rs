//! Sending events: messages, state, redactions.
//!
//! Spec: client-server API, `PUT /rooms/{roomId}/send/{eventType}/{txnId}`, `PUT
//! /rooms/{roomId}/state/{eventType}/{stateKey}`, `PUT
//! /rooms/{roomId}/redact/{eventId}/{txnId}`, and "Transaction identifiers": the same
//! transaction id from the same device answers the first request's event id, also after a
//! restart (the mapping is written in the event's batch).

use serde_json::Value;

use super::aliases::check_canonical_alias;
use super::writer::{EventDraft, JobStart, TxnRef, Writers};
use super::Rooms;
use crate::core::UserId;
use crate::services::error::{ServiceError, ServiceResult};
use crate::storage::keys;

/// The longest event type or state key we accept (the PDU limit bounds it anyway).
const MAX_ID_PART_BYTES: usize = 255;

/// The device and transaction id of a client request.
#[derive(Debug, Clone, Copy)]
pub struct Txn<'a> {
    /// The sending device.
    pub device_id: &'a str,
    /// The transaction id from the path.
    pub txn_id: &'a str,
}

fn txn_ref(user: &UserId, room_id: &str, endpoint: &str, txn: Txn<'_>) -> TxnRef {
    TxnRef {
        key: keys::join(&[
            user.as_str().as_bytes(),
            txn.device_id.as_bytes(),
            room_id.as_bytes(),
            endpoint.as_bytes(),
            txn.txn_id.as_bytes(),
        ]),
        device_id: txn.device_id.to_owned(),
        txn_id: txn.txn_id.to_owned(),
    }
}

fn check_event_type(kind: &str) -> ServiceResult<()> {
    if kind.is_empty() || kind.len() > MAX_ID_PART_BYTES {
        return Err(ServiceError::invalid_param(
            "Event type must be 1 to 255 bytes",
        ));
    }
    Ok(())
}

fn check_content(content: &Value) -> ServiceResult<()> {
    if !content.is_object() {
        return Err(ServiceError::bad_json(
            "Event content must be a JSON object",
        ));
    }
    Ok(())
}

impl Rooms {
    /// Appends drafts to a known room through its writer.
    pub(super) async fn append(
        &self,
        room_id: &str,
        drafts: Vec<EventDraft>,
    ) -> ServiceResult<Vec<String>> {
        self.known_room(room_id)?;
        self.writers
            .submit(room_id, Writers::job(JobStart::Append, drafts))
            .await
    }

    async fn append_one(&self, room_id: &str, draft: EventDraft) -> ServiceResult<String> {
        self.append(room_id, vec![draft])
            .await?
            .pop()
            .ok_or_else(|| ServiceError::internal("writer answered no event"))
    }

    /// The event a transaction already sent, if any (so a retry is answered before any
    /// rate limit applies).
    pub fn sent_before(
        &self,
        sender: &UserId,
        room_id: &str,
        endpoint: &str,
        txn: Txn<'_>,
    ) -> ServiceResult<Option<String>> {
        let key = txn_ref(sender, room_id, endpoint, txn).key;
        Ok(self
            .store
            .db
            .get(crate::storage::Table::TxnidEventid, key)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// A message-like event; idempotent per device and transaction id.
    pub async fn send_message(
        &self,
        sender: &UserId,
        room_id: &str,
        kind: &str,
        content: Value,
        txn: Txn<'_>,
    ) -> ServiceResult<String> {
        check_event_type(kind)?;
        check_content(&content)?;
        let mut draft = EventDraft::new(sender.as_str(), kind, None, content);
        if kind == "m.room.redaction" {
            draft.redacts = draft
                .content
                .get("redacts")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        draft.txn = Some(txn_ref(sender, room_id, "send", txn));
        self.append_one(room_id, draft).await
    }

    /// A state event. Setting the same content the sender already set answers the
    /// existing event (as Synapse does), so retries do not grow the room.
    pub async fn send_state(
        &self,
        sender: &UserId,
        room_id: &str,
        kind: &str,
        state_key: &str,
        content: Value,
    ) -> ServiceResult<String> {
        check_event_type(kind)?;
        check_content(&content)?;
        if state_key.len() > MAX_ID_PART_BYTES {
            return Err(ServiceError::invalid_param(
                "State key is longer than 255 bytes",
            ));
        }
        let room = self.known_room(room_id)?;
        if kind == "m.room.canonical_alias" {
            check_canonical_alias(self, room_id, &content)?;
        }
        if let Some(current) = self.store.state_event(room.record.state, kind, state_key)? {
            if current.sender() == sender.as_str()
                && current.content() == &content
                && current.meta.redacted_by == 0
            {
                return Ok(current.event_id);
            }
        }
        let draft = EventDraft::new(sender.as_str(), kind, Some(state_key), content);
        self.append_one(room_id, draft).await
    }

    /// A redaction of `event_id`, with an optional reason.
    pub async fn redact(
        &self,
        sender: &UserId,
        room_id: &str,
        event_id: &str,
        reason: Option<String>,
        txn: Txn<'_>,
    ) -> ServiceResult<String> {
        let mut content = serde_json::Map::new();
        if let Some(reason) = reason {
            content.insert("reason".into(), Value::String(reason));
        }
        let mut draft = EventDraft::new(
            sender.as_str(),
            "m.room.redaction",
            None,
            Value::Object(content),
        );
        draft.redacts = Some(event_id.to_owned());
        draft.txn = Some(txn_ref(sender, room_id, "redact", txn));
        self.append_one(room_id, draft).await
    }
}
