//! Spec: server-server API, "Content Repository": `GET
//! /_matrix/federation/v1/media/download/{mediaId}` and `GET
//! /_matrix/federation/v1/media/thumbnail/{mediaId}`. Signed requests for our own media;
//! the answer is `multipart/mixed`: an empty JSON metadata part, then the bytes (streamed
//! from the blob, never read into memory whole) with their type and disposition. We never
//! answer with a `Location`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio_util::io::ReaderStream;

use super::auth::Signed;
use crate::core::multipart;
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{PathParams, QueryParams};
use crate::http::AppState;
use crate::media_api::serving::content_disposition;
use crate::services::media::Served;

/// `?timeout_ms=`.
#[derive(Deserialize)]
pub struct DownloadQuery {
    #[serde(default = "crate::media_api::download::default_timeout_ms")]
    timeout_ms: u64,
}

/// Our media's bytes.
pub async fn download(
    State(services): State<AppState>,
    PathParams(media_id): PathParams<String>,
    QueryParams(query): QueryParams<DownloadQuery>,
    _signed: Signed<Value>,
) -> MatrixResult<Response> {
    let ours = services.config.server_name.as_str().to_owned();
    let served = services
        .media
        .download(&ours, &media_id, Duration::from_millis(query.timeout_ms))
        .await?;
    multipart_answer(&services, served, false).await
}

/// A thumbnail of our media.
pub async fn thumbnail(
    State(services): State<AppState>,
    PathParams(media_id): PathParams<String>,
    QueryParams(query): QueryParams<crate::media_api::thumbnail::ThumbnailQuery>,
    _signed: Signed<Value>,
) -> MatrixResult<Response> {
    let (width, height, method) = query.size()?;
    let ours = services.config.server_name.as_str().to_owned();
    let served = services
        .media
        .thumbnail(&ours, &media_id, method, width, height, query.timeout())
        .await?;
    multipart_answer(&services, served, true).await
}

async fn multipart_answer(
    services: &AppState,
    served: Served,
    thumbnail: bool,
) -> MatrixResult<Response> {
    let file = services
        .media
        .store()
        .open_read(&served.sha256)
        .await
        .map_err(|e| {
            MatrixError::internal(format!("media blob {} unreadable: {e}", served.sha256))
        })?;
    let boundary = crate::core::hex::encode(&crate::services::random_bytes::<16>());
    let disposition =
        content_disposition(&served.content_type, served.filename.as_deref(), thumbnail);
    let head = multipart::head(&boundary, &served.content_type, &disposition);
    let tail = multipart::tail(&boundary);
    let length = head.len() as u64 + served.size + tail.len() as u64;
    let stream =
        futures_util::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from(head))])
            .chain(ReaderStream::with_capacity(file, 256 << 10))
            .chain(futures_util::stream::iter([Ok(axum::body::Bytes::from(
                tail,
            ))]));
    let mut response = Body::from_stream(stream).into_response();
    let content_type = format!("multipart/mixed; boundary={boundary}");
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(&content_type).map_err(MatrixError::internal)?,
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}
