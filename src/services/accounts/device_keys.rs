//! Device keys, one-time keys and fallback keys: what `/keys/upload` stores, `/keys/query`
//! shows and `/keys/claim` hands out.
//!
//! Spec: client-server API, "End-to-End Encryption": "Uploading keys", "One-time and
//! fallback keys", "Key algorithms"; `POST /keys/upload`, `POST /keys/query`,
//! `POST /keys/claim`. The server never sees private keys: it stores and relays the public
//! halves exactly as uploaded. Device keys must be signed by the device's own Ed25519 key,
//! and are checked. One-time keys are handed out oldest upload first, each at most once
//! (claims run under the keys lock and delete the key in the same write that answers it);
//! a device with none left gets its fallback key, which stays until replaced and is then
//! marked used.
//!
//! Tables: `userid_deviceid_devicekeys`, `userid_deviceid_algorithm_pos_onetimekey`,
//! `userid_deviceid_algorithm_fallbackkey`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::cross_signing::UploadedSignatures;
use super::device_list_updates::Changed;
use super::{device_key, Accounts};
use crate::core::signatures::verify_json;
use crate::core::{base64, UserId};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::services::stream::Write;
use crate::storage::{keys, Table};

/// One-time or fallback keys in one upload, at most.
pub const MAX_KEYS_PER_UPLOAD: usize = 1_000;
/// Unclaimed one-time keys kept per device (all algorithms), at most: clients keep about
/// 50, and every /sync of the device counts them.
pub const MAX_ONE_TIME_KEYS: usize = 1_000;
/// Fallback keys (algorithms) kept per device, at most.
const MAX_FALLBACK_KEYS: usize = 16;
/// Bytes of one key (its JSON), at most.
const MAX_KEY_BYTES: usize = 4_096;
/// Bytes of a device's keys object, at most.
const MAX_DEVICE_KEYS_BYTES: usize = 65_536;
/// Users, devices or pairs in one query or claim, at most.
pub const MAX_KEYS_REQUEST_ENTRIES: usize = 10_000;

/// `POST /keys/upload`, parsed.
#[derive(Debug, Default)]
pub struct KeyUpload {
    /// The device's identity keys.
    pub device_keys: Option<Value>,
    /// `<algorithm>:<key id>` -> key.
    pub one_time_keys: Map<String, Value>,
    /// `<algorithm>:<key id>` -> key (at most one per algorithm).
    pub fallback_keys: Map<String, Value>,
}

/// `userid_deviceid_algorithm_fallbackkey`: a device's fallback key for one algorithm.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FallbackKey {
    /// `<algorithm>:<key id>`.
    key_id: String,
    /// The key as uploaded.
    key: Value,
    /// Whether a claim has handed it out.
    used: bool,
}

/// What a claim answers: user -> device -> `{"<algorithm>:<key id>": key}`.
pub type ClaimedKeys = BTreeMap<String, BTreeMap<String, Value>>;

fn device_prefix(user_id: &str, device_id: &str) -> Vec<u8> {
    let mut key = device_key(user_id, device_id);
    key.push(keys::SEP);
    key
}

fn algorithm_prefix(user_id: &str, device_id: &str, algorithm: &str) -> Vec<u8> {
    let mut key = device_prefix(user_id, device_id);
    key.extend_from_slice(algorithm.as_bytes());
    key.push(keys::SEP);
    key
}

/// Splits `<algorithm>:<key id>`; both parts non-empty.
fn split_key_id(id: &str) -> ServiceResult<(&str, &str)> {
    match id.split_once(':') {
        Some((algorithm, key)) if !algorithm.is_empty() && !key.is_empty() && id.len() <= 255 => {
            Ok((algorithm, key))
        }
        _ => Err(ServiceError::invalid_param(format!(
            "Key id {id:?} is not of the form <algorithm>:<key id>"
        ))),
    }
}

/// A one-time or fallback key: a string (unsigned algorithms) or an object with a `key`.
fn check_key(id: &str, key: &Value) -> ServiceResult<Vec<u8>> {
    let shaped = match key {
        Value::String(s) => !s.is_empty(),
        Value::Object(o) => o.get("key").is_some_and(Value::is_string),
        _ => false,
    };
    if !shaped {
        return Err(ServiceError::bad_json(format!(
            "Key {id} must be a string or an object with a `key`"
        )));
    }
    let bytes = serde_json::to_vec(key).map_err(ServiceError::internal)?;
    if bytes.len() > MAX_KEY_BYTES {
        return Err(ServiceError::new(
            ErrorKind::Invalid,
            ErrorCode::TooLarge,
            format!("Key {id} is larger than {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// Checks a device's keys object: its user and device are the uploader's, and it is signed
/// by the Ed25519 key it holds. Answers it without `unsigned` (the server's to add).
/// Spec: "Uploading keys": "The JSON object must include the public part of the device's
/// Ed25519 key, and must be signed by that key."
fn check_device_keys(user_id: &str, device_id: &str, keys: &Value) -> ServiceResult<Value> {
    let mut object = keys
        .as_object()
        .cloned()
        .ok_or_else(|| ServiceError::bad_json("`device_keys` must be an object"))?;
    object.remove("unsigned");
    if object.get("user_id").and_then(Value::as_str) != Some(user_id) {
        return Err(ServiceError::invalid_param(
            "`device_keys.user_id` does not match the logged-in user",
        ));
    }
    if object.get("device_id").and_then(Value::as_str) != Some(device_id) {
        return Err(ServiceError::invalid_param(
            "`device_keys.device_id` does not match the logged-in device",
        ));
    }
    let algorithms_ok = object
        .get("algorithms")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().all(Value::is_string));
    if !algorithms_ok {
        return Err(ServiceError::bad_json(
            "`device_keys.algorithms` must be a list of strings",
        ));
    }
    let key_map = object
        .get("keys")
        .and_then(Value::as_object)
        .filter(|k| k.values().all(Value::is_string))
        .ok_or_else(|| ServiceError::bad_json("`device_keys.keys` must map key ids to keys"))?;
    let signing_key_id = format!("ed25519:{device_id}");
    let public = key_map
        .get(&signing_key_id)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ServiceError::bad_json(format!("`device_keys.keys` has no {signing_key_id}"))
        })?
        .to_owned();
    let value = Value::Object(object);
    let bytes = serde_json::to_vec(&value).map_err(ServiceError::internal)?;
    if bytes.len() > MAX_DEVICE_KEYS_BYTES {
        return Err(ServiceError::new(
            ErrorKind::Invalid,
            ErrorCode::TooLarge,
            "`device_keys` is too large",
        ));
    }
    let verifying = ed25519_public_key(&public).ok_or_else(|| {
        ServiceError::invalid_param(format!("{signing_key_id} is not an Ed25519 public key"))
    })?;
    verify_json(&value, user_id, &signing_key_id, &verifying).map_err(|e| {
        ServiceError::new(
            ErrorKind::Invalid,
            ErrorCode::InvalidSignature,
            format!("`device_keys` is not signed by {signing_key_id}: {e}"),
        )
    })?;
    Ok(value)
}

/// An unpadded base64 Ed25519 public key.
pub(super) fn ed25519_public_key(text: &str) -> Option<ed25519_dalek::VerifyingKey> {
    let bytes: [u8; 32] = base64::decode(text).ok()?.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()
}

impl Accounts {
    /// Stores a device's keys and answers its unclaimed one-time keys per algorithm.
    /// New or changed device keys are a device-list change. Re-uploading a one-time key
    /// with the same id and content is a no-op; with other content, 400. A fallback key
    /// replaces the device's fallback key for its algorithm (and is unused again), unless
    /// it is the same key. Spec: `POST /keys/upload`.
    pub async fn upload_keys(
        &self,
        user_id: &UserId,
        device_id: &str,
        upload: KeyUpload,
    ) -> ServiceResult<BTreeMap<String, u64>> {
        let user = user_id.as_str();
        let device_keys = upload
            .device_keys
            .as_ref()
            .map(|k| check_device_keys(user, device_id, k))
            .transpose()?;
        if upload.one_time_keys.len() > MAX_KEYS_PER_UPLOAD
            || upload.fallback_keys.len() > MAX_KEYS_PER_UPLOAD
        {
            return Err(ServiceError::invalid_param(format!(
                "At most {MAX_KEYS_PER_UPLOAD} keys per upload"
            )));
        }
        let mut one_time: Vec<(String, String, String, Vec<u8>)> = Vec::new();
        for (id, key) in &upload.one_time_keys {
            let (algorithm, key_id) = split_key_id(id)?;
            let bytes = check_key(id, key)?;
            one_time.push((id.clone(), algorithm.to_owned(), key_id.to_owned(), bytes));
        }
        let mut fallback: BTreeMap<String, (String, Value)> = BTreeMap::new();
        for (id, key) in &upload.fallback_keys {
            let (algorithm, _) = split_key_id(id)?;
            check_key(id, key)?;
            if fallback
                .insert(algorithm.to_owned(), (id.clone(), key.clone()))
                .is_some()
            {
                return Err(ServiceError::invalid_param(format!(
                    "More than one fallback key for {algorithm}"
                )));
            }
        }

        let _keys = self.keys_locks.lock(user.as_bytes()).await;
        // The device may have been deleted since the token was checked.
        if !self
            .db
            .contains(Table::UseridDeviceidDevice, device_key(user, device_id))?
        {
            return Err(ServiceError::unknown_token("The device has been deleted")
                .with("soft_logout", false));
        }
        let dkey = device_key(user, device_id);
        let mut fallback_writes: Vec<Write> = Vec::new();
        let keys_changed = match &device_keys {
            Some(new) => {
                let stored: Option<Value> = self
                    .db
                    .get(Table::UseridDeviceidDevicekeys, &dkey)?
                    .map(|b| decode(Table::UseridDeviceidDevicekeys, &b))
                    .transpose()?;
                let material_changed = stored
                    .as_ref()
                    .is_some_and(|old| signed_content(old) != signed_content(new));
                if material_changed {
                    // Signatures of the old keys do not cover the new ones, and the old
                    // ed25519 key's signature of the master key is not this device's any more.
                    for entry in self.db.scan_prefix(
                        Table::UseridKeyidSignerSignature,
                        &device_prefix(user, device_id),
                    ) {
                        fallback_writes.push((
                            Table::UseridKeyidSignerSignature,
                            entry?.0.into_vec(),
                            None,
                        ));
                    }
                    if let Some(row) = self.master_signature_by_device(user, device_id)? {
                        fallback_writes.push((Table::UseridKeyidSignerSignature, row, None));
                    }
                }
                stored.as_ref() != Some(new)
            }
            None => false,
        };
        let stored = self.stored_one_time_keys(user, device_id)?;
        let mut count = stored.len();
        let mut new_keys: Vec<(String, String, Vec<u8>)> = Vec::new();
        for (id, algorithm, key_id, bytes) in one_time {
            if let Some((_, existing)) = stored.get(&id) {
                if existing.as_slice() != bytes.as_slice() {
                    return Err(ServiceError::invalid_param(format!(
                        "One-time key {id} already exists with different content"
                    )));
                }
                continue;
            }
            count += 1;
            if count > MAX_ONE_TIME_KEYS {
                return Err(ServiceError::invalid_param(format!(
                    "A device may hold at most {MAX_ONE_TIME_KEYS} unclaimed one-time keys"
                )));
            }
            new_keys.push((algorithm, key_id, bytes));
        }
        let mut algorithms: Vec<Box<[u8]>> = Vec::new();
        for entry in self.db.scan_prefix(
            Table::UseridDeviceidAlgorithmFallbackkey,
            &device_prefix(user, device_id),
        ) {
            algorithms.push(entry?.0);
        }
        let prefix_len = device_prefix(user, device_id).len();
        let new_algorithms = fallback
            .keys()
            .filter(|a| !algorithms.iter().any(|k| &k[prefix_len..] == a.as_bytes()))
            .count();
        if algorithms.len() + new_algorithms > MAX_FALLBACK_KEYS {
            return Err(ServiceError::invalid_param(format!(
                "A device may hold at most {MAX_FALLBACK_KEYS} fallback keys"
            )));
        }
        for (algorithm, (key_id, key)) in fallback {
            let fkey = {
                let mut k = device_prefix(user, device_id);
                k.extend_from_slice(algorithm.as_bytes());
                k
            };
            let existing: Option<FallbackKey> = self
                .db
                .get(Table::UseridDeviceidAlgorithmFallbackkey, &fkey)?
                .map(|b| decode(Table::UseridDeviceidAlgorithmFallbackkey, &b))
                .transpose()?;
            if existing
                .as_ref()
                .is_some_and(|e| e.key_id == key_id && e.key == key)
            {
                continue;
            }
            let record = FallbackKey {
                key_id,
                key,
                used: false,
            };
            fallback_writes.push((
                Table::UseridDeviceidAlgorithmFallbackkey,
                fkey,
                Some(encode(&record)),
            ));
        }
        if keys_changed || !new_keys.is_empty() || !fallback_writes.is_empty() {
            let (user_owned, device_owned) = (user.to_owned(), device_id.to_owned());
            let device_keys_bytes = device_keys.filter(|_| keys_changed).map(|k| encode(&k));
            self.commit_keys_change(user, keys_changed, move |pos| {
                let mut writes = fallback_writes;
                if let Some(bytes) = device_keys_bytes {
                    writes.push((Table::UseridDeviceidDevicekeys, dkey, Some(bytes)));
                }
                // Keys of one upload share its position: the spec orders claims by upload,
                // and keys within one upload are equivalent.
                for (algorithm, key_id, bytes) in new_keys {
                    let mut key = algorithm_prefix(&user_owned, &device_owned, &algorithm);
                    key.extend_from_slice(&pos.to_be_bytes());
                    key.extend_from_slice(key_id.as_bytes());
                    writes.push((
                        Table::UseridDeviceidAlgorithmPosOnetimekey,
                        key,
                        Some(bytes),
                    ));
                }
                writes
            })
            .await?;
            if keys_changed {
                self.tell_other_servers(user, Changed::Devices(&[device_id]))
                    .await;
            }
        }
        self.one_time_key_counts(user, device_id)
    }

    /// The device's unclaimed one-time keys: `<algorithm>:<key id>` -> (algorithm, key).
    fn stored_one_time_keys(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> ServiceResult<HashMap<String, (String, Vec<u8>)>> {
        let prefix = device_prefix(user_id, device_id);
        let mut found = HashMap::new();
        for entry in self
            .db
            .scan_prefix(Table::UseridDeviceidAlgorithmPosOnetimekey, &prefix)
        {
            let (key, value) = entry?;
            let (algorithm, key_id) = parse_one_time_key(&key[prefix.len()..])?;
            found.insert(
                format!("{algorithm}:{key_id}"),
                (algorithm, value.into_vec()),
            );
        }
        Ok(found)
    }

    /// Unclaimed one-time keys of a device per algorithm. Spec: `one_time_key_counts` of
    /// `/keys/upload`, `device_one_time_keys_count` of `/sync`.
    pub fn one_time_key_counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> ServiceResult<BTreeMap<String, u64>> {
        let prefix = device_prefix(user_id, device_id);
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for entry in self
            .db
            .scan_prefix(Table::UseridDeviceidAlgorithmPosOnetimekey, &prefix)
        {
            let (key, _) = entry?;
            let rest = &key[prefix.len()..];
            let end = rest
                .iter()
                .position(|b| *b == keys::SEP)
                .ok_or_else(|| ServiceError::internal("corrupt one-time key"))?;
            let algorithm = String::from_utf8_lossy(&rest[..end]);
            match counts.get_mut(algorithm.as_ref()) {
                Some(count) => *count += 1,
                None => {
                    counts.insert(algorithm.into_owned(), 1);
                }
            }
        }
        // Clients read a missing signed_curve25519 as 0 anyway; saying so keeps older ones
        // (which only upload when they see the field) uploading.
        counts.entry("signed_curve25519".to_owned()).or_insert(0);
        Ok(counts)
    }

    /// Algorithms for which the device has a fallback key no claim has handed out.
    /// Spec: `device_unused_fallback_key_types` of `/sync`.
    pub fn unused_fallback_key_types(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> ServiceResult<Vec<String>> {
        let prefix = device_prefix(user_id, device_id);
        let mut types = Vec::new();
        for entry in self
            .db
            .scan_prefix(Table::UseridDeviceidAlgorithmFallbackkey, &prefix)
        {
            let (key, value) = entry?;
            let record: FallbackKey = decode(Table::UseridDeviceidAlgorithmFallbackkey, &value)?;
            if !record.used {
                types.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
            }
        }
        Ok(types)
    }

    /// Hands out one key per requested device: its oldest one-time key of the algorithm
    /// (deleted in the same write, so never handed out twice), else its fallback key
    /// (marked used). Devices with neither are left out. Spec: `POST /keys/claim`.
    pub async fn claim_keys(
        &self,
        wanted: &[(UserId, String, String)],
    ) -> ServiceResult<ClaimedKeys> {
        let _keys = self
            .keys_locks
            .lock_all(wanted.iter().map(|(u, _, _)| u.as_str().as_bytes()))
            .await;
        // Up to 10,000 prefix reads: off the async worker where the runtime allows.
        let (claimed, writes) = blocking_section(|| self.pick_claimed_keys(wanted))?;
        if !writes.is_empty() {
            let mut batch = self.db.batch();
            for (table, key, value) in writes {
                match value {
                    Some(value) => batch.put(table, key, value),
                    None => batch.delete(table, key),
                }
            }
            self.db.commit(batch).await?;
        }
        Ok(claimed)
    }

    /// The key each wanted device hands out (its oldest one-time key, else its fallback
    /// key) and the writes that consume them. The caller holds the owners' keys locks.
    fn pick_claimed_keys(
        &self,
        wanted: &[(UserId, String, String)],
    ) -> ServiceResult<(ClaimedKeys, Vec<Write>)> {
        let mut claimed = ClaimedKeys::new();
        let mut writes: Vec<Write> = Vec::new();
        for (user, device_id, algorithm) in wanted {
            let user = user.as_str();
            let prefix = algorithm_prefix(user, device_id, algorithm);
            let oldest = self
                .db
                .scan_prefix(Table::UseridDeviceidAlgorithmPosOnetimekey, &prefix)
                .next()
                .transpose()?;
            let (key_id, key) = match oldest {
                Some((key, value)) => {
                    let key_id = key
                        .get(prefix.len() + 8..)
                        .map(|id| String::from_utf8_lossy(id).into_owned())
                        .ok_or_else(|| ServiceError::internal("corrupt one-time key"))?;
                    let parsed: Value =
                        decode(Table::UseridDeviceidAlgorithmPosOnetimekey, &value)?;
                    writes.push((
                        Table::UseridDeviceidAlgorithmPosOnetimekey,
                        key.into_vec(),
                        None,
                    ));
                    (format!("{algorithm}:{key_id}"), parsed)
                }
                None => {
                    let mut fkey = device_prefix(user, device_id);
                    fkey.extend_from_slice(algorithm.as_bytes());
                    let Some(bytes) = self
                        .db
                        .get(Table::UseridDeviceidAlgorithmFallbackkey, &fkey)?
                    else {
                        continue;
                    };
                    let mut record: FallbackKey =
                        decode(Table::UseridDeviceidAlgorithmFallbackkey, &bytes)?;
                    if !record.used {
                        record.used = true;
                        writes.push((
                            Table::UseridDeviceidAlgorithmFallbackkey,
                            fkey,
                            Some(encode(&record)),
                        ));
                    }
                    (record.key_id, record.key)
                }
            };
            let mut entry = Map::new();
            entry.insert(key_id, key);
            claimed
                .entry(user.to_owned())
                .or_default()
                .insert(device_id.clone(), Value::Object(entry));
        }
        Ok((claimed, writes))
    }

    /// The stored keys of some of a user's devices (all of them when `device_ids` is
    /// empty): device id -> keys as uploaded, with `unsigned.device_display_name` and the
    /// uploaded `signatures` (already filtered for the viewer). Devices without keys are
    /// left out. Spec: `POST /keys/query`, `device_keys`.
    fn query_device_keys(
        &self,
        user_id: &str,
        device_ids: &[String],
        signatures: &UploadedSignatures,
    ) -> ServiceResult<BTreeMap<String, QueriedDeviceKeys>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut found: Vec<(String, Vec<u8>)> = Vec::new();
        if device_ids.is_empty() {
            for entry in self
                .db
                .scan_prefix(Table::UseridDeviceidDevicekeys, &prefix)
            {
                let (key, value) = entry?;
                let device = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                found.push((device, value.into_vec()));
            }
        } else {
            let wanted: Vec<Vec<u8>> = device_ids.iter().map(|d| device_key(user_id, d)).collect();
            for (device, value) in device_ids.iter().zip(
                self.db
                    .multi_get(Table::UseridDeviceidDevicekeys, &wanted)?,
            ) {
                if let Some(value) = value {
                    found.push((device.clone(), value));
                }
            }
        }
        if found.is_empty() {
            return Ok(BTreeMap::new());
        }
        let names = self.db.multi_get(
            Table::UseridDeviceidDevice,
            found.iter().map(|(d, _)| device_key(user_id, d)),
        )?;
        let mut out = BTreeMap::new();
        for ((device_id, bytes), device) in found.into_iter().zip(names) {
            // A device deleted between the two reads: its keys are going too.
            let Some(device) = device else { continue };
            let device: super::records::Device = decode(Table::UseridDeviceidDevice, &device)?;
            let stored = String::from_utf8(bytes)
                .ok()
                .and_then(|text| RawValue::from_string(text).ok())
                .ok_or_else(|| {
                    ServiceError::internal(format!(
                        "corrupt record in {}",
                        Table::UseridDeviceidDevicekeys.name()
                    ))
                })?;
            let keys = QueriedDeviceKeys {
                stored,
                display_name: device.display_name,
                extra: signatures.get(&device_id).cloned(),
            };
            out.insert(device_id, keys);
        }
        Ok(out)
    }

    /// The public Ed25519 key of a device, from its uploaded keys.
    pub(super) fn device_signing_key(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> ServiceResult<Option<(Value, ed25519_dalek::VerifyingKey)>> {
        let Some(bytes) = self.db.get(
            Table::UseridDeviceidDevicekeys,
            device_key(user_id, device_id),
        )?
        else {
            return Ok(None);
        };
        let keys: Value = decode(Table::UseridDeviceidDevicekeys, &bytes)?;
        let public = keys
            .get("keys")
            .and_then(|k| k.get(format!("ed25519:{device_id}")))
            .and_then(Value::as_str)
            .and_then(ed25519_public_key);
        Ok(public.map(|p| (keys, p)))
    }

    /// Adds the removal of a device's keys (identity, one-time, fallback, signatures of
    /// it) to `writes`.
    pub(super) fn device_key_removals(
        &self,
        writes: &mut Vec<Write>,
        user_id: &str,
        device_id: &str,
    ) -> ServiceResult<()> {
        writes.push((
            Table::UseridDeviceidDevicekeys,
            device_key(user_id, device_id),
            None,
        ));
        let prefix = device_prefix(user_id, device_id);
        for table in [
            Table::UseridDeviceidAlgorithmPosOnetimekey,
            Table::UseridDeviceidAlgorithmFallbackkey,
            Table::UseridKeyidSignerSignature,
        ] {
            for entry in self.db.scan_prefix(table, &prefix) {
                let (key, _) = entry?;
                writes.push((table, key.into_vec(), None));
            }
        }
        // The device's own signature of the user's master key goes with it.
        if let Some(row) = self.master_signature_by_device(user_id, device_id)? {
            writes.push((Table::UseridKeyidSignerSignature, row, None));
        }
        Ok(())
    }

    /// The row of the device's signature of the user's master key, when there is a
    /// master key.
    fn master_signature_by_device(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> ServiceResult<Option<Vec<u8>>> {
        Ok(self
            .cross_signing_key(user_id, super::cross_signing::Usage::Master)?
            .map(|master| {
                keys::join(&[
                    user_id.as_bytes(),
                    master.public.as_bytes(),
                    user_id.as_bytes(),
                    format!("ed25519:{device_id}").as_bytes(),
                ])
            }))
    }
}

/// Runs synchronous storage work from async code: in `block_in_place` on a
/// multi-threaded runtime (other tasks move to another worker), directly otherwise.
fn blocking_section<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// A signed object without its `signatures` and `unsigned`: what its signatures cover.
fn signed_content(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    object
}

/// `algorithm 0xFF position (u64 BE) ++ key id` -> (algorithm, key id).
fn parse_one_time_key(rest: &[u8]) -> ServiceResult<(String, String)> {
    let corrupt = || ServiceError::internal("corrupt one-time key");
    let end = rest
        .iter()
        .position(|b| *b == keys::SEP)
        .ok_or_else(corrupt)?;
    let algorithm = String::from_utf8_lossy(&rest[..end]).into_owned();
    let key_id = rest.get(end + 1 + 8..).ok_or_else(corrupt)?;
    Ok((algorithm, String::from_utf8_lossy(key_id).into_owned()))
}

/// Merges `extra` (signer user -> key id -> signature) into `object.signatures`.
pub(super) fn add_signatures(
    object: &mut Value,
    extra: &BTreeMap<String, BTreeMap<String, String>>,
) {
    let Some(object) = object.as_object_mut() else {
        return;
    };
    let signatures = object
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(signatures) = signatures.as_object_mut() else {
        return;
    };
    for (signer, by_key) in extra {
        let entry = signatures
            .entry(signer.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(entry) = entry.as_object_mut() {
            for (key_id, signature) in by_key {
                entry.insert(key_id.clone(), json!(signature));
            }
        }
    }
}

/// A device's keys as `/keys/query` answers them: the stored JSON written out as it is,
/// with `unsigned.device_display_name` and the signatures others uploaded (already
/// filtered for the viewer) merged in. A thousand users' keys go out without a `Value`
/// copy of each.
#[derive(Debug)]
pub struct QueriedDeviceKeys {
    stored: Box<RawValue>,
    display_name: Option<String>,
    /// signer -> key id -> signature, added to the stored `signatures`.
    extra: Option<BTreeMap<String, BTreeMap<String, String>>>,
}

impl Serialize for QueriedDeviceKeys {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Ok(fields) = serde_json::from_str::<BTreeMap<String, &RawValue>>(self.stored.get())
        else {
            // Not an object: nothing to add to.
            return self.stored.serialize(serializer);
        };
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in &fields {
            match key.as_str() {
                "unsigned" => {}
                "signatures" if self.extra.is_some() => {}
                _ => map.serialize_entry(key, value)?,
            }
        }
        if let Some(extra) = &self.extra {
            let stored = fields
                .get("signatures")
                .and_then(|raw| serde_json::from_str(raw.get()).ok())
                .unwrap_or_else(|| Value::Object(Map::new()));
            let mut holder = json!({ "signatures": stored });
            add_signatures(&mut holder, extra);
            map.serialize_entry("signatures", &holder["signatures"])?;
        }
        let mut unsigned = Map::new();
        if let Some(name) = &self.display_name {
            unsigned.insert("device_display_name".into(), json!(name));
        }
        map.serialize_entry("unsigned", &unsigned)?;
        map.end()
    }
}

/// What `/keys/query` answers for local users.
#[derive(Debug, Default)]
pub struct KeysQueried {
    /// user -> device -> keys.
    pub device_keys: BTreeMap<String, BTreeMap<String, QueriedDeviceKeys>>,
    /// user -> master key.
    pub master_keys: Map<String, Value>,
    /// user -> self-signing key.
    pub self_signing_keys: Map<String, Value>,
    /// The viewer's own user-signing key, when they asked for themselves.
    pub user_signing_keys: Map<String, Value>,
}

impl Accounts {
    /// Device and cross-signing keys of local users as `viewer` may see them. Unknown
    /// users and devices are left out (spec: no failure is recorded for them).
    /// Spec: `POST /keys/query`.
    pub fn query_keys(
        &self,
        viewer: &str,
        wanted: &BTreeMap<String, Vec<String>>,
    ) -> ServiceResult<KeysQueried> {
        let mut out = KeysQueried::default();
        for (user, devices) in wanted {
            let signatures = self.uploaded_signatures(viewer, user)?;
            let found = self.query_device_keys(user, devices, &signatures)?;
            if !found.is_empty() || self.db.contains(Table::UseridAccount, user.as_str())? {
                out.device_keys.insert(user.clone(), found);
            }
            for (usage, key) in self.query_cross_signing_keys(viewer, user, &signatures)? {
                let map = match usage {
                    super::cross_signing::Usage::Master => &mut out.master_keys,
                    super::cross_signing::Usage::SelfSigning => &mut out.self_signing_keys,
                    super::cross_signing::Usage::UserSigning => &mut out.user_signing_keys,
                };
                map.insert(user.clone(), key);
            }
        }
        Ok(out)
    }
}
