//! A real ourwhats on loopback with a real RocksDB in a temp folder, and a small client.
#![allow(dead_code)]

pub mod client;
pub mod process;
pub mod remote;

use std::path::Path;

use ourwhats::{Config, RunningServer, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The configuration tests start from: ports 0, rate limits off, everything else default.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::embedded_default();
    config.data_dir = data_dir.to_path_buf();
    config.client.listen = "127.0.0.1:0".parse().unwrap();
    config.federation.listen = "127.0.0.1:0".parse().unwrap();
    config.rate_limits.enabled = false;
    config.logging.level = "warn".into();
    config
}

/// A running server, its temp folder and an HTTP client.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub base: String,
}

impl TestServer {
    /// A server on the test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server on the test configuration changed by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let server = Server::start(config).await.unwrap();
        let base = server.client_url();
        Self {
            server: Some(server),
            dir,
            http: reqwest::Client::new(),
            base,
        }
    }

    /// Stops the server and starts a new one on the same data folder.
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// Stops the server and starts a new one on the same data folder, its test
    /// configuration changed by `adjust`.
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut Config)) {
        self.server.take().unwrap().shutdown().await;
        let mut config = test_config(self.dir.path());
        adjust(&mut config);
        let server = Server::start(config).await.unwrap();
        self.base = server.client_url();
        self.server = Some(server);
    }

    /// Stops the server, lets `between` change its database (opened once the stopped
    /// server's last handle is gone: the lock is waited for, as a start does), and starts
    /// a new one on it, its test configuration changed by `adjust`.
    pub async fn restart_after(
        &mut self,
        between: impl FnOnce(&ourwhats::storage::Db),
        adjust: impl FnOnce(&mut Config),
    ) {
        self.server.take().unwrap().shutdown().await;
        let path = self.dir.path().join("db");
        let options = ourwhats::storage::DbOptions::default();
        let started = std::time::Instant::now();
        let db = loop {
            match ourwhats::storage::Db::open(&path, &options) {
                Err(e)
                    if e.to_string().contains(ourwhats::storage::LOCKED)
                        && started.elapsed() < std::time::Duration::from_secs(5) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => break other.unwrap(),
            }
        };
        between(&db);
        drop(db);
        let mut config = test_config(self.dir.path());
        adjust(&mut config);
        let server = Server::start(config).await.unwrap();
        self.base = server.client_url();
        self.server = Some(server);
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    /// A client of the federation listener that trusts only the server's generated
    /// certificate and reaches it as `localhost`, and its base URL.
    pub fn federation_client(&self) -> (reqwest::Client, String) {
        let addr = self.running().federation_addr.expect("federation enabled");
        let pem = std::fs::read(self.dir.path().join("tls/self-signed.crt")).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .resolve("localhost", addr)
            .build()
            .unwrap();
        (client, format!("https://localhost:{}", addr.port()))
    }

    /// Sends a request; answers the status and the JSON body (`Null` when not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Registers through the dummy flow; answers `(user_id, access_token, device_id)`.
    pub async fn register(&self, username: &str, password: &str) -> (String, String, String) {
        let body = json!({"username": username, "password": password});
        let (status, challenge) = self
            .post("/_matrix/client/v3/register", None, body.clone())
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
        let session = challenge["session"].as_str().unwrap().to_owned();
        let mut body = body;
        body["auth"] = json!({"type": "m.login.dummy", "session": session});
        let (status, done) = self.post("/_matrix/client/v3/register", None, body).await;
        assert_eq!(status, StatusCode::OK, "{done}");
        (
            done["user_id"].as_str().unwrap().to_owned(),
            done["access_token"].as_str().unwrap().to_owned(),
            done["device_id"].as_str().unwrap().to_owned(),
        )
    }

    /// Password login; answers the response.
    pub async fn login(&self, user: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
            }),
        )
        .await
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for query values
/// and path segments).
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Asserts the standard error body.
pub fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["errcode"], want_code, "{body}");
    assert!(body["error"].is_string(), "{body}");
}
