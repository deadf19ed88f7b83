//! The background fetch of stale remote device lists.
//!
//! Spec: server-server API, "Device Management": a server that receives an
//! `m.device_list_update` whose `prev_id` it does not recognise "must resynchronise its
//! list by calling the `/user/keys/query` API and resume the process" (the call that
//! answers the list with its `stream_id` is `GET /user/devices`, which is what is asked).
//! A kept list that turns stale (an update showed a gap, or an update of the user came
//! while the list was being fetched) is fetched again here at once, as Synapse resyncs
//! on a gap, so that it follows the next updates instead of waiting, stale, for a
//! client's query; its server may be down by then. Up to [`BATCH`] users a round, first
//! asked first, in groups of [`AT_ONCE`] asked together within [`FETCH_TIME`] (a silent
//! server holds up its group only, and every user taken is asked). A list whose server cannot
//! answer stays stale, for the next query or update to try again. Each fetch follows an
//! update of the user's own server (a gap, or one that raced a fetch), and a user waits
//! for one fetch at most: a server makes us fetch no more than it sends us updates,
//! and only from itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::client::FederationClient;
use super::device_lists::RemoteDeviceLists;
use crate::core::UserId;

/// Users whose lists one round fetches at most.
const BATCH: usize = 64;
/// Lists fetched at once (each answer up to the client's response limit).
const AT_ONCE: usize = 4;
/// How long one round waits for the servers' answers.
const FETCH_TIME: Duration = Duration::from_secs(10);

/// Fetches the stale lists `lists` asks for, until `stopped`.
pub async fn run(
    lists: Arc<RemoteDeviceLists>,
    client: Arc<FederationClient>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let taken = lists.take_resyncs_wanted(BATCH);
        if taken.is_empty() {
            tokio::select! {
                _ = lists.resync_wanted() => continue,
                _ = stopped.changed() => return,
            }
        }
        let users: Vec<UserId> = taken.iter().filter_map(|u| UserId::parse(u).ok()).collect();
        for group in users.chunks(AT_ONCE) {
            // Read as the group's fetches begin: an update before then is in the list.
            let to_fetch = match lists.needed(group) {
                Ok(needed) => needed.to_fetch,
                Err(e) => {
                    tracing::warn!(error = %e.message, "stale device lists could not be read");
                    continue;
                }
            };
            // Dropped meanwhile (a member event), or fetched fresh by a query: nothing
            // to do.
            let to_fetch: Vec<_> = to_fetch
                .into_iter()
                .filter(|(_, stale, _)| stale.is_some())
                .collect();
            if to_fetch.is_empty() {
                continue;
            }
            let count = to_fetch.len();
            let deadline = tokio::time::Instant::now() + FETCH_TIME;
            let fetched = tokio::select! {
                fetched = lists.fetch(&client, to_fetch, deadline, AT_ONCE) => fetched,
                _ = stopped.changed() => return,
            };
            match fetched {
                Ok(fetched) => {
                    let fresh = fetched.lists.values().filter(|l| !l.stale).count();
                    tracing::debug!(count, fresh, "stale device lists fetched again");
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "stale device lists were not kept")
                }
            }
        }
    }
}
