//! Load generator for the end-to-end encryption issue's targets (run through
//! `benches/keys.sh`), against a running release server (PID for its CPU time):
//!   - `POST /keys/claim` of one key from each of `CLAIM_DEVICES` devices in one request:
//!     median latency of 20 (each device uploaded 50 signed one-time keys);
//!   - `POST /keys/query` of all `QUERY_USERS` users (one device with keys each, plus
//!     cross-signing keys for a tenth of them): median latency of 20.

use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use ourwhats::core::signatures::sign_json;
use ourwhats::core::SigningKeyPair;
use reqwest::Method;
use serde_json::{json, Map};

mod common;

use common::{cpu_seconds, median, register, User};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A registered user whose device uploaded signed keys.
struct KeyedUser {
    user: User,
    device_id: String,
}

/// Registers `name` and uploads its device's keys and `one_time_keys` signed one-time keys.
async fn keyed_user(base: &str, name: String, one_time_keys: usize) -> KeyedUser {
    let user = register(base, &name).await;
    let whoami = user
        .call(
            Method::GET,
            &format!("{base}/_matrix/client/v3/account/whoami"),
            None,
        )
        .await;
    let device_id = whoami["device_id"].as_str().expect("device id").to_owned();
    let mut seed = [7u8; 32];
    for (i, b) in name.bytes().enumerate() {
        seed[i % 32] ^= b;
    }
    let pair = SigningKeyPair::from_seed(&seed, &device_id);
    let mut device_keys = json!({
        "user_id": user.user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device_id}"): "c".repeat(43),
            format!("ed25519:{device_id}"): pair.public_key_base64(),
        },
    });
    sign_json(&mut device_keys, &user.user_id, &pair).expect("signable");
    let mut keys = Map::new();
    for n in 0..one_time_keys {
        let mut key = json!({ "key": format!("{n:043}") });
        sign_json(&mut key, &user.user_id, &pair).expect("signable");
        keys.insert(format!("signed_curve25519:{n:06}"), key);
    }
    user.call(
        Method::POST,
        &format!("{base}/_matrix/client/v3/keys/upload"),
        Some(json!({ "device_keys": device_keys, "one_time_keys": keys })),
    )
    .await;
    KeyedUser { user, device_id }
}

/// Cross-signing keys for `user` (master, and self-signing signed by it).
async fn cross_sign(base: &str, user: &User) {
    let key = |label: &str| {
        let seed = {
            let mut s = [3u8; 32];
            for (i, b) in format!("{}{label}", user.user_id).bytes().enumerate() {
                s[i % 32] ^= b;
            }
            s
        };
        let public = SigningKeyPair::from_seed(&seed, "x").public_key_base64();
        SigningKeyPair::from_seed(&seed, &public)
    };
    let (master, ssk) = (key("master"), key("ssk"));
    let shape = |pair: &SigningKeyPair, usage: &str| {
        json!({
            "user_id": user.user_id,
            "usage": [usage],
            "keys": { format!("ed25519:{}", pair.public_key_base64()): pair.public_key_base64() },
        })
    };
    let mut self_signing = shape(&ssk, "self_signing");
    sign_json(&mut self_signing, &user.user_id, &master).expect("signable");
    user.call(
        Method::POST,
        &format!("{base}/_matrix/client/v3/keys/device_signing/upload"),
        Some(json!({ "master_key": shape(&master, "master"), "self_signing_key": self_signing })),
    )
    .await;
}

async fn keyed_users(
    base: &str,
    prefix: &str,
    count: usize,
    one_time_keys: usize,
) -> Vec<KeyedUser> {
    stream::iter(0..count)
        .map(|n| keyed_user(base, format!("{prefix}{n}"), one_time_keys))
        .buffer_unordered(8)
        .collect()
        .await
}

async fn claim(base: &str, pid: u32) {
    let devices = env("CLAIM_DEVICES", 100);
    let targets = keyed_users(base, "claimed", devices, 50).await;
    let claimer = register(base, "claimer").await;
    let mut wanted = Map::new();
    for t in &targets {
        wanted.insert(
            t.user.user_id.clone(),
            json!({ &t.device_id: "signed_curve25519" }),
        );
    }
    let body = json!({ "one_time_keys": wanted });
    let url = format!("{base}/_matrix/client/v3/keys/claim");
    let mut times = Vec::new();
    let cpu_before = cpu_seconds(pid);
    for _ in 0..20 {
        let started = Instant::now();
        let answer = claimer.call(Method::POST, &url, Some(body.clone())).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let got = answer["one_time_keys"].as_object().map_or(0, Map::len);
        assert_eq!(got, devices, "a key from every device: {answer}");
    }
    let cpu = (cpu_seconds(pid) - cpu_before) / 20.0 * 1000.0;
    println!(
        "| POST /keys/claim, {devices} devices in one request | {:.2} ms median, {cpu:.2} ms server CPU |",
        median(times)
    );
}

async fn query(base: &str, pid: u32) {
    let users = env("QUERY_USERS", 1000);
    let targets = keyed_users(base, "queried", users, 0).await;
    for t in targets.iter().step_by(10) {
        cross_sign(base, &t.user).await;
    }
    let asker = register(base, "asker").await;
    let mut wanted = Map::new();
    for t in &targets {
        wanted.insert(t.user.user_id.clone(), json!([]));
    }
    let body = json!({ "device_keys": wanted });
    let url = format!("{base}/_matrix/client/v3/keys/query");
    let mut times = Vec::new();
    let cpu_before = cpu_seconds(pid);
    for _ in 0..20 {
        let started = Instant::now();
        let answer = asker.call(Method::POST, &url, Some(body.clone())).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let got = answer["device_keys"].as_object().map_or(0, Map::len);
        assert_eq!(got, users, "keys of every user");
    }
    let cpu = (cpu_seconds(pid) - cpu_before) / 20.0 * 1000.0;
    println!(
        "| POST /keys/query, {users} users | {:.2} ms median, {cpu:.2} ms server CPU |",
        median(times)
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `cargo test --all-targets` runs this with no arguments (or `--bench`): nothing to do.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (Some(base), Some(pid)) = (
        args.first().cloned(),
        args.get(1).and_then(|p| p.parse::<u32>().ok()),
    ) else {
        eprintln!("usage: keys_load BASE_URL PID");
        return;
    };
    println!("| measure | result |\n|---|---|");
    claim(&base, pid).await;
    query(&base, pid).await;
}
