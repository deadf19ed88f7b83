//! Random secrets (access tokens, device ids, session ids) and password hashing.
//!
//! Access tokens carry 256 bits from the OS random source; only their SHA-256 is stored.
//! Passwords are hashed with Argon2id (RustCrypto defaults) and never logged.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use ring::digest::{digest, SHA256};

use crate::core::base64;
use crate::services::random_bytes;

/// A new access token: `ow_` + 32 random bytes in URL-safe base64.
pub fn new_access_token() -> String {
    format!("ow_{}", base64::encode_url_safe(random_bytes::<32>()))
}

/// The key under which a token is stored: its SHA-256.
pub fn token_hash(token: &str) -> [u8; 32] {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// A new device id: ten upper-case letters, as Synapse makes them.
pub fn new_device_id() -> String {
    random_bytes::<10>()
        .iter()
        .map(|b| char::from(b'A' + b % 26))
        .collect()
}

/// A new opaque session id (user-interactive auth).
pub fn new_session_id() -> String {
    base64::encode_url_safe(random_bytes::<18>())
}

/// A new numeric localpart for users who register without a name (guests, mostly).
pub fn new_numeric_localpart() -> String {
    let n = u64::from_be_bytes(random_bytes::<8>()) % 1_000_000_000_000;
    format!("{n}")
}

/// Hashes a password to an Argon2id PHC string. CPU-heavy: call from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| format!("password hashing failed: {e}"))
}

/// Whether `password` matches the PHC string. CPU-heavy: call from a blocking thread.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// Compares two secrets without leaking where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_url_safe() {
        let a = new_access_token();
        let b = new_access_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 43);
        assert!(a[3..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn device_ids_are_ten_capitals() {
        let id = new_device_id();
        assert_eq!(id.len(), 10);
        assert!(id.bytes().all(|c| c.is_ascii_uppercase()));
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("x", "not a phc string"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
