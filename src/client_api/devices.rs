//! Spec: client-server API, "Device Management": `GET /devices`, `GET/PUT/DELETE
//! /devices/{deviceId}`, `POST /delete_devices`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, AuthedAllowGuest, JsonBody, MaybeJsonBody, PathParams};
use crate::http::AppState;
use crate::services::accounts::uia::{stages, UiaRequest};
use crate::services::accounts::DeviceInfo;

/// Spec: `client_device.yaml`; optional fields are left out when unknown, not `null`.
fn device_json(device: DeviceInfo) -> Value {
    let mut object = json!({ "device_id": device.device_id });
    if let Some(name) = device.display_name {
        object["display_name"] = json!(name);
    }
    if let Some(ip) = device.last_seen_ip {
        object["last_seen_ip"] = json!(ip);
    }
    if let Some(ts) = device.last_seen_ts {
        object["last_seen_ts"] = json!(ts);
    }
    object
}

/// The user's devices.
pub async fn list(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
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
    AuthedAllowGuest(session): AuthedAllowGuest,
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
    AuthedAllowGuest(session): AuthedAllowGuest,
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

/// The auth of a delete (`operation`: one device, or a list), bound to the set of
/// devices it deletes: a session completed for one device cannot delete another, nor
/// serve the other endpoint.
fn delete_uia<'a>(operation: &'a str, user: &'a str, devices: &[String]) -> UiaRequest<'a> {
    let mut devices: Vec<&str> = devices.iter().map(String::as_str).collect();
    devices.sort_unstable();
    devices.dedup();
    UiaRequest {
        operation,
        user: Some(user),
        subject: devices.join("\n"),
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
    let devices = [device_id];
    let uia = delete_uia("delete_device", session.user_id.as_str(), &devices);
    let passed = services
        .accounts
        .user_interactive_auth(auth.as_ref(), &uia)
        .await?;
    // Spec: 200 also when the device "had been removed previously".
    services
        .accounts
        .delete_devices(&session.user_id, &devices)
        .await?;
    services.accounts.finish_uia(passed);
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
    let uia = delete_uia("delete_devices", session.user_id.as_str(), &body.devices);
    let passed = services
        .accounts
        .user_interactive_auth(body.auth.as_ref(), &uia)
        .await?;
    services
        .accounts
        .delete_devices(&session.user_id, &body.devices)
        .await?;
    services.accounts.finish_uia(passed);
    Ok(Json(json!({})))
}
