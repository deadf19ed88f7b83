//! `sync`: a user in R rooms (each shared with a second user, with three messages) makes
//! initial `/sync` requests (no filter, the server's default timeline limit), then
//! incremental ones with nothing new (`since` the latest token, `timeout=0`). An initial
//! sync is timed until its answer's last byte arrives; this tool then parses the answer
//! (to check every room is in it) with the clock stopped.

use std::time::Instant;

use serde_json::json;

use super::{in_batches, Target};
use crate::client::{next_batch, register_many, BenchResult};
use crate::report::{Measure, Phase};

pub async fn run(
    target: &Target,
    rooms: usize,
    initial: usize,
    incremental: usize,
) -> BenchResult<Vec<Measure>> {
    let prefix = format!("{}sync", target.prefix);
    let users = register_many(&target.base, &prefix, 2, 2).await?;
    let (user, friend) = (&users[0], &users[1]);
    let numbers: Vec<usize> = (0..rooms).collect();
    let prefix = &prefix;
    in_batches(&numbers, 8, |&r| async move {
        let room = friend
            .create_room(json!({"preset": "private_chat", "invite": [user.user_id], "name": format!("room {r}")}))
            .await?;
        user.join(&room).await?;
        for m in 0..3 {
            friend
                .send_text(&room, &format!("{prefix}-{r}-{m}"), &format!("message {m} in room {r}"))
                .await?;
        }
        Ok(())
    })
    .await?;
    // One untimed initial sync: the first after setup may warm caches.
    user.sync("set_presence=offline").await?;

    let params = json!({"rooms": rooms});
    let phase = Phase::start(target.pid);
    let mut latencies = Vec::with_capacity(initial);
    let mut since = String::new();
    for _ in 0..initial {
        // Timed to the answer's last byte; the tool's own parse of it is not counted.
        let (elapsed, answer) = user.sync_timed("set_presence=offline").await?;
        latencies.push(elapsed);
        let joined = answer["rooms"]["join"].as_object().map_or(0, |j| j.len());
        if joined != rooms {
            return Err(format!("an initial sync listed {joined} of {rooms} rooms"));
        }
        since = next_batch(&answer)?;
    }
    let initial_measure =
        phase
            .finish(initial, 0, latencies)
            .named("sync", "initial", params.clone());

    let phase = Phase::start(target.pid);
    let mut latencies = Vec::with_capacity(incremental);
    for _ in 0..incremental {
        let started = Instant::now();
        user.sync(&format!("since={since}&timeout=0&set_presence=offline"))
            .await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let incremental_measure =
        phase
            .finish(incremental, 0, latencies)
            .named("sync", "incremental_empty", params);
    Ok(vec![initial_measure, incremental_measure])
}
