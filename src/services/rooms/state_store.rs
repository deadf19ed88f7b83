//! Room state as compact snapshots: interned short ids, and each snapshot stored as a delta
//! on its parent, so a room with 10,000 members does not copy its state per event.
//!
//! - `(type, state_key)` and event ids are interned to `u64` short ids; one counter, found
//!   again at start-up from the highest id in the tables (nothing to keep in sync).
//! - A snapshot (`shortstatehash`) is `{parent, depth, added, removed}`. Chains are cut at
//!   [`MAX_CHAIN_DEPTH`]: a deeper snapshot is written in full, so reading any snapshot
//!   touches at most that many records.
//!
//! Event ids and snapshots are written into the caller's batch (with the event itself);
//! interning a new state key commits at once, under a lock, so two events can never give
//! one key two ids.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{MatrixError, MatrixResult};
use crate::storage::{keys, Batch, Db, Table};

/// Longest parent chain; a deeper snapshot is stored in full.
pub const MAX_CHAIN_DEPTH: u32 = 32;

/// A short id of an interned `(type, state_key)`.
pub type ShortStateKey = u64;
/// A short id of an interned event id.
pub type ShortEventId = u64;
/// A short id of a state snapshot.
pub type ShortStateHash = u64;

/// The full state of a snapshot: state key to event.
pub type StateMap = HashMap<ShortStateKey, ShortEventId>;

/// One stored snapshot.
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

/// The state store.
pub struct StateStore {
    db: Arc<Db>,
    next_short: AtomicU64,
    intern_lock: tokio::sync::Mutex<()>,
}

fn state_key_bytes(event_type: &str, state_key: &str) -> Vec<u8> {
    keys::join(&[event_type.as_bytes(), state_key.as_bytes()])
}

fn corrupt(what: &str) -> MatrixError {
    MatrixError::internal(format!("corrupt state store record: {what}"))
}

impl StateStore {
    /// Opens the store, finding the next free short id from the tables.
    pub fn open(db: Arc<Db>) -> MatrixResult<Self> {
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
            intern_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn allocate(&self) -> u64 {
        self.next_short.fetch_add(1, Ordering::Relaxed)
    }

    /// The short id of `(type, state_key)`, if it was ever interned.
    pub fn find_state_key(
        &self,
        event_type: &str,
        state_key: &str,
    ) -> MatrixResult<Option<ShortStateKey>> {
        self.db
            .get(
                Table::StatekeyShortstatekey,
                state_key_bytes(event_type, state_key),
            )?
            .map(|b| keys::read_u64(&b).ok_or_else(|| corrupt("short state key")))
            .transpose()
    }

    /// The short id of `(type, state_key)`, interning it (durably, at once) if new.
    pub async fn state_key(
        &self,
        event_type: &str,
        state_key: &str,
    ) -> MatrixResult<ShortStateKey> {
        if let Some(short) = self.find_state_key(event_type, state_key)? {
            return Ok(short);
        }
        let _guard = self.intern_lock.lock().await;
        if let Some(short) = self.find_state_key(event_type, state_key)? {
            return Ok(short);
        }
        let short = self.allocate();
        let key = state_key_bytes(event_type, state_key);
        let mut batch = self.db.batch();
        batch.put(Table::StatekeyShortstatekey, &key, short.to_be_bytes());
        batch.put(Table::ShortstatekeyStatekey, short.to_be_bytes(), &key);
        self.db.commit(batch).await?;
        Ok(short)
    }

    /// The `(type, state_key)` of a short id.
    pub fn state_key_of(&self, short: ShortStateKey) -> MatrixResult<(String, String)> {
        let bytes = self
            .db
            .get(Table::ShortstatekeyStatekey, short.to_be_bytes())?
            .ok_or_else(|| corrupt("unknown short state key"))?;
        let mut parts = keys::split(&bytes);
        let (Some(kind), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(corrupt("state key record"));
        };
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| corrupt("state key text"));
        Ok((text(kind)?, text(key)?))
    }

    /// The short id of a stored event, if any.
    pub fn find_event(&self, event_id: &str) -> MatrixResult<Option<ShortEventId>> {
        self.db
            .get(Table::EventidShorteventid, event_id)?
            .map(|b| keys::read_u64(&b).ok_or_else(|| corrupt("short event id")))
            .transpose()
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
    pub fn event_id_of(&self, short: ShortEventId) -> MatrixResult<String> {
        let bytes = self
            .db
            .get(Table::ShorteventidEventid, short.to_be_bytes())?
            .ok_or_else(|| corrupt("unknown short event id"))?;
        String::from_utf8(bytes).map_err(|_| corrupt("event id text"))
    }

    fn diff(&self, snapshot: ShortStateHash) -> MatrixResult<StateDiff> {
        let bytes = self
            .db
            .get(Table::ShortstatehashStatediff, snapshot.to_be_bytes())?
            .ok_or_else(|| corrupt("unknown state snapshot"))?;
        StateDiff::decode(&bytes).ok_or_else(|| corrupt("state diff"))
    }

    /// Writes a snapshot: `parent` with `changes` applied (a change to `None` removes the
    /// key), into `batch`. Answers the new snapshot's id.
    pub fn save(
        &self,
        parent: Option<ShortStateHash>,
        changes: &[(ShortStateKey, Option<ShortEventId>)],
        batch: &mut Batch<'_>,
    ) -> MatrixResult<ShortStateHash> {
        let parent_depth = match parent {
            Some(p) => Some(self.diff(p)?.depth),
            None => None,
        };
        let diff = match (parent, parent_depth) {
            (Some(p), Some(depth)) if depth + 1 < MAX_CHAIN_DEPTH => StateDiff {
                parent: Some(p),
                depth: depth + 1,
                added: changes
                    .iter()
                    .filter_map(|(k, e)| e.map(|e| (*k, e)))
                    .collect(),
                removed: changes
                    .iter()
                    .filter(|(_, e)| e.is_none())
                    .map(|(k, _)| *k)
                    .collect(),
            },
            _ => {
                // No parent, or the chain is long enough: store the full state.
                let mut full = match parent {
                    Some(p) => self.load(p)?,
                    None => StateMap::new(),
                };
                for (k, e) in changes {
                    match e {
                        Some(e) => full.insert(*k, *e),
                        None => full.remove(k),
                    };
                }
                let mut added: Vec<_> = full.into_iter().collect();
                added.sort_unstable();
                StateDiff {
                    parent: None,
                    depth: 0,
                    added,
                    removed: Vec::new(),
                }
            }
        };
        let id = self.allocate();
        batch.put(
            Table::ShortstatehashStatediff,
            id.to_be_bytes(),
            diff.encode(),
        );
        Ok(id)
    }

    /// The full state of a snapshot.
    pub fn load(&self, snapshot: ShortStateHash) -> MatrixResult<StateMap> {
        let mut chain = vec![self.diff(snapshot)?];
        while let Some(parent) = chain.last().and_then(|d| d.parent) {
            if chain.len() > MAX_CHAIN_DEPTH as usize {
                return Err(corrupt("state chain longer than its limit"));
            }
            chain.push(self.diff(parent)?);
        }
        let mut state = StateMap::new();
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
    ) -> MatrixResult<Option<ShortEventId>> {
        let mut next = Some(snapshot);
        let mut steps = 0;
        while let Some(id) = next {
            steps += 1;
            if steps > MAX_CHAIN_DEPTH + 1 {
                return Err(corrupt("state chain longer than its limit"));
            }
            let diff = self.diff(id)?;
            if let Some((_, e)) = diff.added.iter().find(|(k, _)| *k == key) {
                return Ok(Some(*e));
            }
            if diff.removed.contains(&key) {
                return Ok(None);
            }
            next = diff.parent;
        }
        Ok(None)
    }
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

    #[tokio::test]
    async fn state_keys_are_interned_once_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let (_db, store) = open(dir.path());
            let a = store.state_key("m.room.member", "@a:x").await.unwrap();
            let again = store.state_key("m.room.member", "@a:x").await.unwrap();
            assert_eq!(a, again);
            let b = store.state_key("m.room.name", "").await.unwrap();
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
        let c = store.state_key("m.room.topic", "").await.unwrap();
        assert!(c > a && c > b);
        assert_eq!(store.find_state_key("m.room.topic", "x").unwrap(), None);
    }

    #[tokio::test]
    async fn snapshots_are_deltas_on_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = open(dir.path());
        let create = store.state_key("m.room.create", "").await.unwrap();
        let alice = store.state_key("m.room.member", "@a:x").await.unwrap();
        let bob = store.state_key("m.room.member", "@b:x").await.unwrap();
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

        assert_eq!(store.load(s1).unwrap(), StateMap::from([(create, e1)]));
        assert_eq!(store.load(s2).unwrap().len(), 3);
        assert_eq!(
            store.load(s3).unwrap(),
            StateMap::from([(create, e1), (alice, e2)])
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

    #[tokio::test]
    async fn long_chains_are_cut_with_a_full_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = open(dir.path());
        let mut snapshot = None;
        let mut expected = StateMap::new();
        for i in 0..(MAX_CHAIN_DEPTH * 3) {
            let key = store
                .state_key("m.room.member", &format!("@u{i}:x"))
                .await
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
