//! Device-list changes: when a user's devices, device keys or cross-signing keys change,
//! the change is written at a new stream position, recorded as the user's latest
//! device-list position, and announced to the users who share a room with them.
//!
//! Spec: client-server API, "End-to-End Encryption", "Tracking the device list for a
//! user" and "Extensions to /sync" (`device_lists.changed`); `GET /keys/changes`.
//!
//! A signature of another user's master key is only seen by the signer (spec: "Cross-signing"),
//! so it is announced to the signer's own devices alone, naming the target as changed.
//!
//! Tables: `userid_devicelistpos` (user -> latest change position) and
//! `userid_targetid_signaturepos` (signer, target -> latest signature position).

use std::sync::Arc;

use super::Accounts;
use crate::services::error::ServiceResult;
use crate::services::rooms::event_store::EventStore;
use crate::services::stream::{StreamChange, Write};
use crate::storage::{keys, Table};

impl Accounts {
    /// Lets device-list changes find the rooms a user is joined to (set once at start-up;
    /// the rooms service is opened after this one).
    pub fn attach_rooms(&self, rooms: Arc<EventStore>) {
        let _ = self.rooms.set(rooms);
    }

    /// The short ids of the rooms `user_id` is joined to: whose members hear of the change.
    fn joined_room_shorts(&self, user_id: &str) -> ServiceResult<Vec<u64>> {
        let Some(store) = self.rooms.get() else {
            return Ok(Vec::new());
        };
        let mut rooms = Vec::new();
        for (room_id, record) in store.memberships_of(user_id)? {
            if record.membership == "join" {
                if let Some(short) = store.room_short(&room_id)? {
                    rooms.push(short);
                }
            }
        }
        Ok(rooms)
    }

    /// Another server said that its user's devices or cross-signing keys changed: our
    /// users sharing a room with them are told (`device_lists.changed`), and their
    /// clients query the keys again.
    pub async fn remote_keys_changed(&self, user_id: &str) -> ServiceResult<()> {
        self.commit_keys_change(user_id, true, |_| Vec::new())
            .await?;
        Ok(())
    }

    /// Writes `writes` durably at a new stream position; with `announce`, also as a change
    /// of `user_id`'s device list, told to them and to everyone sharing a room with them.
    /// Answers the position.
    pub(super) async fn commit_keys_change(
        &self,
        user_id: &str,
        announce: bool,
        writes: impl FnOnce(u64) -> Vec<Write> + Send + 'static,
    ) -> ServiceResult<u64> {
        self.commit_signed_keys_change(user_id, announce, Vec::new(), writes)
            .await
    }

    /// [`Accounts::commit_keys_change`] that also tells `user_id`'s own devices that they
    /// signed the master keys of `signed_users` (their `device_lists.changed` lists them).
    pub(super) async fn commit_signed_keys_change(
        &self,
        user_id: &str,
        announce: bool,
        signed_users: Vec<String>,
        writes: impl FnOnce(u64) -> Vec<Write> + Send + 'static,
    ) -> ServiceResult<u64> {
        let mut changes = if announce {
            vec![StreamChange::DeviceList {
                user: user_id.to_owned(),
                rooms: self.joined_room_shorts(user_id)?,
            }]
        } else {
            Vec::new()
        };
        changes.extend(signed_users.iter().map(|target| StreamChange::SignedUser {
            signer: user_id.to_owned(),
            target: target.clone(),
        }));
        let user = user_id.to_owned();
        let pos = self
            .stream
            .write_at_new_position(
                move |pos| {
                    let mut all = writes(pos);
                    for target in signed_users {
                        all.push((
                            Table::UseridTargetidSignaturepos,
                            keys::join(&[user.as_bytes(), target.as_bytes()]),
                            Some(pos.to_be_bytes().to_vec()),
                        ));
                    }
                    if announce {
                        all.push((
                            Table::UseridDevicelistpos,
                            user.into_bytes(),
                            Some(pos.to_be_bytes().to_vec()),
                        ));
                    }
                    all
                },
                changes,
            )
            .await?;
        Ok(pos)
    }

    /// The position of the latest change of `user_id`'s devices or cross-signing keys (0:
    /// none since they were recorded).
    pub fn device_list_pos(&self, user_id: &str) -> ServiceResult<u64> {
        Ok(self
            .db
            .get(Table::UseridDevicelistpos, user_id)?
            .and_then(|v| keys::read_u64(&v))
            .unwrap_or(0))
    }

    /// The users whose master keys `signer` signed after position `since`.
    pub fn users_signed_since(&self, signer: &str, since: u64) -> ServiceResult<Vec<String>> {
        let prefix = keys::prefix(signer.as_bytes());
        let mut out = Vec::new();
        for entry in self
            .db
            .scan_prefix(Table::UseridTargetidSignaturepos, &prefix)
        {
            let (key, value) = entry?;
            if keys::read_u64(&value).is_some_and(|pos| pos > since) {
                out.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
            }
        }
        Ok(out)
    }
}
