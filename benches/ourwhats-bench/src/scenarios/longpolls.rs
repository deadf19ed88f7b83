//! `longpolls`: C clients (spread over U users, one connection each) park a long-polling
//! `/sync` at once; the server's memory before and while it holds them. Run the server
//! and this tool with enough file descriptors (`ulimit -n 8192`).

use std::time::Duration;

use serde_json::json;

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
) -> BenchResult<Vec<Measure>> {
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
        let since = next_batch(&user.sync("timeout=0&set_presence=offline").await?)?;
        pollers.push((user, since));
    }

    let phase = Phase::start(target.pid);
    let tasks: Vec<_> = pollers
        .into_iter()
        .map(|(user, since)| {
            tokio::spawn(async move {
                user.sync(&format!(
                    "since={since}&timeout={POLL_TIMEOUT_MS}&set_presence=offline"
                ))
                .await
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
        json!({"clients": clients, "users": users, "hold_seconds": hold_seconds}),
    )])
}
