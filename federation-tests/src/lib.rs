//! A harness that runs several real ourwhats homeservers in one process, each with its own
//! temp data folder, RocksDB, signing key and TLS federation listener on loopback.
//!
//! The servers verify each other's certificates: the harness makes a certificate
//! authority ([`TestCa`]), gives every server a certificate for `127.0.0.1` signed by it,
//! and makes every server trust it (`federation.trusted_ca`). Servers are named by their
//! federation address (`127.0.0.1:PORT`, an IP literal with a port: no `.well-known`, no
//! SRV), and `federation.ip_range_allowlist` opens loopback, which outbound requests
//! otherwise refuse.

pub mod process;
pub mod seeded;
pub mod split;
pub mod synapse;

use std::path::{Path, PathBuf};

use ourwhats::config::IpNet;
use ourwhats::core::ServerName;
use ourwhats::{Config, RunningServer, Server};

/// A certificate authority made for one test run.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// Where its certificate is written (PEM), for servers to trust.
    pub cert_path: PathBuf,
}

impl TestCa {
    /// A new CA, its certificate written into `dir`.
    pub fn new(dir: &Path) -> Result<Self, String> {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ourwhats federation test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).map_err(|e| e.to_string())?;
        let cert_path = dir.join("test-ca.crt");
        std::fs::write(&cert_path, issuer.pem()).map_err(|e| e.to_string())?;
        Ok(Self { issuer, cert_path })
    }

    /// A certificate for `127.0.0.1` and `localhost` signed by the CA, written into `dir`
    /// as `(cert, key)` PEM files.
    pub fn issue(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), String> {
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(|e| e.to_string())?;
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).map_err(|e| e.to_string())?;
        std::fs::write(&key_path, key.serialize_pem()).map_err(|e| e.to_string())?;
        Ok((cert_path, key_path))
    }
}

/// A free loopback port (bound and released: another process could take it in between,
/// which on a test machine does not happen in practice).
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// The configuration of a server named `127.0.0.1:<port>` with a certificate from `ca`,
/// trusting `ca`, loopback allowed for outbound requests, rate limits off.
pub fn config_for(ca: &TestCa, data_dir: &Path, port: u16) -> Result<Config, String> {
    let mut config = Config::embedded_default();
    config.server_name =
        ServerName::parse(&format!("127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    config.data_dir = data_dir.join("data");
    config.client.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    config.federation.listen = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let (cert, key) = ca.issue(data_dir, "federation")?;
    config.federation.tls_cert = Some(cert);
    config.federation.tls_key = Some(key);
    config.federation.trusted_ca = Some(ca.cert_path.clone());
    config.federation.ip_range_allowlist = vec![
        IpNet::parse("127.0.0.0/8").ok_or("a range")?,
        IpNet::parse("::1/128").ok_or("a range")?,
    ];
    config.rate_limits.enabled = false;
    config.logging.level = "warn".into();
    if let Ok(level) = std::env::var("OURWHATS_TEST_LOG") {
        // Debugging a test: the servers' log on stderr (`--nocapture`), once per process.
        config.logging.level = level;
        let _ = ourwhats::logging::init(&config.logging);
    }
    Ok(config)
}

/// One homeserver of a cluster.
pub struct Instance {
    /// The running server (`None` while stopped).
    pub server: Option<RunningServer>,
    /// Its configuration (to start it again on the same data).
    pub config: Config,
    /// Its folder: data and certificate (deleted when the instance is dropped).
    pub dir: tempfile::TempDir,
}

impl Instance {
    /// The running server.
    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("the instance is running")
    }

    /// Its server name, `127.0.0.1:PORT`.
    pub fn name(&self) -> &str {
        self.config.server_name.as_str()
    }

    /// Its client API base URL.
    pub fn client_url(&self) -> String {
        self.running().client_url()
    }

    /// Stops the server (its data stays).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Starts the server again on its data and configuration (same ports). A port
    /// taken meanwhile (by an outgoing connection of another test, say) is tried again
    /// for up to 5 s.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Server::start(self.config.clone()).await {
                Ok(server) => {
                    self.server = Some(server);
                    return Ok(());
                }
                Err(e) if e.contains("Address already in use") && attempt < 50 => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Several homeservers started together.
pub struct Cluster {
    /// The CA every server trusts.
    pub ca: TestCa,
    ca_dir: tempfile::TempDir,
    /// The instances, in start order.
    pub instances: Vec<Instance>,
}

impl Cluster {
    /// Starts `n` servers, each named by its federation address.
    pub async fn start(n: usize) -> Result<Self, String> {
        Self::start_with(n, |_, _| {}).await
    }

    /// Starts `n` servers, the configuration of server `i` changed by `adjust(i, …)`.
    pub async fn start_with(n: usize, adjust: impl Fn(usize, &mut Config)) -> Result<Self, String> {
        let ca_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ca = TestCa::new(ca_dir.path())?;
        let mut instances = Vec::with_capacity(n);
        for _ in 0..n {
            // A port found free can be taken before the server binds it (by another
            // test's outgoing connection, say): then another port, a few times.
            let mut attempt = 0;
            let (server, config, dir) = loop {
                attempt += 1;
                let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
                let mut config = config_for(&ca, dir.path(), free_port()?)?;
                adjust(instances.len(), &mut config);
                match Server::start(config.clone()).await {
                    Ok(server) => break (server, config, dir),
                    Err(e) if e.contains("Address already in use") && attempt < 5 => continue,
                    Err(e) => return Err(e),
                }
            };
            instances.push(Instance {
                server: Some(server),
                config,
                dir,
            });
        }
        Ok(Self {
            ca,
            ca_dir,
            instances,
        })
    }

    /// A client of the cluster's federation listeners (and of any server with a
    /// certificate of the test CA) that trusts the test CA only.
    pub fn tls_client(&self) -> Result<reqwest::Client, String> {
        let ca = std::fs::read(&self.ca.cert_path).map_err(|e| e.to_string())?;
        let cert = reqwest::Certificate::from_pem(&ca).map_err(|e| e.to_string())?;
        reqwest::Client::builder()
            .tls_certs_only([cert])
            .build()
            .map_err(|e| e.to_string())
    }

    /// The key document `server` (a server with a certificate of the test CA) publishes
    /// at `/_matrix/key/v2/server`.
    pub async fn key_document(&self, server: &str) -> Result<serde_json::Value, String> {
        json_answer(
            self.tls_client()?
                .get(format!("https://{server}/_matrix/key/v2/server")),
        )
        .await
    }

    /// The folder the CA's files are in.
    pub fn ca_dir(&self) -> &Path {
        self.ca_dir.path()
    }

    /// Stops every server.
    pub async fn shutdown(self) {
        for instance in self.instances {
            if let Some(server) = instance.server {
                server.shutdown().await;
            }
        }
    }
}

/// A user of one instance, speaking the client API over HTTP.
#[derive(Clone)]
pub struct User {
    /// The instance's client API base URL.
    pub base: String,
    /// `@name:server`.
    pub user_id: String,
    /// The access token.
    pub token: String,
    /// The device.
    pub device_id: String,
    /// The HTTP client.
    pub http: reqwest::Client,
}

/// Sends `request` and reads the JSON answer, whatever its status.
async fn json_answer(request: reqwest::RequestBuilder) -> Result<serde_json::Value, String> {
    request
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// POSTs `body` to `url` and reads the JSON answer, whatever its status.
async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    json_answer(http.post(url).json(body)).await
}

/// The string `answer[name]`, or an error naming what answered (`what`) without it.
fn string_field(answer: &serde_json::Value, name: &str, what: &str) -> Result<String, String> {
    answer[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("a {what} answer without {name}: {answer}"))
}

impl User {
    /// Registers `name` on `instance` through the dummy flow.
    pub async fn register(instance: &Instance, name: &str) -> Result<Self, String> {
        Self::register_at(&instance.client_url(), name).await
    }

    /// Registers `name` on the server whose client API is at `base` (ourwhats or
    /// Synapse) through the dummy flow.
    pub async fn register_at(base: &str, name: &str) -> Result<Self, String> {
        // A test whose servers all run in child processes has installed no provider yet.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let base = base.to_owned();
        let url = format!("{base}/_matrix/client/v3/register");
        let mut body = serde_json::json!({"username": name, "password": "correct horse battery"});
        let challenge = post_json(&http, &url, &body).await?;
        body["auth"] =
            serde_json::json!({"type": "m.login.dummy", "session": challenge["session"]});
        let done = post_json(&http, &url, &body).await?;
        let field = |k: &str| string_field(&done, k, "registration");
        Ok(Self {
            user_id: field("user_id")?,
            token: field("access_token")?,
            device_id: field("device_id")?,
            base,
            http,
        })
    }

    /// A client API request; answers the status and JSON body (`Null` when not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method, format!("{}/_matrix/client/v3{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `GET`.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `POST`.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// `PUT`.
    pub async fn put(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    /// Syncs from `since` until at least `want` to-device events have come (or `wait`
    /// passed); answers them in order, and the token to go on from.
    pub async fn to_device_events(
        &self,
        since: Option<String>,
        want: usize,
        wait: std::time::Duration,
    ) -> (Vec<serde_json::Value>, Option<String>) {
        let started = std::time::Instant::now();
        let mut since = since;
        let mut events = Vec::new();
        while events.len() < want && started.elapsed() < wait {
            let path = match &since {
                Some(token) => format!("/sync?timeout=1000&since={}", enc(token)),
                None => "/sync?timeout=0".to_owned(),
            };
            let (status, body) = self.get(&path).await;
            assert_eq!(status, 200, "{body}");
            events.extend(
                body["to_device"]["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            since = body["next_batch"].as_str().map(str::to_owned);
        }
        (events, since)
    }
}

impl User {
    /// The same user logged in again (password login): a new device with its own token,
    /// on whichever server (ourwhats or Synapse) `base` names.
    pub async fn login_another_device(&self) -> Result<Self, String> {
        let body = serde_json::json!({
            "type": "m.login.password",
            "password": "correct horse battery",
            "identifier": {"type": "m.id.user", "user": self.user_id},
        });
        let url = format!("{}/_matrix/client/v3/login", self.base);
        let login = post_json(&self.http, &url, &body).await?;
        let field = |name: &str| string_field(&login, name, "login");
        Ok(Self {
            token: field("access_token")?,
            device_id: field("device_id")?,
            ..self.clone()
        })
    }

    /// Uploads signed device keys for this user's device (the key made from `seed`);
    /// answers their `keys` object.
    pub async fn upload_device_keys(&self, seed: u8) -> serde_json::Value {
        let key = ourwhats::core::SigningKeyPair::from_seed(&[seed; 32], &self.device_id);
        let mut device_keys = serde_json::json!({
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{}", self.device_id): "3C5BFWi2Y8MaVvjM8M22DBmh24PmgR0nPvJOIArzgyI",
                format!("ed25519:{}", self.device_id): key.public_key_base64()
            }
        });
        ourwhats::core::signatures::sign_json(&mut device_keys, &self.user_id, &key)
            .expect("device keys sign");
        let (status, body) = self
            .post(
                "/keys/upload",
                serde_json::json!({"device_keys": device_keys}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        device_keys["keys"].clone()
    }

    /// Creates a room with `body` (must succeed); answers its id.
    pub async fn create_room(&self, body: serde_json::Value) -> String {
        let (status, created) = self.post("/createRoom", body).await;
        assert_eq!(status, 200, "{}: createRoom: {created}", self.user_id);
        created["room_id"].as_str().expect("a room id").to_owned()
    }

    /// Joins `room` through `server` (must succeed).
    pub async fn join_via(&self, room: &str, server: &str) {
        let path = format!("/join/{}?via={}", enc(room), enc(server));
        let (status, body) = self.post(&path, serde_json::json!({})).await;
        assert_eq!(
            status, 200,
            "{} joining {room} via {server}: {body}",
            self.user_id
        );
    }

    /// Pages back through `room` with `/messages` (`limit` a page) until there is no
    /// `end` (each page must answer 200); answers every event, newest first, and the
    /// number of pages.
    pub async fn page_back(&self, room: &str, limit: usize) -> (Vec<serde_json::Value>, usize) {
        let mut events = Vec::new();
        let mut from: Option<String> = None;
        for pages in 1..=100 {
            let mut path = format!("/rooms/{}/messages?dir=b&limit={limit}", enc(room));
            if let Some(token) = &from {
                path.push_str(&format!("&from={}", enc(token)));
            }
            let (status, page) = self.get(&path).await;
            assert_eq!(status, 200, "{}: {path}: {page}", self.user_id);
            events.extend(page["chunk"].as_array().into_iter().flatten().cloned());
            match page["end"].as_str() {
                Some(end) => from = Some(end.to_owned()),
                None => return (events, pages),
            }
        }
        panic!("{}: paging back through {room} did not end", self.user_id);
    }

    /// Follows `/sync` (a full one first, then incremental ones) until an answer
    /// satisfies `check`, or 30 s pass; answers that body.
    pub async fn sync_until(
        &self,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let started = std::time::Instant::now();
        let mut since: Option<String> = None;
        while started.elapsed() < std::time::Duration::from_secs(30) {
            let path = match &since {
                Some(token) => format!("/sync?timeout=1000&since={}", enc(token)),
                None => "/sync?timeout=0".to_owned(),
            };
            let (status, body) = self.get(&path).await;
            if status == 200 {
                if check(&body) {
                    return Some(body);
                }
                since = body["next_batch"].as_str().map(str::to_owned).or(since);
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        None
    }
}

impl Instance {
    /// A federation request from this instance to `to` (signed with its key); answers
    /// the status and body.
    pub async fn ask(
        &self,
        to: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        use ourwhats::services::federation::client::FederationError;
        let destination = ServerName::parse(to).expect("a server name");
        match self
            .running()
            .services
            .federation
            .client
            .request(&destination, method, path, body.as_ref())
            .await
        {
            Ok(answer) => (200, answer),
            Err(FederationError::Refused { status, body }) => (status, body),
            Err(e) => panic!("{path}: {e}"),
        }
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(text: &str) -> String {
    ourwhats::core::url::encode(text)
}
