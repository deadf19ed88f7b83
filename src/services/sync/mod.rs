//! Sync: stream positions per user, long-polling, filters and the `/sync` response.
//!
//! Spec: client-server API, "Syncing" (`GET /sync`). A `since` token is a position of the
//! global stream ([`crate::services::stream`]); the answer covers `(since, W]` where `W` is
//! the stream's watermark and becomes `next_batch`. With nothing new for the user the
//! request waits on the user's wake-up ([`notifier`]) until something commits or the
//! timeout ends; that check compares one number, whatever the number of rooms.
//!
//! Parts: [`notifier`] (per-user changes and wake-ups), [`filters`] (stored and inline
//! filters), [`lazy_members`] (member events each device holds), [`response`]
//! (assembling the answer from the other services).
//!
//! Owns the table `userid_filterid_filter`.

pub mod device_lists;
pub mod filters;
pub mod initial_sync;
pub mod lazy_members;
pub mod notifier;
pub mod response;

use std::sync::Arc;
use std::time::Duration;

use crate::services::ephemeral::presence::State;
use crate::services::error::{ServiceError, ServiceResult};
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
    /// The last to-device message the client has received (the position of `since`, or
    /// earlier when the answer that issued `since` left messages for later).
    pub to_device_since: Option<u64>,
    /// Whether the answer carries (and so acknowledges) to-device messages: `/events`,
    /// which has no place for them, leaves them to a later `/sync`.
    pub deliver_to_device: bool,
    /// What the sync says of the user's presence.
    pub set_presence: State,
    /// How long to wait for something new.
    pub timeout: Duration,
    /// Send the full state of every room.
    pub full_state: bool,
    /// Send each room's state up to the end of its timeline, as `state_after`, instead
    /// of up to its start as `state` (spec v1.16, `use_state_after`).
    pub use_state_after: bool,
    /// The filter.
    pub filter: Filter,
}

/// The sync service.
pub struct Sync {
    notifier: Arc<Notifier>,
    stream: Arc<StreamPositions>,
    /// Member events sent to each device under lazy loading.
    lazy_members: lazy_members::LazyMembers,
}

impl Sync {
    /// The service, subscribed to the global stream.
    pub fn new(stream: Arc<StreamPositions>) -> Self {
        let notifier = Arc::new(Notifier::default());
        stream.subscribe(notifier.clone());
        Self {
            notifier,
            stream,
            lazy_members: lazy_members::LazyMembers::default(),
        }
    }

    /// Parses a `since` token into its position and the last to-device message the client
    /// received; 400 `M_INVALID_PARAM` for a token this server never issued.
    pub fn parse_since(&self, since: &str) -> ServiceResult<(u64, u64)> {
        let pos = tokens::parse(since)?;
        let to_device = match since.split('_').nth(1) {
            None => pos,
            Some(part) => part
                .parse()
                .ok()
                .filter(|p| *p <= pos)
                .ok_or_else(|| ServiceError::invalid_param("Unknown since token"))?,
        };
        if pos > self.stream.watermark() {
            return Err(ServiceError::invalid_param("Unknown since token"));
        }
        Ok((pos, to_device))
    }

    /// Users whose keys `user_id` should re-fetch, and users who share no room with them
    /// any more, between two sync tokens. Spec: `GET /keys/changes`. Rare enough to look
    /// at every room of the user rather than keep a stream for it.
    pub fn key_changes(
        &self,
        services: &Services,
        user_id: &str,
        from: u64,
        to: u64,
    ) -> ServiceResult<device_lists::DeviceListChanges> {
        let store = services.rooms.store();
        let mut rooms = Vec::new();
        for (room_id, _) in store.memberships_of(user_id)? {
            if let Some(short) = store.room_short(&room_id)? {
                rooms.push(short);
            }
        }
        device_lists::changes(services, user_id, from, to.max(from), &rooms, None)
    }

    /// The user's stream, loading their rooms if this is their first sync since start-up.
    fn user_stream(&self, services: &Services, user_id: &str) -> ServiceResult<Arc<UserStream>> {
        self.notifier.stream_for(&self.stream, user_id, || {
            let store = services.rooms.store();
            let mut rooms = Vec::new();
            for (room_id, record) in store.memberships_of(user_id)? {
                let Some(room) = store.room(&room_id)? else {
                    continue;
                };
                let listening = record.membership == "join";
                let pos = if listening {
                    // Receipts count too: a token from before a restart must still get them.
                    let receipts = services.ephemeral.last_receipt_pos(room.short)?;
                    room.record.last_pos.max(receipts)
                } else {
                    record.pos
                };
                rooms.push(LoadedRoom {
                    room: room.short,
                    pos,
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
    ) -> ServiceResult<response::SyncResponse> {
        let stream = match self.notifier.loaded(&request.user_id) {
            Some(stream) => stream,
            None => {
                let services = Arc::clone(&services);
                let user_id = request.user_id.clone();
                tokio::task::spawn_blocking(move || services.sync.user_stream(&services, &user_id))
                    .await
                    .map_err(|e| ServiceError::internal(format!("sync task failed: {e}")))??
            }
        };
        // The user counts as syncing (online) until the answer goes.
        let _syncing = services
            .presence
            .syncing(&request.user_id, request.set_presence)
            .await?;
        let request = Arc::new(request);
        let deadline = tokio::time::Instant::now() + request.timeout.min(MAX_TIMEOUT);
        let long_poll = request.since.filter(|_| !request.full_state);
        // To-device messages left over by the answer that issued `since` are news already.
        let undelivered = request.to_device_since < request.since;
        let long_poll = long_poll.filter(|_| !undelivered);
        // What the user has been told of: wait for something newer.
        let mut seen = long_poll;
        loop {
            if let Some(seen) = seen {
                wait_for_news(&stream, seen, deadline).await;
            }
            let latest = stream.latest();
            if let Some(since) = long_poll {
                // Nothing for this user since `since`: O(1), whatever their rooms.
                let upto = self.stream.watermark();
                if stream.latest() <= since {
                    let mut response = serde_json::Map::new();
                    response.insert(
                        "next_batch".into(),
                        serde_json::json!(tokens::token(upto.max(since))),
                    );
                    response::add_device_key_counts(&services, &request, &mut response)?;
                    return Ok(response::SyncResponse::new(response));
                }
            }
            let response = {
                let (services, request, stream) = (
                    Arc::clone(&services),
                    Arc::clone(&request),
                    Arc::clone(&stream),
                );
                tokio::task::spawn_blocking(move || {
                    let upto = services.stream_positions.watermark();
                    response::build(&services, &request, &stream, upto)
                })
                .await
                .map_err(|e| ServiceError::internal(format!("sync task failed: {e}")))??
            };
            // A change that concerned nothing the filter lets through (another user's
            // private receipt, say) goes back to waiting, as long as time remains.
            if !response.is_empty()
                || long_poll.is_none()
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(response);
            }
            seen = Some(latest);
        }
    }
}

/// Waits until the user's stream moves past `seen` or the deadline passes.
async fn wait_for_news(stream: &UserStream, seen: u64, deadline: tokio::time::Instant) {
    loop {
        let notified = stream.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Checked before the timer: tokio's timer rounds up to its 1 ms tick, which would
        // add a millisecond to every `timeout=0` sync.
        if stream.latest() > seen || tokio::time::Instant::now() >= deadline {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}
