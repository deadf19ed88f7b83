//! Which event ids held events may be waiting for, in memory: an event that names a
//! prev event not held yet (`eventid_pendingchild`) or relates to an event not held yet
//! (`eventid_pendingrelation`) leaves an entry under that id, and each event stored looks
//! for entries under its own id. Nearly always there are none, and each look was a
//! database iterator (two for every PDU received); this set answers "surely none" for
//! most ids.
//!
//! It holds a hash of every id with an entry, and may hold more: an id is added when its
//! entry is put in a batch, before the batch is written (so a look after the write never
//! misses it), and is not taken out when its entries go (they go when the event comes).
//! Past [`MAX_IDS`] it stops answering "none" at all until the next start. Read from both
//! tables at start-up; a key it cannot read makes it answer "maybe" for every id, as
//! when full (the scans that read the tables tell what is wrong).

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::core::fnv::fnv1a_64;
use crate::services::error::ServiceResult;
use crate::storage::{keys, Db, Table};

/// Ids kept at most (~16 bytes each); past this every id may be waited for.
const MAX_IDS: usize = 100_000;

#[derive(Default)]
struct Inner {
    ids: HashSet<u64>,
    full: bool,
}

/// The set.
#[derive(Default)]
pub struct PendingParents(Mutex<Inner>);

/// The tables whose keys are `event id ++ SEP ++ the waiting event's short id`.
const TABLES: [Table; 2] = [Table::EventidPendingchild, Table::EventidPendingrelation];

impl PendingParents {
    /// The ids with entries in the database.
    pub fn load(db: &Db) -> ServiceResult<Self> {
        let pending = Self::default();
        for table in TABLES {
            for entry in db.scan_prefix(table, &[]) {
                let (key, _) = entry?;
                let id = key
                    .len()
                    .checked_sub(9)
                    .filter(|&end| key[end] == keys::SEP)
                    .map(|end| &key[..end]);
                match id {
                    Some(id) => pending.add(id),
                    None => {
                        tracing::warn!(
                            table = table.name(),
                            "an unreadable key: every event looks for events waiting on it"
                        );
                        pending.fill();
                    }
                }
                if pending.lock().full {
                    return Ok(pending);
                }
            }
        }
        Ok(pending)
    }

    /// Answers "maybe" for every id from now on.
    fn fill(&self) {
        let mut inner = self.lock();
        inner.ids = HashSet::new();
        inner.full = true;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, id: &[u8]) {
        let mut inner = self.lock();
        if inner.full {
            return;
        }
        inner.ids.insert(fnv1a_64(id.iter().copied()));
        if inner.ids.len() > MAX_IDS {
            drop(inner);
            self.fill();
        }
    }

    /// An entry for `event_id` is being put in a batch.
    pub fn note(&self, event_id: &str) {
        self.add(event_id.as_bytes());
    }

    /// Whether entries for `event_id` may exist (`false`: surely none).
    pub fn may_be_awaited(&self, event_id: &str) -> bool {
        let inner = self.lock();
        inner.full || inner.ids.contains(&fnv1a_64(event_id.bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DbOptions;

    #[test]
    fn ids_noted_or_stored_may_be_awaited_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        let mut batch = db.batch();
        batch.put(
            Table::EventidPendingchild,
            keys::join(&[b"$child_waits", &7u64.to_be_bytes()]),
            b"",
        );
        batch.put(
            Table::EventidPendingrelation,
            keys::join(&[b"$relation_waits", &8u64.to_be_bytes()]),
            b"",
        );
        db.commit_blocking(batch).unwrap();
        let pending = PendingParents::load(&db).unwrap();
        assert!(pending.may_be_awaited("$child_waits"));
        assert!(pending.may_be_awaited("$relation_waits"));
        assert!(!pending.may_be_awaited("$nobody_waits"));
        pending.note("$nobody_waits");
        assert!(pending.may_be_awaited("$nobody_waits"));
    }

    #[test]
    fn an_unreadable_key_makes_every_id_awaited() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        let mut batch = db.batch();
        batch.put(Table::EventidPendingrelation, b"short", b"");
        db.commit_blocking(batch).unwrap();
        let pending = PendingParents::load(&db).unwrap();
        assert!(pending.may_be_awaited("$anything"));
    }

    #[test]
    fn past_its_size_every_id_may_be_awaited() {
        let pending = PendingParents::default();
        for n in 0..=MAX_IDS {
            pending.note(&format!("${n}"));
        }
        assert!(pending.may_be_awaited("$never_noted"));
        assert!(pending.lock().ids.is_empty());
    }
}
