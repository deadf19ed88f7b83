//! What every endpoint shares: error bodies, limits, CORS, discovery, rate limits.

use crate::common;

use common::{assert_error, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn versions_and_capabilities() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    let versions = body["versions"].as_array().unwrap();
    assert!(versions.contains(&json!("v1.11")), "{body}");
    assert!(body["unstable_features"].is_object());

    let (status, body) = s.get("/_matrix/client/v3/capabilities", None).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (_, token, _) = s.register("cap", "pw").await;
    let (status, body) = s.get("/_matrix/client/v3/capabilities", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let caps = &body["capabilities"];
    assert_eq!(caps["m.change_password"]["enabled"], true);
    assert_eq!(caps["m.room_versions"]["default"], "12");
    assert_eq!(
        caps["m.room_versions"]["available"],
        json!({"1": "stable", "2": "stable", "3": "stable", "4": "stable", "5": "stable", "6": "stable", "7": "stable", "8": "stable", "9": "stable",
               "10": "stable", "11": "stable", "12": "stable"})
    );
    s.stop().await;
}

#[tokio::test]
async fn well_known_comes_from_config() {
    let s = TestServer::start_with(|c| {
        c.well_known.client = Some("https://matrix.example.org".into());
        c.well_known.server = Some("matrix.example.org:443".into());
    })
    .await;
    let (status, body) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"m.homeserver": {"base_url": "https://matrix.example.org"}})
    );
    let (_, body) = s.get("/.well-known/matrix/server", None).await;
    assert_eq!(body, json!({"m.server": "matrix.example.org:443"}));
    s.stop().await;

    let s = TestServer::start_with(|c| c.well_known.client = None).await;
    let (status, body) = s.get("/.well-known/matrix/client", None).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn malformed_json_and_wrong_types() {
    let s = TestServer::start().await;
    let response = s
        .http
        .post(format!("{}/_matrix/client/v3/login", s.base))
        .header("content-type", "application/json")
        .body("{\"type\": ")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_error(status, &body, 400, "M_NOT_JSON");

    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "password": 12}),
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": ["x"]}),
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = s
        .post("/_matrix/client/v3/register", None, json!([1, 2]))
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    s.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/v3/no/such/endpoint", None).await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    let (status, body) = s.get("/_matrix/media/v3/preview_url?url=x", None).await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    let (status, body) = s
        .call(
            Method::PUT,
            "/_matrix/client/v3/login",
            None,
            Some(json!({})),
        )
        .await;
    assert_error(status, &body, 405, "M_UNRECOGNIZED");
    let (status, body) = s
        .call(Method::DELETE, "/_matrix/client/versions", None, None)
        .await;
    assert_error(status, &body, 405, "M_UNRECOGNIZED");
    s.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let s = TestServer::start_with(|c| c.client.max_body_size = 1024).await;
    let big = json!({"username": "x".repeat(2000), "password": "pw"});
    let (status, body) = s.post("/_matrix/client/v3/register", None, big).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    // Without a Content-Length (chunked), the limit applies while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; 800]), Ok(vec![b' '; 800])];
    let response = s
        .http
        .post(format!("{}/_matrix/client/v3/register", s.base))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_error(status, &body, 413, "M_TOO_LARGE");
    s.stop().await;
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let s = TestServer::start().await;
    let response = s
        .http
        .request(
            Method::OPTIONS,
            format!("{}/_matrix/client/v3/login", s.base),
        )
        .header("origin", "https://app.element.io")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let methods = headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in ["authorization", "content-type", "x-requested-with"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    let response = s
        .http
        .get(format!("{}/_matrix/client/versions", s.base))
        .header("origin", "https://app.element.io")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    s.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429_when_enabled() {
    let s = TestServer::start_with(|c| {
        c.rate_limits.enabled = true;
        c.rate_limits.login_burst = 3;
        c.rate_limits.login_per_minute = 1;
    })
    .await;
    for _ in 0..3 {
        let (status, _) = s.login("nobody", "pw").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, body) = s.login("nobody", "pw").await;
    assert_error(status, &body, 429, "M_LIMIT_EXCEEDED");
    let retry = body["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 60_000, "{retry}");
    s.stop().await;

    // Switched off, the same burst goes through.
    let s = TestServer::start_with(|c| {
        c.rate_limits.login_burst = 3;
        c.rate_limits.login_per_minute = 1;
    })
    .await;
    for _ in 0..6 {
        assert_eq!(s.login("nobody", "pw").await.0, StatusCode::FORBIDDEN);
    }
    s.stop().await;
}
