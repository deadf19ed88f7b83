//! The server's ed25519 signing key.
//!
//! Spec: appendices, "Signing Details": a key is named by its *signing key identifier*,
//! `ed25519:<version>`. The text form we keep on disk is Synapse's
//! (`ed25519 <version> <unpadded base64 seed>`), so a key can move between the two servers.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::base64;

/// An ed25519 key pair with its key id (`ed25519:<version>`).
pub struct SigningKeyPair {
    key_id: String,
    signing: SigningKey,
}

/// Why a stored key could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFormatError(pub String);

impl std::fmt::Display for KeyFormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid signing key: {}", self.0)
    }
}

impl std::error::Error for KeyFormatError {}

impl SigningKeyPair {
    /// A key pair from a 32-byte seed and a key version (the part after `ed25519:`).
    pub fn from_seed(seed: &[u8; 32], version: &str) -> Self {
        Self {
            key_id: format!("ed25519:{version}"),
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// A new random key with a random 6-character version.
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let mut seed = [0u8; 32];
        rng.fill(&mut seed)
            .expect("the operating system's random source works");
        let mut version_bytes = [0u8; 6];
        rng.fill(&mut version_bytes)
            .expect("the operating system's random source works");
        // The key version uses the URL-safe alphabet so it is safe in URLs and headers.
        let version: String = base64::encode_url_safe(version_bytes)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(6)
            .collect();
        Self::from_seed(&seed, &version)
    }

    /// Parses Synapse's signing key text: `ed25519 <version> <base64 seed>`.
    pub fn from_text(text: &str) -> Result<Self, KeyFormatError> {
        let mut parts = text.split_whitespace();
        let (Some(alg), Some(version), Some(seed), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyFormatError("expected `ed25519 <version> <seed>`".into()));
        };
        if alg != "ed25519" {
            return Err(KeyFormatError(format!("unsupported algorithm {alg}")));
        }
        if version.is_empty()
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(KeyFormatError(format!("bad key version {version:?}")));
        }
        let seed = base64::decode(seed).map_err(|_| KeyFormatError("seed is not base64".into()))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| KeyFormatError("seed is not 32 bytes".into()))?;
        Ok(Self::from_seed(&seed, version))
    }

    /// The text form read by [`SigningKeyPair::from_text`].
    pub fn to_text(&self) -> String {
        format!(
            "ed25519 {} {}\n",
            self.version(),
            base64::encode(self.signing.to_bytes())
        )
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The part of the key id after `ed25519:`.
    pub fn version(&self) -> &str {
        &self.key_id["ed25519:".len()..]
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key as unpadded base64, as `/_matrix/key/v2/server` publishes it.
    pub fn public_key_base64(&self) -> String {
        base64::encode(self.verifying_key().as_bytes())
    }

    /// Signs `message`, answering the 64-byte signature.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret half.
        f.debug_struct("SigningKeyPair")
            .field("key_id", &self.key_id)
            .field("public", &self.public_key_base64())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let key = SigningKeyPair::generate();
        assert!(key.key_id().starts_with("ed25519:"));
        assert_eq!(key.version().len(), 6);
        let again = SigningKeyPair::from_text(&key.to_text()).unwrap();
        assert_eq!(again.key_id(), key.key_id());
        assert_eq!(again.public_key_base64(), key.public_key_base64());
    }

    #[test]
    fn two_generated_keys_differ() {
        let a = SigningKeyPair::generate();
        let b = SigningKeyPair::generate();
        assert_ne!(a.public_key_base64(), b.public_key_base64());
    }

    #[test]
    fn bad_text_is_refused() {
        assert!(SigningKeyPair::from_text("").is_err());
        assert!(SigningKeyPair::from_text("rsa 1 AAAA").is_err());
        assert!(SigningKeyPair::from_text("ed25519 1 !!!").is_err());
        assert!(SigningKeyPair::from_text("ed25519 1 Zm9v").is_err());
        assert!(SigningKeyPair::from_text(
            "ed25519 a:b YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
        )
        .is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let key =
            SigningKeyPair::from_text("ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
                .unwrap();
        assert!(!format!("{key:?}").contains("YJDBA9"));
    }
}
