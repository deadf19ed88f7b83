//! The event graph kept for every event: prev and auth edges, depth, status, and the
//! forward extremities by the set rule; kept across a restart.

use crate::common;

use common::client::Client;
use common::TestServer;
use ourwhats::core::pdu;
use ourwhats::services::rooms::graph::{self, EventStatus};
use serde_json::{json, Value};

fn ids(pdu: &Value, key: &str) -> Vec<String> {
    pdu::event_ids(pdu, key).map(str::to_owned).collect()
}

#[tokio::test]
async fn every_event_records_its_edges_depth_and_status_and_they_survive_a_restart() {
    let mut s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(alice.text(&room, &format!("message {n}")).await);
    }
    s.restart().await;

    let store = s.running().services.rooms.store();
    let record = store.room(&room).unwrap().unwrap().record;
    // A straight line of local events: the newest is the only extremity.
    assert_eq!(record.extremities, vec![sent[2].clone()]);
    let mut previous_depth = 0;
    for (n, event_id) in sent.iter().enumerate() {
        let event = store.event_by_id(event_id).unwrap().unwrap();
        let pdu = event.pdu();
        let graph = graph::record(store, event.short)
            .unwrap()
            .expect("a graph record");
        assert_eq!(graph.status, EventStatus::Accepted);
        // Edges as the PDU names them, by short id.
        let shorts = |key: &str| -> Vec<u64> {
            ids(pdu, key)
                .iter()
                .map(|id| store.event_by_id(id).unwrap().unwrap().short)
                .collect()
        };
        assert_eq!(graph.prev, shorts("prev_events"));
        assert_eq!(graph.auth, shorts("auth_events"));
        assert!(!graph.auth.is_empty());
        // Each names the one before it, one deeper.
        let prev = &ids(pdu, "prev_events");
        assert_eq!(prev.len(), 1);
        if n > 0 {
            assert_eq!(prev[0], sent[n - 1]);
            assert_eq!(graph.depth, previous_depth + 1);
        }
        assert_eq!(Some(graph.depth), pdu["depth"].as_u64());
        previous_depth = graph.depth;
        // Children: the next event names this one.
        let children = graph::children(store, event.short).unwrap();
        match sent.get(n + 1) {
            Some(next) => {
                let next = store.event_by_id(next).unwrap().unwrap().short;
                assert_eq!(children, vec![next]);
            }
            None => assert!(children.is_empty()),
        }
    }
    s.stop().await;
}

/// Every auth child entry: `(auth event, child, child's short state key)`.
fn auth_children(db: &ourwhats::storage::Db) -> Vec<(u64, u64, u64)> {
    let read = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap());
    db.scan_prefix(ourwhats::storage::Table::AuthShorteventidChild, &[])
        .map(|entry| {
            let (key, value) = entry.unwrap();
            (read(&key[..8]), read(&key[8..16]), read(&value))
        })
        .collect()
}

#[tokio::test]
async fn state_events_are_indexed_as_auth_children_and_an_older_database_is_indexed_at_start() {
    let mut s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/state/m.room.topic/"),
            json!({"topic": "indexed"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let topic = body["event_id"].as_str().unwrap().to_owned();
    let message = alice.text(&room, "not a state event").await;

    let services = &s.running().services;
    let store = services.rooms.store();
    let short = |id: &str| store.event_by_id(id).unwrap().unwrap().short;
    let entries = auth_children(&services.db);
    // The topic is a child of each of its auth events, under its own state key.
    let topic_event = store.event_by_id(&topic).unwrap().unwrap();
    let topic_key = store
        .state()
        .find_state_key("m.room.topic", "")
        .unwrap()
        .unwrap();
    for auth in ids(topic_event.pdu(), "auth_events") {
        assert!(
            entries.contains(&(short(&auth), short(&topic), topic_key)),
            "{auth} -> topic"
        );
    }
    // A message is nobody's auth event and is left out.
    assert!(entries
        .iter()
        .all(|(_, child, _)| *child != short(&message)));

    // A database from before the index: the entries and the mark are gone.
    let mut batch = services.db.batch();
    for (auth, child, _) in &entries {
        let mut key = auth.to_be_bytes().to_vec();
        key.extend_from_slice(&child.to_be_bytes());
        batch.delete(ourwhats::storage::Table::AuthShorteventidChild, key);
    }
    batch.delete(
        ourwhats::storage::Table::Meta,
        b"rooms.auth_children_indexed",
    );
    services.db.commit_blocking(batch).unwrap();
    assert!(auth_children(&services.db).is_empty());
    s.restart().await;
    let mut rebuilt = auth_children(&s.running().services.db);
    let mut expected = entries.clone();
    rebuilt.sort_unstable();
    expected.sort_unstable();
    assert_eq!(rebuilt, expected);
}
