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
    /// Where our users' typing and receipts are queued for the room's other servers.
    outbox: Arc<crate::services::outbox::Outbox>,
}

impl Ephemeral {
    /// The service over `db` and the global stream, sending through `outbox`.
    pub fn new(
        db: Arc<Db>,
        stream: Arc<StreamPositions>,
        outbox: Arc<crate::services::outbox::Outbox>,
    ) -> Self {
        Self {
            db,
            typing: Arc::new(TypingRooms::new(Arc::clone(&stream))),
            stream,
            receipt_locks: StripedLocks::default(),
            outbox,
        }
    }

    /// Queues `edu` for every other server with a member in `room_id` (our user's typing
    /// or receipt); answers once it is durable.
    pub async fn send_room_edu(
        &self,
        rooms: &crate::services::rooms::Rooms,
        room_id: &str,
        edu: serde_json::Value,
    ) -> crate::services::error::ServiceResult<()> {
        let servers = rooms.remote_servers(room_id)?;
        if servers.is_empty() {
            return Ok(());
        }
        let destinations = std::sync::Arc::clone(&servers);
        self.stream
            .write_at_new_position(
                move |pos| {
                    destinations
                        .iter()
                        .map(|server| crate::services::outbox::Outbox::queue(server, pos, &edu))
                        .collect()
                },
                Vec::new(),
            )
            .await?;
        for server in servers.iter() {
            self.outbox.wake(server);
        }
        Ok(())
    }
}
