//! Spec: `POST /_matrix/media/v3/upload`, `POST /_matrix/media/v1/create`,
//! `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, PathParams, QueryParams};
use crate::http::AppState;

/// `?filename=`.
#[derive(Deserialize)]
pub struct UploadQuery {
    filename: Option<String>,
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// Streams the body into the store; answers `{"content_uri": "mxc://…"}`.
pub async fn upload(
    State(services): State<AppState>,
    Authed(session): Authed,
    QueryParams(query): QueryParams<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> MatrixResult<Json<Value>> {
    let uri = services
        .media
        .upload(
            &session.user_id,
            content_type(&headers),
            query.filename.as_deref(),
            body.into_data_stream(),
        )
        .await?;
    Ok(Json(json!({ "content_uri": uri })))
}

/// Reserves an `mxc://` URI; answers it with `unused_expires_at`.
pub async fn create(
    State(services): State<AppState>,
    Authed(session): Authed,
) -> MatrixResult<Json<Value>> {
    let (uri, expires) = services.media.create_pending(&session.user_id).await?;
    Ok(Json(
        json!({ "content_uri": uri, "unused_expires_at": expires }),
    ))
}

/// Uploads the content of a reserved URI.
pub async fn upload_pending(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((server_name, media_id)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> MatrixResult<Json<Value>> {
    services
        .media
        .upload_pending(
            &session.user_id,
            &server_name,
            &media_id,
            content_type(&headers),
            query.filename.as_deref(),
            body.into_data_stream(),
        )
        .await?;
    Ok(Json(json!({})))
}
