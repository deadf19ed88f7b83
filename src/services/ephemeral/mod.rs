//! Ephemeral room data: typing notifications (memory only) and receipts (stored).
//!
//! Owns the tables `shortroomid_userid_receipt` and `shortroomid_pos_receipt`; typing
//! lives in memory and is lost at restart, as the spec allows. Both take positions on the
//! global stream so that `/sync` tells the room's members.

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
