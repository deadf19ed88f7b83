//! The write path: one writer task per room appends events to its graph.
//!
//! Spec: server-server API, "PDUs" (prev_events, auth_events, depth), "Auth events
//! selection"; room versions' "Authorisation rules".
//!
//! Every event a room gets passes through that room's writer, so sends into one room are
//! serialized while different rooms proceed in parallel. A writer keeps the room's head
//! (record, current state, the state events it read lately) in memory. For each event it
//! picks `prev_events` (the forward extremities), `auth_events` (per the selection
//! algorithm, from the current state) and `depth`, builds and signs the PDU, checks the auth
//! rules against the state before it, and writes one batch: PDU, metadata, event id
//! interning, timeline and stream entries, state snapshot, room head, membership, txn id,
//! relation and redaction records. Batches go to the WAL without fsync; the jobs a writer
//! drained from its queue are applied on a committer thread with other rooms' drains,
//! which fsyncs once for all of them and only then answers them (group commit across
//! rooms: nothing is acknowledged before it is durable).
//!
//! One job per file: `queue.rs` (the writers and their queues), `commits.rs` (group
//! commit across rooms: the drains of several rooms applied and fsynced together),
//! `jobs.rs` (what each kind of job does on the room's head), `head.rs`
//! (the room's head in memory), `local_event.rs` (building our users' events),
//! `persist.rs` (the event's write batch), `relations.rs` (relations and aggregates),
//! `redactions.rs`; events of other servers: `remote_event.rs` (one received PDU),
//! `remote_join.rs` (the state a join brings), `partial_state.rs` (a join's state
//! without its members, and its completion), `backfilled.rs` (history placed before the
//! oldest event), `out_of_band.rs` (invites and knocks of rooms we are not in). The event
//! graph itself is `super::graph`. This file holds what they share: the job and draft
//! types, the writers' context and the new-event hook.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

mod backfilled;
mod commits;
mod head;
mod jobs;
mod local_event;
mod out_of_band;
mod partial_state;
mod persist;
mod queue;
mod redactions;
mod relations;
mod remote_event;
mod remote_join;

pub use out_of_band::OutOfBandMember;
pub use partial_state::{Completion, FullState};
pub use remote_event::{PduOutcome, RemoteEvent};
pub use remote_join::RemoteJoin;

use super::event_store::{EventStore, StoredEvent};
use super::state_store::ShortEventId;
use crate::core::auth_rules;
use crate::core::pdu::{BuiltPdu, PduError};
use crate::core::power_levels::PowerLevels;
use crate::core::{RoomVersion, SigningKeyPair};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::outbox::Outbox;
use crate::services::stream::{PosTicket, StreamChange};
use crate::storage::Batch;

pub use queue::Writers;
pub(in crate::services::rooms) use redactions::move_rows_keyed_by_event;
pub(super) use relations::thread_key;

/// An event a local user wants to send, before the writer builds it.
#[derive(Debug, Clone)]
pub struct EventDraft {
    /// The sender (a local user).
    pub sender: String,
    /// Event type.
    pub kind: String,
    /// Present for state events.
    pub state_key: Option<String>,
    /// The content object.
    pub content: Value,
    /// For redactions: the event redacted.
    pub redacts: Option<String>,
    /// `(txn key, device id, txn id)` for idempotent client sends.
    pub txn: Option<TxnRef>,
}

/// A client transaction: the dedupe key and what `unsigned.transaction_id` shows.
#[derive(Debug, Clone)]
pub struct TxnRef {
    /// `user 0xFF device 0xFF room 0xFF endpoint 0xFF txn`.
    pub key: Vec<u8>,
    /// The sending device.
    pub device_id: String,
    /// The client's transaction id.
    pub txn_id: String,
}

impl EventDraft {
    /// A draft without transaction or redaction.
    pub fn new(sender: &str, kind: &str, state_key: Option<&str>, content: Value) -> Self {
        Self {
            sender: sender.to_owned(),
            kind: kind.to_owned(),
            state_key: state_key.map(str::to_owned),
            content,
            redacts: None,
            txn: None,
        }
    }
}

/// What a job does before its drafts.
pub enum JobStart {
    /// Append to an existing room.
    Append,
    /// Create the room with this (already built) create event (boxed: a queue's slots
    /// are as big as its largest job).
    Create(Box<BuiltPdu>, RoomVersion),
    /// Mark the room forgotten for this user (who must have left it).
    Forget(String),
    /// Judge and store an event another server made (checks 4 to 6 of the receipt
    /// checks; see [`remote_event`]).
    Receive(Box<RemoteEvent>),
    /// Take in the room our user joined through a resident server (see [`remote_join`]).
    JoinRemote(Box<RemoteJoin>),
    /// Keep our user's member event of a room we are not in (see [`out_of_band`]).
    OutOfBand(Box<OutOfBandMember>),
    /// Complete a partial state with the whole state before our join (see
    /// [`partial_state`]).
    CompleteState(Box<FullState>),
    /// Build, sign and check the (one) draft on the current state without storing it:
    /// an invite of another server's user, which that server signs before we keep it.
    Build,
}

/// What a job answers.
#[derive(Debug)]
pub enum JobAnswer {
    /// The ids of the events written (the create event's first, when creating).
    Events(Vec<String>),
    /// What became of a remote event.
    Received(PduOutcome),
    /// The event built (not stored).
    Built(Box<BuiltPdu>),
    /// What completing a partial state did.
    Completed(Completion),
}

/// A unit of work for a writer: drafts applied in order; the first failure stops the job.
pub struct Job {
    /// Create or append.
    pub start: JobStart,
    /// Events to append, in order.
    pub drafts: Vec<EventDraft>,
    /// Answers the event ids or the remote event's outcome, after the fsync.
    pub reply: oneshot::Sender<ServiceResult<JobAnswer>>,
}

/// What the writers share.
pub struct WriterContext {
    /// The tables.
    pub store: Arc<EventStore>,
    /// Our server name (for the PDU's signature).
    pub server_name: String,
    /// Our signing key.
    pub signing_key: Arc<SigningKeyPair>,
    /// Told of every new event inside its write batch (notification counts, the search
    /// index).
    pub hooks: Vec<Arc<dyn NewEventHook>>,
    /// Where events for other servers are queued (in the event's batch) and the sender
    /// woken (after the fsync).
    pub outbox: Arc<Outbox>,
    /// Servers a resolution put out of a room (granted reads, see
    /// [`reset_out`](crate::services::rooms::reset_out)).
    pub reset_servers: Arc<crate::services::rooms::reset_out::ResetServers>,
}

/// A local member of a room, for the [`NewEventHook`].
#[derive(Debug, Clone)]
pub struct LocalMember {
    /// The user.
    pub user_id: String,
    /// Their display name in the room.
    pub display_name: Option<String>,
}

/// What the [`NewEventHook`] learns of a new event.
pub struct NewEvent<'a> {
    /// The room's id.
    pub room_id: &'a str,
    /// The room's short id.
    pub room: u64,
    /// The event's stream position.
    pub pos: u64,
    /// The PDU.
    pub pdu: &'a Value,
    /// The event's short id.
    pub short: ShortEventId,
    /// The room's local joined members before the event.
    pub local_members: &'a [LocalMember],
    /// For an invite of a local user: that user, whose own push rules judge it too
    /// (`.m.rule.invite_for_me`), though not a member yet.
    pub invited: Option<&'a str>,
    /// The room's joined member count.
    pub joined_count: u64,
    /// The power levels before the event.
    pub power_levels: &'a PowerLevels,
    /// The `notifications` object of the power levels content.
    pub notification_levels: Option<&'a serde_json::Map<String, Value>>,
    /// For a redaction that applies: the redacted event as it was before.
    pub redacted: Option<&'a StoredEvent>,
    /// For a redaction that applies: the local users with a member event in the room's
    /// state, whatever their membership (those who have left or were banned since the
    /// redacted event was sent may have been notified of it too). Empty otherwise.
    pub redacted_for: &'a [String],
    /// Whether the event is news to the room's members. It is not when it is of the
    /// room's past, fetched from another server (backfill), nor when it was redacted
    /// before it came (its redaction arrived first): nobody is notified of those.
    pub news: bool,
}

/// Called by the room writers for every event, with the event's batch, so that what it
/// writes commits (and reaches syncing clients) together with the event.
pub trait NewEventHook: Send + Sync {
    /// Adds the hook's writes for `event` to `batch`.
    fn new_event(&self, event: &NewEvent<'_>, batch: &mut Batch<'_>) -> ServiceResult<()>;

    /// A redaction of the room's past (a batch that is no stream change, so its commit
    /// publishes no position) has been written and redacted an event of the room `room`.
    fn history_redaction_written(&self, _room: u64) {}
}

fn pdu_error(e: PduError) -> ServiceError {
    match e {
        PduError::TooLarge(_) => {
            ServiceError::new(ErrorKind::TooLarge, ErrorCode::TooLarge, e.to_string())
        }
        PduError::BadContent(_) | PduError::BadShape(_) => ServiceError::bad_json(e.to_string()),
    }
}

fn forbidden(e: auth_rules::AuthError) -> ServiceError {
    ServiceError::forbidden(e.0)
}

/// What a drain wrote: positions, committed to the stream after the fsync, and the
/// servers that have new events queued, woken after it.
#[derive(Default)]
struct Written {
    changes: Vec<(PosTicket, StreamChange)>,
    destinations: BTreeSet<String>,
}
