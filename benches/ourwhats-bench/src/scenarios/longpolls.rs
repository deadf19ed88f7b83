//! `longpolls`: C clients (spread over U users, one connection each) park a long-polling
//! `/sync` (or, with `--endpoint events`, the deprecated `/events` stream from a sync
//! token) at once; the server's memory before and while it holds them. Run the server
//! and this tool with enough file descriptors (`ulimit -n 8192`).

use std::time::Duration;

use serde_json::json;

use reqwest::Method;

use super::Target;
use crate::client::{http_client, next_batch, register_many, BenchResult, User};
use crate::report::{Measure, Phase};

/// How long each long-poll asks the server to wait: longer than any hold.
const POLL_TIMEOUT_MS: u64 = 60_000;

pub async fn run(
    target: &Target,
    clients: usize,
    users: usize,
    hold_seconds: u64,
    endpoint: &str,
) -> BenchResult<Vec<Measure>> {
    if !matches!(endpoint, "sync" | "events") {
        return Err(format!("--endpoint is sync or events, not {endpoint}"));
    }
    if hold_seconds * 1000 >= POLL_TIMEOUT_MS {
        return Err(format!(
            "--hold-seconds must stay under {} s",
            POLL_TIMEOUT_MS / 1000
        ));
    }
    let prefix = format!("{}poll", target.prefix);
    let accounts = register_many(&target.base, &prefix, users.max(1), 8).await?;
    // Each poller: its own connection, and a `since` token so its long-poll waits.
    let mut pollers: Vec<(User, String)> = Vec::with_capacity(clients);
    for n in 0..clients {
        let mut user = accounts[n % accounts.len()].clone();
        user.http = http_client()?;
        let mut since = next_batch(&user.sync("timeout=0&set_presence=offline").await?)?;
        if endpoint == "events" {
            // `/events` marks its user online (as Synapse does), which is news to the
            // stream once: taken here, so that the poll below waits.
            let first = user
                .call(
                    Method::GET,
                    &format!("/_matrix/client/v3/events?from={since}&timeout=0"),
                    None,
                )
                .await?;
            since = first["end"]
                .as_str()
                .ok_or_else(|| format!("/events answered no end: {first}"))?
                .to_owned();
        }
        pollers.push((user, since));
    }

    let phase = Phase::start(target.pid);
    let tasks: Vec<_> = pollers
        .into_iter()
        .map(|(user, since)| {
            let events = endpoint == "events";
            tokio::spawn(async move {
                if events {
                    user.call(
                        Method::GET,
                        &format!(
                            "/_matrix/client/v3/events?from={since}&timeout={POLL_TIMEOUT_MS}"
                        ),
                        None,
                    )
                    .await
                } else {
                    user.sync(&format!(
                        "since={since}&timeout={POLL_TIMEOUT_MS}&set_presence=offline"
                    ))
                    .await
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(hold_seconds)).await;
    let parked = tasks.iter().filter(|t| !t.is_finished()).count();
    let measure = phase.finish(parked, clients - parked, Vec::new());
    for task in tasks {
        task.abort();
    }
    Ok(vec![measure.named(
        "longpolls",
        "held",
        json!({"clients": clients, "users": users, "hold_seconds": hold_seconds, "endpoint": endpoint}),
    )])
}
