//! Spec: server-server API, "End-to-End Encryption" and "Device Management": `POST
//! /_matrix/federation/v1/user/keys/query`, `POST /user/keys/claim`, `GET
//! /user/devices/{userId}`. Signed requests, answered for our own users only (others are
//! left out, as the client API leaves out unknown users).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::Signed;
use crate::core::UserId;
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::PathParams;
use crate::http::AppState;
use crate::services::accounts::device_keys::MAX_KEYS_REQUEST_ENTRIES;

/// `POST /user/keys/query` body.
#[derive(Deserialize)]
pub struct QueryBody {
    device_keys: BTreeMap<String, Vec<String>>,
}

fn ours(services: &AppState, user: &str) -> bool {
    UserId::parse(user).is_ok_and(|u| u.server_name() == services.config.server_name.as_str())
}

/// Device keys, master and self-signing keys of our users (never user-signing keys, and
/// only signatures their owners made public, as any other server's user would see them).
pub async fn query(
    State(services): State<AppState>,
    signed: Signed<QueryBody>,
) -> MatrixResult<Json<Value>> {
    let entries: usize = signed
        .body
        .device_keys
        .values()
        .map(|d| d.len().max(1))
        .sum();
    if entries > MAX_KEYS_REQUEST_ENTRIES {
        return Err(MatrixError::invalid_param(format!(
            "At most {MAX_KEYS_REQUEST_ENTRIES} users and devices per query"
        )));
    }
    let wanted: BTreeMap<String, Vec<String>> = signed
        .body
        .device_keys
        .into_iter()
        .filter(|(user, _)| ours(&services, user))
        .collect();
    // The viewer is the remote server, which is no user: it sees no private signatures.
    let viewer = signed.origin.as_str().to_owned();
    let found = tokio::task::spawn_blocking({
        let services = services.clone();
        move || services.accounts.query_keys(&viewer, &wanted)
    })
    .await
    .map_err(MatrixError::internal)??;
    Ok(Json(json!({
        "device_keys": found.device_keys,
        "master_keys": found.master_keys,
        "self_signing_keys": found.self_signing_keys,
    })))
}

/// `POST /user/keys/claim` body.
#[derive(Deserialize)]
pub struct ClaimBody {
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
}

/// One key per requested device of our users: a one-time key, else the fallback key.
pub async fn claim(
    State(services): State<AppState>,
    signed: Signed<ClaimBody>,
) -> MatrixResult<Json<Value>> {
    let entries: usize = signed.body.one_time_keys.values().map(BTreeMap::len).sum();
    if entries > MAX_KEYS_REQUEST_ENTRIES {
        return Err(MatrixError::invalid_param(format!(
            "At most {MAX_KEYS_REQUEST_ENTRIES} devices per claim"
        )));
    }
    let mut wanted = Vec::with_capacity(entries);
    for (user, devices) in signed.body.one_time_keys {
        let Ok(id) = UserId::parse(&user) else {
            continue;
        };
        if id.server_name() != services.config.server_name.as_str() {
            continue;
        }
        for (device, algorithm) in devices {
            wanted.push((id.clone(), device, algorithm));
        }
    }
    let claimed = tokio::spawn(async move { services.accounts.claim_keys(&wanted).await })
        .await
        .map_err(MatrixError::internal)??;
    Ok(Json(json!({ "one_time_keys": claimed })))
}

/// A user's devices with their keys, and the position of the list (`stream_id`), for a
/// server that tracks their device list.
pub async fn devices(
    State(services): State<AppState>,
    PathParams(user_id): PathParams<String>,
    _signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let user = UserId::parse(&user_id)
        .map_err(|e| MatrixError::invalid_param(format!("{user_id:?} is not a user id: {e}")))?;
    if user.server_name() != services.config.server_name.as_str() {
        return Err(MatrixError::invalid_param(
            "The user is not one of this server's",
        ));
    }
    if !services.accounts.is_active_user(&user)? {
        return Err(MatrixError::not_found("Unknown user"));
    }
    // Read before the list: an update queued meanwhile then has a later id, and a peer
    // applies it on top of this answer (the other way round it would take the update
    // for one it has and keep the older list).
    let stream_id = services.accounts.device_list_update_id(user.as_str())?;
    let list = services.accounts.devices(&user)?;
    let mut wanted = BTreeMap::new();
    wanted.insert(user.as_str().to_owned(), Vec::new());
    let keys = services.accounts.query_keys("", &wanted)?;
    let by_device = keys.device_keys.get(user.as_str());
    // Spec (`user_devices.yaml`): each device's `keys` are required; a device that has
    // not uploaded any is not listed (as Synapse answers).
    let devices: Vec<Value> = list
        .into_iter()
        .filter_map(|d| {
            let keys = by_device.and_then(|m| m.get(&d.device_id))?;
            let mut entry = Map::new();
            entry.insert("keys".into(), json!(keys));
            if let Some(name) = d.display_name {
                entry.insert("device_display_name".into(), json!(name));
            }
            entry.insert("device_id".into(), json!(d.device_id));
            Some(Value::Object(entry))
        })
        .collect();
    let mut answer = json!({
        "user_id": user.as_str(),
        "stream_id": stream_id,
        "devices": devices,
    });
    if let Some(master) = keys.master_keys.get(user.as_str()) {
        answer["master_key"] = master.clone();
    }
    if let Some(self_signing) = keys.self_signing_keys.get(user.as_str()) {
        answer["self_signing_key"] = self_signing.clone();
    }
    Ok(Json(answer))
}
