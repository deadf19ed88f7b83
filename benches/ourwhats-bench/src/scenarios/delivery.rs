//! `delivery`: a receiver long-polls `/sync` while a sender PUTs a message into their
//! room; the time from the start of the PUT to the receiver's answer that holds it.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{timeline, Target};
use crate::client::{next_batch, register_many, BenchResult, User};
use crate::report::{Measure, Phase};

/// Long-polls until `room`'s timeline holds a message whose body is `marker`; answers
/// when that sync answer arrived and its `next_batch`.
async fn wait_for(
    receiver: &User,
    room: &str,
    mut since: String,
    marker: &str,
) -> BenchResult<(Instant, String)> {
    // Other news (presence, receipts) may end a long-poll first; poll again then.
    for _ in 0..100 {
        let answer = receiver
            .sync(&format!("since={since}&timeout=30000&set_presence=offline"))
            .await?;
        let arrived = Instant::now();
        since = next_batch(&answer)?;
        if timeline(&answer, room)
            .iter()
            .any(|e| e["content"]["body"].as_str() == Some(marker))
        {
            return Ok((arrived, since));
        }
    }
    Err(format!("the message {marker} never reached the receiver"))
}

pub async fn run(target: &Target, messages: usize) -> BenchResult<Vec<Measure>> {
    let prefix = format!("{}dlv", target.prefix);
    let users = register_many(&target.base, &prefix, 2, 2).await?;
    let (sender, receiver) = (&users[0], &users[1]);
    let room = sender
        .create_room(json!({"preset": "private_chat", "invite": [receiver.user_id]}))
        .await?;
    receiver.join(&room).await?;
    let mut since = next_batch(&receiver.sync("timeout=0&set_presence=offline").await?)?;

    let phase = Phase::start(target.pid);
    let mut latencies = Vec::with_capacity(messages);
    for n in 0..messages {
        let marker = format!("{prefix} delivery {n}");
        let poll = {
            let receiver = receiver.clone();
            let room = room.clone();
            let marker = marker.clone();
            tokio::spawn(async move { wait_for(&receiver, &room, since, &marker).await })
        };
        // Let the long-poll reach the server and park there.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let sent = Instant::now();
        sender
            .send_text(&room, &format!("{prefix}-{n}"), &marker)
            .await?;
        let (arrived, next) = poll
            .await
            .map_err(|e| format!("the receiver stopped: {e}"))??;
        latencies.push(arrived.saturating_duration_since(sent).as_secs_f64() * 1000.0);
        since = next;
    }
    Ok(vec![phase.finish(messages, 0, latencies).named(
        "delivery",
        "delivery",
        json!({"messages": messages}),
    )])
}
