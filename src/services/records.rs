//! How services store their records: JSON values in their tables.

use crate::services::error::{ServiceError, ServiceResult};
use crate::storage::Table;

/// A record as stored.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

/// A stored record; a record that does not parse is an internal error naming its table.
pub fn decode<T: serde::de::DeserializeOwned>(table: Table, bytes: &[u8]) -> ServiceResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ServiceError::internal(format!("corrupt record in {}: {e}", table.name())))
}
