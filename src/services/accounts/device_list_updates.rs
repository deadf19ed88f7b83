//! Our users' device-list changes, told to the other servers that share a room with them.
//!
//! Spec: server-server API, "Device Management": a server sends `m.device_list_update`
//! EDUs to every server sharing a room with a local user whenever that user's device
//! list changes (a new or deleted device, new keys, a new display name), one per device,
//! in a sequence per user: each has its own `stream_id` (the stream position it is queued
//! at, unique), and `prev_id` names the one before it; `GET /user/devices` answers the
//! latest as the list's `stream_id`, so a server that resynced links the next update to
//! what it has, and one that missed an update resyncs. The sequence of one user is
//! queued under a lock of its own. Cross-signing key changes go as
//! `m.signing_key_update` (spec: "End-to-End Encryption"). The EDUs are queued durably
//! after the change commits; a crash between the two is found at the next start (the
//! change's position in `userid_devicelistpos` is past the latest update's) and the
//! whole list is sent again.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::Accounts;
use crate::core::UserId;
use crate::services::error::ServiceResult;
use crate::services::outbox::Outbox;
use crate::services::rooms::room_mates::RoomMates;
use crate::storage::{keys, Table};

/// What changed of a local user's keys.
pub enum Changed<'a> {
    /// These devices (new, renamed, deleted, new keys).
    Devices(&'a [&'a str]),
    /// Their master or self-signing key.
    CrossSigning,
    /// Signatures of their devices or keys: every device and the cross-signing keys.
    Everything,
}

impl Accounts {
    /// Lets device-list changes find the servers sharing rooms with a user (set once at
    /// start-up).
    pub fn attach_room_mates(&self, mates: Arc<dyn RoomMates>) {
        let _ = self.room_mates.set(mates);
    }

    /// The `stream_id` of the latest device-list update sent for `user_id` (0: none).
    pub fn device_list_update_id(&self, user_id: &str) -> ServiceResult<u64> {
        Ok(self
            .db
            .get(Table::UseridDevicelistedu, user_id)?
            .and_then(|v| keys::read_u64(&v))
            .unwrap_or(0))
    }

    /// At start-up: our users whose latest device-list change came after the latest
    /// update queued for other servers (the server stopped, or the queueing failed,
    /// between the change's commit and its update) have their whole list sent again, so
    /// the change is not lost to the servers that keep their list. Answers how many.
    pub async fn announce_unsent_device_changes(&self) -> ServiceResult<usize> {
        let suffix = format!(":{}", self.server_name.as_str());
        let mut behind = Vec::new();
        for entry in self.db.scan_prefix(Table::UseridDevicelistpos, b"") {
            let (user, pos) = entry?;
            let user = String::from_utf8_lossy(&user).into_owned();
            let changed_at = keys::read_u64(&pos).unwrap_or(0);
            if !user.ends_with(&suffix) || changed_at <= self.device_list_update_id(&user)? {
                continue;
            }
            // A user with no device (deactivated) has no list to send. A cross-signing
            // change also moves the change's position without a device update: such a
            // user's list is sent once more, which brings the two back in step.
            let has_devices = UserId::parse(&user)
                .ok()
                .map(|u| self.devices(&u))
                .transpose()?
                .is_some_and(|d| !d.is_empty());
            if has_devices {
                behind.push(user);
            }
        }
        for user in &behind {
            tracing::info!(%user, "a device-list change was not told to other servers: sending the list again");
            self.tell_other_servers(user, Changed::Everything).await;
        }
        Ok(behind.len())
    }

    /// Tells the other servers sharing a room with `user_id` (one of ours) what changed.
    /// Failures are logged: the change itself has committed (and
    /// [`Accounts::announce_unsent_device_changes`] sends it at the next start).
    pub(super) async fn tell_other_servers(&self, user_id: &str, changed: Changed<'_>) {
        if let Err(e) = self.queue_updates(user_id, changed).await {
            tracing::warn!(user = %user_id, error = %e.message, "device-list updates for other servers were not queued");
        }
    }

    /// Tells the other servers sharing a room with `user_id` (one of ours, just joined to
    /// `room_id`) the user's whole device list and cross-signing keys, when the room
    /// brings servers that shared no room with the user (spec: "Device Management",
    /// updates are sent "when that user joins a room which contains servers which are not
    /// already receiving updates for that user's device list"). Sent to every server
    /// sharing a room, in the one sequence of the user's updates. Failures are logged.
    pub async fn tell_new_room_mates(&self, user_id: &str, room_id: &str) {
        let Some(mates) = self.room_mates.get() else {
            return;
        };
        match mates.servers_new_to(user_id, room_id) {
            Ok(new) if new.is_empty() => {}
            Ok(_) => self.tell_other_servers(user_id, Changed::Everything).await,
            Err(e) => {
                tracing::warn!(user = %user_id, room = %room_id, error = %e.message, "the room's new servers were not told the user's devices")
            }
        }
    }

    async fn queue_updates(&self, user_id: &str, changed: Changed<'_>) -> ServiceResult<()> {
        let local =
            UserId::parse(user_id).is_ok_and(|u| u.server_name() == self.server_name.as_str());
        let Some(mates) = self.room_mates.get().filter(|_| local) else {
            return Ok(());
        };
        // With no server to tell, the change still takes a place in the user's sequence:
        // a server that kept the list from a room shared before sees the gap in the next
        // update's `prev_id` and resyncs, instead of missing the change.
        let servers = mates.remote_servers_sharing(user_id)?;
        let mut wanted = BTreeMap::new();
        wanted.insert(user_id.to_owned(), Vec::new());
        let keys = self.query_keys("", &wanted)?;
        let user = UserId::parse(user_id)
            .map_err(|e| crate::services::error::ServiceError::internal(e.to_string()))?;
        let listed = self.devices(&user)?;
        let all: Vec<&str> = listed.iter().map(|d| d.device_id.as_str()).collect();
        let (devices, cross_signing) = match changed {
            Changed::Devices(devices) => (devices, false),
            Changed::CrossSigning => (&[][..], true),
            Changed::Everything => (&all[..], true),
        };
        let mut edus: Vec<Value> = devices
            .iter()
            .map(|device_id| {
                let mut content = json!({
                    "user_id": user_id,
                    "device_id": device_id,
                });
                match listed.iter().find(|d| d.device_id == *device_id) {
                    None => content["deleted"] = json!(true),
                    Some(device) => {
                        if let Some(name) = &device.display_name {
                            content["device_display_name"] = json!(name);
                        }
                        if let Some(k) = keys
                            .device_keys
                            .get(user_id)
                            .and_then(|m| m.get(*device_id))
                        {
                            content["keys"] = json!(k);
                        }
                    }
                }
                json!({ "edu_type": "m.device_list_update", "content": content })
            })
            .collect();
        // Only device updates take a place in the sequence when nobody is told.
        if cross_signing && !servers.is_empty() {
            let mut content = json!({ "user_id": user_id });
            if let Some(master) = keys.master_keys.get(user_id) {
                content["master_key"] = master.clone();
            }
            if let Some(self_signing) = keys.self_signing_keys.get(user_id) {
                content["self_signing_key"] = self_signing.clone();
            }
            edus.push(json!({ "edu_type": "m.signing_key_update", "content": content }));
        }
        let _sequence = self.device_edu_locks.lock(user_id.as_bytes()).await;
        for mut edu in edus {
            let is_device_update = edu["edu_type"] == "m.device_list_update";
            let prev = self.device_list_update_id(user_id)?;
            let destinations = servers.clone();
            let user = user_id.to_owned();
            self.stream
                .write_at_new_position(
                    move |pos| {
                        let mut writes = Vec::with_capacity(destinations.len() + 1);
                        if is_device_update {
                            edu["content"]["stream_id"] = json!(pos);
                            edu["content"]["prev_id"] =
                                json!((prev > 0).then_some(prev).into_iter().collect::<Vec<_>>());
                            writes.push((
                                Table::UseridDevicelistedu,
                                user.into_bytes(),
                                Some(pos.to_be_bytes().to_vec()),
                            ));
                        }
                        writes.extend(
                            destinations
                                .iter()
                                .map(|server| Outbox::queue(server, pos, &edu)),
                        );
                        writes
                    },
                    Vec::new(),
                )
                .await?;
        }
        for server in &servers {
            self.outbox.wake(server);
        }
        Ok(())
    }
}
