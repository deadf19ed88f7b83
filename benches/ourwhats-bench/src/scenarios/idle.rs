//! `idle`: the server's memory with no load, read over a few seconds (run it first, on a
//! server that has just started).

use std::time::Duration;

use serde_json::json;

use super::Target;
use crate::client::BenchResult;
use crate::report::{Measure, Phase};

pub async fn run(target: &Target, seconds: u64) -> BenchResult<Vec<Measure>> {
    if target.pid.is_none() {
        return Err("idle reads the server's memory: give --server-pid".into());
    }
    let phase = Phase::start(target.pid);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    Ok(vec![phase.finish(0, 0, Vec::new()).named(
        "idle",
        "idle",
        json!({"seconds": seconds}),
    )])
}
