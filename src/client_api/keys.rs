//! Spec: client-server API, "End-to-End Encryption": `POST /keys/upload`, `POST
//! /keys/query`, `POST /keys/claim`, `GET /keys/changes`, `POST
//! /keys/device_signing/upload`, `POST /keys/signatures/upload`.
//!
//! Keys of users on other servers we share a room with come from their device lists,
//! which we keep and follow (`services/federation/device_lists.rs`; fetched with `GET
//! /user/devices` when we have none or an update showed a gap). Other users' keys are
//! asked of their servers (server-server `POST /user/keys/query`), and one-time keys
//! always are (`/user/keys/claim`), all servers at once, each within the request's
//! `timeout` (10 s by default); a server that does not answer in time is listed in
//! `failures`. What a server answers is kept only for its own users and devices.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::core::{ServerName, UserId};
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, AuthedAllowGuest, JsonBody, QueryParams};
use crate::http::AppState;
use crate::services::accounts::cross_signing::CrossSigningUpload;
use crate::services::accounts::device_keys::QueriedDeviceKeys;
use crate::services::accounts::device_keys::{KeyUpload, MAX_KEYS_REQUEST_ENTRIES};
use crate::services::error::ServiceResult;
use crate::services::federation::client::FederationError;
use crate::services::federation::device_lists::MAX_FETCHES_PER_QUERY;

/// `POST /keys/upload` body.
#[derive(Deserialize)]
pub struct UploadBody {
    device_keys: Option<Value>,
    /// `Option`s so an explicit `null` (sent by some clients, mautrix-go among them, when
    /// they upload only device keys) reads as absent.
    #[serde(default)]
    one_time_keys: Option<Map<String, Value>>,
    #[serde(default)]
    fallback_keys: Option<Map<String, Value>>,
    /// The name before Matrix 1.2 (MSC2732), still sent by some clients.
    #[serde(default, rename = "org.matrix.msc2732.fallback_keys")]
    unstable_fallback_keys: Option<Map<String, Value>>,
}

/// Stores the device's identity, one-time and fallback keys.
pub async fn upload(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    JsonBody(body): JsonBody<UploadBody>,
) -> MatrixResult<Json<Value>> {
    let fallback_keys = match body.fallback_keys {
        Some(keys) if !keys.is_empty() => keys,
        _ => body.unstable_fallback_keys.unwrap_or_default(),
    };
    let upload = KeyUpload {
        device_keys: body.device_keys,
        one_time_keys: body.one_time_keys.unwrap_or_default(),
        fallback_keys,
    };
    let counts = uncancellable(async move {
        services
            .accounts
            .upload_keys(&session.user_id, &session.device_id, upload)
            .await
    })
    .await?;
    Ok(Json(json!({ "one_time_key_counts": counts })))
}

/// Runs a key change to its end even if the client goes away: each holds its user's keys
/// lock until its write commits, so a retry never starts before the first try is done.
async fn uncancellable<T: Send + 'static>(
    change: impl std::future::Future<Output = ServiceResult<T>> + Send + 'static,
) -> MatrixResult<T> {
    Ok(tokio::spawn(change)
        .await
        .map_err(MatrixError::internal)??)
}

/// The failure recorded for a server that gave no answer.
fn failure(error: &FederationError) -> Value {
    let status = match error {
        FederationError::Refused { status, .. } => *status,
        _ => 503,
    };
    json!({ "status": status, "message": error.to_string() })
}

/// How long a keys request waits for other servers by default (spec: `timeout`, 10 s).
const DEFAULT_REMOTE_TIMEOUT_MS: u64 = 10_000;
/// The longest a keys request waits for other servers, whatever its `timeout`.
const MAX_REMOTE_TIMEOUT_MS: u64 = 60_000;

/// Asks each server its part, all at once, each within `timeout_ms`.
async fn ask_servers<F, Fut>(
    by_server: BTreeMap<String, Map<String, Value>>,
    timeout_ms: u64,
    ask: F,
) -> Vec<(String, Result<Map<String, Value>, FederationError>)>
where
    F: Fn(ServerName, Map<String, Value>) -> Fut,
    Fut: std::future::Future<Output = Result<Map<String, Value>, FederationError>>,
{
    let timeout = std::time::Duration::from_millis(timeout_ms.min(MAX_REMOTE_TIMEOUT_MS));
    let asks = by_server.into_iter().map(|(server, part)| {
        let name = ServerName::parse(&server);
        let fut = name.map(|name| ask(name, part));
        async move {
            let result = match fut {
                Err(e) => Err(FederationError::Unreachable(e.to_string())),
                Ok(fut) => match tokio::time::timeout(timeout, fut).await {
                    Ok(result) => result,
                    Err(_) => Err(FederationError::Unreachable("no answer in time".into())),
                },
            };
            (server, result)
        }
    });
    futures_util::future::join_all(asks).await
}

/// The entries of `map` (user id to anything) for users of `server`.
fn of_server(map: Option<&Value>, server: &str) -> Map<String, Value> {
    map.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(user, _)| UserId::parse(user).is_ok_and(|u| u.server_name() == server))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A user id of the request, or 400.
fn parse_user(user: &str) -> MatrixResult<UserId> {
    UserId::parse(user).map_err(|_| MatrixError::invalid_param(format!("Invalid user id {user:?}")))
}

/// `POST /keys/query` body.
#[derive(Deserialize)]
pub struct QueryBody {
    device_keys: BTreeMap<String, Vec<String>>,
    timeout: Option<u64>,
}

/// Device and cross-signing keys of users.
pub async fn query(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    JsonBody(body): JsonBody<QueryBody>,
) -> MatrixResult<Json<QueryAnswer>> {
    let entries: usize = body.device_keys.values().map(|d| d.len().max(1)).sum();
    if entries > MAX_KEYS_REQUEST_ENTRIES {
        return Err(MatrixError::invalid_param(format!(
            "At most {MAX_KEYS_REQUEST_ENTRIES} users and devices per query"
        )));
    }
    let ours = services.config.server_name.as_str();
    let mut local = BTreeMap::new();
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    // Users of other servers we share a room with: from their kept device lists.
    let viewer_rooms: std::collections::HashSet<String> = services
        .rooms
        .joined_rooms(session.user_id.as_str())?
        .into_iter()
        .collect();
    let mut tracked: Vec<(UserId, Vec<String>)> = Vec::new();
    let mut asked_the_batched_way = Vec::new();
    for (user, devices) in body.device_keys {
        let id = parse_user(&user)?;
        if id.server_name() == ours {
            local.insert(user, devices);
        } else if services
            .rooms
            .joined_rooms(&user)?
            .iter()
            .any(|r| viewer_rooms.contains(r))
        {
            tracked.push((id, devices));
        } else {
            asked_the_batched_way.push((id, devices));
        }
    }
    let tracked_users: Vec<UserId> = tracked.iter().map(|(u, _)| u.clone()).collect();
    let lists = &services.remote_device_lists;
    let mut needed = lists.needed(&tracked_users)?;
    // Past the fetches one query may make, the batched way (not kept).
    if needed.to_fetch.len() > MAX_FETCHES_PER_QUERY {
        for (user, _, _) in needed.to_fetch.split_off(MAX_FETCHES_PER_QUERY) {
            let position = tracked.iter().position(|(u, _)| *u == user);
            if let Some(position) = position {
                asked_the_batched_way.push(tracked.swap_remove(position));
            }
        }
    }
    for (user, devices) in asked_the_batched_way {
        remote
            .entry(user.server_name().to_owned())
            .or_default()
            .insert(user.as_str().to_owned(), json!(devices));
    }
    let mut failures = Map::new();
    let mut remote_found = Vec::new();
    let timeout = body.timeout.unwrap_or(DEFAULT_REMOTE_TIMEOUT_MS);
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(timeout.min(MAX_REMOTE_TIMEOUT_MS));
    let federation = &services.federation;
    let (fetched, answers) = tokio::join!(
        lists.fetch(
            &federation.client,
            needed.to_fetch,
            deadline,
            crate::services::federation::device_lists::CONCURRENT_RESYNCS
        ),
        ask_servers(remote, timeout, |server, part| async move {
            federation.user_keys(&server, &part).await
        })
    );
    let mut kept = fetched?;
    kept.lists.append(&mut needed.fresh);
    for (server, error) in &kept.failures {
        failures.insert(server.clone(), failure(error));
    }
    for (server, answer) in answers {
        match answer {
            Ok(answer) => remote_found.push((server, answer)),
            Err(e) => {
                failures.insert(server, failure(&e));
            }
        }
    }
    let viewer = session.user_id.as_str().to_owned();
    let found = tokio::task::spawn_blocking({
        let services = services.clone();
        move || services.accounts.query_keys(&viewer, &local)
    })
    .await
    .map_err(MatrixError::internal)??;
    let mut remote_device_keys = Map::new();
    let mut master_keys = found.master_keys;
    let mut self_signing_keys = found.self_signing_keys;
    for (user, wanted) in &tracked {
        let Some(list) = kept.lists.get(user.as_str()) else {
            continue;
        };
        let user = user.as_str().to_owned();
        remote_device_keys.insert(user.clone(), Value::Object(list.device_keys(wanted)));
        if let Some(master) = &list.master_key {
            master_keys.insert(user.clone(), master.clone());
        }
        if let Some(key) = &list.self_signing_key {
            self_signing_keys.insert(user, key.clone());
        }
    }
    for (server, answer) in remote_found {
        // A server speaks only for its own users, and a device's keys name their device.
        for (user, devices) in of_server(answer.get("device_keys"), &server) {
            let devices: Map<String, Value> = devices
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(device, keys)| {
                    keys.get("user_id").and_then(Value::as_str) == Some(user.as_str())
                        && keys.get("device_id").and_then(Value::as_str) == Some(device.as_str())
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            remote_device_keys.insert(user, Value::Object(devices));
        }
        master_keys.extend(of_server(answer.get("master_keys"), &server));
        self_signing_keys.extend(of_server(answer.get("self_signing_keys"), &server));
    }
    // Written out from what was found, not through `json!`, which would serialize a copy
    // of every key.
    Ok(Json(QueryAnswer {
        device_keys: DeviceKeysAnswer {
            local: found.device_keys,
            remote: remote_device_keys,
        },
        master_keys,
        self_signing_keys,
        user_signing_keys: found.user_signing_keys,
        failures,
    }))
}

/// `POST /keys/query` answer.
#[derive(Serialize)]
pub struct QueryAnswer {
    /// Local users' keys and, flattened into the same object, remote users' (user ids
    /// never collide: they name their server).
    device_keys: DeviceKeysAnswer,
    master_keys: Map<String, Value>,
    self_signing_keys: Map<String, Value>,
    user_signing_keys: Map<String, Value>,
    failures: Map<String, Value>,
}

/// The `device_keys` of a `/keys/query` answer: local users' as found, remote users' as
/// their servers gave them.
#[derive(Serialize)]
pub struct DeviceKeysAnswer {
    #[serde(flatten)]
    local: BTreeMap<String, BTreeMap<String, QueriedDeviceKeys>>,
    #[serde(flatten)]
    remote: Map<String, Value>,
}

/// `POST /keys/claim` body.
#[derive(Deserialize)]
pub struct ClaimBody {
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
    timeout: Option<u64>,
}

/// One key per requested device: a one-time key, else the fallback key.
pub async fn claim(
    State(services): State<AppState>,
    AuthedAllowGuest(_session): AuthedAllowGuest,
    JsonBody(body): JsonBody<ClaimBody>,
) -> MatrixResult<Json<Value>> {
    let entries: usize = body.one_time_keys.values().map(BTreeMap::len).sum();
    if entries > MAX_KEYS_REQUEST_ENTRIES {
        return Err(MatrixError::invalid_param(format!(
            "At most {MAX_KEYS_REQUEST_ENTRIES} devices per claim"
        )));
    }
    let ours = services.config.server_name.as_str();
    let mut wanted = Vec::with_capacity(entries);
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (user, devices) in body.one_time_keys {
        let id = parse_user(&user)?;
        if id.server_name() != ours {
            remote
                .entry(id.server_name().to_owned())
                .or_default()
                .insert(user, json!(devices));
            continue;
        }
        for (device, algorithm) in devices {
            wanted.push((id.clone(), device, algorithm));
        }
    }
    let timeout = body.timeout.unwrap_or(DEFAULT_REMOTE_TIMEOUT_MS);
    let federation = &services.federation;
    let answers = ask_servers(remote, timeout, |server, part| async move {
        federation.claim_user_keys(&server, &part).await
    })
    .await;
    let local_services = services.clone();
    let claimed =
        uncancellable(async move { local_services.accounts.claim_keys(&wanted).await }).await?;
    let mut one_time_keys = serde_json::to_value(claimed).map_err(MatrixError::internal)?;
    let mut failures = Map::new();
    for (server, answer) in answers {
        match answer {
            Ok(answer) => {
                for (user, keys) in of_server(answer.get("one_time_keys"), &server) {
                    one_time_keys[user] = keys;
                }
            }
            Err(e) => {
                failures.insert(server, failure(&e));
            }
        }
    }
    Ok(Json(
        json!({ "one_time_keys": one_time_keys, "failures": failures }),
    ))
}

/// `GET /keys/changes` query.
#[derive(Deserialize)]
pub struct ChangesParams {
    from: Option<String>,
    to: Option<String>,
}

/// Users whose keys changed, and users who share no room any more, between two tokens.
pub async fn changes(
    State(services): State<AppState>,
    Authed(session): Authed,
    QueryParams(params): QueryParams<ChangesParams>,
) -> MatrixResult<Json<Value>> {
    let token = |t: Option<String>, name: &str| -> MatrixResult<u64> {
        let t = t.ok_or_else(|| MatrixError::missing_param(format!("Missing `{name}`")))?;
        Ok(services.sync.parse_since(&t)?.0)
    };
    let from = token(params.from, "from")?;
    let to = token(params.to, "to")?;
    let user = session.user_id.as_str().to_owned();
    let lists = tokio::task::spawn_blocking({
        let services = services.clone();
        move || services.sync.key_changes(&services, &user, from, to)
    })
    .await
    .map_err(MatrixError::internal)??;
    Ok(Json(
        json!({ "changed": lists.changed, "left": lists.left }),
    ))
}

/// `POST /keys/device_signing/upload` body.
#[derive(Deserialize)]
pub struct DeviceSigningBody {
    master_key: Option<Value>,
    self_signing_key: Option<Value>,
    user_signing_key: Option<Value>,
    auth: Option<Value>,
}

/// Stores the user's cross-signing keys; replacing existing ones needs the password.
pub async fn upload_device_signing(
    State(services): State<AppState>,
    Authed(session): Authed,
    JsonBody(body): JsonBody<DeviceSigningBody>,
) -> MatrixResult<Json<Value>> {
    let upload = CrossSigningUpload {
        master_key: body.master_key,
        self_signing_key: body.self_signing_key,
        user_signing_key: body.user_signing_key,
    };
    uncancellable(async move {
        services
            .accounts
            .upload_cross_signing_keys(&session.user_id, upload, body.auth.as_ref())
            .await
    })
    .await?;
    Ok(Json(json!({})))
}

/// Stores signatures of devices and keys; each one that does not verify is reported.
pub async fn upload_signatures(
    State(services): State<AppState>,
    Authed(session): Authed,
    JsonBody(body): JsonBody<BTreeMap<String, Map<String, Value>>>,
) -> MatrixResult<Json<Value>> {
    for user in body.keys() {
        parse_user(user)?;
    }
    let failures = uncancellable(async move {
        services
            .accounts
            .upload_signatures(&session.user_id, &body)
            .await
    })
    .await?;
    Ok(Json(json!({ "failures": failures })))
}
