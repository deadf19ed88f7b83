//! Spec: `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}` and the deprecated
//! `GET /_matrix/media/v3/thumbnail/...`. Thumbnails are static (`animated` is accepted and
//! treated as `false`, which the spec allows when animation is not supported). Thumbnails
//! of other servers' media are made here from the original, fetched once.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{AuthedAllowGuest, PathParams, QueryParams};
use crate::http::AppState;
use crate::media_api::download::{check_legacy_allowed, default_timeout_ms};
use crate::media_api::serving::respond;
use crate::services::media::thumbnail::Method;

/// Query of the thumbnail endpoints.
#[derive(Deserialize)]
pub struct ThumbnailQuery {
    width: Option<u32>,
    height: Option<u32>,
    method: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    animated: Option<bool>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    /// Whether media of other servers may be fetched (default true).
    allow_remote: Option<bool>,
}

impl ThumbnailQuery {
    /// The requested width, height and method (`scale` unless given): 400
    /// `M_MISSING_PARAM` without a size, `M_INVALID_PARAM` for another method.
    pub fn size(&self) -> MatrixResult<(u32, u32, Method)> {
        let width = self
            .width
            .ok_or_else(|| MatrixError::missing_param("Missing `width`"))?;
        let height = self
            .height
            .ok_or_else(|| MatrixError::missing_param("Missing `height`"))?;
        let method = match self.method.as_deref() {
            None => Method::Scale,
            Some(m) => Method::parse(m).ok_or_else(|| {
                MatrixError::invalid_param("method must be \"scale\" or \"crop\"")
            })?,
        };
        Ok((width, height, method))
    }

    /// How long to wait for media still being uploaded.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

async fn serve(
    services: AppState,
    server_name: &str,
    media_id: &str,
    query: ThumbnailQuery,
) -> MatrixResult<Response> {
    let (width, height, method) = query.size()?;
    super::remote::ensure_here(
        &services,
        server_name,
        media_id,
        query.allow_remote.unwrap_or(true),
    )
    .await?;
    let served = services
        .media
        .thumbnail(
            server_name,
            media_id,
            method,
            width,
            height,
            query.timeout(),
        )
        .await?;
    respond(&services, served, None, true).await
}

/// A thumbnail of the content.
pub async fn thumbnail(
    State(services): State<AppState>,
    _auth: AuthedAllowGuest,
    PathParams((server_name, media_id)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ThumbnailQuery>,
) -> MatrixResult<Response> {
    serve(services, &server_name, &media_id, query).await
}

/// Deprecated, unauthenticated thumbnail.
pub async fn legacy_thumbnail(
    State(services): State<AppState>,
    PathParams((server_name, media_id)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ThumbnailQuery>,
) -> MatrixResult<Response> {
    check_legacy_allowed(&services)?;
    serve(services, &server_name, &media_id, query).await
}
