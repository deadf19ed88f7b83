//! Slots for uploads in progress: a global cap (the disk and memory an upload holds) and a
//! per-user cap under it, so that one user's slow uploads can never take every slot and
//! lock everyone else out of uploading.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// The user has as many uploads in progress as one user may.
    UserBusy,
    /// The server has as many uploads in progress as it takes.
    ServerBusy,
}

/// The slots.
pub struct UploadSlots {
    global: Arc<Semaphore>,
    per_user: usize,
    users: Arc<Mutex<HashMap<String, usize>>>,
}

/// An upload's slot, given back when dropped.
pub struct UploadSlot {
    _global: OwnedSemaphorePermit,
    users: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl UploadSlots {
    /// `global` slots in all, at most `per_user` of them for one user.
    pub fn new(global: usize, per_user: usize) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global)),
            per_user: per_user.max(1),
            users: Arc::default(),
        }
    }

    /// A slot for an upload by `user`, if one is free (the user's own cap first).
    pub fn try_claim(&self, user: &str) -> Result<UploadSlot, NoSlot> {
        let mut users = lock(&self.users);
        let held = users.get(user).copied().unwrap_or(0);
        if held >= self.per_user {
            return Err(NoSlot::UserBusy);
        }
        let global = Arc::clone(&self.global)
            .try_acquire_owned()
            .map_err(|_| NoSlot::ServerBusy)?;
        users.insert(user.to_owned(), held + 1);
        Ok(UploadSlot {
            _global: global,
            users: Arc::clone(&self.users),
            user: user.to_owned(),
        })
    }
}

fn lock(
    users: &Mutex<HashMap<String, usize>>,
) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    users
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut users = lock(&self.users);
        if let Some(held) = users.get_mut(&self.user) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                users.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_take_every_slot() {
        let slots = UploadSlots::new(3, 2);
        let a1 = slots.try_claim("@a:x").unwrap();
        let _a2 = slots.try_claim("@a:x").unwrap();
        assert_eq!(slots.try_claim("@a:x").err(), Some(NoSlot::UserBusy));
        let _b = slots.try_claim("@b:x").unwrap();
        assert_eq!(slots.try_claim("@c:x").err(), Some(NoSlot::ServerBusy));
        drop(a1);
        let _a3 = slots.try_claim("@a:x").unwrap();
        assert!(lock(&slots.users).get("@a:x") == Some(&2));
    }

    #[test]
    fn released_slots_forget_the_user() {
        let slots = UploadSlots::new(4, 1);
        drop(slots.try_claim("@a:x").unwrap());
        assert!(lock(&slots.users).is_empty());
    }
}
