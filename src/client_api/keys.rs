//! Spec: client-server API, "End-to-End Encryption": `POST /keys/upload`, `POST
//! /keys/query`, `POST /keys/claim`, `GET /keys/changes`, `POST
//! /keys/device_signing/upload`, `POST /keys/signatures/upload`.
//!
//! Keys of users on other servers cannot be fetched yet (no outgoing federation): their
//! servers are listed in `failures`, as the spec does for unreachable servers.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::core::UserId;
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, AuthedAllowGuest, JsonBody, QueryParams};
use crate::http::AppState;
use crate::services::accounts::cross_signing::CrossSigningUpload;
use crate::services::accounts::device_keys::QueriedDeviceKeys;
use crate::services::accounts::device_keys::{KeyUpload, MAX_KEYS_REQUEST_ENTRIES};

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
    change: impl std::future::Future<Output = MatrixResult<T>> + Send + 'static,
) -> MatrixResult<T> {
    tokio::spawn(change).await.map_err(MatrixError::internal)?
}

/// The failure recorded for a server we cannot ask.
fn unreachable() -> Value {
    json!({
        "errcode": "M_UNRECOGNIZED",
        "error": "This server does not fetch keys over federation yet",
    })
}

/// A user id of the request, or 400.
fn parse_user(user: &str) -> MatrixResult<UserId> {
    UserId::parse(user).map_err(|_| MatrixError::invalid_param(format!("Invalid user id {user:?}")))
}

/// `POST /keys/query` body.
#[derive(Deserialize)]
pub struct QueryBody {
    device_keys: BTreeMap<String, Vec<String>>,
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
    let mut failures = Map::new();
    for (user, devices) in body.device_keys {
        let id = parse_user(&user)?;
        if id.server_name() == ours {
            local.insert(user, devices);
        } else {
            failures.insert(id.server_name().to_owned(), unreachable());
        }
    }
    let viewer = session.user_id.as_str().to_owned();
    let found = tokio::task::spawn_blocking({
        let services = services.clone();
        move || services.accounts.query_keys(&viewer, &local)
    })
    .await
    .map_err(MatrixError::internal)??;
    // Written out from what was found, not through `json!`, which would serialize a copy
    // of every key.
    Ok(Json(QueryAnswer {
        device_keys: found.device_keys,
        master_keys: found.master_keys,
        self_signing_keys: found.self_signing_keys,
        user_signing_keys: found.user_signing_keys,
        failures,
    }))
}

/// `POST /keys/query` answer.
#[derive(Serialize)]
pub struct QueryAnswer {
    device_keys: BTreeMap<String, BTreeMap<String, QueriedDeviceKeys>>,
    master_keys: Map<String, Value>,
    self_signing_keys: Map<String, Value>,
    user_signing_keys: Map<String, Value>,
    failures: Map<String, Value>,
}

/// `POST /keys/claim` body.
#[derive(Deserialize)]
pub struct ClaimBody {
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
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
    let mut failures = Map::new();
    for (user, devices) in body.one_time_keys {
        let id = parse_user(&user)?;
        if id.server_name() != ours {
            failures.insert(id.server_name().to_owned(), unreachable());
            continue;
        }
        for (device, algorithm) in devices {
            wanted.push((id.clone(), device, algorithm));
        }
    }
    let claimed = uncancellable(async move { services.accounts.claim_keys(&wanted).await }).await?;
    Ok(Json(
        json!({ "one_time_keys": claimed, "failures": failures }),
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
