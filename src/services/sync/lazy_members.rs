//! Which member events each device has been sent under lazy loading, so an incremental
//! `/sync` does not send them again.
//!
//! Spec: client-server API, "Lazy-loading room members": "the server SHOULD NOT send
//! membership events the client already has, unless `include_redundant_members` is
//! true". Each entry keeps the position of the answer that carried it (its
//! `next_batch`): a member counts as known only to a request whose `since` is at or after
//! that position, so a client that lost an answer and retries its old token gets the
//! members again. The memory is bounded; anything forgotten is merely sent again, which
//! the spec allows.

use std::collections::HashMap;
use std::sync::Mutex;

/// At most this many devices are remembered (the least recently syncing go first).
const MAX_DEVICES: usize = 10_000;
/// At most this many member entries per device (beyond it the device starts afresh).
const MAX_ENTRIES_PER_DEVICE: usize = 50_000;

/// A member event sent to a device: its short id and the answer position that carried it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    event: u64,
    in_answer: u64,
}

#[derive(Default)]
struct Device {
    /// Room short id → member user id → what was sent.
    rooms: HashMap<u64, HashMap<String, Sent>>,
    entries: usize,
    /// A counter value of the last use (higher: more recent).
    last_used: u64,
}

/// The per-device record of member events sent.
#[derive(Default)]
pub struct LazyMembers {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    devices: HashMap<(String, String), Device>,
    clock: u64,
}

impl LazyMembers {
    /// Forgets what the device was sent (an initial or `full_state` sync starts afresh).
    pub fn reset(&self, user_id: &str, device_id: &str) {
        let mut inner = self.lock();
        inner
            .devices
            .remove(&(user_id.to_owned(), device_id.to_owned()));
    }

    /// Whether the device already holds `event` as `member`'s membership in the room,
    /// given the `since` position of its request.
    pub fn has(
        &self,
        (user_id, device_id): (&str, &str),
        room: u64,
        member: &str,
        event: u64,
        since: u64,
    ) -> bool {
        let inner = self.lock();
        inner
            .devices
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .and_then(|device| device.rooms.get(&room))
            .and_then(|members| members.get(member))
            .is_some_and(|sent| sent.event == event && sent.in_answer <= since)
    }

    /// Records member events sent to the device in the answer ending at `in_answer`.
    pub fn record<'m>(
        &self,
        (user_id, device_id): (&str, &str),
        room: u64,
        sent: impl IntoIterator<Item = (&'m str, u64)>,
        in_answer: u64,
    ) {
        let mut sent = sent.into_iter().peekable();
        if sent.peek().is_none() {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let key = (user_id.to_owned(), device_id.to_owned());
        if !inner.devices.contains_key(&key) && inner.devices.len() >= MAX_DEVICES {
            let oldest = inner
                .devices
                .iter()
                .min_by_key(|(_, device)| device.last_used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                inner.devices.remove(&oldest);
            }
        }
        let device = inner.devices.entry(key).or_default();
        device.last_used = now;
        let members = device.rooms.entry(room).or_default();
        let mut added = 0;
        for (member, event) in sent {
            let entry = Sent { event, in_answer };
            if members.insert(member.to_owned(), entry).is_none() {
                added += 1;
            }
        }
        device.entries += added;
        if device.entries > MAX_ENTRIES_PER_DEVICE {
            device.rooms.clear();
            device.entries = 0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: (&str, &str) = ("@a:x", "D");

    #[test]
    fn a_member_counts_as_known_only_from_the_answer_that_carried_it() {
        let lazy = LazyMembers::default();
        lazy.record(DEV, 1, [("@b:x", 7)], 100);
        assert!(lazy.has(DEV, 1, "@b:x", 7, 100));
        assert!(lazy.has(DEV, 1, "@b:x", 7, 150));
        // A retry with the token from before that answer gets the member again.
        assert!(!lazy.has(DEV, 1, "@b:x", 7, 99));
        // A newer membership event is news.
        assert!(!lazy.has(DEV, 1, "@b:x", 8, 150));
        // Other rooms and devices know nothing.
        assert!(!lazy.has(DEV, 2, "@b:x", 7, 150));
        assert!(!lazy.has(("@a:x", "E"), 1, "@b:x", 7, 150));
        lazy.reset("@a:x", "D");
        assert!(!lazy.has(DEV, 1, "@b:x", 7, 150));
    }

    #[test]
    fn memory_is_bounded_per_device() {
        let lazy = LazyMembers::default();
        let names: Vec<String> = (0..=MAX_ENTRIES_PER_DEVICE)
            .map(|i| format!("@u{i}:x"))
            .collect();
        lazy.record(DEV, 1, names.iter().map(|n| (n.as_str(), 1)), 10);
        assert!(!lazy.has(DEV, 1, "@u0:x", 1, 10));
        lazy.record(DEV, 1, [("@b:x", 7)], 100);
        assert!(lazy.has(DEV, 1, "@b:x", 7, 100));
    }
}
