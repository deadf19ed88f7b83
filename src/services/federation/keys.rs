//! Other servers' signing keys: fetched, checked, cached and kept.
//!
//! Spec: server-server API, "Retrieving server keys". A key is fetched from its server
//! (`GET /_matrix/key/v2/server`) or, when that fails, from the configured notaries
//! (`POST /_matrix/key/v2/query`, each answer signed by its server and by the notary);
//! the document is checked by [`key_document::check`] (its own signatures, validity capped
//! at seven days). Documents are kept in the database (for the notary endpoint and after a
//! restart) and their keys in memory. One fetch per server at a time: concurrent lookups
//! of one server wait for the first; a failed fetch is not repeated for a while (a second
//! after the first failure, doubling up to five minutes, so that a server cut off for a
//! moment is asked again soon after, and one gone for good costs little). Our own key is
//! answered locally, never over the network.

use crate::services::server_keys::OldKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{FederationClient, FederationError};
use crate::core::key_document::{self, ServerKey};
use crate::core::pdu_checks::KnownKey;
use crate::core::signatures;
use crate::core::{ServerName, SigningKeyPair};
use crate::services::now_ms;
use crate::services::records::{decode, encode};
use crate::storage::{Db, Table};

/// The largest key document read.
const KEY_DOCUMENT_MAX_BYTES: usize = 256 * 1024;
/// How long the first failed fetch keeps a server from being asked again; it doubles with
/// each failure in a row, up to [`MAX_FAILURE_BACKOFF`].
const FIRST_FAILURE_BACKOFF: Duration = Duration::from_secs(1);
/// The longest a server is not asked again after failed fetches.
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(300);

/// Servers whose failed fetches (or misses) are remembered before those past their
/// back-off are forgotten.
const MAX_BACKED_OFF: usize = 10_000;
/// How long after a fetched document lacked the key a lookup asked for no lookup fetches
/// that server again (and how long after any fetch a notary query is answered with the
/// document fetched).
const MISS_REFETCH: Duration = Duration::from_secs(30);
/// The furthest validity a notary query is answered for: key documents are valid for at
/// most 7 days (spec: room version 5 signing requirements), so a later minimum could
/// never be met by a fetch.
const NOTARY_MINIMUM_MAX_MS: u64 = 7 * 24 * 3600 * 1000;

/// How long `failures` failed fetches in a row keep a server from being asked again.
fn failure_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_FAILURE_BACKOFF * 2u32.pow(doublings)).min(MAX_FAILURE_BACKOFF)
}

/// A key document as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyDocumentRecord {
    /// The document as the server (or a notary) gave it.
    document: Value,
    /// When it was fetched (ms since the epoch).
    fetched_at: u64,
    /// Keys earlier documents listed and this one does not (a server that rotated its
    /// key without listing the old one in `old_verify_keys`, as Synapse does unless told
    /// to): kept as old keys, valid for what was signed before they expired, so events
    /// signed with them stay verifiable. By key id: the unpadded base64 key and until
    /// when it was valid.
    #[serde(default)]
    retired: HashMap<String, (String, u64)>,
}

/// Retired keys kept per server at most (the most recently valid).
const MAX_RETIRED_KEYS: usize = 16;

/// The keys of a new document of a server whose `previous` document (with its retired
/// keys) had `earlier` keys: those the new one no longer lists, added to the retired.
fn retire(
    previous: Option<&KeyDocumentRecord>,
    earlier: Option<&HashMap<String, ServerKey>>,
    new: &HashMap<String, ServerKey>,
) -> HashMap<String, (String, u64)> {
    let mut retired: HashMap<String, (String, u64)> =
        previous.map(|r| r.retired.clone()).unwrap_or_default();
    for (id, key) in earlier.into_iter().flatten() {
        retired.insert(
            id.clone(),
            (
                crate::core::base64::encode(key.key.to_bytes()),
                key.valid_until_ts,
            ),
        );
    }
    retired.retain(|id, _| !new.contains_key(id));
    if retired.len() > MAX_RETIRED_KEYS {
        let mut by_validity: Vec<(String, (String, u64))> = retired.into_iter().collect();
        by_validity.sort_by_key(|(_, (_, until))| std::cmp::Reverse(*until));
        by_validity.truncate(MAX_RETIRED_KEYS);
        retired = by_validity.into_iter().collect();
    }
    retired
}

/// `keys` with the `retired` ones added as old keys (where the document does not name
/// them).
fn with_retired(
    mut keys: HashMap<String, ServerKey>,
    retired: &HashMap<String, (String, u64)>,
) -> HashMap<String, ServerKey> {
    for (id, (key, until)) in retired {
        let parsed = crate::core::base64::decode(key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok());
        if let Some(key) = parsed {
            keys.entry(id.clone()).or_insert(ServerKey {
                key,
                valid_until_ts: *until,
                old: true,
            });
        }
    }
    keys
}

/// The key ring.
pub struct KeyRing {
    db: Arc<Db>,
    client: Arc<FederationClient>,
    own_key: Arc<SigningKeyPair>,
    /// The keys ours replaced (events we signed with them still verify).
    own_old: Arc<Vec<OldKey>>,
    own_valid_ms: u64,
    notaries: Vec<ServerName>,
    keys: Mutex<HashMap<String, HashMap<String, ServerKey>>>,
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Servers whose last fetch failed: when, and how many failures in a row.
    failed: Mutex<HashMap<String, (Instant, u32)>>,
    /// Servers whose last fetched document lacked the key asked for: when.
    missed: Mutex<HashMap<String, Instant>>,
}

/// A server's fetch gate, forgotten once nobody holds or waits on it (on every path out
/// of a fetch, a cancelled one too).
struct Gate<'a> {
    ring: &'a KeyRing,
    server: &'a str,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut fetching = lock(&self.ring.fetching);
        // The map's and this one: nobody else holds it.
        if Arc::strong_count(&self.gate) <= 2
            && fetching
                .get(self.server)
                .is_some_and(|g| Arc::ptr_eq(g, &self.gate))
        {
            fetching.remove(self.server);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KeyRing {
    /// A key ring over the `servername_keydocument` table.
    pub fn new(
        db: Arc<Db>,
        client: Arc<FederationClient>,
        (own_key, own_old): (Arc<SigningKeyPair>, Arc<Vec<OldKey>>),
        own_valid_ms: u64,
        notaries: Vec<ServerName>,
    ) -> Self {
        Self {
            db,
            client,
            own_key,
            own_old,
            own_valid_ms,
            notaries,
            keys: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            missed: Mutex::new(HashMap::new()),
        }
    }

    fn own_name(&self) -> &ServerName {
        self.client.server_name()
    }

    /// The keys of `server` among `key_ids` that may have signed something made at
    /// `at_ts` (old keys included, with their expiry), fetching when a key is unknown or
    /// its cached validity ends before `at_ts`.
    pub async fn keys_for(
        &self,
        server: &str,
        key_ids: &[String],
        at_ts: u64,
    ) -> HashMap<String, KnownKey> {
        if server == self.own_name().as_str() {
            let mut out = HashMap::new();
            if key_ids.iter().any(|k| k == self.own_key.key_id()) {
                out.insert(
                    self.own_key.key_id().to_owned(),
                    KnownKey {
                        key: self.own_key.verifying_key(),
                        valid_until_ts: now_ms() + self.own_valid_ms,
                    },
                );
            }
            for old in self.own_old.iter().filter(|k| key_ids.contains(&k.key_id)) {
                if let Some(key) = old.verifying_key() {
                    out.insert(
                        old.key_id.clone(),
                        KnownKey {
                            key,
                            valid_until_ts: old.expired_ts,
                        },
                    );
                }
            }
            return out;
        }
        // An old key is what it is (its expiry is the server's word): fetching again
        // would not change it.
        let fresh = |keys: &HashMap<String, ServerKey>| {
            key_ids.iter().any(|id| {
                keys.get(id)
                    .is_some_and(|k| k.old || k.valid_until_ts >= at_ts)
            })
        };
        if !self.known(server, &fresh) {
            self.fetch(server, &fresh, true).await;
        }
        let keys = lock(&self.keys);
        let Some(known) = keys.get(server) else {
            return HashMap::new();
        };
        key_ids
            .iter()
            .filter_map(|id| {
                known.get(id).map(|k| {
                    (
                        id.clone(),
                        KnownKey {
                            key: k.key,
                            valid_until_ts: k.valid_until_ts,
                        },
                    )
                })
            })
            .collect()
    }

    /// The current (not old) key `key_id` of `server`, valid now: what may sign requests.
    pub async fn request_key(
        &self,
        server: &str,
        key_id: &str,
    ) -> Option<ed25519_dalek::VerifyingKey> {
        let ids = [key_id.to_owned()];
        let now = now_ms();
        let found = self.keys_for(server, &ids, now).await;
        let key = found.get(key_id)?;
        let old = lock(&self.keys)
            .get(server)
            .and_then(|k| k.get(key_id))
            .is_some_and(|k| k.old);
        (!old && key.valid_until_ts >= now).then_some(key.key)
    }

    /// Whether memory (or, loaded into it, the database) has keys that satisfy `fresh`.
    fn known(
        &self,
        server: &str,
        fresh: &(dyn Fn(&HashMap<String, ServerKey>) -> bool + Sync),
    ) -> bool {
        if lock(&self.keys).get(server).is_some_and(fresh) {
            return true;
        }
        let Ok(Some(record)) = self.stored(server) else {
            return false;
        };
        let Ok(doc) = key_document::check(&record.document, server, record.fetched_at) else {
            return false;
        };
        let keys = with_retired(doc.keys, &record.retired);
        let ok = fresh(&keys);
        lock(&self.keys).insert(server.to_owned(), keys);
        ok
    }

    fn stored(&self, server: &str) -> Result<Option<KeyDocumentRecord>, String> {
        self.db
            .get(Table::ServernameKeydocument, server)
            .map_err(|e| e.to_string())?
            .map(|b| decode(Table::ServernameKeydocument, &b).map_err(|e| e.message))
            .transpose()
    }

    /// The stored key document of `server` (for the notary endpoint), fetching it when
    /// none is stored, it is valid for less than `minimum_valid_until_ts`, or it lacks
    /// one of `key_ids` (as a key or an old key: a key the server has rotated to since).
    pub async fn document(
        &self,
        server: &str,
        (minimum_valid_until_ts, key_ids): (u64, &[String]),
    ) -> Option<Value> {
        let minimum_valid_until_ts =
            minimum_valid_until_ts.min(now_ms().saturating_add(NOTARY_MINIMUM_MAX_MS));
        let fresh = |keys: &HashMap<String, ServerKey>| {
            keys.values()
                .any(|k| !k.old && k.valid_until_ts >= minimum_valid_until_ts)
                && key_ids.iter().all(|id| keys.contains_key(id))
        };
        let stored = self.stored(server).ok().flatten();
        let stored_is_fresh = stored.as_ref().is_some_and(|r| {
            key_document::check(&r.document, server, r.fetched_at).is_ok_and(|d| fresh(&d.keys))
        });
        // Fetched a moment ago: that is the document there is (an unauthenticated query
        // for a validity it does not reach cannot make us fetch again and again).
        let fetched_lately = stored.as_ref().is_some_and(|r| {
            now_ms().saturating_sub(r.fetched_at) < MISS_REFETCH.as_millis() as u64
        });
        if !stored_is_fresh && !fetched_lately {
            self.fetch(server, &fresh, false).await;
        }
        self.stored(server).ok().flatten().map(|r| r.document)
    }

    /// Fetches `server`'s keys (once at a time per server; after failures, not again for
    /// [`failure_backoff`]), directly and then through the notaries.
    /// A lookup (`lookup`) whose document lacks what it asked for is noted as a miss: no
    /// lookup fetches the server again for [`MISS_REFETCH`] (a forged request header
    /// naming a made-up key cannot make us fetch again and again; a server's new key is
    /// learnt within that time).
    async fn fetch(
        &self,
        server: &str,
        fresh: &(dyn Fn(&HashMap<String, ServerKey>) -> bool + Sync),
        lookup: bool,
    ) {
        let gate = Gate {
            ring: self,
            server,
            gate: Arc::clone(lock(&self.fetching).entry(server.to_owned()).or_default()),
        };
        let _turn = gate.gate.lock().await;
        // Another lookup may have fetched while this one waited.
        if lock(&self.keys).get(server).is_some_and(fresh) {
            return;
        }
        if lock(&self.failed)
            .get(server)
            .is_some_and(|(at, failures)| at.elapsed() < failure_backoff(*failures))
        {
            return;
        }
        if lookup
            && lock(&self.missed)
                .get(server)
                .is_some_and(|at| at.elapsed() < MISS_REFETCH)
        {
            return;
        }
        let Ok(name) = ServerName::parse(server) else {
            return;
        };
        let now = now_ms();
        let mut fetched = match self.fetch_direct(&name).await {
            Ok(document) => Some(document),
            Err(e) => {
                tracing::info!(%server, error = %e, "cannot fetch the server's keys directly");
                None
            }
        };
        // Keys only an older copy of a notary's holds (the server answered, without
        // them: it has dropped them since): kept as retired keys, not in the place of
        // the server's own newer document.
        let mut older_copy_keys: Option<HashMap<String, ServerKey>> = None;
        if fetched.as_ref().is_none_or(|(_, doc)| !fresh(&doc.keys)) {
            for notary in &self.notaries {
                match self.fetch_from_notary(notary, &name).await {
                    Ok(found) if fresh(&found.1.keys) => {
                        match &fetched {
                            Some((_, direct)) if found.1.valid_until_ts < direct.valid_until_ts => {
                                older_copy_keys = Some(found.1.keys);
                            }
                            _ => fetched = Some(found),
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(%server, %notary, error = %e, "notary could not give the server's keys")
                    }
                }
            }
        }
        match fetched {
            Some((document, checked)) => {
                let previous = self.stored(server).ok().flatten();
                let mut earlier = previous.as_ref().and_then(|r| {
                    key_document::check(&r.document, server, r.fetched_at)
                        .ok()
                        .map(|d| d.keys)
                });
                if let Some(older) = older_copy_keys {
                    // Dropped by the server by now: valid for events before now at most.
                    let dropped = older.into_iter().map(|(id, mut key)| {
                        key.valid_until_ts = key.valid_until_ts.min(now);
                        (id, key)
                    });
                    earlier.get_or_insert_with(HashMap::new).extend(dropped);
                }
                let retired = retire(previous.as_ref(), earlier.as_ref(), &checked.keys);
                let record = KeyDocumentRecord {
                    document,
                    fetched_at: now,
                    retired,
                };
                let mut batch = self.db.batch();
                batch.put(Table::ServernameKeydocument, server, encode(&record));
                if let Err(e) = self.db.write_relaxed(batch) {
                    tracing::warn!(%server, error = %e, "cannot store the server's keys");
                }
                let keys = with_retired(checked.keys, &record.retired);
                let satisfied = fresh(&keys);
                lock(&self.keys).insert(server.to_owned(), keys);
                lock(&self.failed).remove(server);
                if !satisfied && lookup {
                    let mut missed = lock(&self.missed);
                    if missed.len() >= MAX_BACKED_OFF {
                        missed.retain(|_, at| at.elapsed() < MISS_REFETCH);
                    }
                    missed.insert(server.to_owned(), Instant::now());
                }
            }
            None => {
                let mut failed = lock(&self.failed);
                let failures = failed.get(server).map_or(0, |(_, n)| *n);
                if failed.len() >= MAX_BACKED_OFF && !failed.contains_key(server) {
                    failed.retain(|_, (at, n)| at.elapsed() < failure_backoff(*n));
                }
                failed.insert(
                    server.to_owned(),
                    (Instant::now(), failures.saturating_add(1)),
                );
            }
        }
    }

    async fn fetch_direct(
        &self,
        server: &ServerName,
    ) -> Result<(Value, key_document::KeyDocument), String> {
        let document = self
            .client
            .get_unsigned(server, "/_matrix/key/v2/server", KEY_DOCUMENT_MAX_BYTES)
            .await
            .map_err(|e: FederationError| e.to_string())?;
        let checked = key_document::check(&document, server.as_str(), now_ms()).map_err(|e| e.0)?;
        Ok((document, checked))
    }

    /// Spec: "Querying Keys Through Another Server": the notary's answer holds documents
    /// signed by their server and by the notary, whose own key is fetched directly.
    async fn fetch_from_notary(
        &self,
        notary: &ServerName,
        server: &ServerName,
    ) -> Result<(Value, key_document::KeyDocument), String> {
        // Spec (v5 signing requirements): a server querying a notary MUST set it.
        let path = format!(
            "/_matrix/key/v2/query/{}?minimum_valid_until_ts={}",
            server.as_str(),
            now_ms()
        );
        let answer = self
            .client
            .get_unsigned(notary, &path, KEY_DOCUMENT_MAX_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        let notary_keys = match self.fetch_direct(notary).await {
            Ok((_, doc)) => doc.keys,
            Err(e) => return Err(format!("cannot fetch the notary's own keys: {e}")),
        };
        let documents = answer
            .get("server_keys")
            .and_then(Value::as_array)
            .ok_or("the answer has no server_keys")?;
        for document in documents {
            let Ok(checked) = key_document::check(document, server.as_str(), now_ms()) else {
                continue;
            };
            let signed_by_notary = notary_keys.iter().any(|(id, k)| {
                !k.old && signatures::verify_json(document, notary.as_str(), id, &k.key).is_ok()
            });
            if signed_by_notary {
                return Ok((document.clone(), checked));
            }
        }
        Err("no document signed by both the server and the notary".into())
    }

    /// The answer of our notary endpoint for `server`: its document with our signature
    /// added (our own document when it is us), valid until `minimum_valid_until_ts` and
    /// holding `key_ids` if the server can tell (see [`KeyRing::document`]).
    pub async fn notarised(&self, server: &str, wanted: (u64, &[String])) -> Option<Value> {
        let mut document = if server == self.own_name().as_str() {
            crate::services::server_keys::key_document(
                self.own_name(),
                &self.own_key,
                &self.own_old,
                now_ms() + self.own_valid_ms,
            )
            .ok()?
        } else {
            self.document(server, wanted).await?
        };
        signatures::sign_json(&mut document, self.own_name().as_str(), &self.own_key).ok()?;
        Some(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fetch_waits_a_second_doubling_up_to_five_minutes() {
        assert_eq!(failure_backoff(1), Duration::from_secs(1));
        assert_eq!(failure_backoff(2), Duration::from_secs(2));
        assert_eq!(failure_backoff(5), Duration::from_secs(16));
        assert_eq!(failure_backoff(9), Duration::from_secs(256));
        assert_eq!(failure_backoff(10), MAX_FAILURE_BACKOFF);
        assert_eq!(failure_backoff(u32::MAX), MAX_FAILURE_BACKOFF);
    }
}
