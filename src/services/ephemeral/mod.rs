//! Ephemeral data: typing notifications (memory only), receipts (stored) and presence
//! ([`presence`], memory and stored).
//!
//! Owns the tables `shortroomid_userid_receipt`, `shortroomid_pos_receipt` and
//! `userid_presence`; typing lives in memory and is lost at restart, as the spec allows.
//! All take positions on the global stream so that `/sync` tells whom they concern.

pub mod presence;
pub mod receipts;
pub mod typing;

use std::sync::Arc;

use crate::services::stream::StreamPositions;
use crate::services::StripedLocks;
use crate::storage::Db;
use typing::TypingRooms;

/// The ephemeral service.
pub struct Ephemeral {
    db: Arc<Db>,
    stream: Arc<StreamPositions>,
    typing: Arc<TypingRooms>,
    /// Serializes each user's receipt changes in a room.
    receipt_locks: StripedLocks,
}

impl Ephemeral {
    /// The service over `db` and the global stream.
    pub fn new(db: Arc<Db>, stream: Arc<StreamPositions>) -> Self {
        Self {
            db,
            typing: Arc::new(TypingRooms::new(Arc::clone(&stream))),
            stream,
            receipt_locks: StripedLocks::default(),
        }
    }
}
