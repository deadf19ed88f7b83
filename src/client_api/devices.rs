//! Spec: client-server API, "Device Management": `GET /devices`, `GET/PUT/DELETE
//! /devices/{deviceId}`, `POST /delete_devices`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, JsonBody, MaybeJsonBody, PathParams};
use crate::http::AppState;
use crate::services::accounts::uia::{stages, UiaRequest};
use crate::services::accounts::DeviceInfo;

fn device_json(device: DeviceInfo) -> Value {
    json!({
        "device_id": device.device_id,
        "display_name": device.display_name,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_ts": device.last_seen_ts,
    })
}

/// The user's devices.
pub async fn list(
    State(services): State<AppState>,
    Authed(session): Authed,
) -> MatrixResult<Json<Value>> {
    let devices: Vec<Value> = services
        .accounts
        .devices(&session.user_id)?
        .into_iter()
        .map(device_json)
        .collect();
    Ok(Json(json!({ "devices": devices })))
}

/// One device; 404 `M_NOT_FOUND` if the user has no such device.
pub async fn get_one(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(device_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    let device = services.accounts.device(&session.user_id, &device_id)?;
    Ok(Json(device_json(device)))
}

/// `PUT /devices/{deviceId}` body.
#[derive(Deserialize)]
pub struct RenameBody {
    display_name: Option<String>,
}

/// Renames a device (creating devices is for application services only, which we do not host).
pub async fn rename(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(device_id): PathParams<String>,
    JsonBody(body): JsonBody<RenameBody>,
) -> MatrixResult<Json<Value>> {
    services
        .accounts
        .rename_device(&session.user_id, &device_id, body.display_name)
        .await?;
    Ok(Json(json!({})))
}

/// `DELETE /devices/{deviceId}` body.
#[derive(Deserialize)]
pub struct DeleteBody {
    auth: Option<Value>,
}

fn delete_uia(user: &str) -> UiaRequest<'_> {
    UiaRequest {
        operation: "delete_devices",
        user: Some(user),
        flows: vec![vec![stages::PASSWORD]],
    }
}

/// Deletes one device after the password is confirmed.
pub async fn delete_one(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(device_id): PathParams<String>,
    MaybeJsonBody(body): MaybeJsonBody<DeleteBody>,
) -> MatrixResult<Json<Value>> {
    let auth = body.and_then(|b| b.auth);
    // Spec: 404 for a device the user does not have, before asking for auth.
    services.accounts.device(&session.user_id, &device_id)?;
    services
        .accounts
        .user_interactive_auth(auth.as_ref(), &delete_uia(session.user_id.as_str()))
        .await?;
    services
        .accounts
        .delete_devices(&session.user_id, &[device_id])
        .await?;
    Ok(Json(json!({})))
}

/// `POST /delete_devices` body.
#[derive(Deserialize)]
pub struct DeleteManyBody {
    devices: Vec<String>,
    auth: Option<Value>,
}

/// Deletes several devices after the password is confirmed.
pub async fn delete_many(
    State(services): State<AppState>,
    Authed(session): Authed,
    JsonBody(body): JsonBody<DeleteManyBody>,
) -> MatrixResult<Json<Value>> {
    services
        .accounts
        .user_interactive_auth(body.auth.as_ref(), &delete_uia(session.user_id.as_str()))
        .await?;
    services
        .accounts
        .delete_devices(&session.user_id, &body.devices)
        .await?;
    Ok(Json(json!({})))
}
