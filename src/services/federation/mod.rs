//! Federation: talking to other servers.
//!
//! - [`backfilling`]: a room's past, fetched for clients paging back;
//! - [`client`]: outbound HTTPS requests, signed with our key;
//! - [`discovery`]: where a server name is reached, and the guarded DNS resolver;
//! - [`ip_guard`]: which addresses outbound requests may reach;
//! - [`inviting`], [`joining`], [`knocking`], [`leaving`]: our users' memberships in rooms
//!   with other servers (through [`templates`]);
//! - [`keys`]: other servers' signing keys, fetched, checked and kept;
//! - [`media`]: other servers' media, streamed in;
//! - [`queries`]: what we ask other servers about their users and aliases;
//! - [`sender`]: delivering the outbox to each destination;
//! - [`source`]: what the rooms service's receive entry point fetches from other servers;
//! - [`templates`]: our users' member events through a resident server's template.
//!
//! Owns the tables `servername_keydocument` and `servername_destination`.

pub mod backfilling;
pub mod client;
pub mod device_list_resync;
pub mod device_lists;
pub mod discovery;
pub mod inviting;
pub mod ip_guard;
pub mod joining;
pub mod keys;
pub mod knocking;
pub mod leaving;
pub mod media;
pub mod queries;
pub mod received_txns;
pub mod sender;
pub mod source;
pub mod templates;
pub mod timestamps;

use std::sync::Arc;

use tokio::sync::watch;

use crate::services::server_keys::OldKey;

use crate::config::Config;
use crate::core::SigningKeyPair;
use crate::services::outbox::{Outbox, PduStore};
use crate::storage::Db;
use client::FederationClient;
use keys::KeyRing;
use sender::Sender;

/// The federation service.
pub struct Federation {
    /// Outbound requests.
    pub client: Arc<FederationClient>,
    /// Other servers' keys.
    pub keys: KeyRing,
    /// The worker delivering the outbox (started by [`Federation::start`]).
    pub sender: Sender,
    db: Arc<Db>,
    outbox: Arc<Outbox>,
    /// Our signing key (for the events we make through other servers, such as joins).
    signing_key: Arc<SigningKeyPair>,
    /// Rooms whose last backfill placed nothing, waiting before the next.
    backfill_backoff: backfilling::BackfillBackoff,
    /// One backfill of a room at a time (a lock per room: a backfill waits on other
    /// servers for up to minutes, and must not hold up other rooms').
    backfill_locks: crate::services::keyed_locks::KeyedLocks,
    /// The transactions other servers sent: their answers, the ones being processed.
    pub received: received_txns::ReceivedTransactions,
    /// Our joins ask for a partial state (`federation.partial_state_joins`).
    partial_state_joins: bool,
}

impl Federation {
    /// The service for `config`, speaking with `signing_key`, delivering `outbox`.
    pub fn new(
        config: &Config,
        db: Arc<Db>,
        (signing_key, old_keys): (Arc<SigningKeyPair>, Arc<Vec<OldKey>>),
        outbox: Arc<Outbox>,
    ) -> Result<Self, String> {
        let client = Arc::new(FederationClient::new(
            &config.federation,
            config.server_name.clone(),
            Arc::clone(&signing_key),
        )?);
        let keys = KeyRing::new(
            Arc::clone(&db),
            Arc::clone(&client),
            (Arc::clone(&signing_key), old_keys),
            config.federation.key_valid_hours * 3_600_000,
            config.federation.trusted_key_servers.clone(),
        );
        Ok(Self {
            client,
            keys,
            sender: Sender::default(),
            db,
            outbox,
            signing_key,
            backfill_backoff: Default::default(),
            backfill_locks: Default::default(),
            received: Default::default(),
            partial_state_joins: config.federation.partial_state_joins,
        })
    }

    /// Starts the background work (the sender, reading queued events from `pdus`) until
    /// `stopped` turns true; the handle ends when all of it has ended (`None` when it
    /// was started before).
    pub fn start(
        &self,
        pdus: Arc<dyn PduStore>,
        stopped: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.sender.start(
            (Arc::clone(&self.db), pdus),
            Arc::clone(&self.client),
            &self.outbox,
            stopped,
        )
    }
}
