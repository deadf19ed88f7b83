//! Federation: talking to other servers.
//!
//! - [`client`]: outbound HTTPS requests, signed with our key;
//! - [`discovery`]: where a server name is reached, and the guarded DNS resolver;
//! - [`ip_guard`]: which addresses outbound requests may reach;
//! - [`keys`]: other servers' signing keys, fetched, checked and kept;
//! - [`source`]: what the rooms service's receive entry point fetches from other servers.
//!
//! Owns the table `servername_keydocument`.

pub mod client;
pub mod discovery;
pub mod ip_guard;
pub mod keys;
pub mod queries;
pub mod source;

use std::sync::Arc;

use crate::config::Config;
use crate::core::SigningKeyPair;
use crate::storage::Db;
use client::FederationClient;
use keys::KeyRing;

/// The federation service.
pub struct Federation {
    /// Outbound requests.
    pub client: Arc<FederationClient>,
    /// Other servers' keys.
    pub keys: KeyRing,
}

impl Federation {
    /// The service for `config`, speaking with `signing_key`.
    pub fn new(
        config: &Config,
        db: Arc<Db>,
        signing_key: Arc<SigningKeyPair>,
    ) -> Result<Self, String> {
        let client = Arc::new(FederationClient::new(
            &config.federation,
            config.server_name.clone(),
            Arc::clone(&signing_key),
        )?);
        let keys = KeyRing::new(
            db,
            Arc::clone(&client),
            signing_key,
            config.federation.key_valid_hours * 3_600_000,
            config.federation.trusted_key_servers.clone(),
        );
        Ok(Self { client, keys })
    }
}
