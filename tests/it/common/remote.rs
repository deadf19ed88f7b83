//! A made-up remote server (`remote.example`) for tests of the rooms service's receive
//! entry point: its signing key, its clock, and a [`MissingSource`] that hands out its
//! key and the events it holds, as federation would.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use ourwhats::core::pdu_checks::KnownKey;
use ourwhats::core::SigningKeyPair;
use ourwhats::services::rooms::receive::MissingSource;
use serde_json::Value;

pub const REMOTE: &str = "remote.example";
pub const BOB: &str = "@bob:remote.example";

/// Timestamps of the remote server's events: each later than the one before, as a
/// server's clock makes them (state resolution breaks ties by them).
pub fn next_ts() -> u64 {
    static TS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_700_000_000_000);
    TS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub fn remote_key() -> SigningKeyPair {
    SigningKeyPair::from_seed(&[9; 32], "r1")
}

/// The made-up server: its key, and events it can be asked for.
#[derive(Default)]
pub struct TestSource {
    pub events: Mutex<HashMap<String, Value>>,
    pub asked: Mutex<Vec<String>>,
    pub without_keys: bool,
    /// Answers `/get_missing_events` (each request counted in `gap_requests`).
    pub serves_gaps: bool,
    pub gap_requests: Mutex<usize>,
    /// Answers `/state_ids` at these events (the ids of the state before each).
    pub state_ids: Mutex<HashMap<String, Vec<String>>>,
}

impl TestSource {
    pub fn holding(events: &[&(String, Value)]) -> Self {
        let source = Self::default();
        for (id, pdu) in events {
            source
                .events
                .lock()
                .unwrap()
                .insert(id.clone(), pdu.clone());
        }
        source
    }
}

impl MissingSource for TestSource {
    fn keys<'a>(
        &'a self,
        server: &'a str,
        key_ids: &'a [String],
    ) -> BoxFuture<'a, HashMap<String, KnownKey>> {
        Box::pin(async move {
            let key = remote_key();
            let mut out = HashMap::new();
            if server == REMOTE && !self.without_keys && key_ids.iter().any(|k| k == key.key_id()) {
                out.insert(
                    key.key_id().to_owned(),
                    KnownKey {
                        key: key.verifying_key(),
                        valid_until_ts: u64::MAX,
                    },
                );
            }
            out
        })
    }

    /// As a server answers `/get_missing_events`: a walk back over `prev_events` from
    /// `latest` (excluded), stopping at `earliest` and below `min_depth`, at most
    /// `limit`, oldest first.
    fn missing_events<'a>(
        &'a self,
        _room: &'a str,
        (earliest, latest): (&'a [String], &'a [String]),
        (limit, min_depth): (usize, u64),
    ) -> BoxFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if !self.serves_gaps {
                return Vec::new();
            }
            *self.gap_requests.lock().unwrap() += 1;
            let held = self.events.lock().unwrap();
            let mut out: Vec<Value> = Vec::new();
            let mut seen: std::collections::HashSet<String> = earliest.iter().cloned().collect();
            let mut todo: std::collections::VecDeque<String> = std::collections::VecDeque::new();
            for id in latest {
                if let Some(pdu) = held.get(id) {
                    todo.extend(prev_ids(pdu));
                }
            }
            while let Some(id) = todo.pop_front() {
                if out.len() >= limit || !seen.insert(id.clone()) {
                    continue;
                }
                if let Some(pdu) = held.get(&id) {
                    if pdu["depth"].as_u64().unwrap_or(0) < min_depth {
                        continue;
                    }
                    todo.extend(prev_ids(pdu));
                    out.push(pdu.clone());
                }
            }
            out.reverse();
            out
        })
    }

    fn state_ids<'a>(
        &'a self,
        _room: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(async move { self.state_ids.lock().unwrap().get(event_id).cloned() })
    }

    fn events<'a>(&'a self, _room: &'a str, ids: &'a [String]) -> BoxFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.asked.lock().unwrap().extend(ids.iter().cloned());
            let held = self.events.lock().unwrap();
            ids.iter().filter_map(|id| held.get(id).cloned()).collect()
        })
    }
}

fn prev_ids(pdu: &Value) -> Vec<String> {
    pdu["prev_events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// What a remote event says, for [`remote_pdu`].
pub struct RemoteDraft<'a> {
    pub room_id: &'a str,
    pub sender: &'a str,
    pub kind: &'a str,
    pub state_key: Option<&'a str>,
    pub content: serde_json::Value,
    pub prev: Vec<String>,
    pub auth: Vec<String>,
    pub depth: u64,
}

/// A v12 event of the remote server, hashed and signed by its key: `(event id, PDU)`.
pub fn remote_pdu(draft: RemoteDraft<'_>) -> (String, Value) {
    remote_pdu_in(ourwhats::core::RoomVersion::V12, draft, &|_| None)
}

/// [`remote_pdu`] in a room of `version`; `reference_hash` answers the hashes of the
/// events it references (asked in rooms v1 and v2 only).
pub fn remote_pdu_in(
    version: ourwhats::core::RoomVersion,
    draft: RemoteDraft<'_>,
    reference_hash: &dyn Fn(&str) -> Option<[u8; 32]>,
) -> (String, Value) {
    // A redaction names its target in its content; before rooms v11, at the top level.
    let redacts = (draft.kind == "m.room.redaction")
        .then(|| draft.content.get("redacts").and_then(Value::as_str))
        .flatten()
        .map(str::to_owned);
    let built = ourwhats::core::pdu::build_referencing(
        version,
        ourwhats::core::pdu::PduTemplate {
            room_id: Some(draft.room_id.to_owned()),
            sender: draft.sender.to_owned(),
            kind: draft.kind.to_owned(),
            state_key: draft.state_key.map(str::to_owned),
            content: draft.content,
            prev_events: draft.prev,
            auth_events: draft.auth,
            depth: draft.depth,
            origin_server_ts: next_ts(),
            redacts,
        },
        reference_hash,
        REMOTE,
        &remote_key(),
    )
    .unwrap();
    (built.event_id, built.pdu)
}
