//! Server-side key backups: versions of a user's backup and the encrypted room keys in
//! them. The server cannot read the keys (`session_data` is encrypted by the client); it
//! keeps the best copy of each session by the metadata the spec names.
//!
//! Spec: client-server API, "End-to-End Encryption", "Server-side key backups";
//! `/room_keys/version[/{version}]`, `/room_keys/keys[/{roomId}[/{sessionId}]]`.
//! - Keys can only be written to the most recently created version: other versions get
//!   403 `M_WRONG_ROOM_KEYS_VERSION` with `current_version`.
//! - A key for a session already backed up replaces it only if it is better: verified
//!   beats unverified; then a lower `first_message_index`; then a lower `forwarded_count`
//!   (each rule only when the ones before are equal; all equal keeps the stored key).
//! - Deleting a version deletes its keys; its number is never reused, and deleting it
//!   again answers 200.
//! - `etag` changes whenever the stored keys change, and only then; `count` is the number
//!   of keys in the whole version.
//!
//! Owns the tables `userid_version_backup` and `userid_version_roomid_sessionid_roomkey`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::services::StripedLocks;
use crate::storage::{keys, Batch, Db, Table};

/// Bytes of a version's `auth_data`, at most.
const MAX_AUTH_DATA_BYTES: usize = 65_536;
/// Bytes of one session's backed-up key, at most.
const MAX_SESSION_BYTES: usize = 65_536;

/// `userid_version_backup`: one version of a user's backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BackupVersion {
    algorithm: String,
    auth_data: Value,
    /// Bumped whenever the stored keys change.
    etag: u64,
    /// Keys stored in this version.
    count: u64,
    /// Deleted versions keep their record so their number is never handed out again.
    deleted: bool,
}

/// What a key upload or deletion answers. Spec: `RoomKeysUpdateResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysUpdated {
    /// The version's new etag.
    pub etag: String,
    /// Keys in the whole version.
    pub count: u64,
}

/// Which keys a keys request is about.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every room.
    All,
    /// One room.
    Room(&'a str),
    /// One session of one room.
    Session(&'a str, &'a str),
}

/// room id -> session id -> key.
pub type RoomKeys = BTreeMap<String, BTreeMap<String, Value>>;

/// The key backup service.
pub struct KeyBackup {
    db: Arc<Db>,
    /// Serializes each user's backup changes (counts and etags are read-modify-write).
    locks: StripedLocks,
}

fn version_key(user_id: &str, version: u64) -> Vec<u8> {
    let mut key = keys::prefix(user_id.as_bytes());
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// Adds the writing of a version's record to `batch`.
fn put_version(batch: &mut Batch<'_>, user_id: &str, number: u64, record: &BackupVersion) {
    batch.put(
        Table::UseridVersionBackup,
        version_key(user_id, number),
        encode(record),
    );
}

/// The prefix of a version's keys, narrowed to a room (and a session) when given.
fn keys_prefix(user_id: &str, version: u64, scope: Scope<'_>) -> Vec<u8> {
    let mut key = version_key(user_id, version);
    key.push(keys::SEP);
    match scope {
        Scope::All => {}
        Scope::Room(room) => {
            key.extend_from_slice(room.as_bytes());
            key.push(keys::SEP);
        }
        Scope::Session(room, session) => {
            key.extend_from_slice(room.as_bytes());
            key.push(keys::SEP);
            key.extend_from_slice(session.as_bytes());
        }
    }
    key
}

/// A version as clients name it: a decimal number; anything else names no version.
fn parse_version(version: &str) -> Option<u64> {
    version.parse().ok().filter(|_| !version.starts_with('+'))
}

fn unknown_version() -> ServiceError {
    ServiceError::not_found("Unknown backup version")
}

/// Checks one session's key. Spec: `KeyBackupData`.
fn check_session(key: &Value) -> ServiceResult<()> {
    let ok = key.get("first_message_index").is_some_and(Value::is_u64)
        && key.get("forwarded_count").is_some_and(Value::is_u64)
        && key.get("is_verified").is_some_and(Value::is_boolean)
        && key.get("session_data").is_some_and(Value::is_object);
    if !ok {
        return Err(ServiceError::bad_json(
            "A key needs first_message_index, forwarded_count, is_verified and session_data",
        ));
    }
    if serde_json::to_vec(key).map_or(0, |b| b.len()) > MAX_SESSION_BYTES {
        return Err(ServiceError::new(
            ErrorKind::Invalid,
            ErrorCode::TooLarge,
            "A key is too large",
        ));
    }
    Ok(())
}

/// Whether `new` should replace `stored`. Spec: "Server-side key backups": verified wins;
/// then the lower `first_message_index`; then the lower `forwarded_count`.
pub fn replaces(stored: &Value, new: &Value) -> bool {
    let verified = |k: &Value| {
        k.get("is_verified")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let number = |k: &Value, f: &str| k.get(f).and_then(Value::as_u64).unwrap_or(u64::MAX);
    if verified(stored) != verified(new) {
        return verified(new);
    }
    let (a, b) = (
        number(stored, "first_message_index"),
        number(new, "first_message_index"),
    );
    if a != b {
        return b < a;
    }
    number(new, "forwarded_count") < number(stored, "forwarded_count")
}

impl KeyBackup {
    /// The service over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            db,
            locks: StripedLocks::default(),
        }
    }

    /// The user's versions, newest first, decoded one by one as the caller goes: finding
    /// the current version reads only the deleted ones above it.
    fn newest_first<'a>(
        &'a self,
        user_id: &str,
    ) -> impl Iterator<Item = ServiceResult<(u64, BackupVersion)>> + 'a {
        let prefix = keys::prefix(user_id.as_bytes());
        let end = keys::prefix_successor(&prefix).unwrap_or_default();
        let start = prefix.len();
        self.db
            .scan_range(Table::UseridVersionBackup, &prefix, &end, true)
            .map(move |entry| {
                let (key, value) = entry?;
                let version = key
                    .get(start..)
                    .and_then(keys::read_u64)
                    .ok_or_else(|| ServiceError::internal("corrupt backup version key"))?;
                Ok((version, decode(Table::UseridVersionBackup, &value)?))
            })
    }

    /// The most recently created version that is not deleted.
    fn current(&self, user_id: &str) -> ServiceResult<Option<(u64, BackupVersion)>> {
        for version in self.newest_first(user_id) {
            let (number, record) = version?;
            if !record.deleted {
                return Ok(Some((number, record)));
            }
        }
        Ok(None)
    }

    fn version(&self, user_id: &str, version: &str) -> ServiceResult<Option<(u64, BackupVersion)>> {
        let Some(number) = parse_version(version) else {
            return Ok(None);
        };
        let Some(bytes) = self
            .db
            .get(Table::UseridVersionBackup, version_key(user_id, number))?
        else {
            return Ok(None);
        };
        Ok(Some((number, decode(Table::UseridVersionBackup, &bytes)?)))
    }

    fn live_version(&self, user_id: &str, version: &str) -> ServiceResult<(u64, BackupVersion)> {
        self.version(user_id, version)?
            .filter(|(_, v)| !v.deleted)
            .ok_or_else(unknown_version)
    }

    fn check_auth_data(algorithm: &str, auth_data: &Value) -> ServiceResult<()> {
        if algorithm.is_empty() || algorithm.len() > 255 {
            return Err(ServiceError::invalid_param(
                "`algorithm` must be a non-empty string",
            ));
        }
        if !auth_data.is_object() {
            return Err(ServiceError::bad_json("`auth_data` must be an object"));
        }
        if serde_json::to_vec(auth_data).map_or(0, |b| b.len()) > MAX_AUTH_DATA_BYTES {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                ErrorCode::TooLarge,
                "`auth_data` is too large",
            ));
        }
        Ok(())
    }

    /// Creates a new version, which becomes the current one. Spec: `POST /room_keys/version`.
    pub async fn create_version(
        &self,
        user_id: &str,
        algorithm: &str,
        auth_data: Value,
    ) -> ServiceResult<String> {
        Self::check_auth_data(algorithm, &auth_data)?;
        let _guard = self.locks.lock(user_id.as_bytes()).await;
        let number = match self.newest_first(user_id).next().transpose()? {
            Some((newest, _)) => newest + 1,
            None => 1,
        };
        let record = BackupVersion {
            algorithm: algorithm.to_owned(),
            auth_data,
            etag: 0,
            count: 0,
            deleted: false,
        };
        let mut batch = self.db.batch();
        put_version(&mut batch, user_id, number, &record);
        self.db.commit(batch).await?;
        Ok(number.to_string())
    }

    /// A version's description (the current one when `version` is `None`); 404 when there
    /// is none. Spec: `GET /room_keys/version[/{version}]`.
    pub fn version_info(&self, user_id: &str, version: Option<&str>) -> ServiceResult<Value> {
        let (number, record) = match version {
            Some(v) => self.live_version(user_id, v)?,
            None => self
                .current(user_id)?
                .ok_or_else(|| ServiceError::not_found("No current backup version"))?,
        };
        Ok(json!({
            "algorithm": record.algorithm,
            "auth_data": record.auth_data,
            "count": record.count,
            "etag": record.etag.to_string(),
            "version": number.to_string(),
        }))
    }

    /// Replaces a version's `auth_data` (the only thing that may change). Spec: `PUT
    /// /room_keys/version/{version}`.
    pub async fn update_version(
        &self,
        user_id: &str,
        version: &str,
        algorithm: &str,
        auth_data: Value,
        body_version: Option<&str>,
    ) -> ServiceResult<()> {
        Self::check_auth_data(algorithm, &auth_data)?;
        if body_version.is_some_and(|v| v != version) {
            return Err(ServiceError::invalid_param(
                "The version in the body must be the version in the path",
            ));
        }
        let _guard = self.locks.lock(user_id.as_bytes()).await;
        let (number, mut record) = self.live_version(user_id, version)?;
        if record.algorithm != algorithm {
            return Err(ServiceError::invalid_param(
                "The algorithm of a backup version cannot change",
            ));
        }
        record.auth_data = auth_data;
        let mut batch = self.db.batch();
        put_version(&mut batch, user_id, number, &record);
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Deletes a version and its keys; deleting it again is fine, a version that never
    /// existed is 404. Spec: `DELETE /room_keys/version/{version}`.
    pub async fn delete_version(&self, user_id: &str, version: &str) -> ServiceResult<()> {
        let _guard = self.locks.lock(user_id.as_bytes()).await;
        let (number, mut record) = self
            .version(user_id, version)?
            .ok_or_else(unknown_version)?;
        if record.deleted {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for entry in self.db.scan_prefix(
            Table::UseridVersionRoomidSessionidRoomkey,
            &keys_prefix(user_id, number, Scope::All),
        ) {
            let (key, _) = entry?;
            batch.delete(Table::UseridVersionRoomidSessionidRoomkey, key);
        }
        record.deleted = true;
        record.count = 0;
        // Only the number needs keeping.
        record.auth_data = Value::Null;
        put_version(&mut batch, user_id, number, &record);
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Stores keys in the current version, keeping the better copy of each session.
    /// Spec: `PUT /room_keys/keys[/{roomId}[/{sessionId}]]`.
    pub async fn put_keys(
        &self,
        user_id: &str,
        version: &str,
        keys_in: RoomKeys,
    ) -> ServiceResult<KeysUpdated> {
        for (room, sessions) in &keys_in {
            if !room.starts_with('!') || room.contains('\u{0}') {
                return Err(ServiceError::invalid_param(format!(
                    "Invalid room id {room:?}"
                )));
            }
            for key in sessions.values() {
                check_session(key)?;
            }
        }
        let _guard = self.locks.lock(user_id.as_bytes()).await;
        let (number, mut record) = match self.current(user_id)? {
            Some((number, record)) if parse_version(version) == Some(number) => (number, record),
            Some((number, _)) => {
                return Err(ServiceError::new(
                    ErrorKind::Forbidden,
                    ErrorCode::WrongRoomKeysVersion,
                    "Keys can only be written to the current backup version",
                )
                .with("current_version", number.to_string()))
            }
            None => return Err(ServiceError::not_found("No current backup version")),
        };
        let mut batch = self.db.batch();
        let mut changed = false;
        for (room, sessions) in keys_in {
            for (session, key) in sessions {
                let db_key = keys_prefix(user_id, number, Scope::Session(&room, &session));
                let stored: Option<Value> = self
                    .db
                    .get(Table::UseridVersionRoomidSessionidRoomkey, &db_key)?
                    .map(|b| decode(Table::UseridVersionRoomidSessionidRoomkey, &b))
                    .transpose()?;
                match &stored {
                    Some(stored) if !replaces(stored, &key) => continue,
                    Some(_) => {}
                    None => record.count += 1,
                }
                batch.put(
                    Table::UseridVersionRoomidSessionidRoomkey,
                    db_key,
                    encode(&key),
                );
                changed = true;
            }
        }
        if changed {
            record.etag += 1;
            put_version(&mut batch, user_id, number, &record);
            self.db.commit(batch).await?;
        }
        Ok(KeysUpdated {
            etag: record.etag.to_string(),
            count: record.count,
        })
    }

    /// Stored keys of a version. Spec: `GET /room_keys/keys[/{roomId}[/{sessionId}]]`
    /// (a missing session is 404; a room without keys is empty).
    pub fn get_keys(
        &self,
        user_id: &str,
        version: &str,
        scope: Scope<'_>,
    ) -> ServiceResult<RoomKeys> {
        let (number, _) = self.live_version(user_id, version)?;
        let base = keys_prefix(user_id, number, Scope::All);
        let mut out = RoomKeys::new();
        let prefix = keys_prefix(user_id, number, scope);
        let entries: Vec<_> = match scope {
            Scope::Session(..) => self
                .db
                .get(Table::UseridVersionRoomidSessionidRoomkey, &prefix)?
                .map(|v| (prefix.clone().into_boxed_slice(), v.into_boxed_slice()))
                .into_iter()
                .map(Ok)
                .collect(),
            _ => self
                .db
                .scan_prefix(Table::UseridVersionRoomidSessionidRoomkey, &prefix)
                .collect(),
        };
        for entry in entries {
            let (key, value) = entry?;
            let mut parts = keys::split(&key[base.len()..]);
            let (Some(room), Some(session)) = (parts.next(), parts.next()) else {
                return Err(ServiceError::internal("corrupt backed-up key"));
            };
            out.entry(String::from_utf8_lossy(room).into_owned())
                .or_default()
                .insert(
                    String::from_utf8_lossy(session).into_owned(),
                    decode(Table::UseridVersionRoomidSessionidRoomkey, &value)?,
                );
        }
        if matches!(scope, Scope::Session(..)) && out.is_empty() {
            return Err(ServiceError::not_found("No key for this session"));
        }
        Ok(out)
    }

    /// Deletes stored keys of a version. Spec: `DELETE
    /// /room_keys/keys[/{roomId}[/{sessionId}]]`.
    pub async fn delete_keys(
        &self,
        user_id: &str,
        version: &str,
        scope: Scope<'_>,
    ) -> ServiceResult<KeysUpdated> {
        let _guard = self.locks.lock(user_id.as_bytes()).await;
        let (number, mut record) = self.live_version(user_id, version)?;
        let prefix = keys_prefix(user_id, number, scope);
        let mut batch = self.db.batch();
        let mut removed = 0u64;
        match scope {
            Scope::Session(..) => {
                if self
                    .db
                    .contains(Table::UseridVersionRoomidSessionidRoomkey, &prefix)?
                {
                    batch.delete(Table::UseridVersionRoomidSessionidRoomkey, &prefix);
                    removed = 1;
                }
            }
            _ => {
                for entry in self
                    .db
                    .scan_prefix(Table::UseridVersionRoomidSessionidRoomkey, &prefix)
                {
                    let (key, _) = entry?;
                    batch.delete(Table::UseridVersionRoomidSessionidRoomkey, key);
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            record.count = record.count.saturating_sub(removed);
            record.etag += 1;
            put_version(&mut batch, user_id, number, &record);
            self.db.commit(batch).await?;
        }
        Ok(KeysUpdated {
            etag: record.etag.to_string(),
            count: record.count,
        })
    }
}

/// The keys of one room as the spec's `RoomKeyBackup`.
pub fn room_json(sessions: BTreeMap<String, Value>) -> Value {
    json!({ "sessions": Map::from_iter(sessions) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(verified: bool, index: u64, forwarded: u64) -> Value {
        json!({
            "is_verified": verified,
            "first_message_index": index,
            "forwarded_count": forwarded,
            "session_data": {},
        })
    }

    /// Spec: "Server-side key backups", the three rules in order.
    #[test]
    fn a_verified_key_beats_an_unverified_one_whatever_its_index() {
        assert!(replaces(&key(false, 0, 0), &key(true, 10, 10)));
        assert!(!replaces(&key(true, 10, 10), &key(false, 0, 0)));
    }

    #[test]
    fn with_equal_verification_the_lower_first_message_index_wins() {
        assert!(replaces(&key(false, 5, 0), &key(false, 1, 9)));
        assert!(!replaces(&key(false, 1, 9), &key(false, 5, 0)));
    }

    #[test]
    fn forwarded_count_decides_only_when_the_rest_is_equal() {
        assert!(replaces(&key(true, 3, 2), &key(true, 3, 1)));
        assert!(!replaces(&key(true, 3, 1), &key(true, 3, 2)));
        assert!(!replaces(&key(true, 3, 1), &key(true, 3, 1)));
    }
}
