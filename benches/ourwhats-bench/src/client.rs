//! A user of the homeserver under test: registration through the spec's user-interactive
//! auth (the `m.login.dummy` stage) and authenticated JSON calls. Only the client-server
//! API is used, so any homeserver can be measured.
//!
//! Spec: client-server API, "POST /_matrix/client/v3/register" and "User-Interactive
//! Authentication API" (a first request answers 401 with a `session`, the second completes
//! the dummy stage).

use std::time::Duration;

use reqwest::{Client, Method};
use serde_json::{json, Value};

/// What a benchmark step reports when the server misbehaves.
pub type BenchResult<T> = Result<T, String>;

/// A fresh HTTP client: its own connection pool, so each user has its own connection.
pub fn http_client() -> BenchResult<Client> {
    Client::builder()
        .pool_max_idle_per_host(4)
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// A registered account and its access token.
#[derive(Clone)]
pub struct User {
    pub http: Client,
    pub base: String,
    pub token: String,
    pub user_id: String,
    pub device_id: String,
}

/// Registers `localpart` with a password, completing the dummy auth stage.
pub async fn register(base: &str, localpart: &str) -> BenchResult<User> {
    let http = http_client()?;
    let url = format!("{base}/_matrix/client/v3/register");
    let mut body = json!({
        "username": localpart,
        "password": "bench-password-0123",
        "initial_device_display_name": "ourwhats-bench",
    });
    let (status, challenge) = send_json(&http, Method::POST, &url, None, Some(&body)).await?;
    let done = if status == 200 {
        // A server that needs no auth for registration.
        challenge
    } else {
        let Some(session) = challenge["session"].as_str() else {
            return Err(format!(
                "register {localpart}: {status} without a UIA session: {challenge}"
            ));
        };
        body["auth"] = json!({"type": "m.login.dummy", "session": session});
        let (status, done) = send_json(&http, Method::POST, &url, None, Some(&body)).await?;
        if status != 200 {
            return Err(format!("register {localpart}: {status} {done}"));
        }
        done
    };
    let field = |key: &str| {
        done[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("register {localpart}: no {key} in {done}"))
    };
    Ok(User {
        token: field("access_token")?,
        user_id: field("user_id")?,
        device_id: field("device_id")?,
        base: base.to_owned(),
        http,
    })
}

/// Registers `count` users `{prefix}{i}`, `parallel` at a time.
pub async fn register_many(
    base: &str,
    prefix: &str,
    count: usize,
    parallel: usize,
) -> BenchResult<Vec<User>> {
    let mut users = Vec::with_capacity(count);
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    for chunk in names.chunks(parallel.max(1)) {
        let batch = futures_util::future::join_all(chunk.iter().map(|n| register(base, n))).await;
        for user in batch {
            users.push(user?);
        }
    }
    Ok(users)
}

/// Sends a request and reads its JSON answer (`Null` when the body is not JSON).
async fn send_json(
    http: &Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> BenchResult<(u16, Value)> {
    let (status, bytes) = send(http, method, url, token, body).await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Sends a request and reads its whole answer.
async fn send(
    http: &Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> BenchResult<(u16, bytes::Bytes)> {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{url}: no answer: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("{url}: answer cut short: {e}"))?;
    Ok((status, bytes))
}

impl User {
    /// An authenticated call to `path` (below the base URL); a non-2xx answer is an error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> BenchResult<Value> {
        let url = format!("{}{path}", self.base);
        let (status, answer) =
            send_json(&self.http, method, &url, Some(&self.token), body.as_ref()).await?;
        if !(200..300).contains(&status) {
            return Err(format!("{path}: {status} {answer}"));
        }
        Ok(answer)
    }

    /// Creates a room and answers its id.
    pub async fn create_room(&self, body: Value) -> BenchResult<String> {
        let answer = self
            .call(Method::POST, "/_matrix/client/v3/createRoom", Some(body))
            .await?;
        answer["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("createRoom answered no room_id: {answer}"))
    }

    pub async fn join(&self, room_id: &str) -> BenchResult<()> {
        self.call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode(room_id)),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// Sends an `m.text` message with transaction id `txn`; answers the event id.
    pub async fn send_text(&self, room_id: &str, txn: &str, body: &str) -> BenchResult<String> {
        let answer = self
            .call(
                Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    encode(room_id)
                ),
                Some(json!({"msgtype": "m.text", "body": body})),
            )
            .await?;
        answer["event_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("send answered no event_id: {answer}"))
    }

    /// `GET /sync` with the given query string, timed: milliseconds until the answer's
    /// last byte arrived (what the server costs a client), then the answer, parsed after
    /// the clock stopped (what it costs this tool: ~1 s of CPU for the 86 MB answer of
    /// 20,000 rooms, which depends on the client, not on the server).
    pub async fn sync_timed(&self, query: &str) -> BenchResult<(f64, Value)> {
        let path = format!("/_matrix/client/v3/sync?{query}");
        let url = format!("{}{path}", self.base);
        let started = std::time::Instant::now();
        let (status, bytes) = send(&self.http, Method::GET, &url, Some(&self.token), None).await?;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(format!("{path}: {status} {answer}"));
        }
        Ok((elapsed, answer))
    }

    /// `GET /sync` with the given query string.
    pub async fn sync(&self, query: &str) -> BenchResult<Value> {
        self.call(
            Method::GET,
            &format!("/_matrix/client/v3/sync?{query}"),
            None,
        )
        .await
    }
}

/// The `next_batch` of a sync answer.
pub fn next_batch(answer: &Value) -> BenchResult<String> {
    answer["next_batch"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("a sync answer without next_batch: {answer}"))
}

/// The URL of `endpoint` (`download` or `thumbnail`, authenticated media) for an
/// `mxc://server/id` URI the server answered.
pub fn media_url(base: &str, endpoint: &str, uri: &str) -> BenchResult<String> {
    let (server, id) = uri
        .strip_prefix("mxc://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| format!("upload answered a malformed content URI {uri}"))?;
    Ok(format!(
        "{base}/_matrix/client/v1/media/{endpoint}/{}/{}",
        encode(server),
        encode(id)
    ))
}

/// Percent-encodes a path segment (room ids hold `!` and `:`, which are safe, but
/// event and media ids may hold anything).
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!:$@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
