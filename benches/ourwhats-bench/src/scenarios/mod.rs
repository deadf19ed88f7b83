//! The scenarios: each sets up its own users and rooms on the server under test, then
//! measures one or more phases.

pub mod big_upload;
pub mod delivery;
pub mod idle;
pub mod keys;
pub mod longpolls;
pub mod media;
pub mod messages;
pub mod requests;
pub mod rooms;
pub mod send;
pub mod sync;
pub mod thumbnail;

use serde_json::Value;

use crate::client::{BenchResult, User};

/// The server under test.
pub struct Target {
    /// Base URL of its client-server API (`http://127.0.0.1:8008`).
    pub base: String,
    /// Its process, for CPU time and memory from `/proc` (same machine only).
    pub pid: Option<u32>,
    /// Start of every localpart and transaction id this run makes, so reruns against
    /// the same server never collide.
    pub prefix: String,
}

/// Runs `f` on `items`, `parallel` at a time, stopping at the first error.
pub async fn in_batches<'a, T, F, Fut>(items: &'a [T], parallel: usize, f: F) -> BenchResult<()>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = BenchResult<()>>,
{
    for chunk in items.chunks(parallel.max(1)) {
        for result in futures_util::future::join_all(chunk.iter().map(&f)).await {
            result?;
        }
    }
    Ok(())
}

/// Joins every user but the first (the creator) to `room`, 8 at a time.
pub async fn join_all(users: &[User], room: &str) -> BenchResult<()> {
    in_batches(users.get(1..).unwrap_or_default(), 8, |u| u.join(room)).await
}

/// The events of `room`'s timeline in a sync answer.
pub fn timeline<'a>(answer: &'a Value, room: &str) -> &'a [Value] {
    answer["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}
