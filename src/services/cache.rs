//! A bounded cache of immutable values: two generations of a map. Lookups try the new
//! generation, then the old one (moving a hit to the new one); once the new generation
//! holds half the budget it becomes the old one and the old one is dropped. So recently
//! used entries stay, the total stays under the budget (in the values' own measure of
//! cost, e.g. bytes), and no entry needs bookkeeping of its own.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

struct Generations<K, V> {
    new: HashMap<K, Arc<V>>,
    new_cost: usize,
    old: HashMap<K, Arc<V>>,
}

/// The cache.
pub struct GenerationalCache<K, V> {
    budget: usize,
    cost: fn(&V) -> usize,
    inner: Mutex<Generations<K, V>>,
}

impl<K: Eq + Hash + Clone, V> GenerationalCache<K, V> {
    /// A cache holding at most about `budget` of `cost`.
    pub fn new(budget: usize, cost: fn(&V) -> usize) -> Self {
        Self {
            budget,
            cost,
            inner: Mutex::new(Generations {
                new: HashMap::new(),
                new_cost: 0,
                old: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<K, V>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value of `key`, if cached.
    pub fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let mut generations = self.lock();
        if let Some(value) = generations.new.get(key) {
            return Some(Arc::clone(value));
        }
        let (key, value) = generations.old.remove_entry(key)?;
        self.insert_locked(&mut generations, key, Arc::clone(&value));
        Some(value)
    }

    /// Caches `value` under `key`; a value costing more than half the budget is not kept.
    pub fn insert(&self, key: K, value: Arc<V>) {
        let mut generations = self.lock();
        self.insert_locked(&mut generations, key, value);
    }

    fn insert_locked(&self, generations: &mut Generations<K, V>, key: K, value: Arc<V>) {
        let cost = (self.cost)(&value);
        let half = self.budget / 2;
        if cost > half {
            return;
        }
        if generations.new_cost + cost > half {
            generations.old = std::mem::take(&mut generations.new);
            generations.new_cost = 0;
        }
        generations.new_cost += cost;
        generations.new.insert(key, value);
    }

    /// Empties the cache (a server gone idle gives the memory back).
    pub fn clear(&self) {
        let mut generations = self.lock();
        generations.new = HashMap::new();
        generations.old = HashMap::new();
        generations.new_cost = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recently_used_entries_stay_within_the_budget() {
        let cache: GenerationalCache<u32, Vec<u8>> = GenerationalCache::new(100, Vec::len);
        for key in 0..10 {
            cache.insert(key, Arc::new(vec![0; 10]));
        }
        // 50 of cost per generation: 0..4 were moved to the old one, 5..9 are new.
        assert!(cache.get(&0).is_some(), "the old generation still answers");
        cache.insert(10, Arc::new(vec![0; 10]));
        cache.insert(11, Arc::new(vec![0; 10]));
        // The new generation filled again: what was old and not used is gone.
        assert!(cache.get(&1).is_none());
        assert!(cache.get(&0).is_some(), "a hit moved it forward");
        assert!(cache.get(&11).is_some());
    }

    #[test]
    fn oversized_values_are_not_kept_and_clear_empties() {
        let cache: GenerationalCache<u32, Vec<u8>> = GenerationalCache::new(100, Vec::len);
        cache.insert(1, Arc::new(vec![0; 60]));
        assert!(cache.get(&1).is_none());
        cache.insert(2, Arc::new(vec![0; 5]));
        cache.clear();
        assert!(cache.get(&2).is_none());
    }
}
