//! Our server's signing key: created on first start in the data folder, reused after, and
//! published as a signed key document.
//!
//! Spec: server-server API, "Retrieving server keys", `GET /_matrix/key/v2/server`.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::core::signatures::sign_json;
use crate::core::{ServerName, SigningKeyPair};
use crate::error::{MatrixError, MatrixResult};

/// File name of the key inside the data folder (Synapse's text format).
pub const SIGNING_KEY_FILE: &str = "signing.key";

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
    std::fs::rename(&tmp, path)
}

/// The signed key document for `GET /_matrix/key/v2/server`.
pub fn key_document(
    server_name: &ServerName,
    key: &SigningKeyPair,
    valid_until_ts: u64,
) -> MatrixResult<Value> {
    let mut document = json!({
        "server_name": server_name.as_str(),
        "valid_until_ts": valid_until_ts,
        "verify_keys": { key.key_id(): { "key": key.public_key_base64() } },
        "old_verify_keys": {},
    });
    sign_json(&mut document, server_name.as_str(), key).map_err(MatrixError::internal)?;
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
        let doc = key_document(&name, &key, 123).unwrap();
        let public = &doc["verify_keys"][key.key_id()]["key"];
        assert_eq!(public, &json!(key.public_key_base64()));
        assert_eq!(base64::decode(public.as_str().unwrap()).unwrap().len(), 32);
        verify_json(&doc, "example.org", key.key_id(), &key.verifying_key()).unwrap();
    }
}
