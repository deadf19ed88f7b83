//! `send`: N concurrent senders, each on its own connection, PUT messages into one room of
//! M members for T seconds, each sending its next message once the last is answered.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use super::{join_all, Target};
use crate::client::{register_many, BenchResult};
use crate::gateway::Gateway;
use crate::report::{Measure, Phase};

/// A sender stops after this many failed sends (a rate-limited or broken server).
const MAX_ERRORS_PER_SENDER: usize = 100;
/// How long the gateway's count is followed after the sends, for the pushes still queued.
const DRAIN_WAIT: Duration = Duration::from_secs(300);

pub async fn run(
    target: &Target,
    senders: usize,
    members: usize,
    seconds: u64,
    pushers: Option<Option<String>>,
    wait_for_pushes: bool,
) -> BenchResult<Vec<Measure>> {
    let senders = senders.max(1);
    let members = members.max(senders);
    let prefix = format!("{}send", target.prefix);
    let users = register_many(&target.base, &prefix, members, 8).await?;
    let room = users[0]
        .create_room(json!({"preset": "public_chat", "name": "send benchmark"}))
        .await?;
    join_all(&users, &room).await?;
    // With pushers, each message notifies every other member (the default rules), and
    // each of their pushers gets a request: what the send path must not wait for.
    let gateway = if let Some(url) = &pushers {
        let gateway = Gateway::start().await?;
        let url = url.clone().unwrap_or_else(|| gateway.url.clone());
        for (i, user) in users.iter().enumerate() {
            user.call(
                Method::POST,
                "/_matrix/client/v3/pushers/set",
                Some(json!({
                    "kind": "http", "app_id": "org.example.bench", "pushkey": format!("key-{i}"),
                    "app_display_name": "bench", "device_display_name": "bench", "lang": "en",
                    "data": {"url": url},
                })),
            )
            .await?;
        }
        Some(gateway)
    } else {
        None
    };

    let phase = Phase::start(target.pid);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = users
        .iter()
        .take(senders)
        .enumerate()
        .map(|(i, user)| {
            let user = user.clone();
            let room = room.clone();
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut n = 0u64;
                while Instant::now() < deadline && errors < MAX_ERRORS_PER_SENDER {
                    let started = Instant::now();
                    let txn = format!("{prefix}-{i}-{n}");
                    match user
                        .send_text(&room, &txn, &format!("message {n} from {i}"))
                        .await
                    {
                        Ok(_) => latencies.push(started.elapsed().as_secs_f64() * 1000.0),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("send failed: {e}");
                            }
                            errors += 1;
                        }
                    }
                    n += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.map_err(|e| format!("a sender stopped: {e}"))?;
        latencies.extend(l);
        errors += e;
    }
    let ops = latencies.len();
    let measure = phase.finish(ops, errors, latencies);
    let rate = ops as f64 / measure.wall_s;
    if let Some(gateway) = &gateway {
        let pushed = gateway.received();
        eprintln!(
            "push gateway: {pushed} notifications during the sends ({:.0}/s; each event notifies {} members)",
            pushed as f64 / measure.wall_s,
            members - 1
        );
        // Pushes are sent after the sends are acknowledged: how long the rest took.
        if wait_for_pushes && pushers.as_ref().is_some_and(Option::is_none) {
            let expected = (ops * (members - 1)) as u64;
            let waited = Instant::now();
            while gateway.received() < expected && waited.elapsed() < DRAIN_WAIT {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!(
                "push gateway: {} of {expected} notifications {:.2} s after the sends ended",
                gateway.received(),
                waited.elapsed().as_secs_f64()
            );
        }
    }
    Ok(vec![measure
        .named(
            "send",
            "send",
            json!({"senders": senders, "members": members, "seconds": seconds, "pushers": pushers.is_some()}),
        )
        .with_rate(rate, "events/s")])
}
