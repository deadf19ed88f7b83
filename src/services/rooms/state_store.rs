//! Room state as compact snapshots: interned short ids, and each snapshot stored as a delta
//! on its parent, so a room with 10,000 members does not copy its state per event.
//!
//! - `(type, state_key)` and event ids are interned to `u64` short ids; one counter, found
//!   again at start-up from the highest id in the tables (nothing to keep in sync).
//! - A snapshot (`shortstatehash`) is a layer `{parent, depth, added, removed}`. Layers are
//!   kept geometric: a new delta at least half the size of its parent layer is merged into
//!   it (a new record; stored layers never change), and a delta half the size of the full
//!   base state is written as a new base. So a chain has O(log n) layers, reading any
//!   snapshot touches at most that many records, and one changed member costs O(log n)
//!   amortized bytes instead of a copy of the state.
//!
//! Event ids and snapshots are written into the caller's batch (with the event itself);
//! interning a new state key writes at once, under a lock, so two events can never give one
//! key two ids. Both use the WAL without fsync: the rooms writer fsyncs once before it
//! acknowledges anything, and the WAL keeps the order, so a key is never lost while an
//! event that uses it survives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::services::cache::GenerationalCache;
use crate::services::error::{ServiceError, ServiceResult};
use crate::storage::{keys, Batch, Db, Table};

/// Longest parent chain; the geometric layering stays far below it (about log2 of the
/// state's size), so it only guards against a pathological sequence.
pub const MAX_CHAIN_DEPTH: u32 = 32;

/// A short id of an interned `(type, state_key)`.
pub type ShortStateKey = u64;
/// A short id of an interned event id.
pub type ShortEventId = u64;
/// A short id of a state snapshot.
pub type ShortStateHash = u64;

/// The full state of a snapshot: state key to event.
pub type StateMap = HashMap<ShortStateKey, ShortEventId, ShortIdHash>;

/// Hashing for maps keyed by short ids: one multiplication by an odd constant. Short ids
/// are handed out here in sequence, never chosen by a peer, so nothing can aim keys at
/// one bucket; the product's low bits (the bucket) are a permutation of the id's and its
/// high bits (the tag) mix all of them. Several times cheaper than SipHash, and a room's
/// state is compared, copied and diffed 100,000 keys at a time.
pub type ShortIdHash = std::hash::BuildHasherDefault<ShortIdHasher>;

/// See [`ShortIdHash`].
#[derive(Default)]
pub struct ShortIdHasher(u64);

impl std::hash::Hasher for ShortIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; any other input is folded in byte by byte.
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// One stored snapshot layer; `added` and `removed` are sorted by key, with no key in both.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StateDiff {
    parent: Option<ShortStateHash>,
    depth: u32,
    added: Vec<(ShortStateKey, ShortEventId)>,
    removed: Vec<ShortStateKey>,
}

impl StateDiff {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.added.len() * 16 + self.removed.len() * 8);
        out.extend_from_slice(&self.parent.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.depth.to_be_bytes());
        out.extend_from_slice(&(self.added.len() as u32).to_be_bytes());
        for (k, e) in &self.added {
            out.extend_from_slice(&k.to_be_bytes());
            out.extend_from_slice(&e.to_be_bytes());
        }
        out.extend_from_slice(&(self.removed.len() as u32).to_be_bytes());
        for k in &self.removed {
            out.extend_from_slice(&k.to_be_bytes());
        }
        out
    }

    fn size(&self) -> usize {
        self.added.len() + self.removed.len()
    }

    /// `self`'s changes applied on top of `below` (its parent layer): one layer on
    /// `below`'s parent.
    fn merged_onto(self, below: StateDiff) -> StateDiff {
        let mut added: std::collections::BTreeMap<_, _> = below.added.into_iter().collect();
        let mut removed: std::collections::BTreeSet<_> = below.removed.into_iter().collect();
        for k in &self.removed {
            added.remove(k);
            removed.insert(*k);
        }
        for (k, e) in self.added {
            removed.remove(&k);
            added.insert(k, e);
        }
        if below.parent.is_none() {
            // A base layer is the whole state: nothing below it to remove from.
            removed.clear();
        }
        StateDiff {
            parent: below.parent,
            depth: below.depth,
            added: added.into_iter().collect(),
            removed: removed.into_iter().collect(),
        }
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut at = 0;
        let mut take = |n: usize| -> Option<&[u8]> {
            let part = bytes.get(at..at + n)?;
            at += n;
            Some(part)
        };
        let parent = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let depth = u32::from_be_bytes(take(4)?.try_into().ok()?);
        let n_added = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let mut added = Vec::with_capacity(n_added.min(1 << 16));
        for _ in 0..n_added {
            let k = u64::from_be_bytes(take(8)?.try_into().ok()?);
            let e = u64::from_be_bytes(take(8)?.try_into().ok()?);
            added.push((k, e));
        }
        let n_removed = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let mut removed = Vec::with_capacity(n_removed.min(1 << 16));
        for _ in 0..n_removed {
            removed.push(u64::from_be_bytes(take(8)?.try_into().ok()?));
        }
        Some(Self {
            parent: (parent != 0).then_some(parent),
            depth,
            added,
            removed,
        })
    }
}

/// Interned state keys kept in memory; the cache starts over when it reaches this size.
const MAX_CACHED_STATE_KEYS: usize = 16_384;

/// The state store.
pub struct StateStore {
    db: Arc<Db>,
    next_short: AtomicU64,
    intern_lock: std::sync::Mutex<()>,
    /// `(type, state_key)` bytes to short id, for keys already interned: an id never
    /// changes once given, and every event sent looks up a few of them.
    interned: std::sync::Mutex<HashMap<Vec<u8>, ShortStateKey>>,
    /// Decoded snapshot layers (immutable once written), bounded in bytes: a state read
    /// walks a chain of them, and `/sync` reads many.
    diffs: GenerationalCache<ShortStateHash, StateDiff>,
    /// Event ids to short ids, for events read lately: a written id's short id never
    /// changes and its row is never removed, and every received event looks up its auth
    /// and prev events (the same few, event after event) before and inside its writer.
    shorts: GenerationalCache<String, ShortEventId>,
}

/// Event ids whose short ids are kept in memory at most (~100 bytes each).
const SHORT_CACHE_ENTRIES: usize = 32_768;

/// Bytes of decoded layers kept in memory at most.
const DIFF_CACHE_BYTES: usize = 16 << 20;

fn diff_bytes(diff: &StateDiff) -> usize {
    64 + diff.added.len() * 16 + diff.removed.len() * 8
}

fn state_key_bytes(event_type: &str, state_key: &str) -> Vec<u8> {
    keys::join(&[event_type.as_bytes(), state_key.as_bytes()])
}

fn corrupt(what: &str) -> ServiceError {
    ServiceError::internal(format!("corrupt state store record: {what}"))
}

impl StateStore {
    /// Opens the store, finding the next free short id from the tables.
    pub fn open(db: Arc<Db>) -> ServiceResult<Self> {
        let mut highest = 0;
        for table in [
            Table::ShortstatekeyStatekey,
            Table::ShorteventidEventid,
            Table::ShortstatehashStatediff,
        ] {
            if let Some(entry) = db.scan_range(table, &[0u8; 8], &[0xffu8; 9], true).next() {
                let (key, _) = entry?;
                highest = highest.max(keys::read_u64(&key).ok_or_else(|| corrupt("short id key"))?);
            }
        }
        Ok(Self {
            db,
            next_short: AtomicU64::new(highest + 1),
            intern_lock: std::sync::Mutex::new(()),
            interned: std::sync::Mutex::new(HashMap::new()),
            diffs: GenerationalCache::new(DIFF_CACHE_BYTES, diff_bytes),
            shorts: GenerationalCache::new(SHORT_CACHE_ENTRIES, |_| 1),
        })
    }

    fn allocate(&self) -> u64 {
        self.next_short.fetch_add(1, Ordering::Relaxed)
    }

    /// The highest short id given out so far (event or state key).
    pub fn highest_short(&self) -> u64 {
        self.next_short.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// The short id of `(type, state_key)`, if it was ever interned.
    pub fn find_state_key(
        &self,
        event_type: &str,
        state_key: &str,
    ) -> ServiceResult<Option<ShortStateKey>> {
        let key = state_key_bytes(event_type, state_key);
        if let Some(short) = self.interned_keys().get(&key) {
            return Ok(Some(*short));
        }
        let Some(bytes) = self.db.get(Table::StatekeyShortstatekey, &key)? else {
            return Ok(None);
        };
        let short = keys::read_u64(&bytes).ok_or_else(|| corrupt("short state key"))?;
        self.remember_key(key, short);
        Ok(Some(short))
    }

    fn interned_keys(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, ShortStateKey>> {
        self.interned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember_key(&self, key: Vec<u8>, short: ShortStateKey) {
        let mut cache = self.interned_keys();
        if cache.len() >= MAX_CACHED_STATE_KEYS {
            cache.clear();
        }
        cache.insert(key, short);
    }

    /// The short id of `(type, state_key)`, interning it if new (see the module docs on
    /// durability). Blocking: called from the rooms writer's thread.
    pub fn state_key(&self, event_type: &str, state_key: &str) -> ServiceResult<ShortStateKey> {
        if let Some(short) = self.find_state_key(event_type, state_key)? {
            return Ok(short);
        }
        let _guard = self
            .intern_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(short) = self.find_state_key(event_type, state_key)? {
            return Ok(short);
        }
        let short = self.allocate();
        let key = state_key_bytes(event_type, state_key);
        let mut batch = self.db.batch();
        batch.put(Table::StatekeyShortstatekey, &key, short.to_be_bytes());
        batch.put(Table::ShortstatekeyStatekey, short.to_be_bytes(), &key);
        self.db.write_relaxed(batch)?;
        self.remember_key(key, short);
        Ok(short)
    }

    /// The `(type, state_key)` of a short id.
    pub fn state_key_of(&self, short: ShortStateKey) -> ServiceResult<(String, String)> {
        let bytes = self
            .db
            .get(Table::ShortstatekeyStatekey, short.to_be_bytes())?
            .ok_or_else(|| corrupt("unknown short state key"))?;
        parse_state_key(&bytes)
    }

    /// [`StateStore::state_key_of`] for several keys, in one batched read.
    pub fn state_keys_of(&self, shorts: &[ShortStateKey]) -> ServiceResult<Vec<(String, String)>> {
        self.db
            .multi_get(
                Table::ShortstatekeyStatekey,
                shorts.iter().map(|s| s.to_be_bytes()),
            )?
            .into_iter()
            .map(|bytes| parse_state_key(&bytes.ok_or_else(|| corrupt("unknown short state key"))?))
            .collect()
    }

    /// The short id of a stored event, if any.
    pub fn find_event(&self, event_id: &str) -> ServiceResult<Option<ShortEventId>> {
        if let Some(short) = self.shorts.get(event_id) {
            return Ok(Some(*short));
        }
        let short = self
            .db
            .get(Table::EventidShorteventid, event_id)?
            .map(|b| keys::read_u64(&b).ok_or_else(|| corrupt("short event id")))
            .transpose()?;
        // Only what was read is kept: an id interned in a batch that is never written
        // is not remembered.
        if let Some(short) = short {
            self.shorts.insert(event_id.to_owned(), Arc::new(short));
        }
        Ok(short)
    }

    /// Remembers a new event's short id once the batch that interned it is written (the
    /// next events of its room name it among their prev events at once).
    pub fn remember_written_event(&self, event_id: &str, short: ShortEventId) {
        self.shorts.insert(event_id.to_owned(), Arc::new(short));
    }

    /// A new short id for a new event, written in `batch` with the event itself.
    /// The caller guarantees the event is not stored yet (it holds the room's lock).
    pub fn intern_new_event(&self, event_id: &str, batch: &mut Batch<'_>) -> ShortEventId {
        let short = self.allocate();
        batch.put(Table::EventidShorteventid, event_id, short.to_be_bytes());
        batch.put(Table::ShorteventidEventid, short.to_be_bytes(), event_id);
        short
    }

    /// The event id of a short id.
    pub fn event_id_of(&self, short: ShortEventId) -> ServiceResult<String> {
        let bytes = self
            .db
            .get(Table::ShorteventidEventid, short.to_be_bytes())?
            .ok_or_else(|| corrupt("unknown short event id"))?;
        String::from_utf8(bytes).map_err(|_| corrupt("event id text"))
    }

    /// The event ids of several short ids, in order, in one read.
    pub fn event_ids_of(&self, shorts: &[ShortEventId]) -> ServiceResult<Vec<String>> {
        self.db
            .multi_get(
                Table::ShorteventidEventid,
                shorts.iter().map(|s| s.to_be_bytes()),
            )?
            .into_iter()
            .map(|bytes| {
                let bytes = bytes.ok_or_else(|| corrupt("unknown short event id"))?;
                String::from_utf8(bytes).map_err(|_| corrupt("event id text"))
            })
            .collect()
    }

    fn diff(&self, snapshot: ShortStateHash) -> ServiceResult<Arc<StateDiff>> {
        if let Some(diff) = self.diffs.get(&snapshot) {
            return Ok(diff);
        }
        let bytes = self
            .db
            .get(Table::ShortstatehashStatediff, snapshot.to_be_bytes())?
            .ok_or_else(|| corrupt("unknown state snapshot"))?;
        let diff = Arc::new(StateDiff::decode(&bytes).ok_or_else(|| corrupt("state diff"))?);
        self.diffs.insert(snapshot, Arc::clone(&diff));
        Ok(diff)
    }

    /// Forgets the cached layers (a server gone idle gives the memory back).
    pub fn release_cache(&self) {
        self.diffs.clear();
        self.shorts.clear();
    }

    /// Writes a snapshot: `parent` with `changes` applied (a change to `None` removes the
    /// key), into `batch`. Answers the new snapshot's id. Layers are merged as the module
    /// docs describe.
    pub fn save(
        &self,
        parent: Option<ShortStateHash>,
        changes: &[(ShortStateKey, Option<ShortEventId>)],
        batch: &mut Batch<'_>,
    ) -> ServiceResult<ShortStateHash> {
        let mut added: Vec<_> = changes
            .iter()
            .filter_map(|(k, e)| e.map(|e| (*k, e)))
            .collect();
        added.sort_unstable();
        added.dedup_by_key(|(k, _)| *k);
        let mut removed: Vec<_> = changes
            .iter()
            .filter(|(_, e)| e.is_none())
            .map(|(k, _)| *k)
            .collect();
        removed.sort_unstable();
        removed.dedup();
        let mut layer = StateDiff {
            parent,
            depth: 0,
            added,
            removed,
        };
        if parent.is_none() {
            layer.removed.clear();
        }
        while let Some(below_id) = layer.parent {
            let below = self.diff(below_id)?;
            let is_base = below.parent.is_none();
            let merge = layer.size() * 2 >= below.size() || below.depth + 1 >= MAX_CHAIN_DEPTH;
            if merge {
                layer = layer.merged_onto(Arc::unwrap_or_clone(below));
                if is_base {
                    layer.depth = 0;
                    break;
                }
            } else {
                layer.depth = below.depth + 1;
                break;
            }
        }
        let id = self.allocate();
        batch.put(
            Table::ShortstatehashStatediff,
            id.to_be_bytes(),
            layer.encode(),
        );
        Ok(id)
    }

    /// The full state of a snapshot.
    pub fn load(&self, snapshot: ShortStateHash) -> ServiceResult<StateMap> {
        if snapshot == 0 {
            // No state yet (a room learnt of from another server, before its join).
            return Ok(StateMap::default());
        }
        let mut chain = vec![self.diff(snapshot)?];
        while let Some(parent) = chain.last().and_then(|d| d.parent) {
            if chain.len() > MAX_CHAIN_DEPTH as usize {
                return Err(corrupt("state chain longer than its limit"));
            }
            chain.push(self.diff(parent)?);
        }
        let mut state = StateMap::with_capacity_and_hasher(
            chain.last().map_or(0, |d| d.added.len()),
            ShortIdHash::default(),
        );
        for diff in chain.iter().rev() {
            for k in &diff.removed {
                state.remove(k);
            }
            state.extend(diff.added.iter().copied());
        }
        Ok(state)
    }

    /// One entry of a snapshot, without loading the whole state.
    pub fn get(
        &self,
        snapshot: ShortStateHash,
        key: ShortStateKey,
    ) -> ServiceResult<Option<ShortEventId>> {
        // Snapshot 0 is the empty state (before a room's create event).
        let mut next = (snapshot != 0).then_some(snapshot);
        let mut steps = 0;
        while let Some(id) = next {
            steps += 1;
            if steps > MAX_CHAIN_DEPTH + 1 {
                return Err(corrupt("state chain longer than its limit"));
            }
            let diff = self.diff(id)?;
            if let Ok(i) = diff.added.binary_search_by_key(&key, |(k, _)| *k) {
                return Ok(Some(diff.added[i].1));
            }
            if diff.removed.binary_search(&key).is_ok() {
                return Ok(None);
            }
            next = diff.parent;
        }
        Ok(None)
    }

    /// Bytes of one stored snapshot layer (for the storage benchmark).
    pub fn stored_bytes(&self, snapshot: ShortStateHash) -> ServiceResult<usize> {
        Ok(self
            .db
            .get(Table::ShortstatehashStatediff, snapshot.to_be_bytes())?
            .map_or(0, |b| b.len()))
    }
}

/// `type 0xFF state_key` of `shortstatekey_statekey`, as text.
fn parse_state_key(bytes: &[u8]) -> ServiceResult<(String, String)> {
    let mut parts = keys::split(bytes);
    let (Some(kind), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(corrupt("state key record"));
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupt("state key text"));
    Ok((text(kind)?, text(key)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DbOptions;

    fn open(dir: &std::path::Path) -> (Arc<Db>, StateStore) {
        let db = Db::open(dir, &DbOptions::default()).unwrap();
        let store = StateStore::open(Arc::clone(&db)).unwrap();
        (db, store)
    }

    #[test]
    fn an_event_id_is_found_once_its_batch_is_written_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = open(dir.path());
        let mut batch = db.batch();
        let lost = store.intern_new_event("$lost", &mut batch);
        drop(batch);
        assert_eq!(store.find_event("$lost").unwrap(), None, "never written");
        let mut batch = db.batch();
        let kept = store.intern_new_event("$kept", &mut batch);
        assert_eq!(store.find_event("$kept").unwrap(), None, "not written yet");
        db.write_relaxed(batch).unwrap();
        assert_eq!(store.find_event("$kept").unwrap(), Some(kept));
        assert_eq!(
            store.find_event("$kept").unwrap(),
            Some(kept),
            "from memory"
        );
        assert_ne!(lost, kept);
        assert_eq!(store.find_event("$lost").unwrap(), None);
    }

    #[test]
    fn state_keys_are_interned_once_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let (_db, store) = open(dir.path());
            let a = store.state_key("m.room.member", "@a:x").unwrap();
            let again = store.state_key("m.room.member", "@a:x").unwrap();
            assert_eq!(a, again);
            let b = store.state_key("m.room.name", "").unwrap();
            assert_ne!(a, b);
            assert_eq!(
                store.state_key_of(a).unwrap(),
                ("m.room.member".into(), "@a:x".into())
            );
            (a, b)
        };
        let (_db, store) = open(dir.path());
        assert_eq!(
            store.find_state_key("m.room.member", "@a:x").unwrap(),
            Some(a)
        );
        // The counter resumes above every id handed out before.
        let c = store.state_key("m.room.topic", "").unwrap();
        assert!(c > a && c > b);
        assert_eq!(store.find_state_key("m.room.topic", "x").unwrap(), None);
    }

    #[test]
    fn snapshots_are_deltas_on_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = open(dir.path());
        let create = store.state_key("m.room.create", "").unwrap();
        let alice = store.state_key("m.room.member", "@a:x").unwrap();
        let bob = store.state_key("m.room.member", "@b:x").unwrap();
        let mut batch = db.batch();
        let e1 = store.intern_new_event("$create", &mut batch);
        let e2 = store.intern_new_event("$alice", &mut batch);
        let e3 = store.intern_new_event("$bob", &mut batch);
        let s1 = store.save(None, &[(create, Some(e1))], &mut batch).unwrap();
        db.commit_blocking(batch).unwrap();
        let mut batch = db.batch();
        let s2 = store
            .save(Some(s1), &[(alice, Some(e2)), (bob, Some(e3))], &mut batch)
            .unwrap();
        db.commit_blocking(batch).unwrap();
        let mut batch = db.batch();
        let s3 = store.save(Some(s2), &[(bob, None)], &mut batch).unwrap();
        db.commit_blocking(batch).unwrap();

        assert_eq!(store.load(s1).unwrap(), StateMap::from_iter([(create, e1)]));
        assert_eq!(store.load(s2).unwrap().len(), 3);
        assert_eq!(
            store.load(s3).unwrap(),
            StateMap::from_iter([(create, e1), (alice, e2)])
        );
        assert_eq!(store.get(s3, bob).unwrap(), None);
        assert_eq!(store.get(s2, bob).unwrap(), Some(e3));
        assert_eq!(store.get(s3, create).unwrap(), Some(e1));
        assert_eq!(store.event_id_of(e2).unwrap(), "$alice");
        assert_eq!(store.find_event("$bob").unwrap(), Some(e3));
        // The delta stores only what changed.
        assert_eq!(store.diff(s3).unwrap().added.len(), 0);
        assert_eq!(store.diff(s3).unwrap().removed, vec![bob]);
    }

    #[test]
    fn long_chains_are_cut_with_a_full_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = open(dir.path());
        let mut snapshot = None;
        let mut expected = StateMap::default();
        for i in 0..(MAX_CHAIN_DEPTH * 3) {
            let key = store
                .state_key("m.room.member", &format!("@u{i}:x"))
                .unwrap();
            let mut batch = db.batch();
            let event = store.intern_new_event(&format!("$e{i}"), &mut batch);
            let next = store
                .save(snapshot, &[(key, Some(event))], &mut batch)
                .unwrap();
            db.commit_blocking(batch).unwrap();
            expected.insert(key, event);
            snapshot = Some(next);
            let diff = store.diff(next).unwrap();
            assert!(diff.depth < MAX_CHAIN_DEPTH);
        }
        assert_eq!(store.load(snapshot.unwrap()).unwrap(), expected);
    }

    #[test]
    fn layers_stay_logarithmic_and_a_change_costs_little() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = open(dir.path());
        let mut snapshot = None;
        let mut expected = StateMap::default();
        let mut total_bytes = 0;
        let changes = 3000;
        for i in 0..changes {
            let key = store
                .state_key("m.room.member", &format!("@u{}:x", i % 2000))
                .unwrap();
            let mut batch = db.batch();
            let event = store.intern_new_event(&format!("$e{i}"), &mut batch);
            let next = store
                .save(snapshot, &[(key, Some(event))], &mut batch)
                .unwrap();
            db.commit_blocking(batch).unwrap();
            total_bytes += store.stored_bytes(next).unwrap();
            expected.insert(key, event);
            snapshot = Some(next);
            // log2(2000) is 11: the layering keeps chains about that deep.
            assert!(store.diff(next).unwrap().depth <= 13, "change {i}");
        }
        assert_eq!(store.load(snapshot.unwrap()).unwrap(), expected);
        // A full copy would be 2000 * 16 bytes per change; the layers cost O(log n).
        let per_change = total_bytes / changes;
        assert!(per_change < 600, "{per_change} bytes per change");
    }

    #[test]
    fn diffs_round_trip_and_garbage_is_refused() {
        let diff = StateDiff {
            parent: Some(7),
            depth: 3,
            added: vec![(1, 2), (3, 4)],
            removed: vec![5],
        };
        assert_eq!(StateDiff::decode(&diff.encode()), Some(diff));
        assert_eq!(StateDiff::decode(b"short"), None);
        let mut truncated = StateDiff {
            parent: None,
            depth: 0,
            added: vec![(1, 1)],
            removed: vec![],
        }
        .encode();
        truncated.pop();
        assert_eq!(StateDiff::decode(&truncated), None);
    }
}
