//! Users' parsed push rulesets kept in memory, so that the send path does not read and
//! parse a member's rules for every event.
//!
//! A reader that misses reads the stored rules and fills the cache, while a change of
//! rules may land in between: the cache counts its changes, and a fill is kept only if
//! no change came since the reader looked. Otherwise a reader that read the old rules
//! before a change could put them back over the new ones, and they would stay until the
//! user's next change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::core::push_rules::Ruleset;

/// Rulesets kept at most (the cache is cleared past this).
const MAX_CACHED_RULESETS: usize = 10_000;

#[derive(Default)]
struct Inner {
    rulesets: HashMap<String, Arc<Ruleset>>,
    /// Changes made so far.
    changes: u64,
}

/// The cache.
#[derive(Default)]
pub(super) struct RulesetCache(Mutex<Inner>);

/// What a reader saw when it missed: hand it back with what it read.
pub(super) struct Miss(u64);

impl RulesetCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The user's cached ruleset, or a [`Miss`] to fill it with.
    pub(super) fn get(&self, user_id: &str) -> Result<Arc<Ruleset>, Miss> {
        let inner = self.lock();
        match inner.rulesets.get(user_id) {
            Some(ruleset) => Ok(Arc::clone(ruleset)),
            None => Err(Miss(inner.changes)),
        }
    }

    /// Keeps `ruleset`, read after `miss`, unless a change came since.
    pub(super) fn fill(&self, user_id: &str, ruleset: &Arc<Ruleset>, miss: Miss) {
        let mut inner = self.lock();
        if inner.changes != miss.0 {
            return;
        }
        if inner.rulesets.len() >= MAX_CACHED_RULESETS {
            inner.rulesets.clear();
        }
        inner
            .rulesets
            .insert(user_id.to_owned(), Arc::clone(ruleset));
    }

    /// The user's rules are now `ruleset`.
    pub(super) fn set(&self, user_id: &str, ruleset: Arc<Ruleset>) {
        let mut inner = self.lock();
        inner.changes += 1;
        if inner.rulesets.len() >= MAX_CACHED_RULESETS {
            inner.rulesets.clear();
        }
        inner.rulesets.insert(user_id.to_owned(), ruleset);
    }

    /// The user's rules are to be read again.
    pub(super) fn forget(&self, user_id: &str) {
        let mut inner = self.lock();
        inner.changes += 1;
        inner.rulesets.remove(user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset(n: usize) -> Arc<Ruleset> {
        let mut ruleset = crate::core::push_rules::with_server_defaults(None, "@a:x");
        ruleset.override_.truncate(n);
        Arc::new(ruleset)
    }

    #[test]
    fn a_fill_read_before_a_change_does_not_replace_it() {
        let cache = RulesetCache::default();
        let Err(miss) = cache.get("@a:x") else {
            panic!("nothing cached yet")
        };
        // A change lands between the reader's miss and its fill.
        cache.set("@a:x", ruleset(1));
        cache.fill("@a:x", &ruleset(2), miss);
        assert_eq!(cache.get("@a:x").ok().unwrap().override_.len(), 1);
    }

    #[test]
    fn a_fill_with_no_change_since_is_kept_and_a_forgotten_user_is_read_again() {
        let cache = RulesetCache::default();
        let Err(miss) = cache.get("@a:x") else {
            panic!("nothing cached yet")
        };
        cache.fill("@a:x", &ruleset(2), miss);
        assert_eq!(cache.get("@a:x").ok().unwrap().override_.len(), 2);
        cache.forget("@a:x");
        let Err(miss) = cache.get("@a:x") else {
            panic!("forgotten")
        };
        cache.fill("@a:x", &ruleset(3), miss);
        assert_eq!(cache.get("@a:x").ok().unwrap().override_.len(), 3);
    }
}
