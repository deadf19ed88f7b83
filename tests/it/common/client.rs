//! A client for HTTP stories: one registered user and the calls tests make.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::TestServer;

/// The client-server API prefix.
pub const V3: &str = "/_matrix/client/v3";

pub fn enc(s: &str) -> String {
    s.replace('#', "%23")
}

pub struct Client<'a> {
    pub server: &'a TestServer,
    pub token: String,
    pub user_id: String,
    pub device_id: String,
}

impl<'a> Client<'a> {
    pub async fn new(server: &'a TestServer, name: &str) -> Self {
        let (user_id, token, device_id) = server.register(name, "correct horse battery").await;
        Self {
            server,
            token,
            user_id,
            device_id,
        }
    }

    /// `POST /account/deactivate` (with `erase` when asked), through its password stage;
    /// answers the status and body of the completing request.
    pub async fn deactivate(&self, erase: bool) -> (StatusCode, Value) {
        let (_, challenge) = self
            .post("/account/deactivate", json!({"erase": erase}))
            .await;
        self.post(
            "/account/deactivate",
            json!({"erase": erase, "auth": {"type": "m.login.password",
                   "session": challenge["session"],
                   "identifier": {"type": "m.id.user", "user": self.user_id},
                   "password": "correct horse battery"}}),
        )
        .await
    }

    /// A client for an account registered earlier: `(user_id, access_token, device_id)`.
    pub fn signed_in(server: &'a TestServer, login: &(String, String, String)) -> Self {
        Self {
            server,
            user_id: login.0.clone(),
            token: login.1.clone(),
            device_id: login.2.clone(),
        }
    }

    /// The same user logged in on a new device.
    pub async fn another_device(&self) -> Client<'a> {
        let (status, body) = self
            .server
            .login(&self.user_id, "correct horse battery")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Self {
            server: self.server,
            token: body["access_token"].as_str().unwrap().to_owned(),
            user_id: self.user_id.clone(),
            device_id: body["device_id"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.server
            .call(method, &format!("{V3}{path}"), Some(&self.token), body)
            .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn create_room(&self, body: Value) -> String {
        let (status, body) = self.post("/createRoom", body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["room_id"].as_str().unwrap().to_owned()
    }

    pub async fn send(&self, room: &str, body: Value) -> String {
        let txn = format!("t{}", rand_suffix());
        let (status, out) = self
            .put(&format!("/rooms/{room}/send/m.room.message/{txn}"), body)
            .await;
        assert_eq!(status, StatusCode::OK, "{out}");
        out["event_id"].as_str().unwrap().to_owned()
    }

    pub async fn text(&self, room: &str, text: &str) -> String {
        self.send(room, json!({"msgtype": "m.text", "body": text}))
            .await
    }

    /// A text message that mentions `user` (`m.mentions`); answers its event id.
    pub async fn mention(&self, room: &str, user: &str, text: &str) -> String {
        self.send(
            room,
            json!({"msgtype": "m.text", "body": text, "m.mentions": {"user_ids": [user]}}),
        )
        .await
    }

    pub async fn try_send(&self, room: &str, text: &str) -> (StatusCode, Value) {
        let txn = format!("t{}", rand_suffix());
        self.put(
            &format!("/rooms/{room}/send/m.room.message/{txn}"),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await
    }

    pub async fn join(&self, room: &str) -> (StatusCode, Value) {
        self.post(&format!("/join/{}", enc(room)), json!({})).await
    }

    /// `POST /rooms/{room}/invite` of `user_id`.
    pub async fn invite(&self, room: &str, user_id: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/rooms/{}/invite", enc(room)),
            json!({ "user_id": user_id }),
        )
        .await
    }

    /// `PUT /rooms/{room}/redact/{event_id}/{txn}` with no reason.
    pub async fn redact(&self, room: &str, event_id: &str, txn: &str) -> (StatusCode, Value) {
        self.put(
            &format!("/rooms/{}/redact/{}/{txn}", enc(room), enc(event_id)),
            json!({}),
        )
        .await
    }

    pub async fn state(&self, room: &str, kind: &str, key: &str) -> (StatusCode, Value) {
        self.get(&format!("/rooms/{room}/state/{kind}/{key}")).await
    }

    /// `user`'s member event content in `room` once it shows `membership` (polled for up
    /// to 10 s: for what the server does after its answer); the last one read otherwise.
    pub async fn member_once(&self, room: &str, user: &str, membership: &str) -> Value {
        let mut member = self.state(room, "m.room.member", user).await.1;
        for _ in 0..500 {
            if member["membership"] == membership {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            member = self.state(room, "m.room.member", user).await.1;
        }
        member
    }

    /// The event ids `GET /notifications` lists, newest first; asserts 200.
    pub async fn notified_event_ids(&self) -> Vec<String> {
        let (status, listed) = self.get("/notifications").await;
        assert_eq!(status, StatusCode::OK, "{listed}");
        listed["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["event"]["event_id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn messages(&self, room: &str, query: &str) -> Value {
        let (status, body) = self.get(&format!("/rooms/{room}/messages?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Client<'_> {
    /// `GET /sync` with a query string; asserts 200.
    pub async fn sync(&self, query: &str) -> Value {
        let (status, body) = self.get(&format!("/sync?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// An incremental sync from `since` that must answer at once.
    pub async fn sync_since(&self, since: &Value) -> Value {
        let since = since.as_str().expect("a next_batch token");
        self.sync(&format!("since={since}&timeout=0")).await
    }
}
