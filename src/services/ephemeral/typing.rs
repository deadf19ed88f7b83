//! Typing notifications.
//!
//! Spec: client-server API, "Typing Notifications" (`PUT /rooms/{roomId}/typing/{userId}`,
//! the `m.typing` ephemeral event). A user's typing ends when they say so or when their
//! timeout passes; one reaper task ends the expired ones and tells the room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Ephemeral;
use crate::services::error::ServiceResult;
use crate::services::stream::{StreamChange, StreamPositions};

/// The longest typing timeout honoured.
pub const MAX_TYPING_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    /// User -> when their typing ends.
    users: HashMap<String, Instant>,
    /// Position of the last change.
    pos: u64,
}

/// Who is typing in each room.
pub struct TypingRooms {
    stream: Arc<StreamPositions>,
    rooms: Mutex<HashMap<u64, RoomTyping>>,
    reaper: OnceLock<Arc<Notify>>,
}

impl TypingRooms {
    /// Nobody typing yet.
    pub fn new(stream: Arc<StreamPositions>) -> Self {
        Self {
            stream,
            rooms: Mutex::new(HashMap::new()),
            reaper: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, RoomTyping>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a change in a room and tells its members.
    fn changed(&self, room: u64, rooms: &mut HashMap<u64, RoomTyping>) -> ServiceResult<()> {
        let pos = self
            .stream
            .commit_now(StreamChange::RoomEphemeral { room })?;
        rooms.entry(room).or_default().pos = pos;
        Ok(())
    }

    /// Ends every typing whose time has come; answers when the next one ends.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut rooms = self.lock();
        let mut expired_rooms = Vec::new();
        let mut next: Option<Instant> = None;
        for (room, typing) in rooms.iter_mut() {
            let before = typing.users.len();
            typing.users.retain(|_, until| *until > now);
            if typing.users.len() != before {
                expired_rooms.push(*room);
            }
            for until in typing.users.values() {
                next = Some(next.map_or(*until, |n| n.min(*until)));
            }
        }
        for room in expired_rooms {
            if let Err(e) = self.changed(room, &mut rooms) {
                tracing::warn!("typing expiry not announced: {}", e.message);
            }
        }
        next
    }

    fn wake_reaper(self: &Arc<Self>) {
        let notify = self.reaper.get_or_init(|| {
            let notify = Arc::new(Notify::new());
            tokio::spawn(reap(Arc::downgrade(self), Arc::clone(&notify)));
            notify
        });
        notify.notify_one();
    }
}

/// The reaper: sleeps until the next typing ends (or a new one starts), then expires.
async fn reap(rooms: Weak<TypingRooms>, notify: Arc<Notify>) {
    loop {
        let next = match rooms.upgrade() {
            Some(rooms) => rooms.expire(Instant::now()),
            None => return,
        };
        let sleep_until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until) => {}
            _ = notify.notified() => {}
        }
    }
}

impl Ephemeral {
    /// Starts (for `timeout`) or stops a user's typing in a room.
    pub fn set_typing(
        &self,
        room: u64,
        user_id: &str,
        typing: Option<Duration>,
    ) -> ServiceResult<()> {
        let typing_rooms = &self.typing;
        {
            let mut rooms = typing_rooms.lock();
            let entry = rooms.entry(room).or_default();
            let changed = match typing {
                Some(timeout) => {
                    let until = Instant::now() + timeout.min(MAX_TYPING_TIMEOUT);
                    entry.users.insert(user_id.to_owned(), until).is_none()
                }
                None => entry.users.remove(user_id).is_some(),
            };
            if !changed {
                // Extending a typing or stopping one that ended tells nobody anything new.
                return Ok(());
            }
            typing_rooms.changed(room, &mut rooms)?;
        }
        if typing.is_some() {
            typing_rooms.wake_reaper();
        }
        Ok(())
    }

    /// Who is typing in a room, if that changed in `(after, upto]`.
    pub fn typing_changed(&self, room: u64, after: u64, upto: u64) -> Option<Vec<String>> {
        let rooms = self.typing.lock();
        let typing = rooms.get(&room)?;
        if typing.pos <= after || typing.pos > upto {
            return None;
        }
        let now = Instant::now();
        let mut users: Vec<String> = typing
            .users
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(u, _)| u.clone())
            .collect();
        users.sort();
        Some(users)
    }

    /// Who is typing in a room now (initial sync).
    pub fn typing_now(&self, room: u64) -> Vec<String> {
        self.typing_changed(room, 0, u64::MAX).unwrap_or_default()
    }
}
