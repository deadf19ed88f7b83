//! What the rooms service's receive entry point asks of other servers: keys through the
//! key ring, missing events from the server that sent the PDU.
//!
//! Spec: server-server API, "Retrieving events" (`GET /_matrix/federation/v1/event/{eventId}`
//! answers a transaction holding the one PDU), "Retrieving missing events" (`POST
//! /_matrix/federation/v1/get_missing_events/{roomId}`) and the state at an event (`GET
//! /_matrix/federation/v1/state_ids/{roomId}`).

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use reqwest::Method;
use serde_json::{json, Value};

use super::Federation;
use crate::core::pdu_checks::KnownKey;
use crate::core::ServerName;
use crate::services::now_ms;
use crate::services::rooms::receive::MissingSource;

/// Events are fetched from `origin`, keys from wherever the key ring finds them.
pub struct FromOrigin<'a> {
    /// The federation service.
    pub federation: &'a Federation,
    /// The server that sent the PDUs.
    pub origin: ServerName,
}

impl MissingSource for FromOrigin<'_> {
    fn keys<'a>(
        &'a self,
        server: &'a str,
        key_ids: &'a [String],
    ) -> BoxFuture<'a, HashMap<String, KnownKey>> {
        // Keys valid now serve events of any time; expired ones are kept with their
        // expiry and the signature check compares it with the event's time.
        Box::pin(self.federation.keys.keys_for(server, key_ids, now_ms()))
    }

    fn missing_events<'a>(
        &'a self,
        room_id: &'a str,
        (earliest, latest): (&'a [String], &'a [String]),
        (limit, min_depth): (usize, u64),
    ) -> BoxFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let path = format!(
                "/_matrix/federation/v1/get_missing_events/{}",
                crate::core::url::encode(room_id)
            );
            let body = json!({
                "earliest_events": earliest,
                "latest_events": latest,
                "limit": limit,
                "min_depth": min_depth,
            });
            match self
                .federation
                .client
                .request(&self.origin, Method::POST, &path, Some(&body))
                .await
            {
                Ok(answer) => answer
                    .get("events")
                    .and_then(Value::as_array)
                    .map(|events| events.iter().take(limit).cloned().collect())
                    .unwrap_or_default(),
                Err(e) => {
                    tracing::info!(origin = %self.origin, room = %room_id, error = %e, "cannot fetch the events of a gap");
                    Vec::new()
                }
            }
        })
    }

    fn state_ids<'a>(
        &'a self,
        room_id: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(async move {
            let path = format!(
                "/_matrix/federation/v1/state_ids/{}?event_id={}",
                crate::core::url::encode(room_id),
                crate::core::url::encode(event_id)
            );
            match self
                .federation
                .client
                .request(&self.origin, Method::GET, &path, None)
                .await
            {
                Ok(answer) => {
                    let ids = answer.get("pdu_ids").and_then(Value::as_array)?;
                    ids.iter()
                        .map(|id| id.as_str().map(str::to_owned))
                        .collect()
                }
                Err(e) => {
                    tracing::info!(origin = %self.origin, room = %room_id, event = %event_id, error = %e, "cannot fetch the state at an event");
                    None
                }
            }
        })
    }

    fn events<'a>(
        &'a self,
        _room_id: &'a str,
        event_ids: &'a [String],
    ) -> BoxFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for id in event_ids {
                let path = format!(
                    "/_matrix/federation/v1/event/{}",
                    crate::core::url::encode(id)
                );
                match self
                    .federation
                    .client
                    .request(&self.origin, Method::GET, &path, None)
                    .await
                {
                    Ok(answer) => {
                        if let Some(pdu) = answer
                            .get("pdus")
                            .and_then(Value::as_array)
                            .and_then(|p| p.first())
                        {
                            out.push(pdu.clone());
                        }
                    }
                    Err(e) => {
                        tracing::info!(origin = %self.origin, event = %id, error = %e, "cannot fetch a missing event")
                    }
                }
            }
            out
        })
    }
}
