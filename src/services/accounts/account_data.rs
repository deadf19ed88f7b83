//! Account data: a user's private JSON objects by type, global or for one room.
//!
//! Spec: client-server API, "Client Config" (`PUT/GET /user/{userId}/account_data/{type}`,
//! `.../rooms/{roomId}/account_data/{type}`), "Room Tagging" (tags live in the room's
//! `m.tag` account data), "Direct Messaging" (`m.direct`), "Ignoring Users"
//! (`m.ignored_user_list`). Each change takes a stream position, so `/sync` sends only what
//! changed since its token.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ignore_lists::{listed, IgnoreLists, IGNORED_USER_LIST};
use super::Accounts;
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::services::stream::StreamChange;
use crate::storage::{keys, Db, Table};

/// The largest account data object accepted, in bytes of JSON.
pub const MAX_ACCOUNT_DATA_BYTES: usize = 64 * 1024;

/// Types the server manages itself (spec: 405 `M_BAD_JSON` when a client sets them).
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

/// `userid_roomid_type_accountdata`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountDataRecord {
    pos: u64,
    content: Value,
}

/// One account data object.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountData {
    /// The room it belongs to, `None` for global account data.
    pub room_id: Option<String>,
    /// Its type.
    pub kind: String,
    /// Its content.
    pub content: Value,
}

fn data_key(user_id: &str, room_id: Option<&str>, kind: &str) -> Vec<u8> {
    keys::join(&[
        user_id.as_bytes(),
        room_id.unwrap_or("").as_bytes(),
        kind.as_bytes(),
    ])
}

fn pos_key(user_id: &str, pos: u64) -> Vec<u8> {
    let mut key = keys::prefix(user_id.as_bytes());
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

fn corrupt() -> ServiceError {
    ServiceError::internal("corrupt account data record")
}

impl Accounts {
    /// Checks what a client may set: an object of bounded size, not a server-managed type.
    pub fn check_client_account_data(kind: &str, content: &Value) -> ServiceResult<()> {
        if SERVER_MANAGED.contains(&kind) {
            return Err(ServiceError::new(
                ErrorKind::ServerControlled,
                ErrorCode::BadJson,
                format!("Cannot set {kind} through this API"),
            ));
        }
        if kind.is_empty() || kind.len() > 255 {
            return Err(ServiceError::invalid_param("Invalid account data type"));
        }
        if !content.is_object() {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                ErrorCode::NotJson,
                "Content must be a JSON object",
            ));
        }
        Ok(())
    }

    /// Sets (or with `None`, removes) an account data object, durably, and tells syncing
    /// clients.
    pub async fn set_account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        kind: &str,
        content: Option<Value>,
    ) -> ServiceResult<()> {
        self.update_account_data(user_id, room_id, kind, |_| Some(content))
            .await
    }

    /// Changes an account data object with `change` (given the current content, it answers
    /// the new one, or `None` to leave it alone), serialized with the user's other changes.
    pub async fn update_account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        kind: &str,
        change: impl FnOnce(Option<Value>) -> Option<Option<Value>>,
    ) -> ServiceResult<()> {
        // Held by the write's task to its end: a request dropped meanwhile must not let
        // the user's next change read or write around it.
        let guard = self.account_data_locks.lock_owned(user_id.as_bytes()).await;
        let Some(content) = change(self.account_data(user_id, room_id, kind)?) else {
            return Ok(());
        };
        if let Some(content) = &content {
            let size = serde_json::to_vec(content).map_or(usize::MAX, |b| b.len());
            if size > MAX_ACCOUNT_DATA_BYTES {
                return Err(ServiceError::new(
                    ErrorKind::TooLarge,
                    ErrorCode::TooLarge,
                    "Account data too large",
                ));
            }
        }
        let key = data_key(user_id, room_id, kind);
        let previous: Option<AccountDataRecord> = self
            .db
            .get(Table::UseridRoomidTypeAccountdata, &key)?
            .map(|b| decode(Table::UseridRoomidTypeAccountdata, &b))
            .transpose()?;
        // A removal is kept as an empty object: clients treat `{}` as "no data", and sync
        // must still tell them it changed.
        let content = content.unwrap_or_else(|| Value::Object(Default::default()));
        // A new ignore list is in memory before the write commits and its position is
        // published, so a sync that sends the list already filters by it; put back if
        // the write fails. Both run in a task of their own, to their end even if the
        // request is dropped meanwhile.
        let ignoring = (room_id.is_none() && kind == IGNORED_USER_LIST).then(|| {
            let before = self.ignore_lists.ignored_by_user(user_id);
            (Arc::clone(&self.ignore_lists), listed(&content), before)
        });
        let restore = ignoring
            .as_ref()
            .map(|(lists, _, before)| (Arc::clone(lists), before.clone()));
        let user = user_id.to_owned();
        let index_value = keys::join(&[room_id.unwrap_or("").as_bytes(), kind.as_bytes()]);
        let stream = Arc::clone(&self.stream);
        let user_owned = user_id.to_owned();
        let write = async move {
            let _guard = guard;
            let written = stream
                .write_at_new_position(
                    move |pos| {
                        if let Some((lists, ignored, _)) = ignoring {
                            lists.set(&user, ignored);
                        }
                        let mut writes = Vec::with_capacity(3);
                        if let Some(previous) = &previous {
                            writes.push((
                                Table::UseridPosAccountdata,
                                pos_key(&user, previous.pos),
                                None,
                            ));
                        }
                        let record = AccountDataRecord { pos, content };
                        writes.push((
                            Table::UseridRoomidTypeAccountdata,
                            key,
                            Some(encode(&record)),
                        ));
                        writes.push((
                            Table::UseridPosAccountdata,
                            pos_key(&user, pos),
                            Some(index_value),
                        ));
                        writes
                    },
                    vec![StreamChange::AccountData {
                        user: user_owned.clone(),
                    }],
                )
                .await;
            if let (Err(_), Some((lists, before))) = (&written, restore) {
                lists.set(&user_owned, before);
            }
            written
        };
        tokio::spawn(write)
            .await
            .map_err(|e| ServiceError::internal(format!("account data write failed: {e}")))??;
        Ok(())
    }

    /// One account data object; `None` when unset (or removed).
    pub fn account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        kind: &str,
    ) -> ServiceResult<Option<Value>> {
        stored_account_data(&self.db, user_id, room_id, kind)
    }

    /// Every account data object of the user (initial sync), global and per room.
    pub fn all_account_data(&self, user_id: &str) -> ServiceResult<Vec<AccountData>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut out = Vec::new();
        for entry in self
            .db
            .scan_prefix(Table::UseridRoomidTypeAccountdata, &prefix)
        {
            let (key, value) = entry?;
            let rest = &key[prefix.len()..];
            let mut parts = keys::split(rest);
            let (Some(room), Some(kind)) = (parts.next(), parts.next()) else {
                return Err(corrupt());
            };
            let record: AccountDataRecord = decode(Table::UseridRoomidTypeAccountdata, &value)?;
            out.push(AccountData {
                room_id: (!room.is_empty()).then(|| String::from_utf8_lossy(room).into_owned()),
                kind: String::from_utf8_lossy(kind).into_owned(),
                content: record.content,
            });
        }
        Ok(out)
    }

    /// Account data that changed in `(after, upto]`, each object once, as it is now.
    pub fn account_data_changed(
        &self,
        user_id: &str,
        after: u64,
        upto: u64,
    ) -> ServiceResult<Vec<AccountData>> {
        let from = pos_key(user_id, after.saturating_add(1));
        let to = pos_key(user_id, upto.saturating_add(1));
        let mut changed = BTreeMap::new();
        for entry in self
            .db
            .scan_range(Table::UseridPosAccountdata, &from, &to, false)
        {
            let (_, value) = entry?;
            let mut parts = keys::split(&value);
            let (Some(room), Some(kind)) = (parts.next(), parts.next()) else {
                return Err(corrupt());
            };
            changed.insert((room.to_vec(), kind.to_vec()), ());
        }
        let mut out = Vec::with_capacity(changed.len());
        for (room, kind) in changed.into_keys() {
            let room = String::from_utf8_lossy(&room).into_owned();
            let kind = String::from_utf8_lossy(&kind).into_owned();
            let room_id = (!room.is_empty()).then_some(room);
            let record: Option<AccountDataRecord> = self
                .db
                .get(
                    Table::UseridRoomidTypeAccountdata,
                    data_key(user_id, room_id.as_deref(), &kind),
                )?
                .map(|b| decode(Table::UseridRoomidTypeAccountdata, &b))
                .transpose()?;
            if let Some(record) = record {
                out.push(AccountData {
                    room_id,
                    kind,
                    content: record.content,
                });
            }
        }
        Ok(out)
    }

    /// Users the user ignores (`m.ignored_user_list`), as last written.
    pub fn ignored_users(&self, user_id: &str) -> ServiceResult<Vec<String>> {
        Ok(self.ignore_lists.ignored_by_user(user_id))
    }
}

/// The ignore lists of every local account in `db`. A list that cannot be read is left
/// out (logged): one bad record must not keep the server from starting.
pub fn load_ignore_lists(db: &Db) -> ServiceResult<IgnoreLists> {
    let lists = IgnoreLists::default();
    for entry in db.scan_prefix(Table::UseridAccount, b"") {
        let (user, _) = entry?;
        let user = String::from_utf8_lossy(&user);
        match stored_account_data(db, &user, None, IGNORED_USER_LIST) {
            Ok(Some(content)) => lists.set(&user, listed(&content)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(user = %user, error = %e.message, "cannot read an ignore list");
            }
        }
    }
    Ok(lists)
}

/// One account data object in `db`; `None` when unset (or removed).
fn stored_account_data(
    db: &Db,
    user_id: &str,
    room_id: Option<&str>,
    kind: &str,
) -> ServiceResult<Option<Value>> {
    let record: Option<AccountDataRecord> = db
        .get(
            Table::UseridRoomidTypeAccountdata,
            data_key(user_id, room_id, kind),
        )?
        .map(|b| decode(Table::UseridRoomidTypeAccountdata, &b))
        .transpose()?;
    Ok(record
        .map(|r| r.content)
        .filter(|c| c.as_object().is_none_or(|o| !o.is_empty())))
}
