//! Pure protocol functions: no I/O, no clocks, no storage.
//!
//! Everything here is testable with the spec's own vectors
//! (`matrix-spec/content/appendices.md`, "Cryptographic Test Vectors").

pub mod auth_rules;
pub mod base64;
pub mod canonical_json;
pub mod ed25519_strict;
pub mod error_code;
pub mod event_hashes;
pub mod fnv;
pub mod hex;
pub mod identifiers;
pub mod key_document;
pub mod multipart;
pub mod pdu;
pub mod pdu_checks;
#[cfg(test)]
mod pdu_fuzz_tests;
pub mod power_levels;
pub mod push_rules;
pub mod redaction;
pub mod room_version;
pub mod server_acl;
pub mod signatures;
pub mod signing_key;
pub mod state_res;
pub mod url;
pub mod x_matrix;

pub use identifiers::{EventId, IdentifierError, RoomAliasId, RoomId, ServerName, UserId};
pub use room_version::RoomVersion;
pub use signing_key::SigningKeyPair;
