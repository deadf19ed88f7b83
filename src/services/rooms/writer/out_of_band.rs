//! Our user's membership in a room we are not in: an invite another server sent us, the
//! leave that rejects it, a knock we sent, the leave that retracts it.
//!
//! Spec: server-server API, "Inviting to a room" and "Leaving Rooms (Rejecting
//! Invites)": such a member event reaches us without the room's graph, so it cannot pass
//! the auth rules here. It is kept with the status `OutOfBand` (no state, no timeline
//! place, unknown to the room's checks and never served; a later delivery of the same
//! event as part of the room checks it and gives it its place), the user's
//! membership record points at it with a new stream position (so their `/sync` shows the
//! invite, knock or leave), and the stripped state the other server sent with it is kept
//! by the event for the client. A new invite runs the new-event hooks, so that the
//! invitee's push rules judge it (a federated DM rings their phone). A room we did not
//! know gets a record with no state, as for a join through another server; such a room
//! takes the version of its latest member event (an invite could claim any), one we hold
//! state of keeps its own. Once one of our users is in the room, nothing goes out of
//! band.

use serde_json::Value;

use super::head::membership_of;
use super::head::RoomHead;
use super::persist::{run_hooks, Edges};
use super::remote_event::{put_without_place, RemoteEvent};
use super::remote_join::empty_room;
use super::{WriterContext, Written};
use crate::core::RoomVersion;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::services::rooms::event_store::membership_key;
use crate::services::rooms::graph::EventStatus;
use crate::services::rooms::records::MembershipRecord;
use crate::services::stream::StreamChange;
use crate::storage::Table;

/// A member event of a local user for a room we are not in.
pub struct OutOfBandMember {
    /// The room's version as the other server told it.
    pub version: RoomVersion,
    /// The event's id.
    pub event_id: String,
    /// The event, signed as it is to be kept.
    pub pdu: Value,
    /// The stripped state events to show with it (invites and knocks).
    pub stripped_state: Option<Vec<Value>>,
}

/// Keeps the event and points the user's membership at it.
pub(super) fn write(
    ctx: &WriterContext,
    room_id: &str,
    head: &mut Option<RoomHead>,
    job: OutOfBandMember,
    written: &mut Written,
) -> ServiceResult<()> {
    let store = &ctx.store;
    if head.is_none() {
        *head = Some(match store.room(room_id)? {
            Some(_) => RoomHead::load(store, room_id)?,
            None => empty_room(ctx, room_id, job.version)?,
        });
    }
    let Some(current) = head.as_mut() else {
        return Err(ServiceError::internal("the room's head is not loaded"));
    };
    if current.version != job.version {
        // A room we hold no state of takes the version its latest member event came
        // with (an invite could claim any); one we hold state of keeps its own.
        if current.record.state != 0 {
            return Err(ServiceError::invalid_param(format!(
                "The room is of version {} here, {} there",
                current.version, job.version
            )));
        }
        current.adopt_version(store, job.version)?;
    }
    // A room one of our users is in now (a join that completed since the caller looked)
    // gets its member events through the room, never out of band.
    if !current.local_members(store, &ctx.server_name)?.is_empty() {
        return Err(ServiceError::forbidden(
            "This server is in the room now: the membership goes through the room",
        ));
    }
    let user = job
        .pdu
        .get("state_key")
        .and_then(Value::as_str)
        .ok_or_else(|| ServiceError::invalid_param("The member event has no state_key"))?
        .to_owned();
    let membership = membership_of(&job.pdu).to_owned();

    let key = membership_key(&user, room_id);
    let previous: Option<MembershipRecord> = store
        .db
        .get(Table::UseridRoomidMembership, &key)?
        .map(|b| decode(Table::UseridRoomidMembership, &b))
        .transpose()?;
    if previous
        .as_ref()
        .is_some_and(|p| p.event_id == job.event_id)
    {
        return Ok(());
    }

    let mut batch = store.db.batch();
    let pdu = job.pdu;
    // An event we hold already (an invite sent again after it was rejected) notifies
    // nobody anew.
    let (short, new) = match store.state.find_event(&job.event_id)? {
        Some(short) => (short, false),
        None => {
            let short = store.state.intern_new_event(&job.event_id, &mut batch);
            let event = RemoteEvent {
                event_id: job.event_id.clone(),
                pdu: pdu.clone(),
                signed_by: Vec::new(),
                outlier: true,
                forward: false,
                given_state: None,
                history_pos: None,
                redacted_by: 0,
                gap_states: Vec::new(),
            };
            put_without_place(
                &mut batch,
                current,
                (short, &event),
                Edges::default(),
                (EventStatus::OutOfBand, None),
                (0, 0),
            );
            // Its graph record has no edges; the auth index takes those its PDU names
            // (as a rebuild of the index would).
            let auth = crate::services::rooms::auth_index::held_auth_events(store, &event.pdu)?;
            let state_key = crate::services::rooms::auth_index::state_key_of(store, &event.pdu)?;
            crate::services::rooms::auth_index::note_children(&mut batch, short, &auth, state_key);
            (short, true)
        }
    };
    if let Some(stripped) = &job.stripped_state {
        batch.put(
            Table::ShorteventidStrippedstate,
            short.to_be_bytes(),
            encode(stripped),
        );
    }
    let ticket = store.stream.allocate()?;
    // Not part of the room's state: the room's member counts do not take it, and the
    // record says so for the next change to count from the state.
    let entry = MembershipRecord {
        membership: membership.clone(),
        event_id: job.event_id.clone(),
        pos: ticket.pos(),
        last_join_pos: previous.as_ref().map_or(0, |p| p.last_join_pos),
        forgotten: false,
        joined_at: 0,
        out_of_band: true,
    };
    batch.put(Table::UseridRoomidMembership, &key, encode(&entry));
    if membership == "invite" && new {
        // The invitee's push rules judge their invite (`.m.rule.invite_for_me`), as for
        // an invite in a room we are in: a federated DM rings their phone. The room has
        // no state here, so no member of ours is asked about it.
        run_hooks(
            ctx,
            current,
            (&pdu, short, ticket.pos()),
            None,
            true,
            &mut batch,
        )?;
    }
    store.db.write_relaxed(batch)?;
    written.changes.push((
        ticket,
        StreamChange::RoomEvent {
            room: current.short,
            member: Some((user, membership)),
        },
    ));
    Ok(())
}
