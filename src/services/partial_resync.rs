//! The member resync of rooms joined with a partial state (MSC3902, as Synapse does it):
//! after our join with `omit_members`, the whole state before the join is asked of the
//! servers in the room (`GET /_matrix/federation/v1/state/{roomId}?event_id={our join}`),
//! checked, and handed to the room's writer, which completes the state (see the rooms
//! writer's `partial_state` module).
//!
//! One task per room, started when the join ends and, for rooms still partial, when the
//! server starts. Each attempt asks the servers the resident server named in turn; when
//! none answers usably, the task waits (1 s, doubling to 5 minutes) and tries again, until
//! the room is whole or no longer partial (our user left and joined again fully).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::Method;
use tokio::sync::{mpsc, watch, Semaphore};

use super::error::{ServiceError, ServiceResult};
use super::federation::source::FromOrigin;
use super::rooms::writer::Completion;
use super::Services;
use crate::core::{RoomVersion, ServerName};

/// How often the rooms still partial are listed again.
const RESCAN: Duration = Duration::from_secs(60);

/// Rooms resynced at once.
const AT_ONCE: usize = 2;

/// The longest wait between two attempts of one room's resync.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A `/state` answer's size at most (a room of about 100,000 members).
pub const MAX_STATE_ANSWER_BYTES: usize = 256 << 20;

/// The rooms waiting for their member list, and the worker that fetches it.
pub struct PartialResyncs {
    requests: mpsc::UnboundedSender<String>,
    pending: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    delay: Duration,
}

impl PartialResyncs {
    /// The resyncs, each waiting `delay` before its first attempt.
    pub fn new(delay: Duration) -> Self {
        let (requests, pending) = mpsc::unbounded_channel();
        Self {
            requests,
            pending: Mutex::new(Some(pending)),
            delay,
        }
    }

    /// Asks for the member list of `room_id` (joined with a partial state).
    pub fn request(&self, room_id: &str) {
        // Only fails once the worker has stopped (the server is stopping): the room is
        // resynced at the next start.
        let _ = self.requests.send(room_id.to_owned());
    }

    /// Starts the worker: the rooms still partial, then each requested room, until
    /// `stopped` turns true (`None` when it was started before).
    pub fn start(
        services: Arc<Services>,
        mut stopped: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut pending = services
            .partial_resyncs
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        Some(tokio::spawn(async move {
            let listed = {
                let services = Arc::clone(&services);
                tokio::task::spawn_blocking(move || services.rooms.partial_state_rooms()).await
            };
            match listed {
                Ok(Ok(rooms)) => {
                    for room in rooms {
                        services.partial_resyncs.request(&room);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e.message, "cannot list the rooms with a partial state")
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the rooms with a partial state"),
            }
            // Rooms are listed again now and then: a request lost with a client that
            // went away after its join was written, or a task that ended on a stale
            // answer, is made up for.
            let mut rescan = tokio::time::interval(RESCAN);
            rescan.tick().await;
            let permits = Arc::new(Semaphore::new(AT_ONCE));
            let mut running = tokio::task::JoinSet::new();
            let mut started: HashMap<tokio::task::Id, String> = HashMap::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                        let id = match done {
                            Ok((id, ())) => id,
                            Err(e) => {
                                tracing::warn!(error = %e, "a member resync task ended abnormally");
                                e.id()
                            }
                        };
                        started.remove(&id);
                    }
                    _ = rescan.tick() => {
                        let listed = {
                            let services = Arc::clone(&services);
                            tokio::task::spawn_blocking(move || services.rooms.partial_state_rooms()).await
                        };
                        if let Ok(Ok(rooms)) = listed {
                            for room in rooms {
                                services.partial_resyncs.request(&room);
                            }
                        }
                    }
                    room = pending.recv() => {
                        let Some(room) = room else { break };
                        if !started.values().any(|r| *r == room) {
                            let services = Arc::clone(&services);
                            let permits = Arc::clone(&permits);
                            let name = room.clone();
                            let task = running.spawn(async move {
                                resync(&services, &room, &permits).await;
                            });
                            started.insert(task.id(), name);
                        }
                    }
                }
            }
            running.shutdown().await;
        }))
    }
}

/// Resyncs `room_id` until its state is whole or it is no longer partial, one of
/// [`AT_ONCE`] rooms at a time (a big room's state is hundreds of MiB as JSON).
async fn resync(services: &Services, room_id: &str, permits: &Semaphore) {
    tokio::time::sleep(services.partial_resyncs.delay).await;
    let mut backoff = Duration::from_secs(1);
    loop {
        let outcome = match permits.acquire().await {
            Ok(_permit) => attempt(services, room_id).await,
            Err(_) => return,
        };
        match outcome {
            Ok(Some(Completion::Completed { added, refused })) => {
                tracing::info!(room = %room_id, added, refused, "the member list of a room joined with a partial state is in");
                // Device lists kept from rooms shared before may have missed updates, as
                // after any join (the members were not known at ours).
                services.forget_member_device_lists(room_id).await;
                return;
            }
            // The room was joined again meanwhile (the answer was for the join before):
            // its new partial state is resynced by this task too.
            Ok(Some(Completion::NotPartial))
                if services.rooms.is_partial(room_id).unwrap_or(false) => {}
            Ok(Some(Completion::NotPartial) | None) => return,
            Err(e) => {
                tracing::info!(room = %room_id, error = %e.message, retry_in = ?backoff, "the member resync of a room failed")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One round over the room's servers: what the writer did with the first usable answer,
/// `None` when the room is not partial.
async fn attempt(services: &Services, room_id: &str) -> ServiceResult<Option<Completion>> {
    let Some(room) = services.rooms.store().room(room_id)? else {
        return Ok(None);
    };
    let Some(partial) = room.record.partial_state else {
        return Ok(None);
    };
    if !services.rooms.has_local_member(room_id)? {
        // Left meanwhile (the mark goes with our last member's leave).
        return Ok(None);
    }
    let version = RoomVersion::from_id(&room.record.version)
        .ok_or_else(|| ServiceError::internal("a room of an unknown version"))?;
    let own = services.config.server_name.as_str();
    let path = format!(
        "/_matrix/federation/v1/state/{}?event_id={}",
        crate::core::url::encode(room_id),
        crate::core::url::encode(&partial.join_event)
    );
    let mut last = ServiceError::remote_failed("No server in the room to ask for its members");
    for server in partial.servers.iter().filter(|s| *s != own) {
        let Ok(origin) = ServerName::parse(server) else {
            continue;
        };
        let federation = &services.federation;
        let answer = match federation
            .client
            .request_limited(&origin, Method::GET, &path, None, MAX_STATE_ANSWER_BYTES)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                tracing::info!(room = %room_id, %server, error = %e, "cannot fetch the state at our join");
                last = ServiceError::remote_failed(format!("{server}: {e}"));
                continue;
            }
        };
        let source = FromOrigin {
            federation,
            origin: origin.clone(),
        };
        match services
            .rooms
            .complete_state(room_id, version, (answer, &partial.join_event), &source)
            .await
        {
            Ok(done) => return Ok(Some(done)),
            Err(e) => {
                tracing::info!(room = %room_id, %server, error = %e.message, "the state at our join is unusable");
                last = e;
            }
        }
    }
    Err(last)
}
