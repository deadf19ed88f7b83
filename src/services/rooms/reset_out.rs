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
//! sent the room's forward extremities as they were at that moment (see the writer's
//! `remote_event`), and for [`GRANT_FOR`] it may read, as a member would, the events we
//! had accepted by then: enough to fetch the other branch and resolve it as we did.
//! Events accepted after the reset stay hidden from it, and a server whose member was
//! banned, or whose member's own event took it out, gets nothing of this. The grants
//! are held in memory only: after a restart the reset server reads as any other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reset server may read what we held at the reset.
pub const GRANT_FOR: Duration = Duration::from_secs(600);

/// Grants held at most (each a room and a server); beyond, expired ones are dropped and
/// then new ones are not recorded.
const MAX_GRANTS: usize = 10_000;

/// A reset server's leave to read: events accepted at stream positions up to `upto`
/// (outliers, at position 0, included), until `until`.
#[derive(Debug, Clone, Copy)]
struct Grant {
    upto: u64,
    until: Instant,
}

/// The grants, by room id and server name.
#[derive(Debug, Default)]
pub struct ResetServers {
    grants: Mutex<HashMap<(String, String), Grant>>,
}

impl ResetServers {
    /// `server` was put out of `room_id` by the resolution that accepted the event at
    /// stream position `upto`.
    pub fn grant(&self, room_id: &str, server: &str, upto: u64) {
        let now = Instant::now();
        let mut grants = self
            .grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if grants.len() >= MAX_GRANTS {
            grants.retain(|_, g| g.until > now);
            if grants.len() >= MAX_GRANTS {
                tracing::warn!(%room_id, %server, "too many reset servers held: this one reads as any other");
                return;
            }
        }
        let grant = Grant {
            upto,
            until: now + GRANT_FOR,
        };
        let entry = grants
            .entry((room_id.to_owned(), server.to_owned()))
            .or_insert(grant);
        entry.upto = entry.upto.max(upto);
        entry.until = grant.until;
    }

    /// The last stream position of `room_id` that `server` may read as a member, if it
    /// holds an unexpired grant.
    pub fn granted(&self, room_id: &str, server: &str) -> Option<u64> {
        let grants = self
            .grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        grants
            .get(&(room_id.to_owned(), server.to_owned()))
            .filter(|g| g.until > Instant::now())
            .map(|g| g.upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_names_one_room_and_one_server_and_keeps_the_furthest_position() {
        let reset = ResetServers::default();
        assert_eq!(reset.granted("!r:a", "b"), None);
        reset.grant("!r:a", "b", 10);
        reset.grant("!r:a", "b", 7);
        assert_eq!(reset.granted("!r:a", "b"), Some(10));
        assert_eq!(reset.granted("!r:a", "c"), None);
        assert_eq!(reset.granted("!s:a", "b"), None);
    }

    #[test]
    fn an_expired_grant_reads_as_none() {
        let reset = ResetServers::default();
        reset.grant("!r:a", "b", 3);
        if let Some(g) = reset.grants.lock().unwrap().values_mut().next() {
            g.until = Instant::now() - Duration::from_secs(1);
        }
        assert_eq!(reset.granted("!r:a", "b"), None);
    }
}
