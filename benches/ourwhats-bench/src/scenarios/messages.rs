//! `messages`: a room with N messages; a member pages back through its history with
//! `GET /rooms/{roomId}/messages?dir=b&limit=L`, following each answer's `end` and starting
//! again from the newest when the history runs out: latency per page.
//!
//! Spec: client-server API, "GET /_matrix/client/v3/rooms/{roomId}/messages" (`from` may
//! be left out to start at the newest event).

use std::time::Instant;

use reqwest::Method;
use serde_json::json;

use super::{in_batches, Target};
use crate::client::{encode, register, BenchResult};
use crate::report::{Measure, Phase};

pub async fn run(
    target: &Target,
    messages: usize,
    limit: usize,
    requests: usize,
) -> BenchResult<Vec<Measure>> {
    let prefix = format!("{}msg", target.prefix);
    let user = register(&target.base, &prefix).await?;
    let room = user
        .create_room(json!({"preset": "private_chat", "name": "history"}))
        .await?;
    let numbers: Vec<usize> = (0..messages).collect();
    let (user_ref, room_ref, prefix_ref) = (&user, &room, &prefix);
    in_batches(&numbers, 8, |&n| async move {
        user_ref
            .send_text(
                room_ref,
                &format!("{prefix_ref}-{n}"),
                &format!("message number {n} of the history"),
            )
            .await
            .map(drop)
    })
    .await?;

    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
        encode(&room)
    );
    let phase = Phase::start(target.pid);
    let mut latencies = Vec::with_capacity(requests);
    let mut from: Option<String> = None;
    for _ in 0..requests {
        let url = match &from {
            Some(token) => format!("{path}&from={}", encode(token)),
            None => path.clone(),
        };
        let started = Instant::now();
        let page = user.call(Method::GET, &url, None).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let got = page["chunk"].as_array().map_or(0, Vec::len);
        if got == 0 && from.is_none() {
            return Err(format!("the newest page of the history is empty: {page}"));
        }
        // A short page, or none to follow: the start of the room; begin again.
        from = page["end"]
            .as_str()
            .filter(|_| got == limit)
            .map(str::to_owned);
    }
    Ok(vec![phase.finish(requests, 0, latencies).named(
        "messages",
        "page",
        json!({"messages": messages, "limit": limit}),
    )])
}
