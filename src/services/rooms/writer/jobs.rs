//! What a writer's job does on the room's head: creating, appending drafts, judging and
//! storing a remote event, taking in a join's state, completing a partial state, keeping
//! an out-of-band member event, building without storing, forgetting. Run by the
//! committers (`commits.rs`), one room's drain after another.

use serde_json::{json, Value};

use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::services::rooms::event_store::{membership_key, EventStore};
use crate::services::rooms::guests;
use crate::services::rooms::records::MembershipRecord;
use crate::storage::Table;

use super::head::RoomHead;
use super::local_event::{append, build, create_room};
use super::{EventDraft, JobAnswer, JobStart, PduOutcome, WriterContext, Written};

pub(super) fn process_job(
    ctx: &WriterContext,
    room_id: &str,
    head: &mut Option<RoomHead>,
    start: JobStart,
    drafts: Vec<EventDraft>,
    written: &mut Written,
) -> ServiceResult<JobAnswer> {
    let mut ids = Vec::with_capacity(drafts.len() + 1);
    match start {
        JobStart::Create(create, version) => {
            ids.push(create_room(ctx, room_id, head, *create, version, written)?);
        }
        JobStart::Append => {}
        JobStart::Forget(user) => forget(&ctx.store, room_id, &user)?,
        JobStart::JoinRemote(join) => {
            return match super::remote_join::join(ctx, room_id, head, *join, written) {
                Ok(outcome) => Ok(JobAnswer::Received(outcome)),
                Err(e) => {
                    *head = None;
                    Err(e)
                }
            };
        }
        JobStart::CompleteState(full) => {
            return match super::partial_state::complete(ctx, room_id, head, *full, written) {
                Ok(done) => Ok(JobAnswer::Completed(done)),
                Err(e) => {
                    *head = None;
                    Err(e)
                }
            };
        }
        JobStart::OutOfBand(member) => {
            return match super::out_of_band::write(ctx, room_id, head, *member, written) {
                Ok(()) => Ok(JobAnswer::Events(Vec::new())),
                Err(e) => {
                    *head = None;
                    Err(e)
                }
            };
        }
        JobStart::Build => {
            let current = match head {
                Some(current) => current,
                None => head.insert(RoomHead::load(&ctx.store, room_id)?),
            };
            let draft = drafts
                .into_iter()
                .next()
                .ok_or_else(|| ServiceError::internal("nothing to build"))?;
            let (built, _, _) = build(ctx, current, draft)?;
            return Ok(JobAnswer::Built(Box::new(built)));
        }
        JobStart::Receive(event) => {
            let current = loaded(ctx, room_id, head)?;
            let change = guest_access_change(
                event.pdu.get("type").and_then(Value::as_str).unwrap_or(""),
                event.pdu.get("state_key").and_then(Value::as_str),
            );
            return match super::remote_event::receive(ctx, current, *event, written) {
                Ok(outcome) => {
                    // Another server's change of the guest access (or redaction of it)
                    // ends it as ours does.
                    if outcome == PduOutcome::Accepted {
                        remove_guests_if_access_ended(ctx, current, change, written)?;
                    }
                    Ok(JobAnswer::Received(outcome))
                }
                Err(e) => {
                    // A storage failure may leave the cached head ahead of the tables.
                    *head = None;
                    Err(e)
                }
            };
        }
    }
    for draft in drafts {
        let current = loaded(ctx, room_id, head)?;
        let change = guest_access_change(&draft.kind, draft.state_key.as_deref());
        match append(ctx, current, draft, written) {
            Ok(id) => {
                ids.push(id);
                remove_guests_if_access_ended(ctx, current, change, written)?;
            }
            Err(e) => {
                if e.kind.is_server_side() {
                    // A storage failure may leave the cached head ahead of the tables.
                    *head = None;
                }
                return Err(e);
            }
        }
    }
    Ok(JobAnswer::Events(ids))
}

/// What an event may do to the room's guest access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuestAccessChange {
    /// Nothing.
    None,
    /// Set it anew.
    Set,
    /// Redact an event (the guest access one, perhaps: then guests may no longer join).
    Redaction,
}

fn guest_access_change(kind: &str, state_key: Option<&str>) -> GuestAccessChange {
    match (kind, state_key) {
        ("m.room.guest_access", Some("")) => GuestAccessChange::Set,
        ("m.room.redaction", _) => GuestAccessChange::Redaction,
        _ => GuestAccessChange::None,
    }
}

/// [`remove_guests`] when `change` ended the room's guest access: the current access does
/// not let guests join, after a new guest access event or a redaction of it.
fn remove_guests_if_access_ended(
    ctx: &WriterContext,
    head: &mut RoomHead,
    change: GuestAccessChange,
    written: &mut Written,
) -> ServiceResult<()> {
    if change == GuestAccessChange::None {
        return Ok(());
    }
    let access = head.state_event(&ctx.store, "m.room.guest_access", "")?;
    let ended = match change {
        GuestAccessChange::None => false,
        GuestAccessChange::Set => !guests::guests_can_join(access.as_ref().map(|e| e.content())),
        GuestAccessChange::Redaction => access.as_ref().is_some_and(|e| {
            e.meta.redacted_by != 0 && !guests::guests_can_join(Some(e.content()))
        }),
    };
    if ended {
        remove_guests(ctx, head, written)?;
    }
    Ok(())
}

/// Spec: "Guest Access", "Server behaviour": once guest access ends, every local guest
/// who is joined or invited leaves, by its own `leave` event, right after the change (in
/// the same job, so no event comes between). A leave the rules refuse is logged and
/// skipped; a storage failure stops the job like any other.
pub(super) fn remove_guests(
    ctx: &WriterContext,
    head: &mut RoomHead,
    written: &mut Written,
) -> ServiceResult<()> {
    for guest in head.local_guests(&ctx.store, &ctx.server_name)? {
        let leave = EventDraft::new(
            &guest,
            "m.room.member",
            Some(&guest),
            json!({ "membership": "leave" }),
        );
        match append(ctx, head, leave, written) {
            Ok(_) => {
                tracing::info!(room = %head.record.room_id, user = %guest, "guest left: guest access ended")
            }
            Err(e) if e.kind.is_server_side() => return Err(e),
            Err(e) => {
                tracing::warn!(room = %head.record.room_id, user = %guest, "guest could not be made to leave: {}", e.message);
            }
        }
    }
    Ok(())
}

/// Sets the `forgotten` flag of a user's membership record, in the room's writer so that
/// it cannot race a membership change.
pub(super) fn forget(store: &EventStore, room_id: &str, user: &str) -> ServiceResult<()> {
    let key = membership_key(user, room_id);
    let mut record: MembershipRecord = store
        .db
        .get(Table::UseridRoomidMembership, &key)?
        .map(|b| decode(Table::UseridRoomidMembership, &b))
        .transpose()?
        .ok_or_else(|| ServiceError::not_found("You have never been in this room"))?;
    if !matches!(record.membership.as_str(), "leave" | "ban") {
        return Err(ServiceError::new(
            ErrorKind::Invalid,
            ErrorCode::Unknown,
            "You must leave the room before forgetting it",
        ));
    }
    record.forgotten = true;
    let mut batch = store.db.batch();
    batch.put(Table::UseridRoomidMembership, &key, encode(&record));
    store.db.write_relaxed(batch)?;
    Ok(())
}

/// The room's head, loaded from storage when the writer holds none.
fn loaded<'h>(
    ctx: &WriterContext,
    room_id: &str,
    head: &'h mut Option<RoomHead>,
) -> ServiceResult<&'h mut RoomHead> {
    if head.is_none() {
        *head = Some(RoomHead::load(&ctx.store, room_id)?);
    }
    head.as_mut()
        .ok_or_else(|| ServiceError::internal("the room's head was not loaded"))
}
