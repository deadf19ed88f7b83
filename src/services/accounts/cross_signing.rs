//! Cross-signing: a user's master, self-signing and user-signing keys, and the signatures
//! users upload for devices and keys.
//!
//! Spec: client-server API, "End-to-End Encryption", "Cross-signing" and "Key and signature
//! security"; `POST /keys/device_signing/upload`, `POST /keys/signatures/upload`, and the
//! `master_keys`, `self_signing_keys`, `user_signing_keys` of `POST /keys/query`.
//!
//! Every signature is checked before it is stored: self-signing and user-signing keys
//! against the master key, device signatures against the self-signing key, a master key's
//! signatures against the signing device's key, and signatures of other users' master keys
//! against the signer's user-signing key. Signatures uploaded by users are kept apart from
//! the keys (`userid_keyid_signer_signature`) and merged into what `/keys/query` shows,
//! hiding what the spec hides: nobody but the signer sees a user-signing key's signatures.
//!
//! Tables: `userid_usage_crosssigningkey`, `userid_keyid_signer_signature`.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use super::device_keys::{add_signatures, ed25519_public_key};
use super::device_list_updates::Changed;
use super::uia::{stages, UiaRequest};
use super::Accounts;
use crate::core::signatures::{verify_json, verify_signature};
use crate::core::UserId;
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::services::stream::Write;
use crate::storage::{keys, Table};

/// Bytes of one cross-signing key (its JSON), at most.
const MAX_CROSS_SIGNING_KEY_BYTES: usize = 16_384;
/// Signed objects in one `/keys/signatures/upload`, at most.
pub const MAX_SIGNED_OBJECTS: usize = 1_000;

/// The three kinds of cross-signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Signs the other two; others' user-signing keys sign it.
    Master,
    /// Signs the user's devices.
    SelfSigning,
    /// Signs other users' master keys.
    UserSigning,
}

impl Usage {
    /// The name in `usage` and in the table's key.
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Master => "master",
            Usage::SelfSigning => "self_signing",
            Usage::UserSigning => "user_signing",
        }
    }
}

/// `POST /keys/device_signing/upload`, parsed (without `auth`).
#[derive(Debug, Default, Clone)]
pub struct CrossSigningUpload {
    /// The master key.
    pub master_key: Option<Value>,
    /// The self-signing key.
    pub self_signing_key: Option<Value>,
    /// The user-signing key.
    pub user_signing_key: Option<Value>,
}

/// A stored cross-signing key.
#[derive(Debug, Clone)]
pub struct CrossSigningKey {
    /// The key as uploaded.
    pub json: Value,
    /// Its public key, unpadded base64.
    pub public: String,
}

/// Failures of a signatures upload: user -> key id -> error.
pub type SignatureFailures = BTreeMap<String, BTreeMap<String, Value>>;

/// Signatures uploaded for one user's keys: target key id (device id or public key) ->
/// signer -> signer key id -> signature.
pub(super) type UploadedSignatures = HashMap<String, BTreeMap<String, BTreeMap<String, String>>>;

fn usage_key(user_id: &str, usage: Usage) -> Vec<u8> {
    keys::join(&[user_id.as_bytes(), usage.as_str().as_bytes()])
}

fn signature_key(target: &str, target_key: &str, signer: &str, signer_key: &str) -> Vec<u8> {
    keys::join(&[
        target.as_bytes(),
        target_key.as_bytes(),
        signer.as_bytes(),
        signer_key.as_bytes(),
    ])
}

/// Checks a cross-signing key's shape: the user's, for `usage`, with exactly one Ed25519
/// key named after itself. Answers the public key. Spec: `CrossSigningKey`.
fn check_shape(user_id: &str, key: &Value, usage: Usage) -> ServiceResult<String> {
    let name = usage.as_str();
    let object = key
        .as_object()
        .ok_or_else(|| ServiceError::bad_json(format!("The {name} key must be an object")))?;
    if object.get("user_id").and_then(Value::as_str) != Some(user_id) {
        return Err(ServiceError::invalid_param(format!(
            "The {name} key's user_id is not the uploader"
        )));
    }
    let usages = object.get("usage").and_then(Value::as_array);
    if !usages.is_some_and(|u| u.iter().any(|v| v.as_str() == Some(name))) {
        return Err(ServiceError::invalid_param(format!(
            "The {name} key's usage must include {name:?}"
        )));
    }
    let key_map = object.get("keys").and_then(Value::as_object);
    let (key_id, public) = match key_map.map(|k| k.iter().collect::<Vec<_>>()).as_deref() {
        Some([(id, Value::String(public))]) => (id.as_str(), public.as_str()),
        _ => {
            return Err(ServiceError::invalid_param(format!(
                "The {name} key's keys must hold exactly one key"
            )))
        }
    };
    if key_id != format!("ed25519:{public}") || ed25519_public_key(public).is_none() {
        return Err(ServiceError::invalid_param(format!(
            "The {name} key must be an Ed25519 key named ed25519:<public key>"
        )));
    }
    if serde_json::to_vec(key).map_or(0, |b| b.len()) > MAX_CROSS_SIGNING_KEY_BYTES {
        return Err(ServiceError::new(
            ErrorKind::Invalid,
            ErrorCode::TooLarge,
            format!("The {name} key is too large"),
        ));
    }
    Ok(public.to_owned())
}

/// Whether `signed` is `stored` with signatures added (and `unsigned` ignored): what a
/// signatures upload must send. Spec: "The signed JSON object must match the key
/// previously uploaded or retrieved for the given key ID, with the exception of the
/// `signatures` property".
fn same_key(stored: &Value, signed: &Value) -> bool {
    let strip = |v: &Value| {
        v.as_object().map(|o| {
            let mut o = o.clone();
            o.remove("signatures");
            o.remove("unsigned");
            o
        })
    };
    let stored = strip(stored);
    stored.is_some() && stored == strip(signed)
}

fn invalid_signature(message: &str) -> Value {
    json!({ "errcode": "M_INVALID_SIGNATURE", "error": message })
}

impl Accounts {
    /// A stored cross-signing key of `user_id`.
    pub fn cross_signing_key(
        &self,
        user_id: &str,
        usage: Usage,
    ) -> ServiceResult<Option<CrossSigningKey>> {
        let Some(bytes) = self
            .db
            .get(Table::UseridUsageCrosssigningkey, usage_key(user_id, usage))?
        else {
            return Ok(None);
        };
        let json: Value = decode(Table::UseridUsageCrosssigningkey, &bytes)?;
        let public = json
            .get("keys")
            .and_then(Value::as_object)
            .and_then(|k| k.values().next())
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ServiceError::internal("corrupt cross-signing key"))?;
        Ok(Some(CrossSigningKey { json, public }))
    }

    /// Whether uploading `upload` needs user-interactive auth. Spec: not when the user has
    /// no master key yet, nor when every key sent equals the stored one ("the request
    /// contains no new keys").
    fn cross_signing_upload_needs_auth(
        &self,
        user_id: &str,
        upload: &CrossSigningUpload,
    ) -> ServiceResult<bool> {
        if self.cross_signing_key(user_id, Usage::Master)?.is_none() {
            return Ok(false);
        }
        for (key, usage) in [
            (&upload.master_key, Usage::Master),
            (&upload.self_signing_key, Usage::SelfSigning),
            (&upload.user_signing_key, Usage::UserSigning),
        ] {
            if let Some(key) = key {
                let stored = self.cross_signing_key(user_id, usage)?;
                if stored.as_ref().map(|s| &s.json) != Some(key) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Stores cross-signing keys. Replacing stored keys needs the password
    /// (user-interactive auth with `auth`), decided under the user's keys lock so that two
    /// first uploads cannot both skip it. The self-signing and user-signing keys must be
    /// signed by the master key sent with them, or else by the stored one; a new master
    /// key drops the stored self-signing and user-signing keys unless they come with it.
    /// Spec: `POST /keys/device_signing/upload`.
    pub async fn upload_cross_signing_keys(
        &self,
        user_id: &UserId,
        upload: CrossSigningUpload,
        auth: Option<&Value>,
    ) -> ServiceResult<()> {
        let user = user_id.as_str();
        let request = UiaRequest {
            operation: "device_signing_upload",
            user: Some(user),
            subject: super::uia::body_subject(&[
                upload.master_key.as_ref().unwrap_or(&Value::Null),
                upload.self_signing_key.as_ref().unwrap_or(&Value::Null),
                upload.user_signing_key.as_ref().unwrap_or(&Value::Null),
            ]),
            flows: vec![vec![stages::PASSWORD]],
        };
        // The password check (Argon2) runs before the lock, which is shared by a stripe
        // of users: wrong passwords must not stall other users' uploads and claims.
        let mut passed = if self.cross_signing_upload_needs_auth(user, &upload)? {
            Some(self.user_interactive_auth(auth, &request).await?)
        } else {
            None
        };
        let _keys = self.keys_locks.lock(user.as_bytes()).await;
        // Only a first upload that raced another first upload gets here needing auth.
        if passed.is_none() && self.cross_signing_upload_needs_auth(user, &upload)? {
            passed = Some(self.user_interactive_auth(auth, &request).await?);
        }
        self.store_cross_signing_keys(user_id, upload).await?;
        if let Some(passed) = passed {
            self.finish_uia(passed);
        }
        Ok(())
    }

    async fn store_cross_signing_keys(
        &self,
        user_id: &UserId,
        upload: CrossSigningUpload,
    ) -> ServiceResult<()> {
        let user = user_id.as_str();
        let mut new: Vec<(Usage, Value, String)> = Vec::new();
        let master = match &upload.master_key {
            Some(key) => {
                let public = check_shape(user, key, Usage::Master)?;
                new.push((Usage::Master, key.clone(), public.clone()));
                Some(public)
            }
            None => self
                .cross_signing_key(user, Usage::Master)?
                .map(|k| k.public),
        };
        for (key, usage) in [
            (&upload.self_signing_key, Usage::SelfSigning),
            (&upload.user_signing_key, Usage::UserSigning),
        ] {
            let Some(key) = key else { continue };
            let public = check_shape(user, key, usage)?;
            let master = master.as_deref().ok_or_else(|| {
                ServiceError::missing_param("No master key to check the signature against")
            })?;
            let verifying = ed25519_public_key(master)
                .ok_or_else(|| ServiceError::internal("bad master key"))?;
            verify_json(key, user, &format!("ed25519:{master}"), &verifying).map_err(|e| {
                ServiceError::new(
                    ErrorKind::Invalid,
                    ErrorCode::InvalidSignature,
                    format!(
                        "The {} key is not signed by the master key: {e}",
                        usage.as_str()
                    ),
                )
            })?;
            new.push((usage, key.clone(), public));
        }
        // Spec: device ids and cross-signing key ids share a namespace.
        let devices = self.devices(user_id)?;
        if new
            .iter()
            .any(|(_, _, public)| devices.iter().any(|d| d.device_id == *public))
        {
            return Err(ServiceError::forbidden("Key ID in use"));
        }
        let mut changed = false;
        let mut writes: Vec<Write> = Vec::new();
        let new_master = match &upload.master_key {
            Some(key) => self
                .cross_signing_key(user, Usage::Master)?
                .is_none_or(|stored| stored.json != *key),
            None => false,
        };
        if new_master {
            // Keys signed by the old master key mean nothing under the new one.
            for (usage, sent) in [
                (Usage::SelfSigning, &upload.self_signing_key),
                (Usage::UserSigning, &upload.user_signing_key),
            ] {
                if sent.is_none() {
                    if let Some(old) = self.cross_signing_key(user, usage)? {
                        self.signatures_of_and_by(user, &old.public, &mut writes)?;
                        writes.push((
                            Table::UseridUsageCrosssigningkey,
                            usage_key(user, usage),
                            None,
                        ));
                        changed = true;
                    }
                }
            }
        }
        for (usage, key, _) in new {
            let stored = self.cross_signing_key(user, usage)?;
            if stored.as_ref().map(|s| &s.json) == Some(&key) {
                continue;
            }
            if let Some(old) = stored {
                self.signatures_of_and_by(user, &old.public, &mut writes)?;
            }
            writes.push((
                Table::UseridUsageCrosssigningkey,
                usage_key(user, usage),
                Some(encode(&key)),
            ));
            changed = true;
        }
        if changed {
            self.commit_keys_change(user, true, move |_| writes).await?;
            self.tell_other_servers(user, Changed::CrossSigning).await;
        }
        Ok(())
    }

    /// Checks and stores signatures `signer` made of devices and keys: of their own
    /// devices (by their self-signing key), of their own master key (by one of their
    /// devices), of other users' master keys (by their user-signing key). Each object that
    /// fails is reported and the others are stored. Spec: `POST /keys/signatures/upload`.
    pub async fn upload_signatures(
        &self,
        signer: &UserId,
        signed: &BTreeMap<String, Map<String, Value>>,
    ) -> ServiceResult<SignatureFailures> {
        let me = signer.as_str();
        let total: usize = signed.values().map(Map::len).sum();
        if total > MAX_SIGNED_OBJECTS {
            return Err(ServiceError::invalid_param(format!(
                "At most {MAX_SIGNED_OBJECTS} signed objects per upload"
            )));
        }
        let _keys = self.keys_locks.lock(me.as_bytes()).await;
        let my_master = self.cross_signing_key(me, Usage::Master)?;
        let self_signing = self.cross_signing_key(me, Usage::SelfSigning)?;
        let user_signing = self.cross_signing_key(me, Usage::UserSigning)?;
        let mut failures = SignatureFailures::new();
        let mut writes: Vec<Write> = Vec::new();
        let mut own_keys_signed = false;
        let mut signed_users: Vec<String> = Vec::new();
        for (target, objects) in signed {
            for (key_id, object) in objects {
                let outcome = if target == me {
                    if my_master.as_ref().is_some_and(|m| m.public == *key_id) {
                        self.check_master_signed_by_device(me, my_master.as_ref(), object)
                    } else {
                        self.check_device_signed(me, key_id, self_signing.as_ref(), object)
                    }
                } else {
                    self.check_other_master_signed(
                        me,
                        target,
                        key_id,
                        user_signing.as_ref(),
                        object,
                    )
                };
                match outcome {
                    Ok(signatures) => {
                        if target == me {
                            own_keys_signed |= !signatures.is_empty();
                        } else if !signatures.is_empty() && !signed_users.contains(target) {
                            signed_users.push(target.clone());
                        }
                        for (signer_key, signature) in signatures {
                            writes.push((
                                Table::UseridKeyidSignerSignature,
                                signature_key(target, key_id, me, &signer_key),
                                Some(signature.into_bytes()),
                            ));
                        }
                    }
                    Err(error) => {
                        failures
                            .entry(target.clone())
                            .or_default()
                            .insert(key_id.clone(), error);
                    }
                }
            }
        }
        if !writes.is_empty() {
            // A signature of one's own device or master key changes what everyone sees of
            // the signer: announced to their room mates. One of another user's master key
            // changes only what the signer sees of that user: their own devices are told
            // to fetch the target's keys again.
            self.commit_signed_keys_change(me, own_keys_signed, signed_users, move |_| writes)
                .await?;
            if own_keys_signed {
                self.tell_other_servers(me, Changed::Everything).await;
            }
        }
        Ok(failures)
    }

    /// Adds to `writes` the removal of the signatures of `user_id`'s key `public`, and of
    /// those it made of the user's own keys (a replaced key's signatures mean nothing;
    /// those it made of other users' keys are hidden by [`Accounts::uploaded_signatures`]).
    fn signatures_of_and_by(
        &self,
        user_id: &str,
        public: &str,
        writes: &mut Vec<Write>,
    ) -> ServiceResult<()> {
        let prefix = keys::prefix(user_id.as_bytes());
        let signer_key = format!("ed25519:{public}");
        for entry in self
            .db
            .scan_prefix(Table::UseridKeyidSignerSignature, &prefix)
        {
            let (key, _) = entry?;
            let mut parts = keys::split(&key[prefix.len()..]);
            let target = parts.next();
            let by = (parts.next(), parts.next());
            let of_it = target == Some(public.as_bytes());
            let by_it = by == (Some(user_id.as_bytes()), Some(signer_key.as_bytes()));
            drop(parts);
            if of_it || by_it {
                writes.push((Table::UseridKeyidSignerSignature, key.into_vec(), None));
            }
        }
        Ok(())
    }

    /// Removes all of `user_id`'s cross-signing keys and the signatures of their keys (the
    /// account is being deactivated).
    pub(super) async fn remove_cross_signing(&self, user_id: &str) -> ServiceResult<()> {
        let _keys = self.keys_locks.lock(user_id.as_bytes()).await;
        let mut writes: Vec<Write> = Vec::new();
        for usage in [Usage::Master, Usage::SelfSigning, Usage::UserSigning] {
            if self.cross_signing_key(user_id, usage)?.is_some() {
                writes.push((
                    Table::UseridUsageCrosssigningkey,
                    usage_key(user_id, usage),
                    None,
                ));
            }
        }
        for entry in self.db.scan_prefix(
            Table::UseridKeyidSignerSignature,
            &keys::prefix(user_id.as_bytes()),
        ) {
            writes.push((Table::UseridKeyidSignerSignature, entry?.0.into_vec(), None));
        }
        if !writes.is_empty() {
            self.commit_keys_change(user_id, true, move |_| writes)
                .await?;
            self.tell_other_servers(user_id, Changed::CrossSigning)
                .await;
        }
        Ok(())
    }

    /// A device of `me` signed by their self-signing key; answers the new signatures.
    fn check_device_signed(
        &self,
        me: &str,
        device_id: &str,
        self_signing: Option<&CrossSigningKey>,
        object: &Value,
    ) -> Result<Vec<(String, String)>, Value> {
        let stored = match self.device_signing_key(me, device_id) {
            Ok(Some((keys, _))) => keys,
            Ok(None) => {
                return Err(json!({ "errcode": "M_NOT_FOUND", "error": "Unknown device or key" }))
            }
            Err(e) => return Err(json!({ "errcode": "M_UNKNOWN", "error": e.message })),
        };
        if !same_key(&stored, object) {
            return Err(
                json!({ "errcode": "M_INVALID_PARAM", "error": "The signed object does not match the device's keys" }),
            );
        }
        let Some(ssk) = self_signing else {
            return Err(invalid_signature(
                "No self-signing key to check the signature against",
            ));
        };
        verified(
            object,
            me,
            &[(format!("ed25519:{}", ssk.public), ssk.public.clone())],
        )
    }

    /// `me`'s master key signed by one of their devices; answers the new signatures.
    fn check_master_signed_by_device(
        &self,
        me: &str,
        master: Option<&CrossSigningKey>,
        object: &Value,
    ) -> Result<Vec<(String, String)>, Value> {
        let Some(master) = master else {
            return Err(json!({ "errcode": "M_NOT_FOUND", "error": "No master key" }));
        };
        if !same_key(&master.json, object) {
            return Err(
                json!({ "errcode": "M_INVALID_PARAM", "error": "The signed object does not match the master key" }),
            );
        }
        let mut candidates = Vec::new();
        let signer_keys = object
            .get("signatures")
            .and_then(|s| s.get(me))
            .and_then(Value::as_object);
        for key_id in signer_keys.into_iter().flat_map(|k| k.keys()) {
            let Some(device_id) = key_id.strip_prefix("ed25519:") else {
                continue;
            };
            if device_id == master.public {
                continue;
            }
            if let Ok(Some((keys, _))) = self.device_signing_key(me, device_id) {
                if let Some(public) = keys
                    .get("keys")
                    .and_then(|k| k.get(key_id))
                    .and_then(Value::as_str)
                {
                    candidates.push((key_id.clone(), public.to_owned()));
                }
            }
        }
        verified(object, me, &candidates)
    }

    /// Another user's master key signed by `me`'s user-signing key.
    fn check_other_master_signed(
        &self,
        me: &str,
        target: &str,
        key_id: &str,
        user_signing: Option<&CrossSigningKey>,
        object: &Value,
    ) -> Result<Vec<(String, String)>, Value> {
        let master = match self.cross_signing_key(target, Usage::Master) {
            Ok(Some(master)) if master.public == key_id => master,
            Ok(_) => {
                return Err(
                    json!({ "errcode": "M_NOT_FOUND", "error": "Unknown key: only other users' master keys can be signed" }),
                )
            }
            Err(e) => return Err(json!({ "errcode": "M_UNKNOWN", "error": e.message })),
        };
        if !same_key(&master.json, object) {
            return Err(
                json!({ "errcode": "M_INVALID_PARAM", "error": "The signed object does not match the master key" }),
            );
        }
        let Some(usk) = user_signing else {
            return Err(invalid_signature(
                "No user-signing key to check the signature against",
            ));
        };
        verified(
            object,
            me,
            &[(format!("ed25519:{}", usk.public), usk.public.clone())],
        )
    }

    /// Signatures uploaded for `user_id`'s keys that `viewer` may see: those the user made
    /// (their self-signing key of their devices, their devices of their master key) and
    /// those the viewer made. Spec: "Key and signature security": users "will not be able
    /// to see signatures made by other users' user-signing keys".
    pub(super) fn uploaded_signatures(
        &self,
        viewer: &str,
        user_id: &str,
    ) -> ServiceResult<UploadedSignatures> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut out = UploadedSignatures::new();
        // The viewer's signatures of others count only if made by their current
        // user-signing key (a replaced one's are left behind in other users' rows).
        let viewer_usk = if viewer != user_id {
            self.cross_signing_key(viewer, Usage::UserSigning)?
                .map(|k| format!("ed25519:{}", k.public))
        } else {
            None
        };
        for entry in self
            .db
            .scan_prefix(Table::UseridKeyidSignerSignature, &prefix)
        {
            let (key, value) = entry?;
            let mut parts = keys::split(&key[prefix.len()..]);
            let (Some(target_key), Some(signer), Some(signer_key)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let signer = String::from_utf8_lossy(signer);
            let visible = signer == user_id
                || (signer == viewer
                    && viewer_usk.as_deref().map(str::as_bytes) == Some(signer_key));
            if !visible {
                continue;
            }
            out.entry(String::from_utf8_lossy(target_key).into_owned())
                .or_default()
                .entry(signer.into_owned())
                .or_default()
                .insert(
                    String::from_utf8_lossy(signer_key).into_owned(),
                    String::from_utf8_lossy(&value).into_owned(),
                );
        }
        Ok(out)
    }

    /// `user_id`'s cross-signing keys as `viewer` may see them: master and self-signing
    /// keys, and the user-signing key only to its owner, with the uploaded `signatures`
    /// (already filtered for the viewer). Spec: `POST /keys/query`.
    pub(super) fn query_cross_signing_keys(
        &self,
        viewer: &str,
        user_id: &str,
        signatures: &UploadedSignatures,
    ) -> ServiceResult<Vec<(Usage, Value)>> {
        let mut out = Vec::new();
        for usage in [Usage::Master, Usage::SelfSigning, Usage::UserSigning] {
            if usage == Usage::UserSigning && viewer != user_id {
                continue;
            }
            if let Some(key) = self.cross_signing_key(user_id, usage)? {
                let mut json = key.json;
                if let Some(extra) = signatures.get(&key.public) {
                    add_signatures(&mut json, extra);
                }
                out.push((usage, json));
            }
        }
        Ok(out)
    }

    /// Whether `device_id` is one of `user_id`'s cross-signing public keys (a device may
    /// not take that id: spec, "Key and signature security").
    pub fn is_cross_signing_key_id(&self, user_id: &str, device_id: &str) -> ServiceResult<bool> {
        for usage in [Usage::Master, Usage::SelfSigning, Usage::UserSigning] {
            if self
                .cross_signing_key(user_id, usage)?
                .is_some_and(|k| k.public == device_id)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The signatures `signer` made in `object` with one of `keys` (key id, public key) that
/// verify; an error when none does.
fn verified(
    object: &Value,
    signer: &str,
    keys: &[(String, String)],
) -> Result<Vec<(String, String)>, Value> {
    let Some(map) = object.as_object() else {
        return Err(invalid_signature("The signed object is not an object"));
    };
    let mut good = Vec::new();
    for (key_id, public) in keys {
        let Some(signature) = map
            .get("signatures")
            .and_then(|s| s.get(signer))
            .and_then(|s| s.get(key_id))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Some(verifying) = ed25519_public_key(public) else {
            continue;
        };
        if verify_signature(map, signature, &verifying).is_err() {
            return Err(invalid_signature("Invalid signature"));
        }
        good.push((key_id.clone(), signature.to_owned()));
    }
    if good.is_empty() {
        return Err(invalid_signature(
            "No signature by a key that may sign this",
        ));
    }
    Ok(good)
}
