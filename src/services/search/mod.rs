//! Server-side search of room events.
//!
//! Spec: client-server API, "Server Side Search" (`POST /search`, category `room_events`):
//! `search_term` over `keys`, a `filter`, `order_by` rank or recent, `event_context`,
//! `include_state`, `groupings` by room or sender, and `next_batch` pagination (also within
//! a group). Only events the user may see are returned, in every room they have been in
//! (left ones included, up to when they left); end-to-end encrypted rooms are not searched.
//!
//! Parts: [`terms`] (words and folding), [`index`] (the postings, written with each event),
//! [`query`] (matching and ranking). Owns the table `shortroomid_term_pos_posting`; a
//! stateless service, so it has no value in [`Services`].

pub mod index;
pub mod query;
pub mod terms;

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::core::base64;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::rooms::client_event::{client_event, erased_for, Viewer};
use crate::services::rooms::event_store::{EventStore, StoredEvent};
use crate::services::rooms::filter::RoomEventFilter;
use crate::services::rooms::history::Direction;
use crate::services::rooms::records::{MembershipRecord, RoomRecord};
use crate::services::rooms::tokens;
use crate::services::rooms::visibility::VisibilityCheck;
use crate::services::Services;
use query::Candidate;

/// Results per page when the filter names no limit.
const DEFAULT_LIMIT: usize = 10;
/// The most results per page.
const MAX_LIMIT: usize = 100;
/// Context events on each side by default, and at most.
const DEFAULT_CONTEXT: usize = 5;
const MAX_CONTEXT: usize = 50;
/// Candidates checked for visibility per page at most; past it the page ends early and
/// `next_batch` goes on from there.
const MAX_CHECKED: usize = 2000;
/// Candidates checked for visibility per request at most, for `count` (an approximate
/// count, the spec says: past this many it counts only the visible ones checked).
const MAX_COUNTED: usize = 10_000;
/// Search terms used at most (words past it are ignored).
const MAX_TERMS: usize = 16;

/// The result order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Most relevant first (the default).
    Rank,
    /// Newest first.
    Recent,
}

/// `event_context` of the request.
#[derive(Debug, Clone, Copy)]
pub struct ContextRequest {
    /// Events before each result.
    pub before: usize,
    /// Events after each result.
    pub after: usize,
    /// Senders' profiles as they were at the result.
    pub include_profile: bool,
}

impl Default for ContextRequest {
    fn default() -> Self {
        Self {
            before: DEFAULT_CONTEXT,
            after: DEFAULT_CONTEXT,
            include_profile: false,
        }
    }
}

/// A parsed `room_events` search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// The searching user.
    pub user_id: String,
    /// Their device (for `unsigned.transaction_id`).
    pub device_id: String,
    /// What to look for.
    pub search_term: String,
    /// The fields searched, a mask of [`index::Field`].
    pub fields: u8,
    /// Rooms, senders, types, limit.
    pub filter: RoomEventFilter,
    /// Rank or recent.
    pub order: Order,
    /// Context around each result, if asked for.
    pub context: Option<ContextRequest>,
    /// Send the current state of each room in the results.
    pub include_state: bool,
    /// Group by room.
    pub group_by_room: bool,
    /// Group by sender.
    pub group_by_sender: bool,
    /// Where the previous page ended.
    pub next_batch: Option<Cursor>,
}

/// Where a page ended, and the group it was in (for a group's `next_batch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The order the token was made for.
    #[serde(rename = "o")]
    pub order: Order,
    /// The rank of the last result (as its bits: exact through JSON).
    #[serde(rename = "r", with = "rank_bits")]
    pub rank: f64,
    /// Its stream position.
    #[serde(rename = "p")]
    pub pos: u64,
    /// The newest event the first page considered.
    #[serde(rename = "n")]
    pub newest: u64,
    /// Only this room (a room group's token).
    #[serde(rename = "room", default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Only this sender (a sender group's token).
    #[serde(rename = "sender", default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
}

impl Cursor {
    /// The opaque token.
    pub fn token(&self) -> String {
        base64::encode_url_safe(serde_json::to_vec(self).unwrap_or_default())
    }

    /// A token read back; 400 `M_INVALID_PARAM` for anything this server didn't issue.
    pub fn parse(token: &str) -> ServiceResult<Self> {
        let invalid = || ServiceError::invalid_param("Invalid next_batch token");
        let bytes = base64::decode_url_safe(token).map_err(|_| invalid())?;
        serde_json::from_slice(&bytes).map_err(|_| invalid())
    }

    /// Whether `candidate` comes after this cursor in `order`.
    fn precedes(&self, candidate: &Candidate) -> bool {
        match self.order {
            Order::Recent => candidate.pos < self.pos,
            Order::Rank => {
                candidate.rank < self.rank
                    || (candidate.rank == self.rank && candidate.pos < self.pos)
            }
        }
    }
}

/// `f64` stored as its bit pattern.
mod rank_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rank: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(rank.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// A room the user may search.
struct Searched {
    room_id: String,
    record: MembershipRecord,
    room: RoomRecord,
}

/// One page of results, and where the next starts.
struct Page<'c, 's> {
    found: Vec<Found>,
    resume_at: Option<&'c Candidate>,
    /// Visible matches (see [`MAX_COUNTED`]).
    count: usize,
    newest: u64,
    /// The visibility check of each room looked at, by short id.
    checks: HashMap<u64, VisibilityCheck<'s>>,
}

/// A result found visible.
struct Found {
    candidate: Candidate,
    room_id: String,
    event: StoredEvent,
}

/// Runs a `room_events` search over the index that [`index::SearchIndex`] writes; answers
/// the category's JSON.
pub fn room_events(services: &Services, request: &SearchRequest) -> ServiceResult<Value> {
    let store = services.rooms.store();
    if let Some(cursor) = &request.next_batch {
        if cursor.order != request.order {
            return Err(ServiceError::invalid_param(
                "next_batch was issued for another order_by",
            ));
        }
    }
    let mut search_terms: Vec<String> = Vec::new();
    for term in terms::terms(&request.search_term) {
        if !search_terms.contains(&term) && search_terms.len() < MAX_TERMS {
            search_terms.push(term);
        }
    }
    let rooms = searchable_rooms(store, request)?;
    let mut matches = Vec::with_capacity(rooms.len());
    if !search_terms.is_empty() {
        for short in rooms.keys() {
            matches.push(query::room_matches(
                &services.db,
                *short,
                &search_terms,
                request.fields,
            )?);
        }
    }
    let mut candidates = query::rank(&matches, search_terms.len());
    match request.order {
        Order::Recent => candidates.sort_by_key(|c| std::cmp::Reverse(c.pos)),
        Order::Rank => candidates.sort_by(|a, b| b.rank.total_cmp(&a.rank).then(b.pos.cmp(&a.pos))),
    }
    // Events newer than the first page are left for a new search: they would shift the
    // ranks and the pages.
    let newest = match &request.next_batch {
        Some(cursor) => cursor.newest,
        None => candidates.iter().map(|c| c.pos).max().unwrap_or(0),
    };
    candidates.retain(|c| c.pos <= newest);
    let limit = request
        .filter
        .limit
        .map_or(DEFAULT_LIMIT, |l| usize::try_from(l).unwrap_or(MAX_LIMIT))
        .clamp(1, MAX_LIMIT);
    let sender_only = request
        .next_batch
        .as_ref()
        .and_then(|c| c.sender.as_deref());
    let only_room = request.next_batch.as_ref().and_then(|c| c.room.as_deref());
    // One pass over the ranked candidates: each is checked for visibility once; the
    // visible ones are counted (`count` never counts what the user may not see) and
    // those after the cursor fill the page.
    let mut checks: HashMap<u64, VisibilityCheck<'_>> = HashMap::new();
    let mut found: Vec<Found> = Vec::new();
    let mut count = 0;
    let mut page_checked = 0;
    let mut page_done = false;
    let mut resume_at: Option<&Candidate> = None;
    let mut last_checked: Option<&Candidate> = None;
    for (checked, candidate) in candidates.iter().enumerate() {
        let room = &rooms[&candidate.room];
        let on_page = !page_done
            && request
                .next_batch
                .as_ref()
                .is_none_or(|c| c.precedes(candidate))
            && only_room.is_none_or(|r| room.room_id == r);
        if checked >= MAX_COUNTED && !on_page {
            if page_done {
                break;
            }
            continue;
        }
        let event = store.event(candidate.short)?;
        let check = checks.entry(candidate.room).or_insert_with(|| {
            VisibilityCheck::new(store, &request.user_id, Some(&room.record)).in_room(&room.room)
        });
        let wanted = event.meta.redacted_by == 0
            && request.filter.matches(&event)
            && sender_only.is_none_or(|s| s == event.sender())
            && check.can_see(&event)?
            && !erased_for(store, &event, check)?;
        if wanted {
            count += 1;
        }
        if !on_page {
            continue;
        }
        if page_checked == MAX_CHECKED || (wanted && found.len() == limit) {
            // The page ends at the last candidate it looked at.
            page_done = true;
            resume_at = last_checked;
            continue;
        }
        page_checked += 1;
        last_checked = Some(candidate);
        if wanted {
            found.push(Found {
                candidate: candidate.clone(),
                room_id: room.room_id.clone(),
                event,
            });
        }
    }
    let viewer = Viewer {
        user_id: &request.user_id,
        device_id: &request.device_id,
    };
    let page = Page {
        found,
        resume_at,
        count,
        newest,
        checks,
    };
    render(services, request, &search_terms, page, viewer)
}

/// Rooms the user has been in (and not forgotten) that pass the filter, by short id;
/// encrypted rooms are left out. All of them, even for a room group's token, so ranks
/// stay those of the first page.
fn searchable_rooms(
    store: &EventStore,
    request: &SearchRequest,
) -> ServiceResult<HashMap<u64, Searched>> {
    let mut out = HashMap::new();
    for (room_id, record) in store.memberships_of(&request.user_id)? {
        if record.forgotten || !request.filter.matches_room(&room_id) {
            continue;
        }
        let Some(room) = store.room(&room_id)? else {
            continue;
        };
        if store
            .state_event(room.record.state, "m.room.encryption", "")?
            .is_some()
        {
            continue;
        }
        out.insert(
            room.short,
            Searched {
                room_id,
                record,
                room: room.record,
            },
        );
    }
    Ok(out)
}

/// The `room_events` answer.
fn render(
    services: &Services,
    request: &SearchRequest,
    search_terms: &[String],
    page: Page<'_, '_>,
    viewer: Viewer<'_>,
) -> ServiceResult<Value> {
    let store = services.rooms.store();
    let Page {
        found,
        resume_at,
        count,
        newest,
        mut checks,
    } = page;
    let cursor_at = |candidate: &Candidate, room: Option<&str>, sender: Option<&str>| Cursor {
        order: request.order,
        rank: candidate.rank,
        pos: candidate.pos,
        newest,
        room: room
            .map(str::to_owned)
            .or_else(|| request.next_batch.as_ref().and_then(|c| c.room.clone())),
        sender: sender
            .map(str::to_owned)
            .or_else(|| request.next_batch.as_ref().and_then(|c| c.sender.clone())),
    };

    let mut highlights: BTreeSet<String> = search_terms.iter().cloned().collect();
    let mut results = Vec::with_capacity(found.len());
    let mut room_groups: Vec<(String, Vec<String>, &Candidate)> = Vec::new();
    let mut sender_groups: Vec<(String, Vec<String>, &Candidate)> = Vec::new();
    for item in &found {
        if let Some((_, text)) = index::searchable_text(item.event.pdu()) {
            for word in terms::words(&text) {
                let folded = terms::fold(word);
                if search_terms.iter().any(|t| folded.starts_with(t.as_str())) {
                    highlights.insert(word.to_owned());
                }
            }
        }
        let mut result = json!({
            "rank": item.candidate.rank,
            "result": client_event(
                store,
                &item.event,
                &item.room_id,
                Some(viewer),
                checks.get_mut(&item.candidate.room),
            )?,
        });
        if let Some(context) = request.context {
            // A room the user can see events of without `read_access` (invited, with
            // `invited` history visibility) gets no context rather than failing the search.
            if let Some(context) = event_context(services, request, item, context, viewer)? {
                result["context"] = context;
            }
        }
        results.push(result);
        for (groups, key) in [
            (&mut room_groups, item.room_id.as_str()),
            (&mut sender_groups, item.event.sender()),
        ] {
            match groups.iter_mut().find(|(k, _, _)| k == key) {
                Some((_, ids, last)) => {
                    ids.push(item.event.event_id.clone());
                    *last = &item.candidate;
                }
                None => groups.push((
                    key.to_owned(),
                    vec![item.event.event_id.clone()],
                    &item.candidate,
                )),
            }
        }
    }

    let mut out = Map::new();
    out.insert("count".into(), json!(count));
    out.insert("highlights".into(), json!(highlights));
    out.insert("results".into(), Value::Array(results));
    if let Some(at) = resume_at {
        out.insert(
            "next_batch".into(),
            json!(cursor_at(at, None, None).token()),
        );
    }
    let mut groups = Map::new();
    for (name, wanted, list, is_room) in [
        ("room_id", request.group_by_room, &room_groups, true),
        ("sender", request.group_by_sender, &sender_groups, false),
    ] {
        if !wanted {
            continue;
        }
        let mut group = Map::new();
        for (order, (key, ids, last)) in list.iter().enumerate() {
            let mut entry = json!({ "results": ids, "order": order + 1 });
            if resume_at.is_some() {
                let cursor = if is_room {
                    cursor_at(last, Some(key), None)
                } else {
                    cursor_at(last, None, Some(key))
                };
                entry["next_batch"] = json!(cursor.token());
            }
            group.insert(key.clone(), entry);
        }
        groups.insert(name.into(), Value::Object(group));
    }
    if !groups.is_empty() {
        out.insert("groups".into(), Value::Object(groups));
    }
    if request.include_state {
        let mut state = Map::new();
        for (room_id, _, _) in &room_groups {
            // A room the user cannot read now (invited, under `invited` visibility) gets no
            // state rather than failing the search.
            let events = match services.rooms.state_for(&request.user_id, room_id) {
                Ok(events) => events,
                Err(e) if e.kind.is_server_side() => return Err(e),
                Err(_) => continue,
            };
            state.insert(room_id.clone(), Value::Array(events));
        }
        out.insert("state".into(), Value::Object(state));
    }
    Ok(Value::Object(out))
}

/// Events around a result, with pagination tokens and, if asked, the senders' profiles.
fn event_context(
    services: &Services,
    request: &SearchRequest,
    item: &Found,
    context: ContextRequest,
    viewer: Viewer<'_>,
) -> ServiceResult<Option<Value>> {
    let store = services.rooms.store();
    let Ok(access) = services.rooms.read_access(&request.user_id, &item.room_id) else {
        return Ok(None);
    };
    let mut check = services.rooms.visibility_check(&request.user_id, &access);
    let everything = RoomEventFilter::default();
    let pos = item.event.meta.pos;
    let before = services.rooms.scan_timeline(
        &access.room,
        &mut check,
        &everything,
        0,
        pos,
        Direction::Backward,
        context.before.min(MAX_CONTEXT),
    )?;
    let after = services.rooms.scan_timeline(
        &access.room,
        &mut check,
        &everything,
        pos + 1,
        u64::MAX,
        Direction::Forward,
        context.after.min(MAX_CONTEXT),
    )?;
    let start = before
        .events
        .last()
        .map_or(pos, |e| e.meta.pos)
        .saturating_sub(1);
    let end = after.events.last().map_or(pos, |e| e.meta.pos);
    let mut render = |events: &[StoredEvent]| -> ServiceResult<Vec<Value>> {
        events
            .iter()
            .map(|e| client_event(store, e, &item.room_id, Some(viewer), Some(&mut check)))
            .collect()
    };
    let mut out = json!({
        "start": tokens::token(start),
        "end": tokens::token(end),
        "events_before": render(&before.events)?,
        "events_after": render(&after.events)?,
    });
    if context.include_profile {
        let mut senders: BTreeSet<&str> = BTreeSet::new();
        senders.insert(item.event.sender());
        senders.extend(before.events.iter().map(StoredEvent::sender));
        senders.extend(after.events.iter().map(StoredEvent::sender));
        let mut profiles = Map::new();
        for sender in senders {
            let member = store.state_event(item.event.meta.state_after, "m.room.member", sender)?;
            let Some(member) = member else {
                continue;
            };
            let mut profile = Map::new();
            for key in ["displayname", "avatar_url"] {
                if let Some(value) = member.content().get(key).filter(|v| v.is_string()) {
                    profile.insert(key.into(), value.clone());
                }
            }
            profiles.insert(sender.to_owned(), Value::Object(profile));
        }
        out["profile_info"] = Value::Object(profiles);
    }
    Ok(Some(out))
}
