//! Random secrets (access tokens, device ids, session ids) and password hashing.
//!
//! Access tokens carry 256 bits from the OS random source; only their SHA-256 is stored.
//! Passwords are hashed with Argon2id (RustCrypto defaults) and never logged.

use std::sync::{Condvar, Mutex, PoisonError};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

/// Argon2's working memory (19 MiB with the default parameters), kept for reuse. Each
/// hash needs a block this size; allocating a fresh one per hash let the allocator keep
/// one per thread arena after a burst of registrations or logins (hundreds of MiB of
/// RSS). Hashing is CPU-bound, so at most one hash per core runs at a time, and at most
/// that many blocks ever exist.
struct ArgonMemory {
    pool: Mutex<MemoryPool>,
    returned: Condvar,
}

struct MemoryPool {
    free: Vec<Vec<Block>>,
    allocated: usize,
}

static ARGON_MEMORY: ArgonMemory = ArgonMemory {
    pool: Mutex::new(MemoryPool {
        free: Vec::new(),
        allocated: 0,
    }),
    returned: Condvar::new(),
};

/// How many hashes run at once (and memory blocks exist): the cores, at most four.
fn max_concurrent_hashes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Runs `work` with `blocks` blocks of working memory: a pooled block for the default
/// parameters (waiting while every one is busy), a one-off allocation for others (hashes
/// stored with other parameters).
fn with_argon_memory<T>(blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
    if blocks != Params::DEFAULT.block_count() {
        return work(&mut vec![Block::default(); blocks]);
    }
    let memory = &ARGON_MEMORY;
    let mut block = {
        let mut pool = memory.pool.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(block) = pool.free.pop() {
                break block;
            }
            if pool.allocated < max_concurrent_hashes() {
                pool.allocated += 1;
                break vec![Block::default(); blocks];
            }
            pool = memory
                .returned
                .wait(pool)
                .unwrap_or_else(PoisonError::into_inner);
        }
    };
    let answer = work(&mut block);
    memory
        .pool
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .free
        .push(block);
    memory.returned.notify_one();
    answer
}

/// Frees the pooled Argon2 memory no hash is using (19 MiB a block; for a server gone
/// idle). The pool allocates again on the next hash.
pub fn release_pooled_argon_memory() {
    let mut pool = ARGON_MEMORY
        .pool
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    pool.allocated -= pool.free.len();
    pool.free = Vec::new();
}

/// Hashes a password to an Argon2id PHC string (RustCrypto's default parameters: 19 MiB,
/// 2 passes, 1 lane; a 16-byte random salt). CPU-heavy: call from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, String> {
    let failed = |e: &dyn std::fmt::Display| format!("password hashing failed: {e}");
    let params = Params::DEFAULT;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = random_bytes::<16>();
    let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
    with_argon_memory(params.block_count(), |memory| {
        argon.hash_password_into_with_memory(password.as_bytes(), &salt, &mut output, memory)
    })
    .map_err(|e| failed(&e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| failed(&e))?,
        salt: Some(Salt::new(&salt).map_err(|e| failed(&e))?),
        hash: Some(Output::new(&output).map_err(|e| failed(&e))?),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string (any Argon2 variant and parameters it
/// names). CPU-heavy: call from a blocking thread.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::new(hash.algorithm.as_str()),
        Params::try_from(&hash),
    ) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let argon = Argon2::new(algorithm, version, params.clone());
    let mut output = vec![0u8; expected.len()];
    let computed = with_argon_memory(params.block_count(), |memory| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut output, memory)
    });
    computed.is_ok() && constant_time_eq(&output, expected.as_bytes())
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
    fn hashes_agree_with_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Hashes stored before the memory pool (the crate's own format) still verify.
        let old = Argon2::default()
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        assert!(verify_password("correct horse", &old));
        assert!(!verify_password("wrong horse", &old));
        // Ours verify with the crate's verifier.
        let ours = hash_password("correct horse").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        // Other parameters and variants (a one-off memory block).
        let params = Params::new(64, 1, 2, Some(24)).unwrap();
        let other = Argon2::new(Algorithm::Argon2i, Version::V0x10, params)
            .hash_password(b"pw")
            .unwrap()
            .to_string();
        assert!(verify_password("pw", &other));
        assert!(!verify_password("pW", &other));
    }

    #[test]
    fn concurrent_hashes_share_the_pooled_memory() {
        let hashes: Vec<_> = (0..6)
            .map(|i| std::thread::spawn(move || hash_password(&format!("pw{i}")).unwrap()))
            .collect();
        for (i, hash) in hashes.into_iter().enumerate() {
            assert!(verify_password(&format!("pw{i}"), &hash.join().unwrap()));
        }
        // (Other tests may be hashing too: only the bound is certain.)
        let pool = ARGON_MEMORY.pool.lock().unwrap();
        assert!(pool.allocated <= max_concurrent_hashes());
        assert!(pool.free.len() <= pool.allocated);
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
