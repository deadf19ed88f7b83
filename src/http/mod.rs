//! The HTTP edge: routers, extractors, error rendering, limits, CORS and tracing.
//!
//! Handlers live in `client_api`, `federation_api` and `media_api`; this module assembles
//! them into the two listeners' routers and owns everything every route shares.

pub mod connections;
pub mod error_response;
pub mod extract;
pub mod fallback;
pub mod front_page;
pub mod health;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderName, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::cors::{Any, CorsLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::error::{ErrorCode, MatrixError};
use crate::services::Services;

/// Shared state of every handler.
pub type AppState = Arc<Services>;

/// The client-server listener's router: client API, media API, `.well-known`.
/// Upload routes get the media size limit; every other route the client body limit.
pub fn client_router(services: AppState) -> Router {
    let limit = services.config.client.max_body_size;
    let upload_limit = services.config.media.max_upload_size;
    let uploads = crate::media_api::upload_routes().layer(middleware::from_fn_with_state(
        upload_limit,
        reject_oversized_body,
    ));
    let body_idle = services.config.client.body_idle_timeout;
    let router = crate::client_api::routes()
        .merge(crate::media_api::routes())
        .layer(middleware::from_fn_with_state(limit, reject_oversized_body))
        .merge(uploads)
        .route("/health", axum::routing::get(health::health))
        .route("/", axum::routing::get(front_page::front_page))
        // A body that stops arriving fails its read (408, see `extract::read_body`).
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_idle))
        .fallback(fallback::unrecognized)
        .method_not_allowed_fallback(fallback::method_not_allowed)
        .with_state(services);
    with_common_layers(router).layer(cors())
}

/// The federation listener's router: server-server API, key API, `.well-known/matrix/server`.
pub fn federation_router(services: AppState) -> Router {
    let limit = services.config.federation.max_body_size;
    let body_idle = services.config.federation.body_idle_timeout;
    let router = crate::federation_api::routes()
        .fallback(fallback::unrecognized)
        .method_not_allowed_fallback(fallback::method_not_allowed)
        .layer(middleware::from_fn_with_state(limit, reject_oversized_body))
        // A body that stops arriving fails its read (408), as on the client listener.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_idle))
        .with_state(services);
    with_common_layers(router)
}

fn with_common_layers(router: Router) -> Router {
    router
        .layer(middleware::from_fn(reject_long_uri))
        .layer(TraceLayer::new_for_http())
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
}

/// Spec: client-server API, "Web Browser Clients": every response allows any origin.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            HeaderName::from_static("x-requested-with"),
            CONTENT_TYPE,
            AUTHORIZATION,
        ])
}

/// The longest request target (path and query) taken: 414 `M_UNKNOWN` beyond, as a Matrix
/// error (longer still, past hyper's own head limit, hyper refuses the head itself).
pub const MAX_URI_BYTES: usize = 16 << 10;

async fn reject_long_uri(request: Request, next: Next) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if length > MAX_URI_BYTES {
        return MatrixError::new(
            414,
            ErrorCode::Unknown,
            format!("The request's path and query are longer than {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Refuses a request whose declared length is over the limit before reading any of it;
/// bodies without a length are limited while they are read (see [`extract::JsonBody`]).
async fn reject_oversized_body(
    State(limit): State<u64>,
    mut request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return MatrixError::new(
            413,
            ErrorCode::TooLarge,
            format!("Request body is larger than {limit} bytes"),
        )
        .into_response();
    }
    request.extensions_mut().insert(extract::BodyLimit(limit));
    next.run(request).await
}
