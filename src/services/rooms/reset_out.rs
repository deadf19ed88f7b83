//! Servers that a state resolution of ours put out of a room (a "state reset"), and what
//! they may still read of it for a while.
//!
//! When another branch of a room's graph reaches us and the resolution of the room's
//! state drops every joined member of a server without any event about them (say their
//! joins raced a join rule changed to `invite` on the other branch, and v2 state
//! resolution re-checks them against the resolved rule), that server cannot tell: what
//! we send after goes only to the servers in the room, and it may read nothing more of
//! ours ("the requesting host is not in the room"). It keeps the state it had while
//! every other server computes the reset, for good. Synapse behaves the same way.
//!
//! So that every server computes the same state from the same graph, such a server is
//! sent the room's forward extremities as they were at that moment (those it may see; see
//! the writer's `remote_event`), and for [`GRANT_FOR`] it may read, as a member would,
//! what we held then: events whose short ids were given out by then and, for those with a
//! live stream position, placed by then (outliers and soft-failed events have none;
//! history backfilled since has a short id given out later). That is enough to fetch the other branch and resolve it as we did. Spec:
//! server-server API, "Retrieving events" and "Backfilling and retrieving missing
//! events", whose 403 is for "the requesting host is not in the room": this reads "in the
//! room" as also "was, until our resolution of a branch it never saw". Events held after
//! the reset stay hidden from it; a server whose member's old membership did not come
//! back (a ban, a kick or leave from the other branch, or the written event's own) gets
//! nothing of this, and a ban or leave of one of its users written later takes the grant
//! back. The grants live in memory only: after a restart, or once expired
//! (the sender may be backing off from the server for a while, hence a day), the reset
//! server reads as any other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reset server may read what we held at the reset.
pub const GRANT_FOR: Duration = Duration::from_secs(24 * 3600);

/// Grants held at most (each a room and a server); beyond, expired ones are dropped and
/// then new ones are not recorded.
const MAX_GRANTS: usize = 10_000;

/// What a reset server may read of a room, as of the reset: events whose short ids are
/// up to `short` and, placed in the live stream, at positions up to `pos`; until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The reset's stream position.
    pub pos: u64,
    /// The highest short event id given out at the reset.
    pub short: u64,
    until: Instant,
}

impl Grant {
    /// Whether an event held at stream position `pos` (0: none) under short id `short`
    /// was held at the reset: its short id was given out by then (which also keeps out
    /// history backfilled since, whose positions lie below every live one), and, placed
    /// in the live stream, it was placed by then.
    pub fn covers(&self, pos: u64, short: u64) -> bool {
        short <= self.short && (pos == 0 || pos <= self.pos)
    }
}

/// The grants, by room id and server name.
#[derive(Debug, Default)]
pub struct ResetServers {
    grants: Mutex<HashMap<(String, String), Grant>>,
}

impl ResetServers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Grant>> {
        self.grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `server` was put out of `room_id` by the resolution that accepted the event at
    /// stream position `pos`, when the highest short id given out was `short`.
    /// Answers whether the grant is held (not when too many are).
    pub fn grant(&self, room_id: &str, server: &str, (pos, short): (u64, u64)) -> bool {
        let now = Instant::now();
        let mut grants = self.lock();
        if grants.len() >= MAX_GRANTS {
            grants.retain(|_, g| g.until > now);
            if grants.len() >= MAX_GRANTS {
                tracing::warn!(%room_id, %server, "too many reset servers held: this one is not told");
                return false;
            }
        }
        let until = now + GRANT_FOR;
        let entry = grants
            .entry((room_id.to_owned(), server.to_owned()))
            .or_insert(Grant { pos, short, until });
        entry.pos = entry.pos.max(pos);
        entry.short = entry.short.max(short);
        entry.until = until;
        true
    }

    /// Whether a new grant could be held now (not too many held).
    pub fn has_room(&self) -> bool {
        let now = Instant::now();
        let mut grants = self.lock();
        if grants.len() >= MAX_GRANTS {
            grants.retain(|_, g| g.until > now);
        }
        grants.len() < MAX_GRANTS
    }

    /// Takes back `server`'s grant for `room_id`: one of its users was banned or left
    /// (kicked) by an event since, which says what the server may read from then on.
    pub fn revoke(&self, room_id: &str, server: &str) {
        let mut grants = self.lock();
        if !grants.is_empty() {
            grants.remove(&(room_id.to_owned(), server.to_owned()));
        }
    }

    /// What `server` may read of `room_id` as a reset server, if it holds an unexpired
    /// grant.
    pub fn granted(&self, room_id: &str, server: &str) -> Option<Grant> {
        let grants = self.lock();
        grants
            .get(&(room_id.to_owned(), server.to_owned()))
            .filter(|g| g.until > Instant::now())
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_names_one_room_and_one_server_and_keeps_the_furthest_position() {
        let reset = ResetServers::default();
        assert_eq!(reset.granted("!r:a", "b"), None);
        assert!(reset.grant("!r:a", "b", (10, 40)));
        assert!(reset.grant("!r:a", "b", (7, 30)));
        let grant = reset.granted("!r:a", "b").unwrap();
        assert_eq!((grant.pos, grant.short), (10, 40));
        assert_eq!(reset.granted("!r:a", "c"), None);
        assert_eq!(reset.granted("!s:a", "b"), None);
    }

    #[test]
    fn a_grant_covers_what_was_held_at_the_reset_and_nothing_after() {
        let reset = ResetServers::default();
        reset.grant("!r:a", "b", (10, 40));
        let grant = reset.granted("!r:a", "b").unwrap();
        assert!(grant.covers(10, 40) && grant.covers(3, 12));
        assert!(!grant.covers(11, 12), "accepted after the reset");
        assert!(!grant.covers(3, 41), "backfilled after the reset");
        assert!(grant.covers(0, 40), "an outlier held at the reset");
        assert!(
            !grant.covers(0, 41),
            "an outlier or soft-failed event held after it"
        );
    }

    #[test]
    fn a_revoked_grant_is_gone() {
        let reset = ResetServers::default();
        reset.grant("!r:a", "b", (10, 40));
        reset.revoke("!r:a", "b");
        assert_eq!(reset.granted("!r:a", "b"), None);
        assert!(reset.has_room());
    }

    #[test]
    fn an_expired_grant_reads_as_none() {
        let reset = ResetServers::default();
        reset.grant("!r:a", "b", (3, 3));
        if let Some(g) = reset.grants.lock().unwrap().values_mut().next() {
            g.until = Instant::now() - Duration::from_secs(1);
        }
        assert_eq!(reset.granted("!r:a", "b"), None);
    }
}
