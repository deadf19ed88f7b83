//! Our server's signing key: created on first start in the data folder, reused after, and
//! published as a signed key document; the keys it replaced are published too, as
//! `old_verify_keys` with the time they stopped signing, so that other servers can still
//! check the events we signed with them.
//!
//! Spec: server-server API, "Retrieving server keys", `GET /_matrix/key/v2/server`.
//! `ourwhats rotate-key` ([`rotate`]) replaces the key: the current one is added to
//! `old_signing_keys` (one line per key: `ed25519 <version> <public key> <expired_ts>`),
//! then a new one is written to `signing.key`.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::core::signatures::sign_json;
use crate::core::{ServerName, SigningKeyPair};
use crate::services::error::{ServiceError, ServiceResult};

/// File name of the key inside the data folder (Synapse's text format).
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// File name of the keys it replaced, inside the data folder.
pub const OLD_SIGNING_KEYS_FILE: &str = "old_signing_keys";

/// A key that signed for us before the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldKey {
    /// `ed25519:<version>`.
    pub key_id: String,
    /// The public key, unpadded base64.
    pub public_key: String,
    /// When it stopped signing (ms since the epoch).
    pub expired_ts: u64,
}

impl OldKey {
    fn to_line(&self) -> String {
        let version = self.key_id.trim_start_matches("ed25519:");
        format!(
            "ed25519 {version} {} {}\n",
            self.public_key, self.expired_ts
        )
    }

    fn parse(line: &str) -> Result<Self, String> {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [alg, version, public_key, expired_ts] = parts[..] else {
            return Err(format!(
                "expected `ed25519 <version> <public key> <expired_ts>`, got {line:?}"
            ));
        };
        if alg != "ed25519" {
            return Err(format!("unknown algorithm {alg:?}"));
        }
        // Spec: a key version is `[a-zA-Z0-9_]`.
        if version.is_empty()
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!("the key version {version:?} is not [a-zA-Z0-9_]"));
        }
        let bytes = crate::core::base64::decode(public_key)
            .map_err(|_| format!("the public key of ed25519:{version} is not base64"))?;
        if bytes.len() != 32 {
            return Err(format!(
                "the public key of ed25519:{version} is not 32 bytes"
            ));
        }
        Ok(Self {
            key_id: format!("ed25519:{version}"),
            public_key: public_key.to_owned(),
            expired_ts: expired_ts
                .parse()
                .map_err(|_| format!("expired_ts of ed25519:{version} is not a number"))?,
        })
    }

    /// The public key.
    pub fn verifying_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        let bytes: [u8; 32] = crate::core::base64::decode(&self.public_key)
            .ok()?
            .try_into()
            .ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()
    }
}

/// The keys in the old-keys file at `path` (none when it does not exist), leaving out
/// `current` (a rotation cut short lists it already).
pub fn load_old_keys(path: &Path, current: &SigningKeyPair) -> Result<Vec<OldKey>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut keys: Vec<OldKey> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let key = OldKey::parse(line).map_err(|e| format!("{}: {e}", path.display()))?;
        if key.key_id != current.key_id() && !keys.iter().any(|k| k.key_id == key.key_id) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Replaces the signing key in `data_dir` (the server must be restarted to use it): the
/// current key joins the old keys, expired now, then a new key is written. Answers the
/// old and new key ids. Each file is replaced whole (temporary file and rename): a crash
/// between the two leaves the current key also listed as old, which is ignored.
pub fn rotate(data_dir: &Path, now_ms: u64) -> Result<(String, String), String> {
    let key_path = data_dir.join(SIGNING_KEY_FILE);
    let old_path = data_dir.join(OLD_SIGNING_KEYS_FILE);
    let text = std::fs::read_to_string(&key_path)
        .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let current =
        SigningKeyPair::from_text(&text).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let mut old = load_old_keys(&old_path, &current)?;
    old.push(OldKey {
        key_id: current.key_id().to_owned(),
        public_key: current.public_key_base64(),
        expired_ts: now_ms,
    });
    let lines: String = old.iter().map(OldKey::to_line).collect();
    write_private(&old_path, lines.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", old_path.display()))?;
    let new = loop {
        let key = SigningKeyPair::generate();
        if old.iter().all(|k| k.key_id != key.key_id()) {
            break key;
        }
    };
    write_private(&key_path, new.to_text().as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
    Ok((current.key_id().to_owned(), new.key_id().to_owned()))
}

/// Reads the key at `path`, or creates one there (mode 0600) if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<SigningKeyPair, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            SigningKeyPair::from_text(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKeyPair::generate();
            write_private(path, key.to_text().as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::info!(key_id = key.key_id(), path = %path.display(), "generated a new signing key");
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes a secret file readable by its owner only, via a temporary file and a rename so a
/// crash never leaves half a key.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself durable before anything that depends on it (a key rotation
    // writes the old keys, then the new key).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The signed key document for `GET /_matrix/key/v2/server`.
pub fn key_document(
    server_name: &ServerName,
    key: &SigningKeyPair,
    old_keys: &[OldKey],
    valid_until_ts: u64,
) -> ServiceResult<Value> {
    let old: serde_json::Map<String, Value> = old_keys
        .iter()
        .map(|k| {
            (
                k.key_id.clone(),
                json!({"key": k.public_key, "expired_ts": k.expired_ts}),
            )
        })
        .collect();
    let mut document = json!({
        "server_name": server_name.as_str(),
        "valid_until_ts": valid_until_ts,
        "verify_keys": { key.key_id(): { "key": key.public_key_base64() } },
        "old_verify_keys": old,
    });
    sign_json(&mut document, server_name.as_str(), key).map_err(ServiceError::internal)?;
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::base64;
    use crate::core::signatures::verify_json;

    #[test]
    fn key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SIGNING_KEY_FILE);
        let first = load_or_create(&path).unwrap();
        let second = load_or_create(&path).unwrap();
        assert_eq!(first.key_id(), second.key_id());
        assert_eq!(first.public_key_base64(), second.public_key_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SIGNING_KEY_FILE);
        std::fs::write(&path, "garbage").unwrap();
        assert!(load_or_create(&path).is_err());
    }

    #[test]
    fn key_document_is_self_signed() {
        let key = SigningKeyPair::generate();
        let name = ServerName::parse("example.org").unwrap();
        let doc = key_document(&name, &key, &[], 123).unwrap();
        let public = &doc["verify_keys"][key.key_id()]["key"];
        assert_eq!(public, &json!(key.public_key_base64()));
        assert_eq!(base64::decode(public.as_str().unwrap()).unwrap().len(), 32);
        verify_json(&doc, "example.org", key.key_id(), &key.verifying_key()).unwrap();
    }

    #[test]
    fn a_rotated_key_is_published_as_old_with_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(&dir.path().join(SIGNING_KEY_FILE)).unwrap();
        let (old_id, new_id) = rotate(dir.path(), 1_000).unwrap();
        assert_eq!(old_id, first.key_id());
        let (_, third_id) = rotate(dir.path(), 2_000).unwrap();
        let current = load_or_create(&dir.path().join(SIGNING_KEY_FILE)).unwrap();
        assert_eq!(current.key_id(), third_id);
        let old_path = dir.path().join(OLD_SIGNING_KEYS_FILE);
        let old = load_old_keys(&old_path, &current).unwrap();
        let ids: Vec<(&str, u64)> = old
            .iter()
            .map(|k| (k.key_id.as_str(), k.expired_ts))
            .collect();
        assert_eq!(ids, [(old_id.as_str(), 1_000), (new_id.as_str(), 2_000)]);
        assert_eq!(old[0].verifying_key(), Some(first.verifying_key()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&old_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
        // A rotation cut short after the first write lists the current key as old too:
        // it is left out.
        let mut text = std::fs::read_to_string(&old_path).unwrap();
        text.push_str(&format!(
            "ed25519 {} {} 3000\n",
            current.version(),
            current.public_key_base64()
        ));
        std::fs::write(&old_path, text).unwrap();
        assert_eq!(load_old_keys(&old_path, &current).unwrap(), old);

        let name = ServerName::parse("example.org").unwrap();
        let doc = key_document(&name, &current, &old, 123).unwrap();
        assert_eq!(
            doc["old_verify_keys"][&old_id],
            json!({"key": first.public_key_base64(), "expired_ts": 1_000})
        );
        assert!(doc["verify_keys"].get(&old_id).is_none());
        verify_json(
            &doc,
            "example.org",
            current.key_id(),
            &current.verifying_key(),
        )
        .unwrap();
        // The document other servers check gives the old key its expiry, for events only.
        let checked = crate::core::key_document::check(&doc, "example.org", 0).unwrap();
        let old_key = checked.keys[&old_id];
        assert!(old_key.old);
        assert_eq!(old_key.valid_until_ts, 1_000);
        assert_eq!(old_key.key, first.verifying_key());
        std::fs::write(&old_path, "ed25519 x notbase64 1\n").unwrap();
        assert!(load_old_keys(&old_path, &current).is_err());
        let line = format!("ed25519 a:b {} 1\n", current.public_key_base64());
        std::fs::write(&old_path, line).unwrap();
        assert!(load_old_keys(&old_path, &current).is_err());
    }
}
