//! `rooms`: C users create N private rooms in all (each with a name and a topic), each
//! creator starting its next room once the last is answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::Target;
use crate::client::{register_many, BenchResult};
use crate::report::{Measure, Phase};

pub async fn run(target: &Target, count: usize, concurrency: usize) -> BenchResult<Vec<Measure>> {
    let prefix = format!("{}rooms", target.prefix);
    let creators = register_many(&target.base, &prefix, concurrency.max(1), 8).await?;
    let next = Arc::new(AtomicUsize::new(0));

    let phase = Phase::start(target.pid);
    let tasks: Vec<_> = creators
        .into_iter()
        .map(|user| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let started = Instant::now();
                    user.create_room(json!({
                        "preset": "private_chat",
                        "name": "benchmark room",
                        "topic": "made by ourwhats-bench",
                    }))
                    .await?;
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                Ok::<_, String>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(
            task.await
                .map_err(|e| format!("a creator stopped: {e}"))??,
        );
    }
    let measure = phase.finish(latencies.len(), 0, latencies);
    let rate = measure.ops as f64 / measure.wall_s;
    Ok(vec![measure
        .named(
            "rooms",
            "create",
            json!({"count": count, "concurrency": concurrency}),
        )
        .with_rate(rate, "rooms/s")])
}
