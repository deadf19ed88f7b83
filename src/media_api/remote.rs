//! Other servers' media for our clients: fetched once over federation and kept, then
//! served like ours (downloads, thumbnails made here).
//!
//! Spec: client-server API, "Content repository": the server fetches `mxc://` URIs of other
//! servers on its clients' behalf unless `allow_remote` is false. A thumbnail of remote
//! media is made here from the fetched original.

use crate::core::ServerName;
use crate::error::{MatrixError, MatrixResult};
use crate::http::AppState;
use crate::services::media::is_valid_media_id;

/// Makes sure `mxc://server/media_id` is here: ours, or fetched from its server.
pub async fn ensure_here(
    services: &AppState,
    server: &str,
    media_id: &str,
    allow_remote: bool,
) -> MatrixResult<()> {
    if server == services.config.server_name.as_str() {
        return Ok(());
    }
    let unknown = || MatrixError::not_found("Unknown media ID");
    let Ok(name) = ServerName::parse(server) else {
        return Err(unknown());
    };
    if !is_valid_media_id(media_id) {
        return Err(unknown());
    }
    if services.media.has_remote(server, media_id)? {
        return Ok(());
    }
    if !allow_remote {
        return Err(MatrixError::not_found(
            "Remote media not fetched (allow_remote is false)",
        ));
    }
    // Clients asking for the same media at once (a picture in a busy room) share one
    // fetch and its outcome.
    let fetch = {
        let services = services.clone();
        let media_id = media_id.to_owned();
        move || async move {
            if services.media.has_remote(name.as_str(), &media_id)? {
                return Ok(());
            }
            let _slot = services.media.remote_slot(name.as_str())?;
            let remote = services
                .federation
                .fetch_media(&name, &media_id)
                .await
                .map_err(|e| e.for_client("Media"))?;
            services
                .media
                .store_remote(
                    name.as_str(),
                    &media_id,
                    remote.content_type.as_deref(),
                    remote.filename.as_deref(),
                    remote.body,
                )
                .await
        }
    };
    services
        .media
        .ensure_remote(server, media_id, fetch)
        .await?;
    Ok(())
}
