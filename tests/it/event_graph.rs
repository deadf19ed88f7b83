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
