//! Send-to-device messages: each local recipient device has an inbox ordered by stream
//! position; `/sync` hands a device what is waiting and deletes it once a later sync token
//! acknowledges it.
//!
//! Spec: client-server API, "Send-to-Device messaging" (`PUT /sendToDevice/{eventType}/{txnId}`;
//! "Extensions to /sync": `to_device.events`, in order of arrival, at most about 100 per
//! answer, deleted when the client syncs with the `next_batch` of the answer that carried
//! them). The transaction id makes a retried send a no-op (spec: "Transaction identifiers",
//! scoped to the access token's device).
//!
//! Tables: `userid_deviceid_pos_todevice` (recipient, device, position -> the event as the
//! client gets it) and `txnid_todevice` (sender, device, txn id -> position, time): a
//! transaction id (or another server's `message_id`) is remembered a week, long past
//! any retry (Synapse forgets other servers' message ids after a week too), and swept in
//! the background at most once an hour.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{device_key, Accounts};
use crate::core::UserId;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::now_ms;
use crate::services::outbox::Outbox;
use crate::services::stream::{StreamChange, Write};
use crate::storage::{keys, Db, Table};

/// How long a send's transaction id is remembered.
const TXN_KEPT_MS: u64 = 7 * 24 * 3_600_000;
/// How often the old ones are swept at most.
const TXN_SWEEP_EVERY_MS: u64 = 3_600_000;

/// Messages handed to a device in one `/sync` answer (the spec recommends 100).
pub const MAX_PER_SYNC: usize = 100;

/// `messages` of a send: recipient user -> device id (or `*`) -> content.
pub type Messages = BTreeMap<String, BTreeMap<String, Value>>;

/// What a sync takes from a device's inbox.
#[derive(Debug, Default)]
pub struct Delivery {
    /// The events, oldest first.
    pub events: Vec<Value>,
    /// The position of the last event handed out, when more wait after it.
    pub more_after: Option<u64>,
}

fn inbox_prefix(user_id: &str, device_id: &str) -> Vec<u8> {
    let mut key = device_key(user_id, device_id);
    key.push(keys::SEP);
    key
}

fn inbox_key(user_id: &str, device_id: &str, pos: u64) -> Vec<u8> {
    let mut key = inbox_prefix(user_id, device_id);
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

impl Accounts {
    /// Puts `content` of type `kind` in the inbox of each named local device (`*`: all the
    /// user's devices), once per `(sender device, txn_id)`. Unknown users and devices are
    /// skipped, as they would be by a remote server. Messages for users of other servers
    /// go into the outbox, one `m.direct_to_device` EDU per server (spec: server-server
    /// API, "Send-to-device messaging"), in the same write; a sender of another server
    /// (a message that came over federation) reaches local users only: we relay nothing.
    pub async fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &str,
        kind: &str,
        txn_id: &str,
        messages: &Messages,
    ) -> ServiceResult<()> {
        check_type(kind)?;
        let txn_key = keys::join(&[
            sender.as_str().as_bytes(),
            sender_device.as_bytes(),
            txn_id.as_bytes(),
        ]);
        // One send per device at a time, so a retry racing the original is still a no-op.
        let _guard = self.to_device_locks.lock(&txn_key).await;
        if self.db.contains(Table::TxnidTodevice, &txn_key)? {
            return Ok(());
        }
        let mut deliveries: Vec<(String, String, Value)> = Vec::new();
        let mut remote: BTreeMap<String, Messages> = BTreeMap::new();
        let sender_is_local = sender.server_name() == self.server_name.as_str();
        for (user, devices) in messages {
            let recipient = UserId::parse(user)
                .map_err(|_| ServiceError::invalid_param(format!("Invalid user id {user:?}")))?;
            for content in devices.values() {
                if !content.is_object() {
                    return Err(ServiceError::bad_json(
                        "Each message's content must be a JSON object",
                    ));
                }
            }
            if recipient.server_name() != self.server_name.as_str() {
                if sender_is_local {
                    remote
                        .entry(recipient.server_name().to_owned())
                        .or_default()
                        .insert(user.clone(), devices.clone());
                }
                continue;
            }
            let known = self.devices(&recipient)?;
            // One message per device (spec): a device named itself wins over `*`.
            let named = devices.iter().filter(|(d, _)| *d != "*");
            let everyone = devices.iter().filter(|(d, _)| *d == "*");
            for (device, content) in named.chain(everyone) {
                let targets: Vec<&str> = if device == "*" {
                    known.iter().map(|d| d.device_id.as_str()).collect()
                } else if known.iter().any(|d| d.device_id == *device) {
                    vec![device.as_str()]
                } else {
                    Vec::new()
                };
                for target in targets {
                    if deliveries.iter().any(|(u, d, _)| u == user && d == target) {
                        continue;
                    }
                    let event = json!({
                        "sender": sender.as_str(),
                        "type": kind,
                        "content": content,
                    });
                    deliveries.push((user.clone(), target.to_owned(), event));
                }
            }
        }
        let mut changes: Vec<StreamChange> = Vec::new();
        for (user, _, _) in &deliveries {
            if !changes
                .iter()
                .any(|c| matches!(c, StreamChange::ToDevice { user: u } if u == user))
            {
                changes.push(StreamChange::ToDevice { user: user.clone() });
            }
        }
        self.sweep_to_device_txns();
        let destinations: Vec<String> = remote.keys().cloned().collect();
        let (sender_id, kind_owned) = (sender.as_str().to_owned(), kind.to_owned());
        self.stream
            .write_at_new_position(
                move |pos| {
                    let mut writes: Vec<Write> = Vec::with_capacity(deliveries.len() + 1);
                    for (server, messages) in remote {
                        // The message id is unique among ours: a stream position is
                        // never handed out twice.
                        let edu = json!({
                            "edu_type": "m.direct_to_device",
                            "content": {
                                "sender": sender_id,
                                "type": kind_owned,
                                "message_id": format!("{pos:x}"),
                                "messages": messages,
                            },
                        });
                        writes.push(Outbox::queue(&server, pos, &edu));
                    }
                    for (user, device, event) in deliveries {
                        let bytes = serde_json::to_vec(&event).unwrap_or_default();
                        writes.push((
                            Table::UseridDeviceidPosTodevice,
                            inbox_key(&user, &device, pos),
                            Some(bytes),
                        ));
                    }
                    let mut record = pos.to_be_bytes().to_vec();
                    record.extend_from_slice(&now_ms().to_be_bytes());
                    writes.push((Table::TxnidTodevice, txn_key, Some(record)));
                    writes
                },
                changes,
            )
            .await?;
        for destination in destinations {
            self.outbox.wake(&destination);
        }
        Ok(())
    }

    /// Forgets the transaction ids remembered longer than [`TXN_KEPT_MS`], when a sweep
    /// is due (at most once an hour): in the background, in batches of
    /// [`TXN_SWEEP_BATCH`], not in the way of the send. A row of before times were kept
    /// (none: a server upgraded) is given the sweep's time, and goes a week later.
    fn sweep_to_device_txns(&self) {
        let now = now_ms();
        let last = self.to_device_swept_at.load(Ordering::Relaxed);
        let due = now >= last + TXN_SWEEP_EVERY_MS
            && self
                .to_device_swept_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if !due {
            return;
        }
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = sweep_txns(&db, now) {
                tracing::warn!(error = %e.message, "sweeping old to-device transaction ids failed");
            }
        });
    }

    /// For a sync of `device_id` covering `(acknowledged, upto]`: deletes what the client
    /// acknowledged (everything up to `acknowledged`) and answers what waits after it, up
    /// to `upto`, at most [`MAX_PER_SYNC`] events.
    pub fn take_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        acknowledged: u64,
        upto: u64,
    ) -> ServiceResult<Delivery> {
        let prefix = inbox_prefix(user_id, device_id);
        let mut batch = self.db.batch();
        for entry in self.db.scan_range(
            Table::UseridDeviceidPosTodevice,
            &prefix,
            &inbox_key(user_id, device_id, acknowledged.saturating_add(1)),
            false,
        ) {
            let (key, _) = entry?;
            batch.delete(Table::UseridDeviceidPosTodevice, key);
        }
        if !batch.is_empty() {
            // Losing this delete in a crash only delivers the messages again, which
            // clients tolerate; no need to wait for the disk.
            self.db.write_relaxed(batch)?;
        }
        let mut delivery = Delivery::default();
        let mut last_pos = acknowledged;
        for entry in self.db.scan_range(
            Table::UseridDeviceidPosTodevice,
            &inbox_key(user_id, device_id, acknowledged.saturating_add(1)),
            &inbox_key(user_id, device_id, upto.saturating_add(1)),
            false,
        ) {
            let (key, value) = entry?;
            if delivery.events.len() == MAX_PER_SYNC {
                delivery.more_after = Some(last_pos);
                break;
            }
            last_pos = keys::read_u64(&key[prefix.len()..])
                .ok_or_else(|| ServiceError::internal("corrupt to-device key"))?;
            let event: Value = serde_json::from_slice(&value)
                .map_err(|_| ServiceError::internal("corrupt to-device record"))?;
            delivery.events.push(event);
        }
        Ok(delivery)
    }

    /// Empties a device's inbox (the device is being deleted).
    pub(super) fn clear_inbox(
        &self,
        writes: &mut Vec<Write>,
        user_id: &str,
        device_id: &str,
    ) -> ServiceResult<()> {
        for entry in self.db.scan_prefix(
            Table::UseridDeviceidPosTodevice,
            &inbox_prefix(user_id, device_id),
        ) {
            let (key, _) = entry?;
            writes.push((Table::UseridDeviceidPosTodevice, key.into_vec(), None));
        }
        Ok(())
    }
}

/// Event types: non-empty, at most 255 bytes (the spec's limit on identifiers).
fn check_type(kind: &str) -> ServiceResult<()> {
    if kind.is_empty() || kind.len() > 255 {
        return Err(ServiceError::invalid_param("Invalid event type"));
    }
    Ok(())
}

/// Rows of `txnid_todevice` changed at most per batch of a sweep.
const TXN_SWEEP_BATCH: usize = 10_000;

/// One sweep of the to-device transaction ids at `now` (see
/// [`Accounts::sweep_to_device_txns`]).
fn sweep_txns(db: &Db, now: u64) -> ServiceResult<()> {
    let mut batch = db.batch();
    let mut changed = 0;
    for entry in db.scan_prefix(Table::TxnidTodevice, b"") {
        let (key, value) = entry?;
        match value.get(8..16).and_then(keys::read_u64) {
            Some(at) if at + TXN_KEPT_MS < now => batch.delete(Table::TxnidTodevice, &key),
            Some(_) => continue,
            None => {
                let mut record = value.get(..8).unwrap_or(&[0; 8]).to_vec();
                record.extend_from_slice(&now.to_be_bytes());
                batch.put(Table::TxnidTodevice, &key, record);
            }
        }
        changed += 1;
        if changed % TXN_SWEEP_BATCH == 0 {
            db.write_relaxed(std::mem::replace(&mut batch, db.batch()))?;
        }
    }
    if !batch.is_empty() {
        db.write_relaxed(batch)?;
    }
    Ok(())
}
