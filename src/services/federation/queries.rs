//! What we ask other servers about their users and aliases, with no room shared.
//!
//! Spec: server-server API, "Querying for information" (`GET /query/profile`, `GET
//! /query/directory`), "Public Room Directory" (`/publicRooms`) and "End-to-End Encryption" (`POST /user/keys/query`, `POST
//! /user/keys/claim`).

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::FederationError;
use super::Federation;
use crate::core::url::encode;
use crate::core::{RoomAliasId, ServerName, UserId};

fn server_of(name: &str) -> Result<ServerName, FederationError> {
    ServerName::parse(name).map_err(|e| FederationError::Unreachable(format!("{name:?}: {e}")))
}

fn object(value: Value) -> Result<Map<String, Value>, FederationError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(FederationError::BadResponse(
            "the answer is not an object".into(),
        )),
    }
}

impl Federation {
    /// A remote user's profile, or one `field` of it.
    pub async fn profile(
        &self,
        user: &UserId,
        field: Option<&str>,
    ) -> Result<Map<String, Value>, FederationError> {
        let server = server_of(user.server_name())?;
        let mut path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            encode(user.as_str())
        );
        if let Some(field) = field {
            path.push_str(&format!("&field={}", encode(field)));
        }
        let answer = object(
            self.client
                .request(&server, Method::GET, &path, None)
                .await?,
        )?;
        // Only the fields a profile holds, of the types they have.
        Ok(answer
            .into_iter()
            .filter(|(k, _)| field.is_none_or(|f| f == k))
            .filter(|(k, v)| !matches!(k.as_str(), "displayname" | "avatar_url") || v.is_string())
            .collect())
    }

    /// The room a remote alias names and the servers that know it.
    pub async fn room_alias(
        &self,
        alias: &RoomAliasId,
    ) -> Result<(String, Vec<String>), FederationError> {
        let server = server_of(alias.server_name())?;
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            encode(alias.as_str())
        );
        let answer = self
            .client
            .request(&server, Method::GET, &path, None)
            .await?;
        let room_id = answer
            .get("room_id")
            .and_then(Value::as_str)
            .filter(|r| crate::core::RoomId::parse(r).is_ok())
            .ok_or_else(|| FederationError::BadResponse("no valid room_id".into()))?
            .to_owned();
        let servers = answer
            .get("servers")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_str)
                    .filter(|s| ServerName::parse(s).is_ok())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok((room_id, servers))
    }

    /// `server`'s published rooms (spec: "Public Room Directory"): `POST /publicRooms` with
    /// the client's paging and filter, or `GET` when there is no filter and the server
    /// does not know the POST form. Only entries with a room id are passed on.
    pub async fn public_rooms(
        &self,
        server: &ServerName,
        (limit, since): (Option<usize>, Option<&str>),
        filter: Option<&Value>,
    ) -> Result<Map<String, Value>, FederationError> {
        let mut body = Map::new();
        if let Some(limit) = limit {
            body.insert("limit".into(), json!(limit));
        }
        if let Some(since) = since {
            body.insert("since".into(), json!(since));
        }
        if let Some(filter) = filter {
            body.insert("filter".into(), filter.clone());
        }
        let path = "/_matrix/federation/v1/publicRooms";
        let answer = match self
            .client
            .request(server, Method::POST, path, Some(&Value::Object(body)))
            .await
        {
            Err(FederationError::Refused { status, .. })
                if filter.is_none() && matches!(status, 400 | 404 | 405) =>
            {
                let mut query = Vec::new();
                if let Some(limit) = limit {
                    query.push(format!("limit={limit}"));
                }
                if let Some(since) = since {
                    query.push(format!("since={}", encode(since)));
                }
                let path = format!("{path}?{}", query.join("&"));
                self.client
                    .request(server, Method::GET, &path, None)
                    .await?
            }
            other => other?,
        };
        let mut answer = object(answer)?;
        let chunk: Vec<Value> = answer
            .remove("chunk")
            .and_then(|c| match c {
                Value::Array(rooms) => Some(rooms),
                _ => None,
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|room| {
                room.get("room_id")
                    .and_then(Value::as_str)
                    .is_some_and(|r| crate::core::RoomId::parse(r).is_ok())
            })
            .collect();
        let mut out = Map::new();
        out.insert("chunk".into(), Value::Array(chunk));
        for key in ["next_batch", "prev_batch"] {
            if let Some(token) = answer.remove(key).filter(Value::is_string) {
                out.insert(key.into(), token);
            }
        }
        if let Some(total) = answer
            .remove("total_room_count_estimate")
            .filter(Value::is_u64)
        {
            out.insert("total_room_count_estimate".into(), total);
        }
        Ok(out)
    }

    /// Device and cross-signing keys of users of `server`: its `/user/keys/query` answer.
    pub async fn user_keys(
        &self,
        server: &ServerName,
        device_keys: &Map<String, Value>,
    ) -> Result<Map<String, Value>, FederationError> {
        let body = json!({ "device_keys": device_keys });
        object(
            self.client
                .request(
                    server,
                    Method::POST,
                    "/_matrix/federation/v1/user/keys/query",
                    Some(&body),
                )
                .await?,
        )
    }

    /// One-time keys of devices of `server`: its `/user/keys/claim` answer.
    pub async fn claim_user_keys(
        &self,
        server: &ServerName,
        one_time_keys: &Map<String, Value>,
    ) -> Result<Map<String, Value>, FederationError> {
        let body = json!({ "one_time_keys": one_time_keys });
        object(
            self.client
                .request(
                    server,
                    Method::POST,
                    "/_matrix/federation/v1/user/keys/claim",
                    Some(&body),
                )
                .await?,
        )
    }
}
