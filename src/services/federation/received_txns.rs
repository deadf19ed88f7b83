//! Transactions other servers sent us (`PUT /_matrix/federation/v1/send/{txnId}`): the
//! answer to each, kept so that a retry of the same transaction gets it again without
//! being processed twice, and one processing at a time per transaction.
//!
//! Spec: server-server API, "Transactions": a transaction id is unique per origin; the
//! origin retries it with the same id until it gets an answer. A retry that comes while
//! the first copy is still being processed (an origin's request timed out) waits for it
//! and gets its answer (as Synapse answers duplicates). Answers are kept a day, swept at
//! most once an hour.
//!
//! Owns the table `origin_txnid_answer`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use crate::services::error::ServiceResult;
use crate::services::keyed_locks::{KeyedGuard, KeyedLocks};
use crate::services::now_ms;
use crate::storage::{keys, Db, Table};

/// How long an answer is kept.
const KEPT_MS: u64 = 24 * 3_600_000;
/// How often the old answers are swept at most.
const SWEEP_EVERY_MS: u64 = 3_600_000;

/// The received transactions' answers and the ones being processed.
#[derive(Default)]
pub struct ReceivedTransactions {
    in_flight: KeyedLocks,
    swept_at: AtomicU64,
}

/// The key of `origin`'s transaction `txn_id`.
pub fn transaction_key(origin: &str, txn_id: &str) -> Vec<u8> {
    keys::join(&[origin.as_bytes(), txn_id.as_bytes()])
}

impl ReceivedTransactions {
    /// Waits until no other copy of the transaction `key` is being processed; the answer
    /// stored by one that finished is then in the database.
    pub async fn enter(&self, key: &[u8]) -> KeyedGuard<'_> {
        self.in_flight.lock(key).await
    }

    /// The answer given to the transaction `key`, if it was processed in the last day.
    pub fn answer(&self, db: &Db, key: &[u8]) -> ServiceResult<Option<Value>> {
        let Some(bytes) = db.get(Table::OriginTxnidAnswer, key)? else {
            return Ok(None);
        };
        let stored: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        // Kept as `{"at": ms, "answer": …}`; an older record is the answer itself.
        Ok(Some(match stored.get("answer") {
            Some(answer) => answer.clone(),
            None if stored.get("pdus").is_some() => stored,
            None => json!({"pdus": {}}),
        }))
    }

    /// Keeps the answer to the transaction `key`, and sweeps answers older than a day
    /// (at most once an hour).
    pub fn remember(&self, db: &Db, key: &[u8], answer: &Value) -> ServiceResult<()> {
        let now = now_ms();
        let record = json!({"at": now, "answer": answer});
        let mut batch = db.batch();
        batch.put(
            Table::OriginTxnidAnswer,
            key,
            serde_json::to_vec(&record).unwrap_or_default(),
        );
        let last = self.swept_at.load(Ordering::Relaxed);
        let sweep = now >= last + SWEEP_EVERY_MS
            && self
                .swept_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if sweep {
            for entry in db.scan_prefix(Table::OriginTxnidAnswer, b"") {
                let (old_key, bytes) = entry?;
                let at = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("at").and_then(Value::as_u64))
                    .unwrap_or(0);
                if at + KEPT_MS < now && *old_key != *key {
                    batch.delete(Table::OriginTxnidAnswer, old_key);
                }
            }
        }
        db.write_relaxed(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::storage::DbOptions;

    #[tokio::test]
    async fn a_retry_waits_for_the_first_copy_and_old_answers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        let received = Arc::new(ReceivedTransactions::default());
        let key = transaction_key("a.example", "t1");

        // The first copy holds the transaction; the retry waits, then finds its answer.
        let first = received.enter(&key).await;
        let retry = {
            let (received, db, key) = (Arc::clone(&received), Arc::clone(&db), key.clone());
            tokio::spawn(async move {
                let _gate = received.enter(&key).await;
                received.answer(&db, &key).unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!retry.is_finished(), "the retry waits for the first copy");
        let answer = json!({"pdus": {"$e": {}}});
        received.remember(&db, &key, &answer).unwrap();
        drop(first);
        assert_eq!(retry.await.unwrap(), Some(answer.clone()));
        assert!(received.in_flight.is_empty());

        // An answer older than a day goes with the next sweep; an older record (the
        // answer itself) is read as one.
        let old = transaction_key("a.example", "t0");
        let mut batch = db.batch();
        let stale = json!({"at": now_ms() - KEPT_MS - 1, "answer": answer});
        batch.put(
            Table::OriginTxnidAnswer,
            &old,
            serde_json::to_vec(&stale).unwrap(),
        );
        let legacy = transaction_key("b.example", "t9");
        batch.put(
            Table::OriginTxnidAnswer,
            &legacy,
            serde_json::to_vec(&answer).unwrap(),
        );
        db.commit_blocking(batch).unwrap();
        assert_eq!(received.answer(&db, &legacy).unwrap(), Some(answer.clone()));
        received.swept_at.store(0, Ordering::Relaxed);
        received
            .remember(&db, &transaction_key("a.example", "t2"), &answer)
            .unwrap();
        assert_eq!(received.answer(&db, &old).unwrap(), None);
        assert_eq!(received.answer(&db, &key).unwrap(), Some(answer));
    }
}
