//! Assembling a `/sync` answer for the positions `(since, upto]`.
//!
//! Spec: client-server API, `GET /sync` (response: `next_batch`, `rooms.join` with
//! `timeline`, `state`, `ephemeral`, `account_data`, `summary`, `unread_notifications`;
//! `rooms.invite` with stripped `invite_state`; `rooms.knock`; `rooms.leave`;
//! `account_data`; `to_device`), "Lazy-loading room members", "Stripped state", "Ignoring
//! Users", "Send-to-Device messaging".
//!
//! An initial sync (no `since`, or `full_state`) visits every room of the user; an
//! incremental one only the rooms the user's stream says changed, plus rooms whose
//! account data changed. Work grows with what changed, not with the number of rooms.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::ser::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::filters::{EventFormat, Filter};
use super::notifier::UserStream;
use super::SyncRequest;
use crate::services::accounts::account_data::AccountData;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::push::notifications::UnreadCounts;
use crate::services::rooms::client_event::{client_event, ClientEventView, Viewer};
use crate::services::rooms::event_store::{EventStore, Room, StoredEvent};
use crate::services::rooms::filter::RoomEventFilter;
use crate::services::rooms::history::Direction;
use crate::services::rooms::records::MembershipRecord;
use crate::services::rooms::remote_invite::STRIPPED_STATE_TYPES;
use crate::services::rooms::state_store::{ShortStateHash, StateMap};
use crate::services::rooms::stream_state;
use crate::services::rooms::tokens;
use crate::services::rooms::visibility::VisibilityCheck;
use crate::services::Services;

/// Timeline events per room when the filter names no limit.
const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// The most timeline events per room.
const MAX_TIMELINE_LIMIT: usize = 100;
/// Heroes in a room summary.
const MAX_HEROES: usize = 5;

struct Context<'a> {
    services: &'a Services,
    request: &'a SyncRequest,
    filter: &'a Filter,
    /// The timeline filter with ignored users added to `not_senders`.
    timeline_filter: RoomEventFilter,
    ignored: BTreeSet<String>,
    since: Option<u64>,
    upto: u64,
    /// Whether every room gets its full state (initial sync or `full_state`).
    full: bool,
    /// Whether the timeline filter may leave out state events (then an incremental sync
    /// sends the state delta even when the timeline is not limited).
    timeline_may_drop_state: bool,
    viewer: Viewer<'a>,
}

impl Context<'_> {
    fn store(&self) -> &EventStore {
        self.services.rooms.store()
    }

    /// The syncing user and device.
    fn device(&self) -> (&str, &str) {
        (&self.request.user_id, &self.request.device_id)
    }

    /// An event as the filter's `event_format` and `event_fields` ask. Without
    /// `event_fields` it is written out from the stored event, not copied.
    ///
    /// `loaded`: timeline events loaded with it (its replaced state event, for
    /// `prev_content`, is often among them: an invite and the join that replaced it).
    fn render<'e>(
        &self,
        event: &'e StoredEvent,
        (room_id, loaded): (&'e str, &[StoredEvent]),
        check: &mut VisibilityCheck<'_>,
    ) -> ServiceResult<EventJson<'e>> {
        let store = self.store();
        let viewer = Some(self.viewer);
        Ok(
            match (self.filter.event_format, &self.filter.event_fields) {
                (EventFormat::Client, None) => EventJson::Client(ClientEventView::new(
                    store,
                    (event, loaded),
                    room_id,
                    viewer,
                    Some(check),
                )?),
                (EventFormat::Federation, None) => EventJson::Pdu(event),
                (EventFormat::Client, Some(_)) => EventJson::Projected(
                    self.filter
                        .project(client_event(store, event, room_id, viewer, Some(check))?),
                ),
                (EventFormat::Federation, Some(_)) => {
                    EventJson::Projected(self.filter.project(event.pdu().clone()))
                }
            },
        )
    }

    /// Events of one room, with what `check` (the user's visibility check there) lets
    /// them see of bundles and redactions. A timeline's events are each other's
    /// `loaded` (a join and the invite it replaced); a state section's never are (one
    /// event per key: what one replaced is not beside it), so they get none.
    fn render_all<'e>(
        &self,
        events: &'e [StoredEvent],
        (room_id, timeline): (&'e str, bool),
        check: &mut VisibilityCheck<'_>,
    ) -> ServiceResult<Vec<EventJson<'e>>> {
        let loaded = if timeline { events } else { &[] };
        events
            .iter()
            .map(|e| self.render(e, (room_id, loaded), check))
            .collect()
    }
}

/// An event of the answer.
enum EventJson<'e> {
    Client(ClientEventView<'e>),
    Pdu(&'e StoredEvent),
    Projected(Value),
}

impl Serialize for EventJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Client(view) => view.serialize(serializer),
            Self::Pdu(event) => match event.pdu_json() {
                Some(json) => json.serialize(serializer),
                None => event.pdu().serialize(serializer),
            },
            Self::Projected(value) => value.serialize(serializer),
        }
    }
}

/// `{"events": [...]}`.
#[derive(serde::Serialize)]
struct Events<T> {
    events: Vec<T>,
}

/// A room's `timeline`.
#[derive(serde::Serialize)]
struct TimelineJson<'e> {
    events: Vec<EventJson<'e>>,
    limited: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_batch: Option<String>,
}

/// `rooms.join.{roomId}`: a left room's members and the joined-only ones.
#[derive(serde::Serialize)]
struct JoinedRoomJson<'e> {
    #[serde(flatten)]
    room: LeftRoomJson<'e>,
    ephemeral: Events<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Value>,
    unread_notifications: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    unread_thread_notifications: Option<Value>,
}

/// `rooms.leave.{roomId}`.
#[derive(serde::Serialize)]
struct LeftRoomJson<'e> {
    timeline: TimelineJson<'e>,
    /// The state up to the timeline's start; or, when the client asked
    /// `use_state_after`, `state_after`: the state up to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<Events<EventJson<'e>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_after: Option<Events<EventJson<'e>>>,
    account_data: Events<Value>,
}

/// `(state, state_after)` of a room section: the events in the one the client asked for.
type StateFields<'e> = (Option<Events<EventJson<'e>>>, Option<Events<EventJson<'e>>>);

fn state_fields<'e>(ctx: &Context<'_>, events: Vec<EventJson<'e>>) -> StateFields<'e> {
    let events = Some(Events { events });
    if ctx.request.use_state_after {
        (None, events)
    } else {
        (events, None)
    }
}

impl<'e> LeftRoomJson<'e> {
    fn new(
        ctx: &Context<'_>,
        room_id: &'e str,
        (timeline, state): (&'e Timeline, &'e [StoredEvent]),
        check: &mut VisibilityCheck<'_>,
        account_data: Vec<Value>,
    ) -> ServiceResult<Self> {
        let (state, state_after) =
            state_fields(ctx, ctx.render_all(state, (room_id, false), check)?);
        Ok(Self {
            timeline: TimelineJson {
                events: ctx.render_all(&timeline.events, (room_id, true), check)?,
                limited: timeline.limited,
                prev_batch: Some(tokens::token(timeline.prev_batch)),
            },
            state,
            state_after,
            account_data: Events {
                events: account_data,
            },
        })
    }
}

/// `{"events": [...]}` taking the events over (`json!` would serialize a copy of them).
fn events_object(events: Vec<Value>) -> Value {
    Value::Object(Map::from_iter([(
        "events".to_owned(),
        Value::Array(events),
    )]))
}

/// A section of the answer written out to JSON on the thread that built it.
fn raw_json(value: &impl Serialize) -> ServiceResult<Box<RawValue>> {
    serde_json::value::to_raw_value(value)
        .map_err(|e| ServiceError::internal(format!("sync answer: {e}")))
}

/// A `/sync` answer: the top-level members, and each room's section already written
/// out to JSON (rooms are built on two threads, and so are their bytes), or, for a large
/// full answer, the rooms still to build.
pub struct SyncResponse {
    /// Every member but `rooms`.
    fields: Map<String, Value>,
    /// `rooms.{join,invite,knock,leave}`: room id to its section.
    rooms: BTreeMap<&'static str, BTreeMap<String, Box<RawValue>>>,
    /// Rooms built while the answer is sent (instead of `rooms`).
    deferred: Option<DeferredRooms>,
}

impl std::fmt::Debug for SyncResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncResponse")
            .field("fields", &self.fields)
            .field("rooms", &self.rooms)
            .field("deferred", &self.deferred.as_ref().map(|d| d.rooms.len()))
            .finish()
    }
}

impl SyncResponse {
    /// An answer without rooms.
    pub fn new(fields: Map<String, Value>) -> Self {
        Self {
            fields,
            rooms: BTreeMap::new(),
            deferred: None,
        }
    }

    /// Whether the answer carries only what every answer has (nothing new).
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
            && self.deferred.is_none()
            && self
                .fields
                .keys()
                .all(|k| ALWAYS_PRESENT.contains(&k.as_str()))
    }
}

/// Bytes an answer's pieces are gathered into before they are handed on.
const CHUNK_BYTES: usize = 64 << 10;
/// A full answer of at least this many rooms builds them while it is sent.
const DEFER_ROOMS: usize = 256;
/// Rooms built at a time for an answer being sent.
const DEFERRED_BATCH: usize = 256;
/// Batches of an answer being sent between two returns of free memory to the system.
const TRIM_EVERY_BATCHES: usize = 16;
/// Pieces of an answer waiting for a slow reader before its builder pauses.
const CHUNKS_AHEAD: usize = 4;

/// The rooms of a full answer, with what building them needs.
struct DeferredRooms {
    services: Arc<Services>,
    request: Arc<SyncRequest>,
    upto: u64,
    /// Sorted by [`Section`], so each member of `rooms` is written in one go.
    rooms: Vec<RoomToSync>,
}

impl DeferredRooms {
    /// The sections, built [`DEFERRED_BATCH`] rooms at a time.
    fn into_sections(self) -> impl Iterator<Item = ServiceResult<RoomSection>> + Send {
        let mut rooms: VecDeque<RoomToSync> = self.rooms.into();
        let mut built: VecDeque<RoomSection> = VecDeque::new();
        let mut failed = false;
        let mut batches = 0usize;
        std::iter::from_fn(move || loop {
            if let Some(section) = built.pop_front() {
                return Some(Ok(section));
            }
            if batches.is_multiple_of(TRIM_EVERY_BATCHES) || rooms.is_empty() {
                // A large answer is a burst of allocations on threads of their own (so
                // in glibc arenas of their own): memory freed before it in other arenas,
                // and what it frees itself, goes back to the system as it goes.
                crate::services::memory::trim_heap();
            }
            batches += 1;
            if rooms.is_empty() || failed {
                return None;
            }
            let batch: Vec<RoomToSync> = rooms.drain(..DEFERRED_BATCH.min(rooms.len())).collect();
            let sections = Context::new(&self.services, &self.request, self.upto)
                .and_then(|ctx| build_sections(&ctx, &batch, true));
            match sections {
                Ok(sections) => built.extend(sections),
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        })
    }
}

/// Writes an answer out: its top-level members, then room sections grouped by kind.
struct AnswerWriter {
    buffer: Vec<u8>,
    /// Whether the top-level object already holds a member.
    has_members: bool,
    /// The member of `rooms` being written, once `rooms` is open.
    kind: Option<&'static str>,
}

impl AnswerWriter {
    fn new(fields: &Map<String, Value>) -> Self {
        let mut buffer = serde_json::to_vec(fields).unwrap_or_else(|_| b"{}".to_vec());
        buffer.pop(); // the closing brace, written by `finish`
        Self {
            has_members: buffer.len() > 1,
            buffer,
            kind: None,
        }
    }

    fn section(&mut self, (kind, room_id, section): RoomSection) {
        let name = kind.name();
        match self.kind {
            None => {
                if self.has_members {
                    self.buffer.push(b',');
                }
                self.buffer.extend_from_slice(b"\"rooms\":{");
                json_string(&mut self.buffer, name);
                self.buffer.extend_from_slice(b":{");
            }
            Some(open) if open != name => {
                self.buffer.extend_from_slice(b"},");
                json_string(&mut self.buffer, name);
                self.buffer.extend_from_slice(b":{");
            }
            Some(_) => self.buffer.push(b','),
        }
        self.kind = Some(name);
        json_string(&mut self.buffer, &room_id);
        self.buffer.push(b':');
        self.buffer.extend_from_slice(section.get().as_bytes());
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES + (CHUNK_BYTES >> 2)),
        )
    }

    fn finish(mut self) -> Vec<u8> {
        if self.kind.is_some() {
            self.buffer.extend_from_slice(b"}}");
        }
        self.buffer.push(b'}');
        self.buffer
    }
}

impl SyncResponse {
    /// Whether writing the answer out builds rooms (blocking work).
    pub fn builds_while_sent(&self) -> bool {
        self.deferred.is_some()
    }

    /// The answer as JSON, in pieces of about [`CHUNK_BYTES`], written out as they are
    /// taken: each room's section is dropped once copied, so sending an answer of many
    /// rooms holds it once (sections not yet sent), never twice (sections and the whole
    /// text, as serializing it into one buffer did). A large full answer builds its rooms
    /// a batch at a time as the pieces are taken, so it is never held whole: 83 MB of
    /// JSON for a user in 20,000 rooms. An error while building ends the pieces with it.
    pub fn into_json_chunks(self) -> impl Iterator<Item = ServiceResult<Vec<u8>>> + Send {
        let eager = self.rooms.into_iter().flat_map(|(name, sections)| {
            let kind = match name {
                "join" => Section::Join,
                "invite" => Section::Invite,
                "knock" => Section::Knock,
                _ => Section::Leave,
            };
            sections
                .into_iter()
                .map(move |(room_id, section)| Ok((kind, room_id, section)))
        });
        let mut sections: Box<dyn Iterator<Item = ServiceResult<RoomSection>> + Send> =
            match self.deferred {
                Some(deferred) => Box::new(deferred.into_sections()),
                None => Box::new(eager),
            };
        let mut writer = Some(AnswerWriter::new(&self.fields));
        std::iter::from_fn(move || {
            let out = writer.as_mut()?;
            loop {
                match sections.next() {
                    Some(Ok(section)) => out.section(section),
                    Some(Err(e)) => {
                        writer = None;
                        return Some(Err(e));
                    }
                    None => return writer.take().map(|w| Ok(w.finish())),
                }
                if out.buffer.len() >= CHUNK_BYTES {
                    return Some(Ok(out.take()));
                }
            }
        })
    }

    /// The answer as a stream of JSON pieces for the transport. An answer that builds
    /// rooms as it is sent does so on a blocking thread, at most [`CHUNKS_AHEAD`] pieces
    /// ahead of the reader; a reader that goes away stops it. An error after the first
    /// piece can no longer change the status: it is logged and ends the stream with an
    /// error, so the client sees a cut answer, never a wrong one.
    pub fn into_byte_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send {
        use futures_util::StreamExt;
        let failed = |e: ServiceError| {
            tracing::error!("sync answer cut short: {e}");
            std::io::Error::other(e.to_string())
        };
        if !self.builds_while_sent() {
            let chunks = self.into_json_chunks().map(move |c| c.map_err(failed));
            return futures_util::stream::iter(chunks).left_stream();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || {
            for chunk in self.into_json_chunks() {
                let last = chunk.is_err();
                if tx.blocking_send(chunk.map_err(failed)).is_err() || last {
                    break;
                }
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        })
        .right_stream()
    }
}

/// `text` as a JSON string.
fn json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

impl<'a> Context<'a> {
    /// What every room of the answer for `(request.since, upto]` needs.
    fn new(services: &'a Services, request: &'a SyncRequest, upto: u64) -> ServiceResult<Self> {
        let filter = &request.filter;
        let ignored: BTreeSet<String> = services
            .accounts
            .ignored_users(&request.user_id)?
            .into_iter()
            .collect();
        let mut timeline_filter = filter.room.timeline.clone();
        timeline_filter.not_senders.extend(ignored.iter().cloned());
        let since = request.since.map(|s| s.min(upto));
        let timeline_may_drop_state = {
            let f = &timeline_filter;
            f.types.is_some()
                || !f.not_types.is_empty()
                || f.senders.is_some()
                || !f.not_senders.is_empty()
                || f.contains_url.is_some()
        };
        Ok(Self {
            services,
            request,
            filter,
            timeline_filter,
            ignored,
            since,
            upto,
            full: since.is_none() || request.full_state,
            timeline_may_drop_state,
            viewer: Viewer {
                user_id: &request.user_id,
                device_id: &request.device_id,
            },
        })
    }
}

/// Builds the answer for `(request.since, upto]`. The rooms of a large full answer are
/// left to be built as it is sent ([`SyncResponse::into_byte_stream`]).
pub fn build(
    services: &Arc<Services>,
    request: &Arc<SyncRequest>,
    stream: &UserStream,
    upto: u64,
) -> ServiceResult<SyncResponse> {
    let ctx = Context::new(services, request, upto)?;
    let (filter, since) = (&request.filter, ctx.since);

    if ctx.full {
        // The client starts afresh: it holds no member events.
        services
            .sync
            .lazy_members
            .reset(&request.user_id, &request.device_id);
    }

    // Account data first: room account data can put a room in the answer.
    let account_data = match (ctx.full, since) {
        (false, Some(since)) => {
            services
                .accounts
                .account_data_changed(&request.user_id, since, upto)?
        }
        _ => services.accounts.all_account_data(&request.user_id)?,
    };
    let mut global_data = Vec::new();
    let mut room_data: HashMap<String, Vec<AccountData>> = HashMap::new();
    for data in account_data {
        match &data.room_id {
            Some(room) => room_data.entry(room.clone()).or_default().push(data),
            None => global_data.push(data),
        }
    }

    let store = services.rooms.store();
    let rooms: Vec<(String, MembershipRecord)> = match (ctx.full, since) {
        (false, Some(since)) => {
            let mut shorts = stream.rooms_changed(since);
            let mut seen: BTreeSet<u64> = shorts.iter().copied().collect();
            for room_id in room_data.keys() {
                if let Some(short) = store.room_short(room_id)? {
                    if seen.insert(short) {
                        shorts.push(short);
                    }
                }
            }
            let mut out = Vec::with_capacity(shorts.len());
            for short in shorts {
                let room = store.room_by_short(short)?;
                if let Some(record) = store.membership(&request.user_id, &room.record.room_id)? {
                    out.push((room.record.room_id, record));
                }
            }
            out
        }
        _ => store.memberships_of(&request.user_id)?,
    };

    let mut rooms: Vec<RoomToSync> = rooms
        .into_iter()
        .filter(|(room_id, record)| filter.room.matches_room(room_id) && !record.forgotten)
        .map(|(room_id, record)| {
            let data = room_data.remove(&room_id).unwrap_or_default();
            (room_id, record, data)
        })
        .collect();
    // Rooms joined since `since`: their members' presence is news to the user.
    let newly_joined: Vec<String> = match since {
        Some(since) if !ctx.full => rooms
            .iter()
            .filter(|(_, record, _)| record.membership == "join" && record.joined_at > since)
            .map(|(room_id, _, _)| room_id.clone())
            .collect(),
        _ => Vec::new(),
    };
    let mut room_sections: BTreeMap<&'static str, BTreeMap<String, Box<RawValue>>> =
        BTreeMap::new();
    let mut deferred = None;
    if ctx.full && rooms.len() >= DEFER_ROOMS {
        // A full answer never comes out empty, so nothing needs the rooms before they
        // are sent: they are built batch by batch as the client reads.
        rooms.sort_by_key(|(_, record, _)| Section::of(record).name());
        deferred = Some(DeferredRooms {
            services: Arc::clone(services),
            request: Arc::clone(request),
            upto,
            rooms,
        });
    } else {
        for (kind, room_id, section) in build_sections(&ctx, &rooms, false)? {
            room_sections
                .entry(kind.name())
                .or_default()
                .insert(room_id, section);
        }
    }

    let to_device = if request.deliver_to_device {
        services.accounts.take_to_device(
            &request.user_id,
            &request.device_id,
            request.to_device_since.unwrap_or(0).min(upto),
            upto,
        )?
    } else {
        crate::services::accounts::to_device::Delivery::default()
    };
    let mut response = Map::new();
    let next_batch = match to_device.more_after {
        // Messages left for the next answer: the token says how far this one went.
        Some(last) => format!("{}_{last}", tokens::token(upto)),
        None => tokens::token(upto),
    };
    response.insert("next_batch".into(), json!(next_batch));
    if !to_device.events.is_empty() {
        response.insert("to_device".into(), events_object(to_device.events));
    }
    let mut global: Vec<Value> = global_data
        .into_iter()
        .filter(|d| filter.account_data.matches(&d.kind, ""))
        .filter(|d| d.content.as_object().is_none_or(|o| !o.is_empty()) || !ctx.full)
        .map(|d| json!({ "type": d.kind, "content": d.content }))
        .collect();
    if filter.account_data.matches("m.push_rules", "") {
        let after = if ctx.full { None } else { since };
        if let Some(rules) = services.push.rules_event(&request.user_id, after, upto)? {
            global.push(rules);
        }
    }
    if !global.is_empty() {
        response.insert("account_data".into(), events_object(global));
    }
    let presence = presence_events(&ctx, stream, &newly_joined)?;
    if !presence.is_empty() {
        response.insert("presence".into(), events_object(presence));
    }
    // Spec: `device_lists` "only present on an incremental sync".
    if let Some(since) = since {
        let rooms = stream.rooms_changed(since);
        let key_changes = stream.device_lists_changed(since);
        let lists = super::device_lists::changes(
            services,
            &request.user_id,
            since,
            upto,
            &rooms,
            key_changes,
        )?;
        if !lists.is_empty() {
            response.insert(
                "device_lists".into(),
                json!({ "changed": lists.changed, "left": lists.left }),
            );
        }
    }
    add_device_key_counts(services, request, &mut response)?;
    Ok(SyncResponse {
        fields: response,
        rooms: room_sections,
        deferred,
    })
}

/// Members every answer carries for the syncing device, news or not.
const ALWAYS_PRESENT: &[&str] = &[
    "next_batch",
    "device_one_time_keys_count",
    "device_unused_fallback_key_types",
];

/// The device's unclaimed one-time keys and unused fallback key types. Spec: "Extensions
/// to /sync": `device_unused_fallback_key_types` is required in every answer.
pub fn add_device_key_counts(
    services: &Services,
    request: &SyncRequest,
    response: &mut Map<String, Value>,
) -> ServiceResult<()> {
    let accounts = &services.accounts;
    let counts = accounts.one_time_key_counts(&request.user_id, &request.device_id)?;
    let fallback = accounts.unused_fallback_key_types(&request.user_id, &request.device_id)?;
    response.insert("device_one_time_keys_count".into(), json!(counts));
    response.insert("device_unused_fallback_key_types".into(), json!(fallback));
    Ok(())
}

/// `m.presence` of the user and of the users who share a joined room with them: what
/// changed since `since`, or everyone not offline in a full sync. An incremental sync
/// takes whose presence changed from the user's stream (the notifier told exactly the
/// room mates); only a token older than the stream falls back to checking every change.
fn presence_events(
    ctx: &Context<'_>,
    stream: &UserStream,
    newly_joined: &[String],
) -> ServiceResult<Vec<Value>> {
    let services = ctx.services;
    let me = ctx.request.user_id.as_str();
    let filter = &ctx.filter.presence;
    if !services.presence.enabled() || !filter.matches("m.presence", "") && filter.senders.is_none()
    {
        return Ok(Vec::new());
    }
    let (candidates, room_mates) = match (ctx.full, ctx.since) {
        (false, Some(since)) => match stream.presence_changed(since) {
            Some(users) => {
                let records = users
                    .into_iter()
                    .filter_map(|u| services.presence.get(&u).map(|r| (u, r)))
                    .filter(|(_, r)| r.pos > since && r.pos <= ctx.upto)
                    .collect();
                (records, true)
            }
            None => (services.presence.changed(since, ctx.upto), false),
        },
        _ => (services.presence.not_offline(ctx.upto), false),
    };
    // A user who joined a room since `since` has not been told its members' presence
    // (it changed before they shared a room): send it now, unless offline, as Synapse
    // does. The spec's presence module leaves this to the server.
    let mut candidates = candidates;
    let mut newcomers: BTreeSet<String> = BTreeSet::new();
    for room_id in newly_joined {
        let room = services.rooms.known_room(room_id)?;
        for member in services
            .rooms
            .store()
            .state_events(room.record.state, Some("m.room.member"))?
        {
            let joined = member.content().get("membership").and_then(Value::as_str) == Some("join");
            if let (true, Some(user)) = (joined, member.state_key()) {
                if user != me {
                    newcomers.insert(user.to_owned());
                }
            }
        }
    }
    for user in newcomers {
        if candidates.iter().any(|(u, _)| *u == user) {
            continue;
        }
        if let Some(record) = services.presence.get(&user) {
            if record.state != crate::services::ephemeral::presence::State::Offline {
                candidates.push((user, record));
            }
        }
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mine: BTreeSet<String> = if room_mates {
        BTreeSet::new()
    } else {
        services.rooms.joined_rooms(me)?.into_iter().collect()
    };
    let limit = filter
        .limit
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let now = crate::services::now_ms();
    let mut out = Vec::new();
    for (user, record) in candidates {
        if out.len() >= limit {
            break;
        }
        if !filter.matches("m.presence", &user) || ctx.ignored.contains(&user) {
            continue;
        }
        if !room_mates
            && user != me
            && !services
                .rooms
                .joined_rooms(&user)?
                .iter()
                .any(|r| mine.contains(r))
        {
            continue;
        }
        out.push(json!({
            "type": "m.presence",
            "sender": user,
            "content": record.content(now),
        }));
    }
    Ok(out)
}

/// Rooms at or above which a sync builds its rooms on two threads.
const PARALLEL_ROOMS: usize = 32;

/// Where a room goes in the answer.
#[derive(Clone, Copy)]
enum Section {
    Join,
    Invite,
    Knock,
    Leave,
}

impl Section {
    /// Where the user's membership puts a room.
    fn of(record: &MembershipRecord) -> Self {
        match record.membership.as_str() {
            "join" => Self::Join,
            "invite" => Self::Invite,
            "knock" => Self::Knock,
            _ => Self::Leave,
        }
    }

    /// Its member of `rooms`.
    fn name(&self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Invite => "invite",
            Self::Knock => "knock",
            Self::Leave => "leave",
        }
    }
}

type RoomSection = (Section, String, Box<RawValue>);

/// A room of the answer: its id, the user's membership and its account data news.
type RoomToSync = (String, MembershipRecord, Vec<AccountData>);

/// The sections of some rooms, built on two threads when there are many (rooms are
/// independent).
///
/// With `read_once` (a large full answer, built as it is sent) the rooms' reads leave the
/// block cache as it is: an initial sync of 20,000 rooms reads ~170 MB of table blocks
/// once, and cached they took ~50 MiB of memory, evicted what other requests read, and
/// bought this answer nothing (measured in docs/benchmarks.md).
fn build_sections(
    ctx: &Context<'_>,
    rooms: &[RoomToSync],
    read_once: bool,
) -> ServiceResult<Vec<RoomSection>> {
    let sections = |rooms| match read_once {
        true => crate::storage::bulk_reads(|| room_sections(ctx, rooms)),
        false => room_sections(ctx, rooms),
    };
    if rooms.len() < PARALLEL_ROOMS {
        return sections(rooms);
    }
    let (first, second) = rooms.split_at(rooms.len() / 2);
    let (a, b) = std::thread::scope(|scope| {
        let other = scope.spawn(|| sections(second));
        let mine = sections(first);
        let theirs = other
            .join()
            .unwrap_or_else(|_| Err(ServiceError::internal("sync thread failed")));
        (mine, theirs)
    });
    let mut all = a?;
    all.extend(b?);
    Ok(all)
}

/// The sections of some rooms.
fn room_sections(ctx: &Context<'_>, rooms: &[RoomToSync]) -> ServiceResult<Vec<RoomSection>> {
    let store = ctx.store();
    let (since, upto) = (ctx.since, ctx.upto);
    let mut out = Vec::with_capacity(rooms.len());
    let ids: Vec<&str> = rooms.iter().map(|(id, _, _)| id.as_str()).collect();
    for ((room_id, record, data), room) in rooms.iter().zip(store.rooms(&ids)?) {
        let Some(room) = room else {
            continue;
        };
        let room_id = room_id.clone();
        match record.membership.as_str() {
            "join" => {
                if let Some(section) = joined_room(ctx, &room, record, data)? {
                    out.push((Section::Join, room_id, section));
                }
            }
            "invite" => {
                let new = since.is_none_or(|s| record.pos > s) || ctx.full;
                if new && record.pos <= upto && !invited_by_ignored(ctx, record)? {
                    let state = stripped_state(ctx, &room, record)?;
                    out.push((
                        Section::Invite,
                        room_id,
                        raw_json(&json!({ "invite_state": { "events": state } }))?,
                    ));
                }
            }
            "knock" => {
                let new = since.is_none_or(|s| record.pos > s) || ctx.full;
                if new && record.pos <= upto {
                    let state = stripped_state(ctx, &room, record)?;
                    out.push((
                        Section::Knock,
                        room_id,
                        raw_json(&json!({ "knock_state": { "events": state } }))?,
                    ));
                }
            }
            _ => {
                // Left or banned: in an incremental sync when it happened since `since`;
                // otherwise only with `include_leave`.
                let new = since.is_some_and(|s| record.pos > s);
                if (new || ctx.filter.room.include_leave) && record.pos <= upto {
                    if let Some(section) = left_room(ctx, &room, record, data)? {
                        out.push((Section::Leave, room_id, section));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Whether an invite came from a user the invitee ignores (spec: "Ignoring Users": the
/// server must not send invites from ignored users).
fn invited_by_ignored(ctx: &Context<'_>, record: &MembershipRecord) -> ServiceResult<bool> {
    if ctx.ignored.is_empty() {
        return Ok(false);
    }
    Ok(ctx
        .store()
        .event_by_id(&record.event_id)?
        .is_some_and(|e| ctx.ignored.contains(e.sender())))
}

/// The stripped state of an invite or knock: the recommended state events at the
/// membership event, and the membership event itself.
fn stripped_state(
    ctx: &Context<'_>,
    room: &Room,
    record: &MembershipRecord,
) -> ServiceResult<Vec<Value>> {
    let store = ctx.store();
    let Some(member) = store.event_by_id(&record.event_id)? else {
        return Ok(Vec::new());
    };
    // A room we are not in: the state the other server sent with the event.
    let remote = store.stripped_state(member.short)?;
    let from_state = remote.is_none();
    let mut out = remote.unwrap_or_default();
    for kind in STRIPPED_STATE_TYPES.into_iter().filter(|_| from_state) {
        if let Some(event) = store.state_event(member.meta.state_before, kind, "")? {
            out.push(stripped(&event));
        }
    }
    if let Some(sender) =
        store.state_event(member.meta.state_before, "m.room.member", member.sender())?
    {
        out.push(stripped(&sender));
    }
    let mut own = client_event(store, &member, &room.record.room_id, Some(ctx.viewer), None)?;
    if let Some(own) = own.as_object_mut() {
        own.remove("room_id");
    }
    out.push(own);
    Ok(out)
}

fn stripped(event: &StoredEvent) -> Value {
    json!({
        "type": event.kind(),
        "state_key": event.state_key().unwrap_or(""),
        "content": event.content(),
        "sender": event.sender(),
    })
}

/// A room's timeline for `(lower, upper]` positions: the newest `limit` visible events.
struct Timeline {
    events: Vec<StoredEvent>,
    limited: bool,
    prev_batch: u64,
}

fn timeline(
    ctx: &Context<'_>,
    room: &Room,
    check: &mut VisibilityCheck<'_>,
    after: Option<u64>,
    upto: u64,
) -> ServiceResult<Timeline> {
    if !ctx.filter.room.timeline.matches_room(&room.record.room_id) {
        // Left out by the timeline filter's own `rooms` / `not_rooms`: no events, and no
        // gap to tell of.
        return Ok(Timeline {
            events: Vec::new(),
            limited: false,
            prev_batch: upto,
        });
    }
    let limit = ctx
        .timeline_filter
        .limit
        .map_or(DEFAULT_TIMELINE_LIMIT, |l| l as usize)
        .min(MAX_TIMELINE_LIMIT);
    let mut lower = after.map_or(0, |a| a + 1);
    let upper = upto.saturating_add(1);
    // An event that came with a gap before it (prev events another server could not
    // give): the client's timeline does not run on into it. The timeline starts at the
    // newest such event, `limited`, its `prev_batch` before the gap, and the state
    // section brings the client from what it holds to the state before that event.
    let gap = match after {
        Some(_) => stream_state::newest_gap(ctx.store(), room.short, lower, upper)?,
        None => None,
    };
    if let Some(at) = gap {
        lower = at;
    }
    let gap = gap.is_some();
    if limit == 0 || lower >= upper {
        let more = lower < upper;
        return Ok(Timeline {
            events: Vec::new(),
            limited: more,
            prev_batch: upto,
        });
    }
    // One event more than the limit tells whether there is a gap (`limited`).
    let scan = ctx.services.rooms.scan_timeline(
        room,
        check,
        &ctx.timeline_filter,
        lower,
        upper,
        Direction::Backward,
        limit + 1,
    )?;
    let mut events = scan.events;
    // Short of the extra event, the scan only stops early after scanning its maximum.
    let limited = gap || events.len() > limit || scan.more_after.is_some();
    events.truncate(limit);
    events.reverse();
    let prev_batch = match events.first() {
        Some(first) => first.meta.pos.saturating_sub(1),
        // Nothing shown after a gap: paging back starts just before it.
        None if gap => lower.saturating_sub(1),
        None => after.unwrap_or(upto),
    };
    Ok(Timeline {
        events,
        limited,
        prev_batch,
    })
}

/// The state snapshot after the room's last event at or before `pos` (0: none yet): that
/// event's own state, which a client applying the timeline in order last built on.
pub(super) fn snapshot_at(
    store: &EventStore,
    room: &Room,
    pos: u64,
) -> ServiceResult<ShortStateHash> {
    let last = store.timeline(room.short, 0, pos.saturating_add(1), true, 1)?;
    match last.first() {
        Some((_, short)) => Ok(store.meta(*short)?.state_after),
        None => Ok(0),
    }
}

/// The room's current state as of `pos` (0: none yet): after a fork, the resolution of
/// the branches rather than the last event's own state.
pub(super) fn resolved_at(
    store: &EventStore,
    room: &Room,
    pos: u64,
) -> ServiceResult<ShortStateHash> {
    if pos >= room.record.last_pos {
        return Ok(room.record.state);
    }
    let last = store.timeline(room.short, 0, pos.saturating_add(1), true, 1)?;
    match last.first() {
        Some((_, short)) => {
            stream_state::current_after(store, *short, store.meta(*short)?.state_after)
        }
        None => Ok(0),
    }
}

/// Where a room's state section runs to and from: `(to, from)`, `from` being what the
/// client holds (`None`: nothing, so the whole state). `upto` is where the room's
/// section ends (a left room's: the leave).
///
/// Spec: `state` runs "between the time indicated by the since parameter, and the start
/// of the timeline"; the client applies the timeline's state events after it. Under
/// `use_state_after`, `state_after` runs to the end of the timeline, from the room's
/// resolved state at the token (which is what such a client holds), to its resolved
/// state at the end: after a fork, the client holds the room's state even when the
/// timeline's last state event lost the resolution.
fn state_span(
    ctx: &Context<'_>,
    room: &Room,
    timeline: &Timeline,
    upto: u64,
    fresh: bool,
) -> ServiceResult<(ShortStateHash, Option<ShortStateHash>)> {
    let store = ctx.store();
    // A left room's section ends at the leave, which may be before the token.
    let since = ctx.since.unwrap_or(0).min(upto);
    if ctx.request.use_state_after {
        let end = resolved_at(store, room, upto)?;
        let from = match fresh {
            true => None,
            false => Some(resolved_at(store, room, since)?),
        };
        return Ok((end, from));
    }
    let start = match timeline.events.first() {
        Some(first) => first.meta.state_before,
        None => snapshot_at(store, room, upto)?,
    };
    if fresh {
        Ok((start, None))
    } else if timeline.limited || ctx.timeline_may_drop_state {
        Ok((start, Some(snapshot_at(store, room, since)?)))
    } else {
        // Every state change since `since` is in the timeline.
        Ok((start, Some(start)))
    }
}

/// State events to send: all of `start` (full) or what differs from `since_state`.
fn state_section(
    ctx: &Context<'_>,
    start: ShortStateHash,
    since_state: Option<ShortStateHash>,
    timeline: &[StoredEvent],
) -> ServiceResult<Vec<StoredEvent>> {
    let store = ctx.store();
    if start == 0 || since_state == Some(start) {
        return Ok(Vec::new());
    }
    let now: StateMap = store.state().load(start)?;
    let before: StateMap = match since_state {
        Some(0) | None => StateMap::default(),
        Some(snapshot) => store.state().load(snapshot)?,
    };
    // Under `state_after` the client takes no state from the timeline: nothing is left
    // out for being in it.
    let in_timeline: BTreeSet<u64> = match ctx.request.use_state_after {
        true => BTreeSet::new(),
        false => timeline.iter().map(|e| e.short).collect(),
    };
    let mut shorts: Vec<u64> = now
        .iter()
        .filter(|(key, event)| before.get(key) != Some(event) && !in_timeline.contains(event))
        .map(|(_, event)| *event)
        .collect();
    shorts.sort_unstable();
    let state_filter = &ctx.filter.room.state;
    let mut events = store.events(&shorts)?;
    events.retain(|e| state_filter.matches(e));
    // Spec: "Lazy-loading room members": only the member events of the timeline's senders
    // (and the syncing user's own); but an incremental sync's state is what changed in
    // the gap before a limited timeline, whose membership events the server "MUST
    // return ... regardless as to whether or not they are redundant".
    let incremental = matches!(since_state, Some(snapshot) if snapshot != 0);
    if state_filter.lazy_load_members && !incremental {
        let mut wanted: BTreeSet<&str> = timeline.iter().map(StoredEvent::sender).collect();
        wanted.insert(&ctx.request.user_id);
        events.retain(|e| {
            e.kind() != "m.room.member" || e.state_key().is_some_and(|k| wanted.contains(k))
        });
    }
    Ok(events)
}

/// Member events of timeline senders missing from the state section that the device has
/// not been sent (lazy loading in an incremental sync), or all of them with
/// `include_redundant_members`.
fn lazy_members(
    ctx: &Context<'_>,
    room: u64,
    start: ShortStateHash,
    timeline: &[StoredEvent],
    state: &[StoredEvent],
) -> ServiceResult<Vec<StoredEvent>> {
    // Where each sender first appears in the timeline: a member event of theirs in the
    // timeline stands for their membership only from there on (a message before their
    // display name change is shown with the membership from before the timeline).
    let mut first_sent: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, event) in timeline.iter().enumerate() {
        first_sent.entry(event.sender()).or_insert(i);
    }
    let in_timeline = timeline.iter().enumerate().filter_map(|(i, e)| {
        let key = e.state_key().filter(|_| e.kind() == "m.room.member")?;
        (first_sent.get(key).is_none_or(|first| i <= *first)).then_some(key)
    });
    let have: BTreeSet<&str> = state
        .iter()
        .filter(|e| e.kind() == "m.room.member")
        .filter_map(StoredEvent::state_key)
        .chain(in_timeline)
        .collect();
    let mut out = Vec::new();
    for sender in first_sent.keys().filter(|s| !have.contains(*s)) {
        let Some(event) = ctx.store().state_event(start, "m.room.member", sender)? else {
            continue;
        };
        let since = ctx.since.unwrap_or(0);
        let redundant = ctx.filter.room.state.include_redundant_members;
        let lazy = &ctx.services.sync.lazy_members;
        if redundant || !lazy.has(ctx.device(), room, sender, event.short, since) {
            out.push(event);
        }
    }
    Ok(out)
}

/// `rooms.join.{roomId}`, or `None` when nothing in it is new.
fn joined_room(
    ctx: &Context<'_>,
    room: &Room,
    record: &MembershipRecord,
    data: &[AccountData],
) -> ServiceResult<Option<Box<RawValue>>> {
    let room_id = room.record.room_id.as_str();
    let store = ctx.store();
    // A join since `since` is like an initial sync of the room.
    let newly_joined = ctx.since.is_some_and(|s| record.joined_at > s);
    let full = ctx.full || newly_joined;
    // Spec: with `full_state` "the timeline will still be limited by the since parameter".
    // A newly joined room's timeline is not: the client holds nothing of the room, so it
    // gets the room's last events as an initial sync would (`limited` when there are
    // more), not only those since its token (as Synapse does).
    let mut check =
        VisibilityCheck::new(store, &ctx.request.user_id, Some(record)).in_room(&room.record);
    let after = if newly_joined { None } else { ctx.since };
    let timeline = timeline(ctx, room, &mut check, after, ctx.upto)?;
    let (start, since_state) = state_span(ctx, room, &timeline, ctx.upto, full)?;
    // The room filter's sections name rooms of their own (`rooms`, `not_rooms`).
    let state_wanted = ctx.filter.room.state.matches_room(room_id);
    let mut state = match state_wanted {
        true => state_section(ctx, start, since_state, &timeline.events)?,
        false => Vec::new(),
    };
    if state_wanted && ctx.filter.room.state.lazy_load_members {
        if !full {
            let extra = lazy_members(ctx, room.short, start, &timeline.events, &state)?;
            state.extend(extra);
        }
        let sent = state
            .iter()
            .chain(timeline.events.iter())
            .filter(|e| e.kind() == "m.room.member")
            .filter_map(|e| Some((e.state_key()?, e.short)));
        ctx.services
            .sync
            .lazy_members
            .record(ctx.device(), room.short, sent, ctx.upto);
    }

    let ephemeral = ephemeral_events(ctx, room, full)?;
    let account_data: Vec<Value> = data
        .iter()
        .filter(|d| {
            let filter = &ctx.filter.room.account_data;
            filter.matches_room(room_id) && filter.matches_type_and_sender(&d.kind, "")
        })
        .map(|d| json!({ "type": d.kind, "content": d.content }))
        .collect();

    let members_changed = timeline
        .events
        .iter()
        .chain(state.iter())
        .any(|e| e.kind() == "m.room.member");
    let nothing_new = timeline.events.is_empty()
        && state.is_empty()
        && ephemeral.is_empty()
        && account_data.is_empty()
        && !full;
    if nothing_new {
        return Ok(None);
    }

    let mut summary_json = None;
    if full || members_changed {
        // An unfiltered full state already holds every member event at the timeline's
        // start.
        let f = &ctx.filter.room.state;
        let unfiltered = !f.lazy_load_members
            && f.types.is_none()
            && f.not_types.is_empty()
            && f.senders.is_none()
            && f.not_senders.is_empty();
        let known = (full && unfiltered).then(|| state.iter().chain(timeline.events.iter()));
        summary_json = Some(summary(ctx, room, known)?);
    }
    let user_id = ctx.request.user_id.as_str();
    let read = ctx.services.ephemeral.read_positions(room.short, user_id)?;
    let counts = ctx
        .services
        .push
        .unread_counts(user_id, room.short, &read)?;
    let as_json = |c: UnreadCounts| json!({ "notification_count": c.notifications, "highlight_count": c.highlights });
    // Spec: with `unread_thread_notifications` the room's counts are the main timeline's
    // and each thread has its own; without, one count covers everything.
    let (unread, threads) = if ctx.filter.room.timeline.unread_thread_notifications {
        let threads = (!counts.threads.is_empty()).then(|| {
            Value::Object(
                counts
                    .threads
                    .iter()
                    .map(|(root, c)| (root.clone(), as_json(*c)))
                    .collect(),
            )
        });
        (as_json(counts.main), threads)
    } else {
        (as_json(counts.total()), None)
    };
    let section = JoinedRoomJson {
        room: LeftRoomJson::new(ctx, room_id, (&timeline, &state), &mut check, account_data)?,
        ephemeral: Events { events: ephemeral },
        summary: summary_json,
        unread_notifications: unread,
        unread_thread_notifications: threads,
    };
    raw_json(&section).map(Some)
}

/// `rooms.leave.{roomId}`: the timeline up to the leave, and the state then.
fn left_room(
    ctx: &Context<'_>,
    room: &Room,
    record: &MembershipRecord,
    data: &[AccountData],
) -> ServiceResult<Option<Box<RawValue>>> {
    let room_id = room.record.room_id.as_str();
    let store = ctx.store();
    let mut check =
        VisibilityCheck::new(store, &ctx.request.user_id, Some(record)).in_room(&room.record);
    if record.last_join_pos == 0 {
        // A rejected invite or knock: the user never saw the room, so only their leave.
        let leave: Vec<StoredEvent> = store.event_by_id(&record.event_id)?.into_iter().collect();
        return raw_json(&LeftRoomJson {
            timeline: TimelineJson {
                events: ctx.render_all(&leave, (room_id, true), &mut check)?,
                limited: false,
                prev_batch: None,
            },
            state: state_fields(ctx, Vec::new()).0,
            state_after: state_fields(ctx, Vec::new()).1,
            account_data: Events { events: Vec::new() },
        })
        .map(Some);
    }
    let timeline = timeline(ctx, room, &mut check, ctx.since, record.pos)?;
    // Joined (and left) since `since`: the client never had this room's state.
    let joined_since = ctx.since.is_some_and(|s| record.last_join_pos > s);
    let fresh = ctx.full || joined_since;
    let (start, since_state) = state_span(ctx, room, &timeline, record.pos, fresh)?;
    let state = match ctx.filter.room.state.matches_room(room_id) {
        true => state_section(ctx, start, since_state, &timeline.events)?,
        false => Vec::new(),
    };
    let account_data: Vec<Value> = data
        .iter()
        .filter(|d| {
            let filter = &ctx.filter.room.account_data;
            filter.matches_room(room_id) && filter.matches_type_and_sender(&d.kind, "")
        })
        .map(|d| json!({ "type": d.kind, "content": d.content }))
        .collect();
    raw_json(&LeftRoomJson::new(
        ctx,
        room_id,
        (&timeline, &state),
        &mut check,
        account_data,
    )?)
    .map(Some)
}

/// Typing and receipts that changed (all of them in a full sync).
/// A room's typing and receipts: what changed since `since`, or all of them for a room
/// sent `full` (an initial sync, or a room joined since `since`, whose client knows
/// nothing of where its members have read to).
fn ephemeral_events(ctx: &Context<'_>, room: &Room, full: bool) -> ServiceResult<Vec<Value>> {
    let ephemeral = &ctx.services.ephemeral;
    let filter = &ctx.filter.room.ephemeral;
    let mut out = Vec::new();
    if !filter.matches_room(&room.record.room_id) {
        return Ok(out);
    }
    let typing = match (full, ctx.since) {
        (false, Some(since)) => ephemeral.typing_changed(room.short, since, ctx.upto),
        _ => Some(ephemeral.typing_now(room.short)).filter(|t| !t.is_empty()),
    };
    if let Some(users) = typing {
        if filter.matches_type_and_sender("m.typing", "") {
            out.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
        }
    }
    if filter.matches_type_and_sender("m.receipt", "") {
        let after = if full { None } else { ctx.since };
        if let Some(receipts) =
            ephemeral.receipts_for(room.short, &ctx.request.user_id, after, ctx.upto)?
        {
            out.push(receipts);
        }
    }
    Ok(out)
}

/// Spec: `RoomSummary`: member counts, and heroes when the room has no name or alias.
fn summary<'e>(
    ctx: &Context<'_>,
    room: &Room,
    known: Option<impl Iterator<Item = &'e StoredEvent>>,
) -> ServiceResult<Value> {
    let store = ctx.store();
    let snapshot = room.record.state;
    let mut summary = json!({
        "m.joined_member_count": room.record.joined,
        "m.invited_member_count": room.record.invited,
    });
    let has = |e: &StoredEvent, field: &str| {
        e.content()
            .get(field)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let current;
    let members: Vec<&StoredEvent> = match known {
        Some(events) => {
            // The latest of each state key among the events given (timeline after state).
            let mut latest: BTreeMap<(&str, &str), &StoredEvent> = BTreeMap::new();
            for event in events {
                if let Some(key) = event.state_key() {
                    latest.insert((event.kind(), key), event);
                }
            }
            let named = latest.iter().any(|((kind, key), e)| {
                key.is_empty()
                    && ((*kind == "m.room.name" && has(e, "name"))
                        || (*kind == "m.room.canonical_alias" && has(e, "alias")))
            });
            if named {
                return Ok(summary);
            }
            latest
                .into_iter()
                .filter(|((kind, _), _)| *kind == "m.room.member")
                .map(|(_, e)| e)
                .collect()
        }
        None => {
            let named = |kind: &str, field: &str| -> ServiceResult<bool> {
                Ok(store
                    .state_event(snapshot, kind, "")?
                    .is_some_and(|e| has(&e, field)))
            };
            if named("m.room.name", "name")? || named("m.room.canonical_alias", "alias")? {
                return Ok(summary);
            }
            current = store.state_events(snapshot, Some("m.room.member"))?;
            current.iter().collect()
        }
    };
    // Spec: heroes are joined or invited members other than the user, in stream order;
    // if there are none, members who left.
    // Keyed by place and short id too: members that came in a join's answer (through
    // another server) are held without a place, all at 0.
    let mut ordered: BTreeMap<(u8, u64, u64), String> = BTreeMap::new();
    for member in members {
        let Some(user) = member.state_key() else {
            continue;
        };
        if user == ctx.request.user_id {
            continue;
        }
        let rank = match member.content().get("membership").and_then(Value::as_str) {
            Some("join" | "invite") => 0,
            _ => 1,
        };
        ordered.insert((rank, member.meta.pos, member.short), user.to_owned());
    }
    let best_rank = ordered.keys().next().map(|(r, _, _)| *r);
    let heroes: Vec<String> = ordered
        .into_iter()
        .filter(|((rank, _, _), _)| Some(*rank) == best_rank)
        .map(|(_, user)| user)
        .take(MAX_HEROES)
        .collect();
    summary["m.heroes"] = json!(heroes);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(rooms: usize) -> SyncResponse {
        let mut fields = Map::new();
        fields.insert("next_batch".into(), json!("s1"));
        let mut response = SyncResponse::new(fields);
        for (kind, count) in [("join", rooms), ("leave", 2)] {
            let sections = response.rooms.entry(kind).or_default();
            for n in 0..count {
                let section = json!({"timeline": {"events": [{"body": "x".repeat(500), "n": n}]}});
                sections.insert(format!("!room{n}:x"), raw_json(&section).unwrap());
            }
        }
        response
    }

    fn joined(chunks: impl Iterator<Item = ServiceResult<Vec<u8>>>) -> (usize, Value) {
        let chunks: Vec<Vec<u8>> = chunks.map(Result::unwrap).collect();
        let bytes: Vec<u8> = chunks.concat();
        (chunks.len(), serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn the_answer_streams_as_valid_json_in_pieces() {
        let (pieces, value) = joined(answer(1000).into_json_chunks());
        assert!(pieces > 5, "{pieces} pieces for ~600 KB");
        assert_eq!(value["next_batch"], "s1");
        assert_eq!(value["rooms"]["join"].as_object().unwrap().len(), 1000);
        assert_eq!(
            value["rooms"]["join"]["!room999:x"]["timeline"]["events"][0]["n"],
            999
        );
        assert_eq!(value["rooms"]["leave"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn an_answer_without_rooms_is_its_fields() {
        let (_, value) = joined(SyncResponse::new(Map::new()).into_json_chunks());
        assert_eq!(value, json!({}));
        let mut fields = Map::new();
        fields.insert("next_batch".into(), json!("s2"));
        let (_, value) = joined(SyncResponse::new(fields).into_json_chunks());
        assert_eq!(value, json!({"next_batch": "s2"}));
        let mut empty_fields = answer(1);
        empty_fields.fields.clear();
        let (_, value) = joined(empty_fields.into_json_chunks());
        assert_eq!(value["rooms"]["leave"].as_object().unwrap().len(), 2);
    }
}
