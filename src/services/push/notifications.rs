//! Notifications: what each event's push actions leave for the room's local members, the
//! unread counts `/sync` shows, and `GET /notifications`.
//!
//! One entry per (user, room, position) of an event that notifies the user, in the event's
//! own write batch: `flags (1 byte: 1 highlight, 2 in a thread, 4 the user's invite) ++
//! event short id (u64 BE) ++ origin_server_ts (u64 BE) ++ [thread root id length (1 byte)
//! ++ thread root id] ++ actions (JSON)`. Counts scan a room's entries after the unthreaded read receipt and
//! check each against its thread's (or the main timeline's) receipt, as the spec's
//! "Receiving notifications" asks of threaded read receipts; `/notifications` merges the
//! newest entries of each room. A redaction deletes its target's entries, in its own
//! batch; an event that comes already redacted, or as history, leaves none.

use serde_json::Value;

use std::collections::BTreeMap;

use super::queue::{self, QueuedEvent};
use super::unread_cache::{Counted, OldestUnread};
use super::Push;
use crate::core::push_rules::{self, PushContext, PushEvent};
use crate::services::ephemeral::receipts::{self, ReadPositions};
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::rooms::stored_event::StoredEvent;
use crate::services::rooms::writer::{NewEvent, NewEventHook};
use crate::storage::{keys, Batch, Table};

/// Unread entries counted at most per room in one call; a count goes on from where the
/// last call stopped (clients show "99+" long before).
const MAX_COUNTED: usize = 10_000;
/// Bytes before the thread root (or the actions) in an entry.
const HEADER: usize = 17;
const HIGHLIGHT: u8 = 1;
const THREADED: u8 = 2;
/// The invitee's entry for their invite: pushed and listed by `/notifications` (while it
/// is pending, or where the user may read it later), never counted in the room's unread
/// counts. Before the join it is no room of theirs (the badge counts a pending invite
/// once, see `unread_total`); after,
/// what came before the join is not unread (as Synapse, which counts from the latest
/// membership event without a receipt).
const INVITE: u8 = 4;

/// One notification, as stored.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The room's short id.
    pub room: u64,
    /// The event's short id.
    pub event: u64,
    /// When the event was sent.
    pub ts: u64,
    /// Its stream position.
    pub pos: u64,
    /// The actions of the rule that matched.
    pub actions: Vec<Value>,
    /// The thread root, for an event in a thread.
    pub thread: Option<String>,
    /// Whether it is the user's invite (their rules judged it as the invitee).
    pub invite: bool,
}

fn user_prefix(user_id: &str) -> Vec<u8> {
    keys::prefix(user_id.as_bytes())
}

fn entry_key(user_id: &str, room: u64, pos: u64) -> Vec<u8> {
    let mut key = user_prefix(user_id);
    key.extend_from_slice(&room.to_be_bytes());
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

fn corrupt() -> ServiceError {
    ServiceError::internal("corrupt notification entry")
}

/// Unread counts of one room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnreadCounts {
    /// Events that notify.
    pub notifications: u64,
    /// Of those, events that highlight.
    pub highlights: u64,
}

/// Unread counts of a room's main timeline and of each of its threads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomCounts {
    /// The main timeline.
    pub main: UnreadCounts,
    /// Each thread, by root event id.
    pub threads: BTreeMap<String, UnreadCounts>,
}

impl RoomCounts {
    /// Everything together (what clients that don't split by thread see).
    pub fn total(&self) -> UnreadCounts {
        self.threads
            .values()
            .fold(self.main, |sum, t| UnreadCounts {
                notifications: sum.notifications + t.notifications,
                highlights: sum.highlights + t.highlights,
            })
    }
}

/// The thread root of an event in a thread.
fn thread_root(pdu: &Value) -> Option<&str> {
    let relates = pdu.get("content")?.get("m.relates_to")?;
    if relates.get("rel_type")?.as_str()? != "m.thread" {
        return None;
    }
    relates.get("event_id")?.as_str().filter(|r| r.len() <= 255)
}

impl NewEventHook for Push {
    fn new_event(&self, event: &NewEvent<'_>, batch: &mut Batch<'_>) -> ServiceResult<()> {
        if let Some(target) = event.redacted {
            self.forget_notifications(event, target, batch);
        }
        if !event.news {
            // History fetched from other servers, or an event redacted before it came.
            return Ok(());
        }
        let sender = event
            .pdu
            .get("sender")
            .and_then(Value::as_str)
            .unwrap_or("");
        let ts = event
            .pdu
            .get("origin_server_ts")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let prepared = PushEvent::new(event.pdu);
        let index = self.pusher_index();
        // The notified users with pushers: one queue entry for them all.
        let mut to_push: Vec<&str> = Vec::new();
        // The joined members, and the local user an invite invites (spec: push rules,
        // `.m.rule.invite_for_me`; as Synapse, the invitee's rules judge their invite,
        // with the display name it gives them), except those who ignore its sender: for
        // the invitee (spec, "Ignoring Users": "Servers must not send room invites from
        // ignored users to clients") and for events that are not state (as Synapse: an
        // ignored user's messages neither push nor count; the room's state, such as a
        // tombstone, still notifies).
        let mut ignorers = self.ignore_lists.ignorers_of(sender);
        ignorers.sort_unstable();
        let ignores = |user: &str| ignorers.binary_search_by(|u| u.as_str().cmp(user)).is_ok();
        let is_state = event.pdu.get("state_key").is_some();
        let invitee = match event.invited {
            Some(user)
                if !event.local_members.iter().any(|m| m.user_id == user) && !ignores(user) =>
            {
                let name = event
                    .pdu
                    .get("content")
                    .and_then(|c| c.get("displayname"))
                    .and_then(Value::as_str);
                Some((user, name))
            }
            _ => None,
        };
        let members = event
            .local_members
            .iter()
            .map(|m| (m.user_id.as_str(), m.display_name.as_deref()))
            .chain(invitee);
        let root = thread_root(event.pdu);
        for (user_id, display_name) in members {
            let invited = invitee.is_some_and(|(user, _)| user == user_id);
            if user_id == sender && !invited {
                if self.reads_before(event.pdu, root)? {
                    receipts::put_sent_position(batch, event.room, sender, root, event.pos);
                }
                continue;
            }
            if user_id == sender || (!is_state && ignores(user_id)) {
                continue;
            }
            let ruleset = self.ruleset(user_id)?;
            let ctx = PushContext {
                user_id,
                display_name,
                room_member_count: event.joined_count,
                sender_power: event.power_levels.user(sender),
                notification_levels: event.notification_levels,
            };
            let Some(rule) = push_rules::evaluate(&ruleset, &prepared, &ctx) else {
                continue;
            };
            let outcome = push_rules::outcome(&rule.actions);
            if !outcome.notify {
                continue;
            }
            let mut value = Vec::with_capacity(HEADER + 64);
            let mut flags = 0;
            if outcome.highlight {
                flags |= HIGHLIGHT;
            }
            if root.is_some() {
                flags |= THREADED;
            }
            if invited {
                flags |= INVITE;
            }
            value.push(flags);
            value.extend_from_slice(&event.short.to_be_bytes());
            value.extend_from_slice(&ts.to_be_bytes());
            if let Some(root) = root {
                value.push(root.len() as u8);
                value.extend_from_slice(root.as_bytes());
            }
            value.extend_from_slice(&serde_json::to_vec(&rule.actions).unwrap_or_default());
            batch.put(
                Table::UseridShortroomidPosNotify,
                entry_key(user_id, event.room, event.pos),
                value,
            );
            if index.has_any(user_id) {
                to_push.push(user_id);
            }
        }
        if !to_push.is_empty() {
            let entry = QueuedEvent::encode(
                event.room,
                event.short,
                crate::services::now_ms(),
                to_push.iter().copied(),
            );
            queue::put_entry(batch, event.pos, entry);
            self.delivery.queued_at(event.pos);
        }
        Ok(())
    }

    fn history_redaction_written(&self, room: u64) {
        self.unread
            .forget_before(room, self.stream.watermark().saturating_add(1));
    }
}

impl Push {
    /// Whether a local member's own event `pdu` (in the thread of `root`, if any) marks
    /// what came before it in its thread read (spec, "Marking notifications as read"). Not
    /// a member event: the server sends those for the user too (a profile change goes to
    /// every room), and joining or leaving is no reading. Not an event related to another
    /// otherwise than by a thread (a reaction, an edit, a reference): its thread is that of
    /// the event it relates to, which is not looked up here. A thread root must be an
    /// event we know (each root makes a row read with every count of the room).
    fn reads_before(&self, pdu: &Value, root: Option<&str>) -> ServiceResult<bool> {
        if pdu.get("type").and_then(Value::as_str) == Some("m.room.member") {
            return Ok(false);
        }
        let relation = pdu
            .get("content")
            .and_then(|c| c.get("m.relates_to"))
            .and_then(|r| r.get("rel_type"));
        if relation.is_some() && root.is_none() {
            return Ok(false);
        }
        match root {
            Some(root) => Ok(self.db.contains(Table::EventidShorteventid, root)?),
            None => Ok(true),
        }
    }

    /// A redacted event notifies no more (as in Synapse, which deletes its push actions):
    /// the entries it left for the room's local members go, in the redaction's batch, so
    /// it leaves the unread counts and `/notifications`, and a push not yet sent is not
    /// sent. Members who have left or were banned since lose theirs too (it would stay in
    /// their `/notifications`, and count again if they came back).
    fn forget_notifications(
        &self,
        event: &NewEvent<'_>,
        target: &StoredEvent,
        batch: &mut Batch<'_>,
    ) {
        // Counts begun before the redaction commits are neither kept nor used: those begun
        // before the stream published its position. A backfilled redaction's position is
        // in the room's past, and its batch is not a stream change: the next position is
        // taken, and again once the batch is written (`history_redaction_written`), for
        // other rooms' commits may publish it before.
        let barrier = event.pos.max(self.stream.watermark().saturating_add(1));
        self.unread.forget_before(target.meta.room, barrier);
        for user_id in event.redacted_for {
            batch.delete(
                Table::UseridShortroomidPosNotify,
                entry_key(user_id, target.meta.room, target.meta.pos),
            );
        }
    }

    /// The actions of the rule that made the event at `pos` in `room` notify `user_id`,
    /// if it did; with `invite_only`, only if the event is the user's invite (an invited
    /// user is pushed nothing else of the room, such as what notified them before they
    /// left, still queued behind a failing gateway).
    pub(super) fn notified_actions(
        &self,
        user_id: &str,
        (room, pos): (u64, u64),
        invite_only: bool,
    ) -> ServiceResult<Option<Vec<Value>>> {
        let Some(value) = self.db.get(
            Table::UseridShortroomidPosNotify,
            entry_key(user_id, room, pos),
        )?
        else {
            return Ok(None);
        };
        let (_, actions) = split_thread(&value)?;
        if invite_only && value[0] & INVITE == 0 {
            return Ok(None);
        }
        serde_json::from_slice(actions)
            .map(Some)
            .map_err(|_| corrupt())
    }
}

fn parse_entry(key: &[u8], value: &[u8], prefix_len: usize) -> ServiceResult<Notification> {
    let ids = key.get(prefix_len..prefix_len + 16).ok_or_else(corrupt)?;
    let (room, pos) = (
        keys::read_u64(&ids[..8]).ok_or_else(corrupt)?,
        keys::read_u64(&ids[8..]).ok_or_else(corrupt)?,
    );
    let header = value.get(..HEADER).ok_or_else(corrupt)?;
    let (thread, rest) = split_thread(value)?;
    Ok(Notification {
        room,
        pos,
        event: keys::read_u64(&header[1..9]).ok_or_else(corrupt)?,
        ts: keys::read_u64(&header[9..17]).ok_or_else(corrupt)?,
        actions: serde_json::from_slice(rest).map_err(|_| corrupt())?,
        thread: thread.map(str::to_owned),
        invite: header[0] & INVITE != 0,
    })
}

/// The stream position an entry's key ends with.
fn entry_pos(key: &[u8]) -> ServiceResult<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|at| keys::read_u64(&key[at..]))
        .ok_or_else(corrupt)
}

/// The positions `(after, upto]` holding every entry `counted` counted unread that is
/// read at `read` (which covers its receipts); `None` when there is none. For each receipt
/// that moved: from where it was (or the oldest entry counted unread in its thread, if
/// later) to where it is, up to what the count covers.
fn newly_read(counted: &Counted, read: &ReadPositions) -> Option<(u64, u64)> {
    let (before, oldest) = (&counted.read, &counted.oldest);
    let mut range: Option<(u64, u64)> = None;
    let mut widen = |from: u64, to: u64| {
        let to = to.min(counted.upto);
        if to > from {
            range = Some(match range {
                None => (from, to),
                Some((a, b)) => (a.min(from), b.max(to)),
            });
        }
    };
    // Each thread's entries before its oldest unread one were read already.
    let since = |first: Option<u64>, was: u64| first.map(|first| was.max(first.saturating_sub(1)));
    if read.unthreaded > before.unthreaded {
        if let Some(first) = oldest.first() {
            widen(
                before.unthreaded.max(first.saturating_sub(1)),
                read.unthreaded,
            );
        }
    }
    if read.main > before.main {
        if let Some(from) = since(oldest.main, before.unthreaded.max(before.main)) {
            widen(from, read.main);
        }
    }
    for (root, &pos) in &read.threads {
        let was = before.threads.get(root).copied().unwrap_or(0);
        if pos > was {
            let first = oldest.threads.get(root).copied();
            if let Some(from) = since(first, before.unthreaded.max(was)) {
                widen(from, pos);
            }
        }
    }
    range
}

/// The thread root of an entry (if any) and the bytes after it.
fn split_thread(value: &[u8]) -> ServiceResult<(Option<&str>, &[u8])> {
    let flags = *value.first().ok_or_else(corrupt)?;
    let rest = value.get(HEADER..).ok_or_else(corrupt)?;
    if flags & THREADED == 0 {
        return Ok((None, rest));
    }
    let len = usize::from(*rest.first().ok_or_else(corrupt)?);
    let root = rest.get(1..1 + len).ok_or_else(corrupt)?;
    let root = std::str::from_utf8(root).map_err(|_| corrupt())?;
    Ok((Some(root), &rest[1 + len..]))
}

impl Push {
    /// The notifying events of a room that the user has not read, by thread, as far as the
    /// stream has published. A count made earlier at the same receipts goes on from where
    /// it stopped (see [`super::unread_cache`]).
    pub fn unread_counts(
        &self,
        user_id: &str,
        room: u64,
        read: &ReadPositions,
    ) -> ServiceResult<RoomCounts> {
        Ok(self.counted_unread(user_id, room, read)?.0)
    }

    /// [`Push::unread_counts`], and the stream position they are complete up to (`None`
    /// when the count stopped at [`MAX_COUNTED`] entries short of the published end).
    pub(super) fn counted_unread(
        &self,
        user_id: &str,
        room: u64,
        read: &ReadPositions,
    ) -> ServiceResult<(RoomCounts, Option<u64>)> {
        let published = self.stream.watermark();
        let remembered = match self.unread.get(user_id, room) {
            Some(counted) => self.read_since(user_id, room, counted, read)?,
            None => None,
        };
        let (mut counted, moved) = match remembered {
            Some(adjusted) => adjusted,
            None => (
                Counted {
                    read: read.clone(),
                    upto: read.unthreaded,
                    started: published,
                    counts: RoomCounts::default(),
                    oldest: OldestUnread::default(),
                },
                true,
            ),
        };
        let after = counted.upto.max(read.unthreaded);
        if after >= published {
            counted.upto = after;
            let counts = counted.counts.clone();
            if moved {
                self.unread.put(user_id, room, counted);
            }
            return Ok((counts, Some(after)));
        }
        let from = entry_key(user_id, room, after.saturating_add(1));
        let to = entry_key(user_id, room, published.saturating_add(1));
        let mut scanned = 0;
        let mut upto = published;
        let mut last = after;
        for entry in self
            .db
            .scan_range(Table::UseridShortroomidPosNotify, &from, &to, false)
        {
            scanned += 1;
            if scanned > MAX_COUNTED {
                // The rest is counted by the next calls, from where this one stopped.
                upto = last;
                break;
            }
            let (key, value) = entry?;
            let pos = entry_pos(&key)?;
            last = pos;
            let (root, _) = split_thread(&value)?;
            if read.has_read(pos, root) || value[0] & INVITE != 0 {
                continue;
            }
            counted.oldest.note(root, pos);
            let counts = &mut counted.counts;
            let slot = match root {
                None => &mut counts.main,
                Some(root) => counts.threads.entry(root.to_owned()).or_default(),
            };
            slot.notifications += 1;
            if value[0] & HIGHLIGHT != 0 {
                slot.highlights += 1;
            }
        }
        counted.upto = upto;
        let counts = counted.counts.clone();
        self.unread.put(user_id, room, counted);
        Ok((counts, (upto == published).then_some(upto)))
    }

    /// A remembered count brought to the receipts `read`, and whether they moved: the
    /// entries it counted that became read since are taken out. They lie between where a
    /// receipt was and where it is, and not before the oldest entry it counted unread in
    /// that receipt's thread (a thread with none unread has nothing to take out). `None`
    /// when it cannot be done (receipts that went back, as after a leave; more than
    /// [`MAX_COUNTED`] entries to look at): count again.
    fn read_since(
        &self,
        user_id: &str,
        room: u64,
        mut counted: Counted,
        read: &ReadPositions,
    ) -> ServiceResult<Option<(Counted, bool)>> {
        if counted.read == *read {
            return Ok(Some((counted, false)));
        }
        if !read.covers(&counted.read) {
            return Ok(None);
        }
        if read.unthreaded >= counted.upto {
            // Everything it counted is read.
            counted.counts = RoomCounts::default();
            counted.oldest = OldestUnread::default();
        } else if let Some((after, upto)) = newly_read(&counted, read) {
            let from = entry_key(user_id, room, after.saturating_add(1));
            let to = entry_key(user_id, room, upto.saturating_add(1));
            for (scanned, entry) in self
                .db
                .scan_range(Table::UseridShortroomidPosNotify, &from, &to, false)
                .enumerate()
            {
                if scanned >= MAX_COUNTED {
                    return Ok(None);
                }
                let (key, value) = entry?;
                let pos = entry_pos(&key)?;
                let (root, _) = split_thread(&value)?;
                if value[0] & INVITE != 0
                    || counted.read.has_read(pos, root)
                    || !read.has_read(pos, root)
                {
                    continue;
                }
                let counts = &mut counted.counts;
                let slot = match root {
                    None => &mut counts.main,
                    Some(root) => match counts.threads.get_mut(root) {
                        Some(slot) => slot,
                        None => continue,
                    },
                };
                slot.notifications = slot.notifications.saturating_sub(1);
                if value[0] & HIGHLIGHT != 0 {
                    slot.highlights = slot.highlights.saturating_sub(1);
                }
            }
            counted.counts.threads.retain(|_, c| c.notifications > 0);
            let counts = &counted.counts;
            counted.oldest.forget_read(counts);
        }
        counted.read = read.clone();
        Ok(Some((counted, true)))
    }

    /// The user's notifications before position `before` (newest first), at most `limit`,
    /// only highlights if asked; with the position to continue from. Visits each room the
    /// user has notifications in (a skip scan), taking at most `limit` from each.
    pub fn notifications(
        &self,
        user_id: &str,
        before: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> ServiceResult<(Vec<Notification>, Option<u64>)> {
        if limit == 0 {
            return Err(ServiceError::invalid_param("limit must be positive"));
        }
        let prefix = user_prefix(user_id);
        let before = before.unwrap_or(u64::MAX);
        let end = keys::prefix_successor(&prefix).unwrap_or_else(|| vec![0xff; prefix.len() + 1]);
        let mut found: Vec<Notification> = Vec::new();
        let mut room = 0u64;
        loop {
            // The next room with entries.
            let start = entry_key(user_id, room, 0);
            let Some(first) = self
                .db
                .scan_range(Table::UseridShortroomidPosNotify, &start, &end, false)
                .next()
            else {
                break;
            };
            let (key, _) = first?;
            let found_room = key
                .get(prefix.len()..prefix.len() + 8)
                .and_then(keys::read_u64)
                .ok_or_else(corrupt)?;
            let lower = entry_key(user_id, found_room, 0);
            let upper = entry_key(user_id, found_room, before);
            let mut taken = 0;
            for entry in self
                .db
                .scan_range(Table::UseridShortroomidPosNotify, &lower, &upper, true)
            {
                let (key, value) = entry?;
                if only_highlight && value.first().is_none_or(|f| f & HIGHLIGHT == 0) {
                    continue;
                }
                found.push(parse_entry(&key, &value, prefix.len())?);
                taken += 1;
                if taken > limit {
                    break;
                }
            }
            match found_room.checked_add(1) {
                Some(next) => room = next,
                None => break,
            }
        }
        found.sort_unstable_by_key(|n| std::cmp::Reverse(n.pos));
        let next = (found.len() > limit).then(|| found[limit - 1].pos);
        found.truncate(limit);
        Ok((found, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A count at `read`, covering up to 100, with unread entries from `main` on in the
    /// main timeline and from the given positions in threads.
    fn counted(read: ReadPositions, main: Option<u64>, threads: &[(&str, u64)]) -> Counted {
        let mut oldest = OldestUnread::default();
        let mut counts = RoomCounts::default();
        if let Some(pos) = main {
            oldest.note(None, pos);
            counts.main.notifications = 1;
        }
        for (root, pos) in threads {
            oldest.note(Some(root), *pos);
            counts
                .threads
                .entry(root.to_string())
                .or_default()
                .notifications = 1;
        }
        Counted {
            read,
            upto: 100,
            started: 0,
            counts,
            oldest,
        }
    }

    #[test]
    fn what_became_read_lies_between_old_and_new_receipts_after_the_oldest_unread() {
        // Threaded receipts only: the unthreaded one stays at 0.
        let before = ReadPositions::at(0, 20, &[("$t", 15)]);
        let count = counted(before.clone(), Some(30), &[("$t", 40), ("$u", 60)]);
        assert_eq!(newly_read(&count, &before), None);
        // The main timeline read on to 50: from its oldest unread (30) on, not from 20.
        assert_eq!(
            newly_read(&count, &ReadPositions::at(0, 50, &[("$t", 15)])),
            Some((29, 50))
        );
        // A first receipt in thread $u: from its oldest unread entry, not from 0.
        assert_eq!(
            newly_read(&count, &ReadPositions::at(0, 20, &[("$t", 15), ("$u", 70)])),
            Some((59, 70))
        );
        // A thread with nothing unread reads nothing new, wherever its receipt goes.
        assert_eq!(
            newly_read(&count, &ReadPositions::at(0, 20, &[("$t", 15), ("$v", 90)])),
            None
        );
        // Beyond what the count covers, nothing is taken out (it is counted afresh).
        assert_eq!(
            newly_read(&count, &ReadPositions::at(0, 20, &[("$t", 99_999)])),
            Some((39, 100))
        );
        // The unthreaded receipt: from the oldest unread of all.
        assert_eq!(
            newly_read(&count, &ReadPositions::at(45, 20, &[("$t", 15)])),
            Some((29, 45))
        );
        // With nothing unread, nothing to take out.
        let nothing = counted(before.clone(), None, &[]);
        assert_eq!(
            newly_read(&nothing, &ReadPositions::at(50, 50, &[("$t", 50)])),
            None
        );
    }

    #[test]
    fn the_oldest_unread_is_forgotten_with_its_last_unread_entry() {
        let mut oldest = OldestUnread::default();
        oldest.note(None, 7);
        oldest.note(None, 9);
        oldest.note(Some("$t"), 8);
        assert_eq!((oldest.main, oldest.first()), (Some(7), Some(7)));
        let mut counts = RoomCounts::default();
        counts.threads.insert("$t".into(), UnreadCounts::default());
        oldest.forget_read(&counts);
        assert_eq!((oldest.main, oldest.first()), (None, Some(8)));
    }
}
