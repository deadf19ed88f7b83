//! The device lists of other servers' users we share a room with, kept here.
//!
//! Spec: server-server API, "Device Management": a server tracks the device lists of the
//! remote users it shares a room with. It fills a list with `GET /user/devices/{userId}`
//! (devices with their keys, the cross-signing keys, and the list's `stream_id`), then
//! follows the `m.device_list_update` EDUs the user's server sends: each names its
//! `stream_id` and the `prev_id`s before it. An update with a `prev_id` we have not seen
//! (the fetched list's `stream_id` or an update applied since) shows that we missed one:
//! the list is marked stale and fetched again ("it must resynchronise its list … and
//! resume the process"): at once in the background (`device_list_resync.rs`, as Synapse
//! resyncs on a gap), or by the next query. Stream ids are only unique, not ordered: an
//! update is known when its `stream_id` is among the last ones seen, and an older update
//! that arrives after a fetch (a server's queue delivering it late) looks like a gap too,
//! which the background fetch mends. `m.signing_key_update`
//! replaces the cross-signing keys. A client's `/keys/query` for such a user is answered
//! from the list, so the user's server is not asked each time, and a server that is down
//! does not hide the devices of its users; if a stale list cannot be fetched again, the
//! stale one is answered (as Synapse does). A list is only kept while it can be followed:
//! any member event of the user (a join, a leave) drops it, to be fetched afresh, and so
//! does our server joining, through another server, a room the user is in (we may have
//! stopped sharing rooms with them in between, and missed updates).
//!
//! What another server says is kept only for its own users, and a device's keys only
//! when they name that user and device; a list keeps at most [`MAX_DEVICES`] devices,
//! each's keys at most [`MAX_KEYS_BYTES`]. A query fetches at most
//! [`MAX_FETCHES_PER_QUERY`] lists (the client API asks its other users' keys the
//! batched way), all within the query's one deadline.
//!
//! Changes of one user's list (an update, keeping a fetched list, the member-event hook
//! dropping it) are serialized by a striped lock. While a fetch of a user's list is out
//! (a [`FetchTicket`]), the updates and drops of that user are counted: a list fetched
//! while an update of the user came (which may have found no list to follow) is kept
//! stale, and fetched again in the background; one whose user's member event dropped
//! the list meanwhile is not kept (the drop stands). Users wanting a background fetch
//! wait first come, first served, at most [`MAX_RESYNCS_WANTED`] in all and
//! [`MAX_RESYNCS_WANTED_PER_SERVER`] of one server; past that a stale list waits for the
//! next query or update.
//!
//! Owns the table `userid_remotedevicelist`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use std::sync::{Mutex, PoisonError};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::client::{FederationClient, FederationError};
use crate::core::{ServerName, UserId};
use crate::services::error::ServiceResult;
use crate::services::records::{decode, encode};
use crate::services::rooms::event_store::EventStore;
use crate::services::rooms::writer::{NewEvent, NewEventHook};
use crate::storage::{Batch, Db, Table};

/// Device lists fetched at once for one query at most.
pub const CONCURRENT_RESYNCS: usize = 16;
/// Device lists one query fetches at most.
pub const MAX_FETCHES_PER_QUERY: usize = 64;
/// Devices a kept list holds at most (a server adding more is not followed further).
pub const MAX_DEVICES: usize = 1_000;
/// The largest device keys object kept (as JSON).
pub const MAX_KEYS_BYTES: usize = 16 * 1024;
/// Stream ids of applied updates remembered per list (to know repeats and `prev_id`s).
const SEEN_STREAM_IDS: usize = 32;
/// Stripes of the per-user lock.
const STRIPES: usize = 64;
/// Users whose stale list waits for a background fetch, at most.
pub const MAX_RESYNCS_WANTED: usize = 1_024;
/// Users of one server whose stale list waits for a background fetch, at most.
pub const MAX_RESYNCS_WANTED_PER_SERVER: usize = 64;

/// A remote user's device list as kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteDeviceList {
    /// The position of the list in its server's updates for the user.
    pub stream_id: u64,
    /// By device id.
    pub devices: BTreeMap<String, RemoteDevice>,
    /// The user's master cross-signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Value>,
    /// The user's self-signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signing_key: Option<Value>,
    /// An update showed a gap: fetch the list again before trusting it.
    #[serde(default)]
    pub stale: bool,
    /// The last stream ids seen: the fetched list's and the updates applied since.
    #[serde(default)]
    pub seen: Vec<u64>,
}

/// One device of a remote user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteDevice {
    /// Its signed device keys, when it has uploaded them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Value>,
    /// Its display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

impl RemoteDeviceList {
    /// The device keys of `wanted` devices (all when empty) as `/keys/query` lists them,
    /// the display name under `unsigned`.
    pub fn device_keys(&self, wanted: &[String]) -> Map<String, Value> {
        self.devices
            .iter()
            .filter(|(id, _)| wanted.is_empty() || wanted.contains(id))
            .filter_map(|(id, device)| {
                let mut keys = device.keys.clone()?;
                if let (Some(name), Some(object)) = (&device.display_name, keys.as_object_mut()) {
                    let unsigned = object.entry("unsigned").or_insert_with(|| json!({}));
                    if let Some(unsigned) = unsigned.as_object_mut() {
                        unsigned.insert("device_display_name".into(), json!(name));
                    }
                }
                Some((id.clone(), keys))
            })
            .collect()
    }
}

/// Device keys that name `user` and `device`, no larger than [`MAX_KEYS_BYTES`], or
/// nothing.
fn keys_of(user: &str, device: &str, keys: Option<&Value>) -> Option<Value> {
    let keys = keys?;
    let names = |field: &str, want: &str| keys.get(field).and_then(Value::as_str) == Some(want);
    let small = serde_json::to_vec(keys).is_ok_and(|b| b.len() <= MAX_KEYS_BYTES);
    (keys.is_object() && names("user_id", user) && names("device_id", device) && small)
        .then(|| keys.clone())
}

/// A cross-signing key that names `user` among its `user_id`, or nothing.
fn cross_signing_key_of(user: &str, key: Option<&Value>) -> Option<Value> {
    let key = key?;
    (key.get("user_id").and_then(Value::as_str) == Some(user)).then(|| key.clone())
}

/// The list a `GET /user/devices/{user}` answer gives, if it is one for `user`.
pub fn list_from_answer(user: &str, answer: &Value) -> Option<RemoteDeviceList> {
    if answer.get("user_id").and_then(Value::as_str) != Some(user) {
        return None;
    }
    let stream_id = answer.get("stream_id").and_then(Value::as_u64)?;
    let mut devices = BTreeMap::new();
    for device in answer.get("devices").and_then(Value::as_array)? {
        let Some(id) = device.get("device_id").and_then(Value::as_str) else {
            continue;
        };
        if devices.len() >= MAX_DEVICES {
            tracing::info!(%user, "a device list longer than {MAX_DEVICES} was cut");
            break;
        }
        devices.insert(
            id.to_owned(),
            RemoteDevice {
                keys: keys_of(user, id, device.get("keys")),
                display_name: device
                    .get("device_display_name")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
        );
    }
    Some(RemoteDeviceList {
        stream_id,
        devices,
        master_key: cross_signing_key_of(user, answer.get("master_key")),
        self_signing_key: cross_signing_key_of(user, answer.get("self_signing_key")),
        stale: false,
        seen: vec![stream_id],
    })
}

/// What an `m.device_list_update` does to a kept list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateEffect {
    /// No list is kept for the user: nothing to follow.
    NotKept,
    /// The update was applied.
    Applied,
    /// The update is one the list already holds.
    Known,
    /// The update's `prev_id`s do not name the list's position: the list is now stale.
    Gap,
    /// The list is kept but stale: it is to be fetched again, the update is not applied.
    Stale,
}

/// Applies one `m.device_list_update` content to `list` (pure, for tests and the cache).
pub fn apply_update(list: &mut RemoteDeviceList, user: &str, content: &Value) -> UpdateEffect {
    if list.stale {
        return UpdateEffect::Stale;
    }
    let Some(stream_id) = content.get("stream_id").and_then(Value::as_u64) else {
        list.stale = true;
        return UpdateEffect::Gap;
    };
    if stream_id == list.stream_id || list.seen.contains(&stream_id) {
        return UpdateEffect::Known;
    }
    let prev: Option<Vec<u64>> = content
        .get("prev_id")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().map(Value::as_u64).collect())
        .unwrap_or(Some(Vec::new()));
    // Every update before it seen (none before it: the list had none either).
    let follows = match &prev {
        Some(prev) if prev.is_empty() => list.stream_id == 0,
        Some(prev) => prev
            .iter()
            .all(|p| *p == list.stream_id || list.seen.contains(p)),
        None => false,
    };
    let device = content.get("device_id").and_then(Value::as_str);
    let (true, Some(device)) = (follows, device) else {
        list.stale = true;
        return UpdateEffect::Gap;
    };
    if content.get("deleted").and_then(Value::as_bool) == Some(true) {
        list.devices.remove(device);
    } else if list.devices.contains_key(device) || list.devices.len() < MAX_DEVICES {
        let entry = list.devices.entry(device.to_owned()).or_default();
        if let Some(keys) = keys_of(user, device, content.get("keys")) {
            entry.keys = Some(keys);
        }
        if let Some(name) = content.get("device_display_name").and_then(Value::as_str) {
            entry.display_name = Some(name.to_owned());
        }
    }
    list.stream_id = stream_id;
    list.seen.push(stream_id);
    if list.seen.len() > SEEN_STREAM_IDS {
        list.seen.remove(0);
    }
    UpdateEffect::Applied
}

/// What fetching lists found.
#[derive(Debug, Default)]
pub struct Fetched {
    /// By user: the list (fresh, or stale when it could not be fetched again).
    pub lists: BTreeMap<String, RemoteDeviceList>,
    /// Servers that could not give a list we did not have, and why.
    pub failures: BTreeMap<String, FederationError>,
}

/// The lists a query needs: those kept fresh, and those to fetch (with the stale list
/// kept, if any).
#[derive(Debug, Default)]
pub struct Needed {
    /// Kept and fresh, by user.
    pub fresh: BTreeMap<String, RemoteDeviceList>,
    /// To fetch: the user, the stale list kept (if any) and the fetch's ticket.
    pub to_fetch: Vec<(UserId, Option<RemoteDeviceList>, FetchTicket)>,
}

/// What befell one user's list while fetches of it were out.
#[derive(Debug, Default)]
struct Watch {
    /// Fetches out.
    fetches: usize,
    /// Updates and drops since the first of them began.
    changes: u64,
    /// Drops since the first of them began.
    drops: u64,
}

/// The users whose lists are being fetched.
type Watched = Arc<Mutex<HashMap<String, Watch>>>;

/// A fetch of one user's list under way: what had befallen the list when it began. The
/// watch ends when the last ticket of the user drops (the fetch kept, failed or given
/// up).
pub struct FetchTicket {
    watched: Watched,
    user: String,
    changes: u64,
    drops: u64,
    /// A (stale) list was kept when the fetch began.
    had_list: bool,
}

impl std::fmt::Debug for FetchTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchTicket")
            .field("user", &self.user)
            .field("changes", &self.changes)
            .field("drops", &self.drops)
            .finish()
    }
}

impl Drop for FetchTicket {
    fn drop(&mut self) {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(watch) = watched.get_mut(&self.user) {
            watch.fetches = watch.fetches.saturating_sub(1);
            if watch.fetches == 0 {
                watched.remove(&self.user);
            }
        }
    }
}

/// The users waiting for a background fetch, first come first served.
#[derive(Default)]
struct Wanted {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    per_server: HashMap<String, usize>,
}

/// The server part of a user id.
fn server_of(user: &str) -> &str {
    user.split_once(':').map_or("", |(_, server)| server)
}

/// The remote device lists we keep.
pub struct RemoteDeviceLists {
    db: Arc<Db>,
    server_name: ServerName,
    /// Per stripe of users: held across each change of a list.
    stripes: Vec<Mutex<()>>,
    /// The users whose lists are being fetched, and what befell them meanwhile.
    watched: Watched,
    /// Users whose kept list is stale, for the background fetch.
    resyncs_wanted: Mutex<Wanted>,
    /// Wakes the background fetch.
    resync_wake: tokio::sync::Notify,
}

impl RemoteDeviceLists {
    /// The cache in `db`, for the server `server_name`.
    pub fn new(db: Arc<Db>, server_name: ServerName) -> Self {
        Self {
            db,
            server_name,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            watched: Watched::default(),
            resyncs_wanted: Mutex::new(Wanted::default()),
            resync_wake: tokio::sync::Notify::new(),
        }
    }

    /// Asks the background fetch for `user`'s list (kept, stale), unless it waits
    /// already or [`MAX_RESYNCS_WANTED`] users (or [`MAX_RESYNCS_WANTED_PER_SERVER`] of
    /// theirs) already wait.
    fn want_resync(&self, user: &str) {
        let mut wanted = self
            .resyncs_wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let server = server_of(user);
        let of_server = wanted.per_server.get(server).copied().unwrap_or(0);
        if wanted.queued.contains(user)
            || wanted.queue.len() >= MAX_RESYNCS_WANTED
            || of_server >= MAX_RESYNCS_WANTED_PER_SERVER
        {
            return;
        }
        wanted.queue.push_back(user.to_owned());
        wanted.queued.insert(user.to_owned());
        wanted.per_server.insert(server.to_owned(), of_server + 1);
        drop(wanted);
        self.resync_wake.notify_one();
    }

    /// Takes up to `n` users whose stale list the background fetch is to fetch again,
    /// the first asked for first.
    pub fn take_resyncs_wanted(&self, n: usize) -> Vec<String> {
        let mut wanted = self
            .resyncs_wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut taken = Vec::with_capacity(n.min(wanted.queue.len()));
        while taken.len() < n {
            let Some(user) = wanted.queue.pop_front() else {
                break;
            };
            wanted.queued.remove(&user);
            let server = server_of(&user);
            if let Some(count) = wanted.per_server.get_mut(server) {
                *count -= 1;
                if *count == 0 {
                    wanted.per_server.remove(server);
                }
            }
            taken.push(user);
        }
        taken
    }

    /// Counts an update (or, `dropped`, a drop) of `user`'s list for the fetches of it
    /// out (called under the user's stripe lock).
    fn note_change(&self, user: &str, dropped: bool) {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(watch) = watched.get_mut(user) {
            watch.changes += 1;
            watch.drops += u64::from(dropped);
        }
    }

    /// A ticket for a fetch of `user`'s list beginning now (called under the user's
    /// stripe lock).
    fn begin_fetch(&self, user: &str, had_list: bool) -> FetchTicket {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        let watch = watched.entry(user.to_owned()).or_default();
        watch.fetches += 1;
        FetchTicket {
            watched: Arc::clone(&self.watched),
            user: user.to_owned(),
            changes: watch.changes,
            drops: watch.drops,
            had_list,
        }
    }

    /// Waits until a stale list is wanted (at once if one was asked for since the last
    /// wait).
    pub async fn resync_wanted(&self) {
        self.resync_wake.notified().await;
    }

    fn stripe(&self, user: &str) -> std::sync::MutexGuard<'_, ()> {
        self.stripes[crate::services::stripe_of(user.as_bytes(), STRIPES)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The list kept for `user`, if any.
    pub fn get(&self, user: &str) -> ServiceResult<Option<RemoteDeviceList>> {
        match self.db.get(Table::UseridRemotedevicelist, user)? {
            Some(bytes) => Ok(Some(decode(Table::UseridRemotedevicelist, &bytes)?)),
            None => Ok(None),
        }
    }

    fn put(&self, user: &str, list: &RemoteDeviceList) -> ServiceResult<()> {
        let mut batch = self.db.batch();
        batch.put(Table::UseridRemotedevicelist, user, encode(list));
        self.db.write_relaxed(batch)?;
        Ok(())
    }

    /// Follows an `m.device_list_update` (its sender already checked to be the user's
    /// server).
    pub fn device_list_update(&self, content: &Value) -> ServiceResult<UpdateEffect> {
        let Some(user) = content.get("user_id").and_then(Value::as_str) else {
            return Ok(UpdateEffect::NotKept);
        };
        let _changing = self.stripe(user);
        // Counted even when no list is kept: a fetch in flight must not be kept fresh.
        self.note_change(user, false);
        let Some(mut list) = self.get(user)? else {
            return Ok(UpdateEffect::NotKept);
        };
        let effect = apply_update(&mut list, user, content);
        if matches!(effect, UpdateEffect::Applied | UpdateEffect::Gap) {
            self.put(user, &list)?;
        }
        if effect == UpdateEffect::Gap {
            tracing::info!(%user, "a device-list update shows a gap: the list is fetched again");
        }
        if matches!(effect, UpdateEffect::Gap | UpdateEffect::Stale) {
            self.want_resync(user);
        }
        Ok(effect)
    }

    /// Follows an `m.signing_key_update`: the kept list takes the new cross-signing keys.
    pub fn signing_key_update(&self, content: &Value) -> ServiceResult<()> {
        let Some(user) = content.get("user_id").and_then(Value::as_str) else {
            return Ok(());
        };
        let _changing = self.stripe(user);
        self.note_change(user, false);
        let Some(mut list) = self.get(user)? else {
            return Ok(());
        };
        if let Some(master) = cross_signing_key_of(user, content.get("master_key")) {
            list.master_key = Some(master);
        }
        if let Some(key) = cross_signing_key_of(user, content.get("self_signing_key")) {
            list.self_signing_key = Some(key);
        }
        self.put(user, &list)
    }

    /// Which of `users` (other servers' users we share a room with) have a fresh list,
    /// and which need one fetched.
    pub fn needed(&self, users: &[UserId]) -> ServiceResult<Needed> {
        let mut needed = Needed::default();
        for user in users {
            let _reading = self.stripe(user.as_str());
            match self.get(user.as_str())? {
                Some(list) if !list.stale => {
                    needed.fresh.insert(user.as_str().to_owned(), list);
                }
                stale => {
                    let ticket = self.begin_fetch(user.as_str(), stale.is_some());
                    needed.to_fetch.push((user.clone(), stale, ticket));
                }
            }
        }
        Ok(needed)
    }

    /// Fetches the lists of `to_fetch` from their servers, `at_once` at a time (a query:
    /// [`CONCURRENT_RESYNCS`]), until `deadline`, and keeps them; a user whose list could
    /// not be fetched gets the stale one kept, or their server is listed as a failure.
    pub async fn fetch(
        &self,
        client: &FederationClient,
        to_fetch: Vec<(UserId, Option<RemoteDeviceList>, FetchTicket)>,
        deadline: tokio::time::Instant,
        at_once: usize,
    ) -> ServiceResult<Fetched> {
        let asked: Vec<UserId> = to_fetch.iter().map(|(u, _, _)| u.clone()).collect();
        let mut answers: BTreeMap<String, Result<Value, FederationError>> =
            futures_util::stream::iter(asked)
                .map(|user| async move {
                    let answer = match ServerName::parse(user.server_name()) {
                        Ok(server) => user_devices(client, &server, user.as_str()).await,
                        Err(e) => Err(FederationError::Unreachable(e.to_string())),
                    };
                    (user.as_str().to_owned(), answer)
                })
                .buffer_unordered(at_once.max(1))
                .take_until(tokio::time::sleep_until(deadline))
                .collect()
                .await;
        let mut found = Fetched::default();
        for (user, stale, ticket) in to_fetch {
            let user_id = user.as_str();
            let answer = answers
                .remove(user_id)
                .unwrap_or_else(|| Err(FederationError::Unreachable("no answer in time".into())));
            let list = answer.and_then(|a| {
                list_from_answer(user_id, &a).ok_or_else(|| {
                    FederationError::BadResponse("not a device list of the user".into())
                })
            });
            match list {
                Ok(list) => {
                    let kept = self.keep_fetched(user_id, list, &ticket)?;
                    found.lists.insert(user_id.to_owned(), kept);
                }
                Err(e) => match stale {
                    Some(stale) => {
                        tracing::info!(user = %user_id, error = %e, "a stale device list is answered: its server could not give it again");
                        found.lists.insert(user_id.to_owned(), stale);
                    }
                    None => {
                        found.failures.insert(user.server_name().to_owned(), e);
                    }
                },
            }
        }
        Ok(found)
    }

    /// Keeps a fetched list, stale when an update or drop of the user came since the
    /// fetch began (`ticket`: an update may have found no list to follow); answers the
    /// list. A stale list being fetched again whose list was dropped since (a member
    /// event of the user) is answered, not kept: the drop stands (the background fetch
    /// does not bring back the list of a user who left), and the list is fetched afresh
    /// when next asked for. A first fetch that a drop raced (our server's join dropping
    /// the room's lists, say) is kept stale, to be fetched again.
    fn keep_fetched(
        &self,
        user: &str,
        mut list: RemoteDeviceList,
        ticket: &FetchTicket,
    ) -> ServiceResult<RemoteDeviceList> {
        let changing = self.stripe(user);
        // The ticket keeps its user watched; a watch not found (never expected) counts
        // as a change.
        let (changes, drops) = {
            let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
            watched
                .get(&ticket.user)
                .filter(|_| ticket.user == user)
                .map_or((ticket.changes.wrapping_add(1), ticket.drops), |w| {
                    (w.changes, w.drops)
                })
        };
        if changes != ticket.changes || drops != ticket.drops {
            list.stale = true;
            if drops != ticket.drops && ticket.had_list {
                return Ok(list);
            }
        }
        self.put(user, &list)?;
        drop(changing);
        if list.stale {
            self.want_resync(user);
        }
        Ok(list)
    }

    /// Our server joined `room_id` through another server: the lists of its members of
    /// other servers are dropped, for a list kept from a room we shared with them
    /// before may have missed updates while no room was shared.
    pub fn forget_members_of(&self, store: &EventStore, room_id: &str) -> ServiceResult<()> {
        let Some(room) = store.room(room_id)? else {
            return Ok(());
        };
        for key in store.state().load(room.record.state)?.keys() {
            let (kind, user) = store.state().state_key_of(*key)?;
            if kind != "m.room.member" {
                continue;
            }
            let theirs =
                UserId::parse(&user).is_ok_and(|u| u.server_name() != self.server_name.as_str());
            if theirs {
                self.drop_list(&user)?;
            }
        }
        Ok(())
    }

    /// Drops `user`'s list at once (not with an event's batch, which commits later: a
    /// change of the list in between would bring it back).
    /// The drop is counted either way (a fetch in flight then keeps nothing); only a
    /// kept list costs a write.
    fn drop_list(&self, user: &str) -> ServiceResult<()> {
        let _changing = self.stripe(user);
        self.note_change(user, true);
        if self.db.get(Table::UseridRemotedevicelist, user)?.is_none() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        batch.delete(Table::UseridRemotedevicelist, user);
        self.db.write_relaxed(batch)?;
        Ok(())
    }
}

/// Spec: server-server API, `GET /_matrix/federation/v1/user/devices/{userId}`: the
/// user's devices from their server.
async fn user_devices(
    client: &FederationClient,
    server: &ServerName,
    user_id: &str,
) -> Result<Value, FederationError> {
    let path = format!(
        "/_matrix/federation/v1/user/devices/{}",
        crate::core::url::encode(user_id)
    );
    client
        .request(server, reqwest::Method::GET, &path, None)
        .await
}

/// A member event of another server's user drops their list: it is fetched again when
/// next asked for, so a list kept while no room was shared (no updates came) is never
/// trusted once one is shared again.
impl NewEventHook for RemoteDeviceLists {
    fn new_event(&self, event: &NewEvent<'_>, _batch: &mut Batch<'_>) -> ServiceResult<()> {
        if event.pdu.get("type").and_then(Value::as_str) != Some("m.room.member") {
            return Ok(());
        }
        let Some(user) = event.pdu.get("state_key").and_then(Value::as_str) else {
            return Ok(());
        };
        let theirs =
            UserId::parse(user).is_ok_and(|u| u.server_name() != self.server_name.as_str());
        if theirs {
            self.drop_list(user)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOB: &str = "@bob:b.example";

    fn keys(device: &str) -> Value {
        json!({"user_id": BOB, "device_id": device, "keys": {format!("ed25519:{device}"): "k"}})
    }

    fn fetched() -> RemoteDeviceList {
        list_from_answer(
            BOB,
            &json!({
                "user_id": BOB, "stream_id": 5,
                "devices": [
                    {"device_id": "D1", "keys": keys("D1"), "device_display_name": "phone"},
                    {"device_id": "D2", "keys": keys("OTHER")},
                    {"device_id": "D3"}
                ],
                "master_key": {"user_id": BOB, "usage": ["master"], "keys": {"ed25519:m": "m"}},
                "self_signing_key": {"user_id": "@eve:b.example", "keys": {}}
            }),
        )
        .unwrap()
    }

    #[test]
    fn a_fetched_list_keeps_only_keys_that_name_the_user_and_device() {
        let list = fetched();
        assert_eq!(list.stream_id, 5);
        assert_eq!(list.devices.len(), 3);
        assert!(list.devices["D1"].keys.is_some());
        assert!(
            list.devices["D2"].keys.is_none(),
            "keys naming another device"
        );
        assert!(list.master_key.is_some());
        assert!(list.self_signing_key.is_none(), "a key of another user");
        let answered = list.device_keys(&[]);
        assert_eq!(answered.len(), 1, "devices without keys are not listed");
        assert_eq!(answered["D1"]["unsigned"]["device_display_name"], "phone");
        assert!(list.device_keys(&["D9".into()]).is_empty());
        // An answer for another user, or without a stream id, is none.
        assert!(list_from_answer(
            "@eve:b.example",
            &json!({"user_id": BOB, "stream_id": 1, "devices": []})
        )
        .is_none());
        assert!(list_from_answer(BOB, &json!({"user_id": BOB, "devices": []})).is_none());
    }

    #[test]
    fn updates_that_follow_are_applied_and_a_gap_makes_the_list_stale() {
        let mut list = fetched();
        let new_device = json!({"user_id": BOB, "device_id": "D4", "stream_id": 6, "prev_id": [5], "keys": keys("D4")});
        assert_eq!(
            apply_update(&mut list, BOB, &new_device),
            UpdateEffect::Applied
        );
        assert_eq!(list.stream_id, 6);
        assert!(list.devices["D4"].keys.is_some());
        // The same again, or an older one: known.
        assert_eq!(
            apply_update(&mut list, BOB, &new_device),
            UpdateEffect::Known
        );
        let deleted = json!({"user_id": BOB, "device_id": "D1", "stream_id": 7, "prev_id": [6], "deleted": true});
        assert_eq!(
            apply_update(&mut list, BOB, &deleted),
            UpdateEffect::Applied
        );
        assert!(!list.devices.contains_key("D1"));
        // Two updates on 7, the later first: both are applied, each once.
        let d6 = json!({"user_id": BOB, "device_id": "D6", "stream_id": 12, "prev_id": [7], "keys": keys("D6")});
        let d7 = json!({"user_id": BOB, "device_id": "D7", "stream_id": 11, "prev_id": [7], "keys": keys("D7")});
        assert_eq!(apply_update(&mut list, BOB, &d6), UpdateEffect::Applied);
        assert_eq!(apply_update(&mut list, BOB, &d7), UpdateEffect::Applied);
        assert_eq!(apply_update(&mut list, BOB, &d6), UpdateEffect::Known);
        assert!(list.devices.contains_key("D6") && list.devices.contains_key("D7"));
        // prev_id names 11, seen, and 8, which we never saw: a gap.
        let after_a_gap = json!({"user_id": BOB, "device_id": "D5", "stream_id": 13, "prev_id": [11, 8], "keys": keys("D5")});
        assert_eq!(
            apply_update(&mut list, BOB, &after_a_gap),
            UpdateEffect::Gap
        );
        assert!(list.stale);
        assert!(!list.devices.contains_key("D5"), "nothing of it is applied");
        assert_eq!(
            apply_update(&mut list, BOB, &after_a_gap),
            UpdateEffect::Stale
        );
        // The first update of a list that had none follows position 0.
        let mut empty = RemoteDeviceList::default();
        let first = json!({"user_id": BOB, "device_id": "D1", "stream_id": 3, "prev_id": [], "keys": keys("D1")});
        assert_eq!(apply_update(&mut empty, BOB, &first), UpdateEffect::Applied);
        // Keys naming another device are not taken.
        let wrong = json!({"user_id": BOB, "device_id": "D2", "stream_id": 4, "prev_id": [3], "keys": keys("D1")});
        assert_eq!(apply_update(&mut empty, BOB, &wrong), UpdateEffect::Applied);
        assert!(empty.devices["D2"].keys.is_none());
    }

    /// A fetch of `user`'s list beginning: the stale list kept (if any) and its ticket.
    fn fetch_of(
        lists: &RemoteDeviceLists,
        user: &UserId,
    ) -> (UserId, Option<RemoteDeviceList>, FetchTicket) {
        let needed = lists.needed(std::slice::from_ref(user)).unwrap();
        needed.to_fetch.into_iter().next().expect("a list to fetch")
    }

    #[test]
    fn a_list_fetched_while_an_update_came_is_kept_stale_and_a_dropped_one_stays_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &crate::storage::DbOptions::default()).unwrap();
        let lists = RemoteDeviceLists::new(db, ServerName::parse("a.example").unwrap());
        let bob = UserId::parse(BOB).unwrap();
        let (_, none, changes) = fetch_of(&lists, &bob);
        assert!(none.is_none());
        // While the fetch is out, an update comes, with no list to follow.
        let update = json!({"user_id": BOB, "device_id": "D9", "stream_id": 6, "prev_id": [5]});
        assert_eq!(
            lists.device_list_update(&update).unwrap(),
            UpdateEffect::NotKept
        );
        let kept = lists.keep_fetched(BOB, fetched(), &changes).unwrap();
        assert!(kept.stale, "the fetched list may miss that update");
        assert_eq!(
            lists.take_resyncs_wanted(8),
            vec![BOB.to_owned()],
            "fetched again in the background"
        );
        let needed = lists.needed(std::slice::from_ref(&bob)).unwrap();
        assert_eq!(needed.to_fetch.len(), 1, "fetched again next time");
        // Fetched with nothing in between: fresh, and no fetch is wanted.
        let (_, _, changes) = needed.to_fetch.into_iter().next().unwrap();
        assert!(!lists.keep_fetched(BOB, fetched(), &changes).unwrap().stale);
        assert!(lists.take_resyncs_wanted(8).is_empty());
        // A gap makes it stale and wants it fetched again, once however many updates
        // then come.
        let gap = json!({"user_id": BOB, "device_id": "D8", "stream_id": 9, "prev_id": [8]});
        assert_eq!(lists.device_list_update(&gap).unwrap(), UpdateEffect::Gap);
        let after = json!({"user_id": BOB, "device_id": "D8", "stream_id": 10, "prev_id": [9]});
        assert_eq!(
            lists.device_list_update(&after).unwrap(),
            UpdateEffect::Stale
        );
        assert_eq!(lists.take_resyncs_wanted(8), vec![BOB.to_owned()]);
        assert!(lists.take_resyncs_wanted(8).is_empty());
        let (_, _, changes) = fetch_of(&lists, &bob);
        assert!(!lists.keep_fetched(BOB, fetched(), &changes).unwrap().stale);
        assert_eq!(
            lists
                .needed(std::slice::from_ref(&bob))
                .unwrap()
                .fresh
                .len(),
            1
        );
        // Stale, being fetched again, and dropped meanwhile: the drop stands, no fetch
        // is wanted.
        let gap = json!({"user_id": BOB, "device_id": "D8", "stream_id": 20, "prev_id": [19]});
        assert_eq!(lists.device_list_update(&gap).unwrap(), UpdateEffect::Gap);
        assert_eq!(lists.take_resyncs_wanted(8), vec![BOB.to_owned()]);
        let (_, stale, changes) = fetch_of(&lists, &bob);
        assert!(stale.is_some());
        lists.drop_list(BOB).unwrap();
        let answered = lists.keep_fetched(BOB, fetched(), &changes).unwrap();
        assert!(answered.stale);
        assert!(lists.get(BOB).unwrap().is_none(), "not kept again");
        assert!(lists.take_resyncs_wanted(8).is_empty());
        // Fetched afresh.
        let (_, _, changes) = fetch_of(&lists, &bob);
        assert!(!lists.keep_fetched(BOB, fetched(), &changes).unwrap().stale);
        // A first fetch during which a drop came (our join dropping the room's lists):
        // kept stale, to be fetched again.
        lists.drop_list(BOB).unwrap();
        let (_, none, ticket) = fetch_of(&lists, &bob);
        assert!(none.is_none());
        lists.drop_list(BOB).unwrap();
        assert!(lists.keep_fetched(BOB, fetched(), &ticket).unwrap().stale);
        assert!(lists.get(BOB).unwrap().is_some_and(|l| l.stale));
        assert_eq!(lists.take_resyncs_wanted(8), vec![BOB.to_owned()]);
        drop(ticket);
        let (_, _, changes) = fetch_of(&lists, &bob);
        assert!(!lists.keep_fetched(BOB, fetched(), &changes).unwrap().stale);
        // Dropped: gone, and an update then finds nothing to follow.
        lists.drop_list(BOB).unwrap();
        assert!(lists.get(BOB).unwrap().is_none());
        let next = json!({"user_id": BOB, "device_id": "D9", "stream_id": 7, "prev_id": [5]});
        assert_eq!(
            lists.device_list_update(&next).unwrap(),
            UpdateEffect::NotKept
        );
        assert!(lists.get(BOB).unwrap().is_none());
    }

    #[test]
    fn only_the_users_own_updates_spoil_a_fetch_and_wanted_fetches_are_first_come_and_capped_per_server(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &crate::storage::DbOptions::default()).unwrap();
        let lists = RemoteDeviceLists::new(db, ServerName::parse("a.example").unwrap());
        // Many users fetched at once, an update of one of them meanwhile, and another
        // fetch of the first kept before the first's own: only the updated user's list
        // is kept stale (users sharing a lock stripe, or a list kept meanwhile, change
        // nothing for the others).
        let users: Vec<UserId> = (0..200)
            .map(|i| UserId::parse(&format!("@u{i}:b.example")).unwrap())
            .collect();
        let needed = lists.needed(&users).unwrap();
        let again = lists.needed(&users[..1]).unwrap();
        let update =
            json!({"user_id": "@u7:b.example", "device_id": "D", "stream_id": 9, "prev_id": [8]});
        assert_eq!(
            lists.device_list_update(&update).unwrap(),
            UpdateEffect::NotKept
        );
        let list_of = |_: &UserId| {
            let mut list = fetched();
            list.devices.clear();
            list
        };
        for (user, _, ticket) in &again.to_fetch {
            assert!(
                !lists
                    .keep_fetched(user.as_str(), list_of(user), ticket)
                    .unwrap()
                    .stale
            );
        }
        let mut stale = Vec::new();
        for (user, _, ticket) in &needed.to_fetch {
            if lists
                .keep_fetched(user.as_str(), list_of(user), ticket)
                .unwrap()
                .stale
            {
                stale.push(user.as_str().to_owned());
            }
        }
        assert_eq!(stale, vec!["@u7:b.example".to_owned()]);
        assert_eq!(lists.take_resyncs_wanted(8), stale);
        drop((needed, again));
        assert!(
            lists.watched.lock().unwrap().is_empty(),
            "watches end with their tickets"
        );
        // Wanted fetches: first come, first served; at most 64 of one server.
        for i in 0..100 {
            lists.want_resync(&format!("@m{i}:many.example"));
        }
        lists.want_resync("@late:other.example");
        lists.want_resync("@m0:many.example");
        let taken = lists.take_resyncs_wanted(1_000);
        assert_eq!(taken.len(), MAX_RESYNCS_WANTED_PER_SERVER + 1);
        assert_eq!(taken[0], "@m0:many.example");
        assert_eq!(taken[MAX_RESYNCS_WANTED_PER_SERVER], "@late:other.example");
        lists.want_resync("@m99:many.example");
        assert_eq!(
            lists.take_resyncs_wanted(8),
            vec!["@m99:many.example".to_owned()]
        );
    }
}
