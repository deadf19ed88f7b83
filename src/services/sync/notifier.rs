//! Per-user wake-ups: which of a user's rooms changed since a position, and a `Notify` that
//! long-polling `/sync` requests wait on.
//!
//! The notifier subscribes to the global stream ([`StreamPositions`]). It keeps a
//! [`UserStream`] for each user who synced since start-up: the latest position of anything
//! they should hear about, the latest change per room (in position order too, so "what
//! changed since X" costs O(changes), and rooms sort by recency for a sliding sync), and
//! the latest account data and to-device positions. Rooms list their listening users, so
//! an event wakes exactly the local users it concerns, and a sync with nothing new compares
//! one number.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::services::stream::{StreamChange, StreamPositions, StreamSubscriber};

/// Recent changes kept for users whose stream is being loaded.
const RECENT_CHANGES: usize = 16_384;
/// Users kept per [`ChangedUsers`] before the oldest half is forgotten (a token older than
/// what remains then takes the slower path that does not need them).
const CHANGED_USERS_KEPT: usize = 4_096;

/// Other users whose something (presence, device keys) changed, as one listening user
/// hears of it: each with their latest change after `floor`.
#[derive(Debug, Default, Clone)]
struct ChangedUsers {
    latest: HashMap<String, u64>,
    /// Changes at or below this are not in `latest` (the stream was loaded then, or the
    /// client acknowledged them).
    floor: u64,
}

impl ChangedUsers {
    fn record(&mut self, user: &str, pos: u64) {
        match self.latest.get_mut(user) {
            Some(latest) => *latest = (*latest).max(pos),
            None => {
                self.latest.insert(user.to_owned(), pos);
            }
        }
        if self.latest.len() > CHANGED_USERS_KEPT {
            // Forget the older half; tokens from before it take the slow path.
            let mut positions: Vec<u64> = self.latest.values().copied().collect();
            let middle = positions.len() / 2;
            let (_, cut, _) = positions.select_nth_unstable(middle);
            let cut = *cut;
            self.latest.retain(|_, pos| *pos > cut);
            self.floor = self.floor.max(cut);
        }
    }

    /// Who changed after `after`; `None` when that is older than `floor`. Nothing is
    /// forgotten by asking: each of a user's devices syncs from its own token.
    fn since(&self, after: u64) -> Option<Vec<String>> {
        if after < self.floor {
            return None;
        }
        Some(
            self.latest
                .iter()
                .filter(|(_, pos)| **pos > after)
                .map(|(user, _)| user.clone())
                .collect(),
        )
    }
}

/// What changed for one user, by stream position.
#[derive(Debug, Default, Clone)]
pub struct UserChanges {
    /// Room short id -> latest change the user should see there.
    rooms: HashMap<u64, u64>,
    /// `(position, room)` for each entry of `rooms`.
    by_pos: BTreeSet<(u64, u64)>,
    /// Users sharing a room with the user (and the user) whose presence changed.
    presence: ChangedUsers,
    /// Users sharing a room with the user (and the user) whose devices or cross-signing
    /// keys changed, and users who joined a room the user is in.
    device_lists: ChangedUsers,
    /// Users who left (or were kicked or banned from) a room the user is in.
    members_left: ChangedUsers,
    /// The latest position of anything for the user: rooms, account data, to-device
    /// messages, presence, device lists.
    pub latest: u64,
}

impl UserChanges {
    fn touch_room(&mut self, room: u64, pos: u64) {
        let previous = self.rooms.insert(room, pos);
        if let Some(previous) = previous {
            if previous > pos {
                self.rooms.insert(room, previous);
                return;
            }
            self.by_pos.remove(&(previous, room));
        }
        self.by_pos.insert((pos, room));
        self.touch(pos);
    }

    /// Rooms with a change after `after`, newest first.
    pub fn rooms_changed(&self, after: u64) -> Vec<u64> {
        // No upper bound: a room that changed both before and after the answer's upper
        // position keeps only its latest change here, and must not be missed.
        self.by_pos
            .range((after.saturating_add(1), 0)..)
            .rev()
            .map(|(_, room)| *room)
            .collect()
    }

    /// Whose presence changed after `after`; `None` when that is older than what the
    /// stream knows (a token from before the stream was loaded, or an old token reused).
    /// Changes up to `after` are forgotten: the client has them.
    pub fn presence_changed(&self, after: u64) -> Option<Vec<String>> {
        self.presence.since(after)
    }

    /// Whose devices or cross-signing keys changed, or who joined one of the user's rooms,
    /// after `after`; and who left one of them. `None` as for
    /// [`UserChanges::presence_changed`].
    pub fn device_lists_changed(&self, after: u64) -> Option<(Vec<String>, Vec<String>)> {
        Some((
            self.device_lists.since(after)?,
            self.members_left.since(after)?,
        ))
    }

    fn touch(&mut self, pos: u64) {
        self.latest = self.latest.max(pos);
    }

    /// The latest change in a room the user heard about.
    pub fn room_pos(&self, room: u64) -> Option<u64> {
        self.rooms.get(&room).copied()
    }
}

/// One user's changes and wake-up.
pub struct UserStream {
    user_id: String,
    changes: Mutex<UserChanges>,
    notify: Notify,
}

impl UserStream {
    /// Rooms with a change after `after`, newest first (see
    /// [`UserChanges::rooms_changed`]), without copying the user's whole index.
    pub fn rooms_changed(&self, after: u64) -> Vec<u64> {
        self.lock().rooms_changed(after)
    }

    /// See [`UserChanges::presence_changed`].
    pub fn presence_changed(&self, after: u64) -> Option<Vec<String>> {
        self.lock().presence_changed(after)
    }

    /// See [`UserChanges::device_lists_changed`].
    pub fn device_lists_changed(&self, after: u64) -> Option<(Vec<String>, Vec<String>)> {
        self.lock().device_lists_changed(after)
    }

    /// The latest position of anything for this user.
    pub fn latest(&self) -> u64 {
        self.lock().latest
    }

    /// Woken when something for this user commits.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UserChanges> {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A user's membership in a room, as loaded when their stream starts.
#[derive(Debug, Clone)]
pub struct LoadedRoom {
    /// The room's short id.
    pub room: u64,
    /// The latest position in the room the user may hear about.
    pub pos: u64,
    /// Whether the user is in the room (joined, invited, knocking) and hears its events.
    pub listening: bool,
}

#[derive(Default)]
struct Inner {
    users: HashMap<String, Arc<UserStream>>,
    rooms: HashMap<u64, Vec<Arc<UserStream>>>,
    recent: VecDeque<(u64, StreamChange)>,
    /// The highest position dropped from `recent`.
    forgotten_upto: u64,
}

/// The stream subscriber that wakes users.
#[derive(Default)]
pub struct Notifier {
    inner: Mutex<Inner>,
}

/// Joined members hear a room's events; invited and knocking users only their own
/// membership changes.
fn listens(membership: &str) -> bool {
    membership == "join"
}

impl Inner {
    fn listen(&mut self, room: u64, user: &Arc<UserStream>) {
        let listeners = self.rooms.entry(room).or_default();
        if !listeners.iter().any(|l| Arc::ptr_eq(l, user)) {
            listeners.push(Arc::clone(user));
        }
    }

    fn unlisten(&mut self, room: u64, user: &Arc<UserStream>) {
        if let Some(listeners) = self.rooms.get_mut(&room) {
            listeners.retain(|l| !Arc::ptr_eq(l, user));
            if listeners.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    /// Applies one change; returns the users to wake.
    fn apply(&mut self, pos: u64, change: &StreamChange, woken: &mut Vec<Arc<UserStream>>) {
        match change {
            StreamChange::RoomEvent { room, member } => {
                self.touch_listeners(*room, pos, woken);
                if let Some((user, membership)) = member {
                    // Room mates learn whose keys to fetch or forget (device lists).
                    let joined = membership == "join";
                    if joined || matches!(membership.as_str(), "leave" | "ban") {
                        for listener in self.rooms.get(room).into_iter().flatten() {
                            if listener.user_id != *user {
                                let mut changes = listener.lock();
                                if joined {
                                    changes.device_lists.record(user, pos);
                                } else {
                                    changes.members_left.record(user, pos);
                                }
                            }
                        }
                    }
                    if let Some(stream) = self.users.get(user).cloned() {
                        if listens(membership) {
                            self.listen(*room, &stream);
                        } else {
                            self.unlisten(*room, &stream);
                        }
                        stream.lock().touch_room(*room, pos);
                        woken.push(stream);
                    }
                }
            }
            StreamChange::RoomEphemeral { room } => self.touch_listeners(*room, pos, woken),
            StreamChange::AccountData { user } | StreamChange::ToDevice { user } => {
                if let Some(stream) = self.users.get(user) {
                    stream.lock().touch(pos);
                    woken.push(Arc::clone(stream));
                }
            }
            StreamChange::Presence { user, rooms } | StreamChange::DeviceList { user, rooms } => {
                let own = self.users.get(user);
                let listeners = rooms
                    .iter()
                    .flat_map(|room| self.rooms.get(room).into_iter().flatten())
                    .chain(own);
                for listener in listeners {
                    let mut changes = listener.lock();
                    match change {
                        StreamChange::Presence { .. } => changes.presence.record(user, pos),
                        _ => changes.device_lists.record(user, pos),
                    }
                    changes.touch(pos);
                    drop(changes);
                    woken.push(Arc::clone(listener));
                }
            }
            StreamChange::SignedUser { signer, target } => {
                if let Some(stream) = self.users.get(signer) {
                    let mut changes = stream.lock();
                    changes.device_lists.record(target, pos);
                    changes.touch(pos);
                    drop(changes);
                    woken.push(Arc::clone(stream));
                }
            }
        }
    }

    fn touch_listeners(&self, room: u64, pos: u64, woken: &mut Vec<Arc<UserStream>>) {
        for listener in self.rooms.get(&room).into_iter().flatten() {
            listener.lock().touch_room(room, pos);
            woken.push(Arc::clone(listener));
        }
    }
}

impl StreamSubscriber for Notifier {
    fn committed(&self, changes: &[(u64, StreamChange)]) {
        let mut woken = Vec::new();
        {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            for (pos, change) in changes {
                inner.apply(*pos, change, &mut woken);
                if inner.recent.len() >= RECENT_CHANGES {
                    if let Some((dropped, _)) = inner.recent.pop_front() {
                        inner.forgotten_upto = dropped;
                    }
                }
                inner.recent.push_back((*pos, change.clone()));
            }
        }
        woken.sort_by_key(|s| Arc::as_ptr(s) as usize);
        woken.dedup_by(|a, b| Arc::ptr_eq(a, b));
        for stream in woken {
            stream.notify.notify_waiters();
        }
    }
}

impl Notifier {
    /// The user's stream if it is loaded.
    pub fn loaded(&self, user_id: &str) -> Option<Arc<UserStream>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .users
            .get(user_id)
            .cloned()
    }

    /// The user's stream, loading it with `load` (their rooms as stored at a watermark read
    /// before the call) if this is their first sync since start-up. Changes that committed
    /// while `load` ran are replayed from the recent changes.
    pub fn stream_for<E>(
        &self,
        stream: &StreamPositions,
        user_id: &str,
        mut load: impl FnMut() -> Result<Vec<LoadedRoom>, E>,
    ) -> Result<Arc<UserStream>, E> {
        loop {
            if let Some(stream) = self.loaded(user_id) {
                return Ok(stream);
            }
            let loaded_at = stream.watermark();
            let rooms = load()?;
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(stream) = inner.users.get(user_id) {
                return Ok(Arc::clone(stream));
            }
            if inner.forgotten_upto > loaded_at {
                // Too much happened while loading; load again.
                continue;
            }
            let stream = Arc::new(UserStream {
                user_id: user_id.to_owned(),
                changes: Mutex::new(UserChanges::default()),
                notify: Notify::new(),
            });
            {
                let mut changes = stream.lock();
                changes.latest = loaded_at;
                changes.presence.floor = loaded_at;
                changes.device_lists.floor = loaded_at;
                changes.members_left.floor = loaded_at;
                for room in &rooms {
                    changes.touch_room(room.room, room.pos.min(loaded_at));
                }
            }
            inner.users.insert(user_id.to_owned(), Arc::clone(&stream));
            for room in rooms.iter().filter(|r| r.listening) {
                inner.listen(room.room, &stream);
            }
            let missed: Vec<(u64, StreamChange)> = inner
                .recent
                .iter()
                .filter(|(pos, _)| *pos > loaded_at)
                .cloned()
                .collect();
            let mut woken = Vec::new();
            for (pos, change) in &missed {
                if concerns(&stream, &inner, change) {
                    inner.apply(*pos, change, &mut woken);
                }
            }
            drop(inner);
            for other in woken {
                other.notify.notify_waiters();
            }
            return Ok(stream);
        }
    }
}

/// Whether a change replayed for a newly loaded stream concerns its user (others already
/// heard about it).
fn concerns(stream: &Arc<UserStream>, inner: &Inner, change: &StreamChange) -> bool {
    match change {
        StreamChange::RoomEvent { room, member } => {
            member.as_ref().is_some_and(|(u, _)| *u == stream.user_id)
                || inner
                    .rooms
                    .get(room)
                    .is_some_and(|l| l.iter().any(|s| Arc::ptr_eq(s, stream)))
        }
        StreamChange::RoomEphemeral { room } => inner
            .rooms
            .get(room)
            .is_some_and(|l| l.iter().any(|s| Arc::ptr_eq(s, stream))),
        StreamChange::AccountData { user } | StreamChange::ToDevice { user } => {
            *user == stream.user_id
        }
        StreamChange::Presence { user, rooms } | StreamChange::DeviceList { user, rooms } => {
            *user == stream.user_id
                || rooms.iter().any(|room| {
                    inner
                        .rooms
                        .get(room)
                        .is_some_and(|l| l.iter().any(|s| Arc::ptr_eq(s, stream)))
                })
        }
        StreamChange::SignedUser { signer, .. } => *signer == stream.user_id,
    }
}
