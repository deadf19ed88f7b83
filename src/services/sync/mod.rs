//! Sync: stream positions per user, long-polling, filters and the `/sync` response.
//!
//! Spec: client-server API, "Syncing" (`GET /sync`). A `since` token is a position of the
//! global stream ([`crate::services::stream`]); the answer covers `(since, W]` where `W` is
//! the stream's watermark and becomes `next_batch`. With nothing new for the user the
//! request waits on the user's wake-up ([`notifier`]) until something commits or the
//! timeout ends; that check compares one number, whatever the number of rooms.
//!
//! Parts: [`notifier`] (per-user changes and wake-ups), [`filters`] (stored and inline
//! filters), [`response`] (assembling the answer from the other services).
//!
//! Owns the table `userid_filterid_filter`.

pub mod filters;
pub mod notifier;
pub mod response;

use std::sync::Arc;
use std::time::Duration;

use crate::error::{MatrixError, MatrixResult};
use crate::services::rooms::tokens;
use crate::services::stream::StreamPositions;
use crate::services::Services;
use filters::Filter;
use notifier::{LoadedRoom, Notifier, UserStream};

/// The longest long-poll honoured.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// A parsed `/sync` request.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The syncing user.
    pub user_id: String,
    /// Their device.
    pub device_id: String,
    /// The position of `since`, if given.
    pub since: Option<u64>,
    /// How long to wait for something new.
    pub timeout: Duration,
    /// Send the full state of every room.
    pub full_state: bool,
    /// The filter.
    pub filter: Filter,
}

/// The sync service.
pub struct Sync {
    notifier: Arc<Notifier>,
    stream: Arc<StreamPositions>,
}

impl Sync {
    /// The service, subscribed to the global stream.
    pub fn new(stream: Arc<StreamPositions>) -> Self {
        let notifier = Arc::new(Notifier::default());
        stream.subscribe(notifier.clone());
        Self { notifier, stream }
    }

    /// Parses a `since` token; 400 `M_INVALID_PARAM` for one this server never issued.
    pub fn parse_since(&self, since: &str) -> MatrixResult<u64> {
        let pos = tokens::parse(since)?;
        if pos > self.stream.watermark() {
            return Err(MatrixError::invalid_param("Unknown since token"));
        }
        Ok(pos)
    }

    /// The user's stream, loading their rooms if this is their first sync since start-up.
    fn user_stream(&self, services: &Services, user_id: &str) -> MatrixResult<Arc<UserStream>> {
        self.notifier.stream_for(&self.stream, user_id, || {
            let store = services.rooms.store();
            let mut rooms = Vec::new();
            for (room_id, record) in store.memberships_of(user_id)? {
                let Some(room) = store.room(&room_id)? else {
                    continue;
                };
                let listening = matches!(record.membership.as_str(), "join" | "invite" | "knock");
                rooms.push(LoadedRoom {
                    room: room.short,
                    pos: if listening {
                        room.record.last_pos
                    } else {
                        record.pos
                    },
                    listening,
                });
            }
            Ok(rooms)
        })
    }

    /// `GET /sync`: waits (up to the timeout) for something new after `since`, then
    /// assembles the answer.
    pub async fn sync(
        &self,
        services: Arc<Services>,
        request: SyncRequest,
    ) -> MatrixResult<serde_json::Value> {
        let stream = {
            let services = Arc::clone(&services);
            let user_id = request.user_id.clone();
            tokio::task::spawn_blocking(move || services.sync.user_stream(&services, &user_id))
                .await
                .map_err(|e| MatrixError::internal(format!("sync task failed: {e}")))??
        };
        if let (Some(since), false) = (request.since, request.full_state) {
            let deadline = tokio::time::Instant::now() + request.timeout.min(MAX_TIMEOUT);
            loop {
                let notified = stream.notify().notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if stream.latest() > since {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
        }
        tokio::task::spawn_blocking(move || {
            let upto = services.stream_positions.watermark();
            response::build(&services, &request, &stream, upto)
        })
        .await
        .map_err(|e| MatrixError::internal(format!("sync task failed: {e}")))?
    }
}
