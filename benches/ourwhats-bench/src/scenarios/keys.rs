//! `keys`: end-to-end encryption key lookups.
//! - `claim`: D users each upload signed device keys and signed one-time keys; another
//!   user claims one key from every device in one `POST /keys/claim`, R times.
//! - `query`: U users with device keys (a tenth also with cross-signing keys); another
//!   user asks for all of them in one `POST /keys/query`, R times.
//!
//! Spec: client-server API, "End-to-end encryption" (`/keys/upload`, `/keys/claim`,
//! `/keys/query`, `/keys/device_signing/upload`).

use std::time::Instant;

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{in_batches, Target};
use crate::client::{register, register_many, BenchResult, User};
use crate::report::{Measure, Phase};
use crate::signing::Key;

/// Uploads `user`'s device keys and `one_time_keys` signed one-time keys.
async fn upload_keys(user: &User, one_time_keys: usize) -> BenchResult<()> {
    let device = &user.device_id;
    let key = Key::from_label(&format!("{}{device}", user.user_id)).with_id(device);
    let mut device_keys = json!({
        "user_id": user.user_id,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): "c".repeat(43),
            format!("ed25519:{device}"): key.public(),
        },
    });
    key.sign(&mut device_keys, &user.user_id);
    let mut keys = Map::new();
    for n in 0..one_time_keys {
        let mut one = json!({ "key": format!("{n:043}") });
        key.sign(&mut one, &user.user_id);
        keys.insert(format!("signed_curve25519:{n:06}"), one);
    }
    user.call(
        Method::POST,
        "/_matrix/client/v3/keys/upload",
        Some(json!({ "device_keys": device_keys, "one_time_keys": keys })),
    )
    .await
    .map(drop)
}

/// Uploads a master key and a self-signing key signed by it.
async fn cross_sign(user: &User) -> BenchResult<()> {
    let master = Key::from_label(&format!("{}master", user.user_id));
    let self_signing = Key::from_label(&format!("{}self", user.user_id));
    let shape = |key: &Key, usage: &str| {
        json!({
            "user_id": user.user_id,
            "usage": [usage],
            "keys": { format!("ed25519:{}", key.public()): key.public() },
        })
    };
    let mut ssk = shape(&self_signing, "self_signing");
    master.sign(&mut ssk, &user.user_id);
    user.call(
        Method::POST,
        "/_matrix/client/v3/keys/device_signing/upload",
        Some(json!({ "master_key": shape(&master, "master"), "self_signing_key": ssk })),
    )
    .await
    .map(drop)
}

/// Runs `body` `rounds` times as `asker`, checking that the answer's `field` lists
/// `expected` entries.
async fn timed_lookups(
    target: &Target,
    asker: &User,
    path: &str,
    body: Value,
    field: &str,
    expected: usize,
    rounds: usize,
) -> BenchResult<Measure> {
    let phase = Phase::start(target.pid);
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let answer = asker.call(Method::POST, path, Some(body.clone())).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let got = answer[field].as_object().map_or(0, Map::len);
        if got != expected {
            return Err(format!("{path} answered {got} of {expected} users"));
        }
    }
    Ok(phase.finish(rounds, 0, latencies))
}

pub async fn run(
    target: &Target,
    devices: usize,
    users: usize,
    rounds: usize,
) -> BenchResult<Vec<Measure>> {
    let prefix = format!("{}keys", target.prefix);
    let asker = register(&target.base, &format!("{prefix}asker")).await?;

    let claimed = register_many(&target.base, &format!("{prefix}c"), devices, 8).await?;
    in_batches(&claimed, 8, |u| upload_keys(u, rounds)).await?;
    let wanted: Map<String, Value> = claimed
        .iter()
        .map(|u| {
            (
                u.user_id.clone(),
                json!({ &u.device_id: "signed_curve25519" }),
            )
        })
        .collect();
    let claim = timed_lookups(
        target,
        &asker,
        "/_matrix/client/v3/keys/claim",
        json!({ "one_time_keys": wanted }),
        "one_time_keys",
        devices,
        rounds,
    )
    .await?
    .named("keys", "claim", json!({"devices": devices}));

    let queried = register_many(&target.base, &format!("{prefix}q"), users, 8).await?;
    in_batches(&queried, 8, |u| upload_keys(u, 0)).await?;
    let tenth: Vec<&User> = queried.iter().step_by(10).collect();
    in_batches(&tenth, 8, |u| cross_sign(u)).await?;
    let wanted: Map<String, Value> = queried
        .iter()
        .map(|u| (u.user_id.clone(), json!([])))
        .collect();
    let query = timed_lookups(
        target,
        &asker,
        "/_matrix/client/v3/keys/query",
        json!({ "device_keys": wanted }),
        "device_keys",
        users,
        rounds,
    )
    .await?
    .named("keys", "query", json!({"users": users}));
    Ok(vec![claim, query])
}
