//! What a writer's job does on the room's head: creating, appending drafts, judging and
//! storing a remote event, taking in a join's state, completing a partial state, keeping
//! an out-of-band member event, building without storing, forgetting. Run by the
//! committers (`commits.rs`), one room's drain after another.

use serde_json::{json, Value};

use crate::services::rooms::state_store::ShortEventId;

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
            let joined = super::remote_join::join(ctx, room_id, head, *join, written);
            // These jobs write the status or snapshots of events already held.
            forget_all_facts(head);
            return match joined {
                Ok(outcome) => Ok(JobAnswer::Received(outcome)),
                Err(e) => {
                    *head = None;
                    Err(e)
                }
            };
        }
        JobStart::CompleteState(full) => {
            let completed = super::partial_state::complete(ctx, room_id, head, *full, written);
            forget_all_facts(head);
            return match completed {
                Ok(done) => Ok(JobAnswer::Completed(done)),
                Err(e) => {
                    *head = None;
                    Err(e)
                }
            };
        }
        JobStart::OutOfBand(member) => {
            let kept = super::out_of_band::write(ctx, room_id, head, *member, written);
            forget_all_facts(head);
            return match kept {
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
            let redaction =
                event.pdu.get("type").and_then(Value::as_str) == Some("m.room.redaction");
            let before = GuestAccess::now(ctx, current, redaction)?;
            return match super::remote_event::receive(ctx, current, *event, written) {
                Ok(outcome) => {
                    // Another server's event that ends the guest access (a change, a
                    // redaction of it, a resolution) ends it as ours does.
                    if outcome == PduOutcome::Accepted {
                        if let Err(e) = remove_guests_if_ended(ctx, current, before, written) {
                            tracing::warn!(room = %room_id, error = %e.message, "guests were not made to leave");
                            *head = None;
                        }
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
        // Of our own events only a guest access event or a redaction can end the access
        // (ours resolve nothing): the others are not looked at.
        let before = match draft.kind.as_str() {
            "m.room.guest_access" | "m.room.redaction" => Some(GuestAccess::now(
                ctx,
                current,
                draft.kind == "m.room.redaction",
            )?),
            _ => None,
        };
        match append(ctx, current, draft, written) {
            Ok(id) => {
                ids.push(id);
                if let Some(before) = before {
                    remove_guests_if_ended(ctx, current, before, written)?;
                }
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

/// After a job that may have written the status or snapshots of events already held
/// (completing a partial state, an out-of-band event, a join through another server):
/// the head's memory of them goes (see [`RoomHead::facts`]).
fn forget_all_facts(head: &mut Option<RoomHead>) {
    if let Some(head) = head {
        head.forget_all_facts();
    }
}

/// The room's guest access event in its current state, to tell whether an event ended
/// the access: its short id and, around a redaction, the redaction that redacted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GuestAccess {
    event: Option<ShortEventId>,
    redacted_by: ShortEventId,
    /// Whether `redacted_by` was read (around redactions only).
    redaction: bool,
    /// Whether it let guests in when read (around redactions only: a redaction changes
    /// the event's content in place; any other change is another event).
    let_in: Option<bool>,
}

impl GuestAccess {
    /// The room's guest access now (no read but an interned key's; the event itself
    /// around a redaction).
    fn now(ctx: &WriterContext, head: &RoomHead, redaction: bool) -> ServiceResult<Self> {
        let key = ctx.store.state.find_state_key("m.room.guest_access", "")?;
        let event = key.and_then(|k| head.state.get(&k).copied());
        let (redacted_by, let_in) = match (redaction, event) {
            (true, Some(event)) => {
                let stored = ctx.store.event(event)?;
                let let_in = guests::guests_can_join(Some(stored.content()));
                (stored.meta.redacted_by, Some(let_in))
            }
            _ => (0, None),
        };
        Ok(Self {
            event,
            redacted_by,
            redaction,
            let_in,
        })
    }

    /// Whether guests may join under it.
    fn lets_guests_in(&self, ctx: &WriterContext) -> ServiceResult<bool> {
        if let Some(let_in) = self.let_in {
            return Ok(let_in);
        }
        match self.event {
            Some(event) => Ok(guests::guests_can_join(Some(
                ctx.store.event(event)?.content(),
            ))),
            None => Ok(false),
        }
    }
}

/// [`remove_guests`] when the event just written ended the room's guest access: it let
/// guests in `before` and does not now (a new guest access event, ours or another
/// server's, one a resolution brought, or the redaction of it).
fn remove_guests_if_ended(
    ctx: &WriterContext,
    head: &mut RoomHead,
    before: GuestAccess,
    written: &mut Written,
) -> ServiceResult<()> {
    // No access before: nobody to make leave (and nothing more to read).
    if before.event.is_none() {
        return Ok(());
    }
    let after = GuestAccess::now(ctx, head, before.redaction)?;
    if after == before || !before.lets_guests_in(ctx)? || after.lets_guests_in(ctx)? {
        return Ok(());
    }
    remove_guests(ctx, head, written)
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
