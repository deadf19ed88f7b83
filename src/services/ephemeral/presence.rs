//! Presence: online, unavailable or offline, a status message, and when the user was last
//! active, told to the users who share a room with them.
//!
//! Spec: client-server API, "Presence" (`GET/PUT /presence/{userId}/status`, `m.presence`,
//! "Last active ago", "Idle timeout"), and `/sync`'s `set_presence`. As in Synapse:
//! - a sync (unless `set_presence=offline`) brings an offline user online (which counts
//!   as activity), and `set_presence=unavailable` marks them unavailable;
//! - a user whose syncs stop for [`SYNC_TIMEOUT_MS`] goes offline;
//! - an online user inactive for [`IDLE_MS`] becomes unavailable;
//! - `currently_active` is true while the user was active in the last
//!   [`ACTIVE_GRANULARITY_MS`]; activity during that time changes nothing clients see, so
//!   it costs no stream position. A change is sent when it ends.
//!
//! Records live in memory and in the table `userid_presence` (so a `since` token from
//! before a restart still gets the changes after it); each change takes a position on the
//! global stream and wakes the users of the rooms the user is joined to.
//!
//! Across servers (spec: server-server API, "Presence"): a change of one of our users goes
//! as an `m.presence` EDU to every other server sharing a room with them, queued in the
//! change's own write; another server's `m.presence` sets its users' records (users we
//! share a room with), which our timeouts leave alone but for one: a user not heard of for
//! [`REMOTE_TIMEOUT_MS`] goes offline, as in Synapse.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::services::error::{ServiceError, ServiceResult};
use crate::services::now_ms;
use crate::services::rooms::event_store::EventStore;
use crate::services::stream::{StreamChange, StreamPositions};
use crate::services::StripedLocks;
use crate::storage::{Db, Table};

/// Inactivity after which an online user becomes unavailable.
pub const IDLE_MS: u64 = 5 * 60 * 1000;
/// Time without a sync after which a user goes offline.
pub const SYNC_TIMEOUT_MS: u64 = 30 * 1000;
/// How long activity keeps `currently_active` true.
pub const ACTIVE_GRANULARITY_MS: u64 = 60 * 1000;
/// How often the timeouts are checked.
const REAP_INTERVAL: Duration = Duration::from_secs(5);
/// The longest status message kept, in bytes.
pub const MAX_STATUS_BYTES: usize = 1024;
/// Time without news of another server's user after which they count as offline.
pub const REMOTE_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// What presence needs to talk to other servers (attached at start-up).
pub struct PresenceFederation {
    /// Our server name: whose users are ours.
    pub server_name: String,
    /// Where EDUs for other servers are queued.
    pub outbox: Arc<crate::services::outbox::Outbox>,
    /// Who shares rooms with a user on other servers.
    pub mates: Arc<dyn crate::services::rooms::room_mates::RoomMates>,
}

/// A presence state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Connected.
    Online,
    /// Idle, or said so.
    Unavailable,
    /// Not connected.
    Offline,
}

impl State {
    /// Parses the spec's names.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "online" => Some(State::Online),
            "unavailable" => Some(State::Unavailable),
            "offline" => Some(State::Offline),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            State::Online => "online",
            State::Unavailable => "unavailable",
            State::Offline => "offline",
        }
    }
}

/// `userid_presence`: what clients are told, and the position it was last told at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// The state.
    pub state: State,
    /// The user's status message.
    pub status_msg: Option<String>,
    /// Last pro-active event (ms since the epoch).
    pub last_active_ts: u64,
    /// Whether the user counts as active right now.
    pub currently_active: bool,
    /// The stream position of the last change.
    pub pos: u64,
}

impl PresenceRecord {
    /// The `m.presence` content as of `now`.
    pub fn content(&self, now: u64) -> Value {
        let mut content = json!({ "presence": self.state.as_str() });
        if self.last_active_ts > 0 {
            content["last_active_ago"] = json!(now.saturating_sub(self.last_active_ts));
        }
        if let Some(status) = &self.status_msg {
            content["status_msg"] = json!(status);
        }
        if self.state == State::Online {
            content["currently_active"] = json!(self.currently_active);
        }
        content
    }
}

/// A user's record and their syncs.
#[derive(Debug, Clone)]
struct Tracked {
    record: PresenceRecord,
    /// Syncs in progress.
    syncing: u32,
    /// When the last sync ended (or the server started).
    last_sync_ts: u64,
}

#[derive(Default)]
struct Inner {
    users: HashMap<String, Tracked>,
    /// `(position, user)` of each record: changes since a position.
    by_pos: BTreeSet<(u64, String)>,
}

/// What a change does to a user's record (`None`: leave it).
type Change = dyn FnOnce(Option<&Tracked>, u64) -> Option<PresenceRecord> + Send;

/// The presence tracker.
pub struct Presence {
    stream: Arc<StreamPositions>,
    rooms: Arc<EventStore>,
    enabled: bool,
    inner: Mutex<Inner>,
    locks: StripedLocks,
    reaper: OnceLock<()>,
    federation: OnceLock<PresenceFederation>,
}

/// Held while a sync runs; the user counts as syncing until it drops.
pub struct SyncingGuard {
    presence: Arc<Presence>,
    user_id: String,
    /// Whether this sync was counted (a user without a record is counted once it exists).
    counted: bool,
}

impl Drop for SyncingGuard {
    fn drop(&mut self) {
        let mut inner = self.presence.lock();
        if let Some(tracked) = inner.users.get_mut(&self.user_id) {
            if self.counted {
                tracked.syncing = tracked.syncing.saturating_sub(1);
            }
            tracked.last_sync_ts = now_ms();
        }
    }
}

impl Presence {
    /// Loads the stored records. Users online at shutdown get [`SYNC_TIMEOUT_MS`] to sync
    /// again before they go offline.
    pub fn open(
        db: Arc<Db>,
        stream: Arc<StreamPositions>,
        rooms: Arc<EventStore>,
        enabled: bool,
    ) -> ServiceResult<Arc<Self>> {
        let mut inner = Inner::default();
        let now = now_ms();
        for entry in db.scan_prefix(Table::UseridPresence, &[]) {
            let (key, value) = entry?;
            let user = String::from_utf8(key.to_vec())
                .map_err(|_| ServiceError::internal("corrupt presence key"))?;
            let record: PresenceRecord =
                crate::services::records::decode(Table::UseridPresence, &value)?;
            inner.by_pos.insert((record.pos, user.clone()));
            inner.users.insert(
                user,
                Tracked {
                    record,
                    syncing: 0,
                    last_sync_ts: now,
                },
            );
        }
        Ok(Arc::new(Self {
            stream,
            rooms,
            enabled,
            inner: Mutex::new(inner),
            locks: StripedLocks::default(),
            reaper: OnceLock::new(),
            federation: OnceLock::new(),
        }))
    }

    /// Lets changes of our users go to other servers, and tells ours from theirs.
    pub fn attach_federation(&self, federation: PresenceFederation) {
        let _ = self.federation.set(federation);
    }

    /// Whether `user_id` is another server's (only known once federation is attached).
    fn is_remote(&self, user_id: &str) -> bool {
        self.federation.get().is_some_and(|f| {
            user_id
                .split_once(':')
                .is_some_and(|(_, server)| server != f.server_name)
        })
    }

    /// Another server's `m.presence` update for its user `user_id` (one sharing a room
    /// with us): their record becomes what it says. Malformed fields are left out.
    pub async fn set_remote(self: &Arc<Self>, user_id: &str, update: &Value) -> ServiceResult<()> {
        if !self.enabled || !self.is_remote(user_id) {
            return Ok(());
        }
        let Some(state) = update
            .get("presence")
            .and_then(Value::as_str)
            .and_then(State::parse)
        else {
            return Ok(());
        };
        let shares_a_room = self
            .rooms
            .memberships_of(user_id)?
            .iter()
            .any(|(_, m)| m.membership == "join");
        if !shares_a_room {
            return Ok(());
        }
        let status_msg = update
            .get("status_msg")
            .and_then(Value::as_str)
            .filter(|s| s.len() <= MAX_STATUS_BYTES)
            .map(str::to_owned);
        // Required by the spec; without it, never active (not active just now).
        let ago = update.get("last_active_ago").and_then(Value::as_u64);
        let currently_active = update
            .get("currently_active")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.change(
            user_id,
            Box::new(move |_, now| {
                Some(PresenceRecord {
                    state,
                    status_msg,
                    last_active_ts: ago.map_or(0, |ago| now.saturating_sub(ago)),
                    currently_active: currently_active && state == State::Online,
                    pos: 0,
                })
            }),
        )
        .await?;
        // Heard of now: the remote timeout counts from here.
        if let Some(tracked) = self.lock().users.get_mut(user_id) {
            tracked.last_sync_ts = now_ms();
        }
        Ok(())
    }

    /// Whether presence is tracked at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The user's record; `None` if they never had one (clients read that as offline).
    pub fn get(&self, user_id: &str) -> Option<PresenceRecord> {
        if !self.enabled {
            return None;
        }
        self.lock().users.get(user_id).map(|t| t.record.clone())
    }

    /// Records that changed in `(after, upto]`, as they are now.
    pub fn changed(&self, after: u64, upto: u64) -> Vec<(String, PresenceRecord)> {
        if !self.enabled {
            return Vec::new();
        }
        let inner = self.lock();
        inner
            .by_pos
            .range((after.saturating_add(1), String::new())..)
            .take_while(|(pos, _)| *pos <= upto)
            .filter_map(|(_, user)| {
                inner
                    .users
                    .get(user)
                    .map(|t| (user.clone(), t.record.clone()))
            })
            .collect()
    }

    /// Every record not offline (an initial sync leaves offline users out, as Synapse does).
    pub fn not_offline(&self, upto: u64) -> Vec<(String, PresenceRecord)> {
        if !self.enabled {
            return Vec::new();
        }
        self.lock()
            .users
            .iter()
            .filter(|(_, t)| t.record.state != State::Offline && t.record.pos <= upto)
            .map(|(u, t)| (u.clone(), t.record.clone()))
            .collect()
    }

    /// `PUT /presence/{userId}/status`: the user says their state and status message.
    pub async fn set(
        self: &Arc<Self>,
        user_id: &str,
        state: State,
        status_msg: Option<String>,
    ) -> ServiceResult<()> {
        if status_msg
            .as_ref()
            .is_some_and(|s| s.len() > MAX_STATUS_BYTES)
        {
            return Err(ServiceError::invalid_param("status_msg is too long"));
        }
        if !self.enabled {
            return Ok(());
        }
        self.change(
            user_id,
            Box::new(move |current, now| {
                let mut record = record_of(current);
                record.state = state;
                record.status_msg = status_msg;
                if state == State::Online {
                    // Saying "online" is a pro-active event.
                    record.last_active_ts = now;
                    record.currently_active = true;
                } else {
                    record.currently_active = false;
                }
                Some(record)
            }),
        )
        .await
    }

    /// A pro-active event (a message sent): last active now, online. Costs a stream
    /// position only when what clients see changes.
    pub async fn bump_active(self: &Arc<Self>, user_id: &str) -> ServiceResult<()> {
        if !self.enabled {
            return Ok(());
        }
        {
            let mut inner = self.lock();
            if let Some(tracked) = inner.users.get_mut(user_id) {
                if tracked.record.state == State::Online && tracked.record.currently_active {
                    tracked.record.last_active_ts = now_ms();
                    return Ok(());
                }
            }
        }
        self.change(
            user_id,
            Box::new(|current, now| {
                let mut record = record_of(current);
                record.state = State::Online;
                record.last_active_ts = now;
                record.currently_active = true;
                Some(record)
            }),
        )
        .await
    }

    /// A sync starts: the user counts as syncing until the guard drops, and `set_presence`
    /// applies (`online` brings an offline user online, `unavailable` marks them so,
    /// `offline` changes nothing).
    pub async fn syncing(
        self: &Arc<Self>,
        user_id: &str,
        set_presence: State,
    ) -> ServiceResult<Option<SyncingGuard>> {
        if !self.enabled {
            return Ok(None);
        }
        let current = {
            let mut inner = self.lock();
            let now = now_ms();
            inner.users.get_mut(user_id).map(|t| {
                t.syncing += 1;
                t.last_sync_ts = now;
                t.record.state
            })
        };
        // Made before anything can fail or be cancelled, so the count always comes down.
        let guard = SyncingGuard {
            presence: Arc::clone(self),
            user_id: user_id.to_owned(),
            counted: current.is_some(),
        };
        let wanted = match (set_presence, current) {
            (State::Offline, _) => None,
            (State::Online, None | Some(State::Offline)) => Some(State::Online),
            (State::Unavailable, state) if state != Some(State::Unavailable) => {
                Some(State::Unavailable)
            }
            _ => None,
        };
        if let Some(state) = wanted {
            self.change(
                user_id,
                Box::new(move |current, now| {
                    let mut record = record_of(current);
                    record.state = state;
                    record.currently_active = state == State::Online;
                    if state == State::Online {
                        // Coming online is a pro-active event (as in Synapse).
                        record.last_active_ts = now;
                    }
                    Some(record)
                }),
            )
            .await?;
        }
        let mut guard = guard;
        if !guard.counted {
            // The record was just made: count this sync.
            if let Some(tracked) = self.lock().users.get_mut(user_id) {
                tracked.syncing += 1;
                guard.counted = true;
            }
        }
        Ok(Some(guard))
    }

    /// Applies `change` under the user's lock, stores the new record at a new position and
    /// tells the users of the rooms the user is joined to.
    async fn change(self: &Arc<Self>, user_id: &str, change: Box<Change>) -> ServiceResult<()> {
        self.start_reaper();
        let _guard = self.locks.lock(user_id.as_bytes()).await;
        let now = now_ms();
        let current = self.lock().users.get(user_id).cloned();
        let Some(record) = change(current.as_ref(), now) else {
            return Ok(());
        };
        if let Some(current) = &current {
            let seen = |r: &PresenceRecord| (r.state, r.status_msg.clone(), r.currently_active);
            if seen(&record) == seen(&current.record) {
                // Nothing clients are shown changed (spec: no last-active updates while
                // `currently_active`): keep the time, take no position.
                if let Some(tracked) = self.lock().users.get_mut(user_id) {
                    tracked.record.last_active_ts = record.last_active_ts;
                }
                return Ok(());
            }
        }
        let rooms: Vec<u64> = {
            let mut rooms = Vec::new();
            for (room_id, membership) in self.rooms.memberships_of(user_id)? {
                if membership.membership == "join" {
                    if let Some(short) = self.rooms.room_short(&room_id)? {
                        rooms.push(short);
                    }
                }
            }
            rooms
        };
        // Our user's change goes to the other servers sharing a room with them.
        let destinations: Vec<String> = match self.federation.get() {
            Some(federation) if !self.is_remote(user_id) => {
                federation.mates.remote_servers_sharing(user_id)?
            }
            _ => Vec::new(),
        };
        let user = user_id.to_owned();
        let presence = Arc::clone(self);
        let mut record = record;
        let queued = destinations.clone();
        self.stream
            .write_at_new_position(
                move |pos| {
                    record.pos = pos;
                    let bytes = crate::services::records::encode(&record);
                    let mut writes = Vec::with_capacity(queued.len() + 1);
                    if !queued.is_empty() {
                        let mut update = record.content(now);
                        update["user_id"] = json!(user);
                        // Required in the EDU (spec: `m.presence`): a user never active
                        // was last active at the epoch, as long ago as can be said.
                        if update.get("last_active_ago").is_none() {
                            update["last_active_ago"] = json!(now);
                        }
                        let edu = json!({"edu_type": "m.presence", "content": {"push": [update]}});
                        writes.extend(queued.iter().map(|server| {
                            crate::services::outbox::Outbox::queue_presence(server, pos, &edu, now)
                        }));
                    }
                    // In memory before the position commits: a sync woken by it must find it.
                    presence.remember(&user, record, now);
                    writes.push((Table::UseridPresence, user.into_bytes(), Some(bytes)));
                    writes
                },
                vec![StreamChange::Presence {
                    user: user_id.to_owned(),
                    rooms,
                }],
            )
            .await?;
        if let Some(federation) = self.federation.get() {
            for server in &destinations {
                federation.outbox.wake(server);
            }
        }
        Ok(())
    }

    fn remember(&self, user_id: &str, record: PresenceRecord, now: u64) {
        let mut inner = self.lock();
        if let Some(previous) = inner.users.get(user_id).map(|t| t.record.pos) {
            inner.by_pos.remove(&(previous, user_id.to_owned()));
        }
        inner.by_pos.insert((record.pos, user_id.to_owned()));
        let tracked = inner.users.entry(user_id.to_owned()).or_insert(Tracked {
            record: record.clone(),
            syncing: 0,
            last_sync_ts: now,
        });
        tracked.record = record;
    }

    fn start_reaper(self: &Arc<Self>) {
        self.reaper.get_or_init(|| {
            tokio::spawn(reap(Arc::downgrade(self)));
        });
    }

    /// Applies the timeouts due at `now`.
    pub async fn expire(self: &Arc<Self>, now: u64) -> ServiceResult<()> {
        let due: Vec<(String, bool)> = self
            .lock()
            .users
            .iter()
            .map(|(u, t)| (u, t, self.is_remote(u)))
            .filter(|(_, t, remote)| expired(t, *remote, now).is_some())
            .map(|(u, _, remote)| (u.clone(), remote))
            .collect();
        for (user, remote) in due {
            // Checked again under the user's lock: a sync may have come in meanwhile.
            self.change(
                &user,
                Box::new(move |current, _| expired(current?, remote, now)),
            )
            .await?;
        }
        Ok(())
    }
}

/// The user's current record, or a blank one (offline, never active) to change.
fn record_of(current: Option<&Tracked>) -> PresenceRecord {
    current.map(|t| t.record.clone()).unwrap_or(PresenceRecord {
        state: State::Offline,
        status_msg: None,
        last_active_ts: 0,
        currently_active: false,
        pos: 0,
    })
}

/// The timeouts of a user: ours by their syncs and activity ([`timed_out`]), another
/// server's by when we last heard of them.
fn expired(tracked: &Tracked, remote: bool, now: u64) -> Option<PresenceRecord> {
    if !remote {
        return timed_out(tracked, now);
    }
    let silent = now.saturating_sub(tracked.last_sync_ts) > REMOTE_TIMEOUT_MS;
    (silent && tracked.record.state != State::Offline).then(|| PresenceRecord {
        state: State::Offline,
        currently_active: false,
        ..tracked.record.clone()
    })
}

/// What the timeouts make of a record at `now`, if anything: offline when syncs stopped,
/// unavailable when idle, no longer `currently_active` after the granularity.
fn timed_out(tracked: &Tracked, now: u64) -> Option<PresenceRecord> {
    let mut record = tracked.record.clone();
    let idle = now.saturating_sub(record.last_active_ts);
    let gone = tracked.syncing == 0 && now.saturating_sub(tracked.last_sync_ts) > SYNC_TIMEOUT_MS;
    if record.state != State::Offline && gone {
        record.state = State::Offline;
    } else if record.state == State::Online && idle > IDLE_MS {
        record.state = State::Unavailable;
    } else if !(record.state == State::Online
        && record.currently_active
        && idle > ACTIVE_GRANULARITY_MS)
    {
        return None;
    }
    record.currently_active = false;
    Some(record)
}

/// Checks the timeouts every [`REAP_INTERVAL`] while the tracker exists.
async fn reap(presence: Weak<Presence>) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(presence) = presence.upgrade() else {
            return;
        };
        if let Err(e) = presence.expire(now_ms()).await {
            tracing::warn!(error = %e.message, "presence timeouts failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(state: State, last_active_ts: u64, currently_active: bool, syncing: u32) -> Tracked {
        Tracked {
            record: PresenceRecord {
                state,
                status_msg: Some("here".into()),
                last_active_ts,
                currently_active,
                pos: 7,
            },
            syncing,
            last_sync_ts: 1_000_000,
        }
    }

    #[test]
    fn timeouts_follow_activity_and_syncs() {
        let start = 1_000_000;
        // Active and syncing: nothing to do.
        assert_eq!(
            timed_out(&tracked(State::Online, start, true, 1), start + 1000),
            None
        );
        // A minute without activity ends `currently_active`, still online.
        let quiet = timed_out(
            &tracked(State::Online, start, true, 1),
            start + ACTIVE_GRANULARITY_MS + 1,
        )
        .unwrap();
        assert_eq!(
            (quiet.state, quiet.currently_active),
            (State::Online, false)
        );
        assert_eq!(quiet.status_msg.as_deref(), Some("here"));
        // Idle for five minutes: unavailable.
        let idle = timed_out(
            &tracked(State::Online, start, false, 1),
            start + IDLE_MS + 1,
        )
        .unwrap();
        assert_eq!(idle.state, State::Unavailable);
        // No sync for the timeout: offline, whatever the state.
        for state in [State::Online, State::Unavailable] {
            let gone =
                timed_out(&tracked(state, start, true, 0), start + SYNC_TIMEOUT_MS + 1).unwrap();
            assert_eq!((gone.state, gone.currently_active), (State::Offline, false));
        }
        // A sync in progress keeps the user from going offline; offline stays offline.
        assert_eq!(
            timed_out(
                &tracked(State::Unavailable, start, false, 1),
                start + IDLE_MS * 3
            ),
            None
        );
        assert_eq!(
            timed_out(
                &tracked(State::Offline, start, false, 0),
                start + IDLE_MS * 3
            ),
            None
        );
    }

    #[test]
    fn another_servers_user_goes_offline_only_when_not_heard_of() {
        let start = 1_000_000;
        // Not syncing here and idle: our timeouts would take them offline, theirs do not.
        let heard = tracked(State::Online, start, false, 0);
        assert_eq!(expired(&heard, true, start + IDLE_MS * 3), None);
        assert!(expired(&heard, false, start + IDLE_MS * 3).is_some());
        let silent = expired(&heard, true, start + REMOTE_TIMEOUT_MS + 1).unwrap();
        assert_eq!(
            (silent.state, silent.currently_active),
            (State::Offline, false)
        );
        assert_eq!(silent.status_msg.as_deref(), Some("here"));
        let offline = tracked(State::Offline, start, false, 0);
        assert_eq!(expired(&offline, true, start + REMOTE_TIMEOUT_MS * 2), None);
    }

    #[test]
    fn content_has_what_the_spec_lists() {
        let record = tracked(State::Online, 1000, true, 0).record;
        assert_eq!(
            record.content(1500),
            json!({"presence": "online", "last_active_ago": 500, "status_msg": "here", "currently_active": true})
        );
        let offline = tracked(State::Offline, 0, false, 0).record;
        assert_eq!(
            offline.content(5),
            json!({"presence": "offline", "status_msg": "here"})
        );
    }
}
