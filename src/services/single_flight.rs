//! One run of a piece of work per key at a time, its result shared by every caller that
//! asked while it ran: e.g. one fetch of another server's media for all the clients that
//! want it at once (a picture in a busy room), where each would otherwise fetch it and
//! take a download slot of that server.
//!
//! The work runs on a task of its own: a caller that goes away (a client hanging up)
//! leaves it running for the others, and the key's entry goes once it ends (panicking
//! too), so a later call starts afresh.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

type Flights<T> = Arc<Mutex<HashMap<Vec<u8>, watch::Receiver<Option<T>>>>>;

/// The runs in flight, by key.
pub struct SingleFlight<T> {
    flights: Flights<T>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            flights: Arc::default(),
        }
    }
}

/// Takes a run's entry away when the run ends, however it ends.
struct Landing<T> {
    flights: Flights<T>,
    key: Vec<u8>,
}

impl<T> Drop for Landing<T> {
    fn drop(&mut self) {
        lock(&self.flights).remove(&self.key);
    }
}

fn lock<T>(
    flights: &Flights<T>,
) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, watch::Receiver<Option<T>>>> {
    flights.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// The result of the run of `key`: the one in flight, or one of `work()` started now.
    /// `None` when the run panicked.
    pub async fn run<F>(&self, key: &[u8], work: impl FnOnce() -> F) -> Option<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (mut result, start) = {
            let mut flights = lock(&self.flights);
            match flights.get(key) {
                Some(running) => (running.clone(), None),
                None => {
                    let (done, result) = watch::channel(None);
                    flights.insert(key.to_vec(), result.clone());
                    (result, Some(done))
                }
            }
        };
        // Started with the map unlocked: a task dropped at once (a runtime shutting
        // down) drops its landing here, which locks the map.
        if let Some(done) = start {
            let landing = Landing {
                flights: Arc::clone(&self.flights),
                key: key.to_vec(),
            };
            let work = work();
            tokio::spawn(async move {
                let out = work.await;
                // The entry goes before the result is told: a caller told it finds no
                // run of the key and starts one if it must.
                drop(landing);
                let _ = done.send(Some(out));
            });
        }
        let told = result.wait_for(Option::is_some).await.ok()?;
        told.clone()
    }

    /// How many runs are in flight.
    pub fn len(&self) -> usize {
        lock(&self.flights).len()
    }

    /// Whether no run is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn callers_of_one_key_share_one_run_and_the_next_call_runs_again() {
        let flights = Arc::new(SingleFlight::<usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let call = |key: &'static [u8]| {
            let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
            async move {
                flights
                    .run(key, || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 1
                    })
                    .await
            }
        };
        let (a, b, c, other) = tokio::join!(call(b"a"), call(b"a"), call(b"a"), call(b"b"));
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per key");
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert!(other.is_some() && other != a);
        assert!(flights.is_empty(), "entries go when runs end");
        assert_eq!(call(b"a").await, Some(3), "a later call runs again");
    }

    #[tokio::test]
    async fn a_caller_going_away_leaves_the_run_to_the_others_and_a_panic_answers_none() {
        let flights = Arc::new(SingleFlight::<u8>::default());
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            7
        };
        let gone = tokio::time::timeout(Duration::from_millis(10), flights.run(b"k", slow)).await;
        assert!(gone.is_err());
        assert_eq!(flights.len(), 1, "still running");
        assert_eq!(flights.run(b"k", || async { 9 }).await, Some(7));
        let panicked = flights
            .run(b"p", || async { panic!("the work failed") })
            .await;
        assert_eq!(panicked, None);
        assert!(flights.is_empty());
    }
}
