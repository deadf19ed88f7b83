//! `/sync` in each case the spec describes, one story each: a newly joined room's gap,
//! state before the timeline, a join and leave in one batch, a rejoin under `joined`
//! history, room mates' presence, lazy-loaded members, and filters checked on upload.

use std::collections::BTreeSet;

use crate::common;

use common::client::Client;
use common::{assert_error, urlencode, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// An incremental sync's query from `since` with an inline filter.
fn since_with(since: &str, filter: Value) -> String {
    format!("since={since}&timeout=0&{}", with_filter(filter))
}

fn with_filter(filter: Value) -> String {
    format!("filter={}", urlencode(&filter.to_string()))
}

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["event_id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn member_keys(events: &Value) -> BTreeSet<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room.member")
                .map(|e| e["state_key"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_newly_joined_room_with_more_events_than_the_limit_is_limited_and_pages_back() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let since = bob.sync("timeout=0").await["next_batch"].clone();
    for n in 0..12 {
        alice.text(&room, &format!("m{n}")).await;
    }
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    let filter = with_filter(json!({"room": {"timeline": {"limit": 5}}}));
    let sync = bob
        .sync(&format!(
            "since={}&timeout=0&{filter}",
            since.as_str().unwrap()
        ))
        .await;
    let joined = &sync["rooms"]["join"][&room];
    let timeline = &joined["timeline"];
    assert_eq!(timeline["limited"], true, "{timeline}");
    let events = timeline["events"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(events.last().unwrap()["state_key"], bob.user_id.as_str());
    // prev_batch pages back into the rest, without overlap or gap.
    let page = bob
        .messages(
            &room,
            &format!(
                "dir=b&limit=100&from={}",
                timeline["prev_batch"].as_str().unwrap()
            ),
        )
        .await;
    let older: Vec<String> = bodies(&page["chunk"]);
    let newest_older = older.first().cloned().unwrap_or_default();
    let in_timeline = bodies(&timeline["events"]);
    assert!(
        !in_timeline.contains(&newest_older),
        "overlap: {newest_older}"
    );
    let mut all: Vec<String> = older.into_iter().rev().collect();
    all.extend(in_timeline);
    let expected: Vec<String> = (0..12).map(|n| format!("m{n}")).collect();
    assert_eq!(all, expected);
    // The state is that at the timeline's start: the create event and alice's join are
    // there, bob's join only in the timeline.
    let state = &joined["state"]["events"];
    assert!(state
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));
    assert!(!member_keys(state).contains(&bob.user_id), "{state}");
    s.stop().await;
}

/// A room whose history came before the client's token, joined since: the client holds
/// nothing of it, so it gets the room's last events as an initial sync would (Synapse
/// does the same), not only the join.
#[tokio::test]
async fn a_room_joined_since_the_token_shows_its_last_events_from_before_the_token() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let mut last = String::new();
    for n in 0..12 {
        last = alice.text(&room, &format!("m{n}")).await;
    }
    // Where alice has read to, from before the token too.
    let (status, _) = alice
        .post(&format!("/rooms/{room}/receipt/m.read/{last}"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let since = bob.sync("timeout=0").await["next_batch"].clone();
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    let filter = json!({"room": {"timeline": {"limit": 5}}});
    let sync = bob
        .sync(&since_with(since.as_str().unwrap(), filter.clone()))
        .await;
    let joined = &sync["rooms"]["join"][&room];
    let timeline = &joined["timeline"];
    assert_eq!(timeline["limited"], true, "{timeline}");
    assert_eq!(bodies(&timeline["events"]), ["m8", "m9", "m10", "m11"]);
    let receipts = joined["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .unwrap_or_else(|| panic!("no receipts: {joined}"));
    assert!(
        receipts["content"][&last]["m.read"][&alice.user_id].is_object(),
        "{receipts}"
    );
    let events = timeline["events"].as_array().unwrap();
    assert_eq!(events.last().unwrap()["state_key"], bob.user_id.as_str());
    let page = bob
        .messages(
            &room,
            &format!(
                "dir=b&limit=100&from={}",
                timeline["prev_batch"].as_str().unwrap()
            ),
        )
        .await;
    let older: Vec<String> = bodies(&page["chunk"]).into_iter().rev().collect();
    let expected: Vec<String> = (0..8).map(|n| format!("m{n}")).collect();
    assert_eq!(older, expected);
    // The whole state before the timeline, as for a new room.
    let state = &joined["state"]["events"];
    assert!(member_keys(state).contains(&alice.user_id), "{state}");
    assert!(state
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));

    // A room that is short of the limit is not limited.
    let small = alice.create_room(json!({"preset": "public_chat"})).await;
    alice.text(&small, "only one").await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(bob.join(&small).await.0, StatusCode::OK);
    let sync = bob
        .sync(&since_with(
            &since,
            json!({"room": {"timeline": {"limit": 50}}}),
        ))
        .await;
    let timeline = &sync["rooms"]["join"][&small]["timeline"];
    assert_eq!(timeline["limited"], false, "{timeline}");
    assert_eq!(bodies(&timeline["events"]), ["only one"]);
    assert_eq!(timeline["events"][0]["type"], "m.room.create", "{timeline}");
    s.stop().await;
}

#[tokio::test]
async fn state_is_the_state_before_the_timeline_and_never_repeats_it() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "small"}))
        .await;
    // The whole room fits in the timeline: it starts at the create event, so there is no
    // state before it.
    let sync = alice.sync("timeout=0").await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], false);
    assert_eq!(joined["timeline"]["events"][0]["type"], "m.room.create");
    let state = ids(&joined["state"]["events"]);
    let timeline = ids(&joined["timeline"]["events"]);
    assert!(
        state.is_empty(),
        "state repeated from the timeline: {state:?}"
    );

    // With a timeline of 2, the state holds everything before those 2, nothing of them.
    let sync = alice
        .sync(&with_filter(json!({"room": {"timeline": {"limit": 2}}})))
        .await;
    let joined = &sync["rooms"]["join"][&room];
    let state = ids(&joined["state"]["events"]);
    let short_timeline = ids(&joined["timeline"]["events"]);
    assert_eq!(short_timeline, timeline[timeline.len() - 2..].to_vec());
    for id in &short_timeline {
        assert!(!state.contains(id), "{id} in both");
    }
    assert!(joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));
    s.stop().await;
}

#[tokio::test]
async fn a_join_and_leave_in_one_batch_carry_the_state_of_the_left_room() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "passing through"}))
        .await;
    // More events than the default timeline of 10 before bob comes.
    for n in 0..15 {
        alice.text(&room, &format!("before bob {n}")).await;
    }
    let since = bob.sync("timeout=0").await["next_batch"].clone();
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    let (status, body) = bob.post(&format!("/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = bob
        .sync(&format!("since={}&timeout=0", since.as_str().unwrap()))
        .await;
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
    let left = &sync["rooms"]["leave"][&room];
    let timeline = &left["timeline"]["events"];
    let last = timeline.as_array().unwrap().last().unwrap();
    assert_eq!(last["content"]["membership"], "leave", "{left}");
    // The timeline is what happened since `since`, the join and the leave; the state
    // before it comes whole in its own section, as for a room newly joined: the room's
    // name, creation and members, as they were.
    assert_eq!(timeline.as_array().unwrap().len(), 2, "{left}");
    assert_eq!(left["timeline"]["limited"], false, "{left}");
    let state = &left["state"]["events"];
    let types: Vec<&str> = state
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(types.contains(&"m.room.create"), "{left}");
    assert!(
        state
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "passing through"),
        "{left}"
    );
    assert!(member_keys(state).contains(&alice.user_id), "{left}");
    s.stop().await;
}

#[tokio::test]
async fn a_rejoin_under_joined_history_shows_its_membership_events() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": "joined"}}]}))
        .await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    alice.text(&room, "while bob is here").await;
    bob.post(&format!("/rooms/{room}/leave"), json!({})).await;
    let since = bob.sync("timeout=0").await["next_batch"].clone();
    alice.text(&room, "while bob is away").await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    alice.text(&room, "bob is back").await;
    let sync = bob
        .sync(&format!("since={}&timeout=0", since.as_str().unwrap()))
        .await;
    let joined = &sync["rooms"]["join"][&room];
    let timeline = &joined["timeline"]["events"];
    let bodies = bodies(timeline);
    assert!(
        !bodies.contains(&"while bob is away".to_owned()),
        "{timeline}"
    );
    assert!(bodies.contains(&"bob is back".to_owned()), "{timeline}");
    // His rejoin is there (the event that lets him read again).
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == "join"),
        "{timeline}"
    );
    // An initial sync shows the same: the old message he saw, then the rejoin, not what
    // came in between.
    let sync = bob.sync("timeout=0").await;
    let bodies_initial = self::bodies(&sync["rooms"]["join"][&room]["timeline"]["events"]);
    assert!(!bodies_initial.contains(&"while bob is away".to_owned()));
    assert!(bodies_initial.contains(&"while bob is here".to_owned()));
    s.stop().await;
}

#[tokio::test]
async fn presence_of_a_newly_joined_rooms_members_arrives_in_the_first_incremental_sync() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    // alice is online (she syncs) before bob shares a room with her.
    alice.sync("timeout=0").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let since = bob.sync("timeout=0").await["next_batch"].clone();
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    let sync = bob
        .sync(&format!("since={}&timeout=0", since.as_str().unwrap()))
        .await;
    let presence = &sync["presence"]["events"];
    let alice_presence = presence
        .as_array()
        .and_then(|a| a.iter().find(|e| e["sender"] == alice.user_id.as_str()));
    let alice_presence = alice_presence.unwrap_or_else(|| panic!("no presence of alice: {sync}"));
    assert_eq!(alice_presence["content"]["presence"], "online");
    s.stop().await;
}

#[tokio::test]
async fn lazy_loading_sends_exactly_the_timelines_senders_and_never_twice() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let mut others = Vec::new();
    for name in ["bob", "carol", "dan", "erin"] {
        others.push(Client::new(&s, name).await);
    }
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    for other in &others {
        assert_eq!(other.join(&room).await.0, StatusCode::OK);
    }
    for other in &others {
        other
            .text(&room, &format!("hello from {}", other.user_id))
            .await;
    }
    let lazy = json!({"room": {"state": {"lazy_load_members": true},
                               "timeline": {"limit": 2}}});
    let viewer = &alice;
    // Initial: the two last senders (dan, erin) and alice herself.
    let sync = viewer.sync(&with_filter(lazy.clone())).await;
    let joined = &sync["rooms"]["join"][&room];
    let senders: BTreeSet<String> = joined["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sender"].as_str().unwrap().to_owned())
        .collect();
    let mut expected = senders.clone();
    expected.insert(alice.user_id.clone());
    let sent = member_keys(&joined["state"]["events"]);
    let in_timeline = member_keys(&joined["timeline"]["events"]);
    assert_eq!(&sent | &in_timeline, expected, "{joined}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Incremental: erin speaks again (already sent: not again), bob speaks (new: sent).
    others[3].text(&room, "erin again").await;
    others[0].text(&room, "bob again").await;
    let sync = viewer.sync(&since_with(&since, lazy.clone())).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(
        member_keys(&joined["state"]["events"]),
        BTreeSet::from([others[0].user_id.clone()]),
        "{joined}"
    );
    // A client that lost that answer and retries its token gets bob's membership again.
    let retry = viewer.sync(&since_with(&since, lazy.clone())).await;
    assert_eq!(
        member_keys(&retry["rooms"]["join"][&room]["state"]["events"]),
        BTreeSet::from([others[0].user_id.clone()]),
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Gappy incremental: many messages, limit 2, last senders carol (new) and dan (sent
    // with the initial sync).
    for _ in 0..4 {
        others[0].text(&room, "filler").await;
    }
    others[1].text(&room, "carol here").await;
    others[2].text(&room, "dan here").await;
    let sync = viewer.sync(&since_with(&since, lazy.clone())).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    assert_eq!(
        member_keys(&joined["state"]["events"]),
        BTreeSet::from([others[1].user_id.clone()]),
        "{joined}"
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // With include_redundant_members, members sent before come again.
    others[1].text(&room, "carol once more").await;
    let redundant = json!({"room": {"state": {"lazy_load_members": true,
                                              "include_redundant_members": true},
                                    "timeline": {"limit": 2}}});
    let sync = viewer.sync(&since_with(&since, redundant)).await;
    let joined = &sync["rooms"]["join"][&room];
    let sent = member_keys(&joined["state"]["events"]);
    assert!(sent.contains(&others[1].user_id), "{joined}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // A join in the gap of a limited sync comes though its user says nothing (spec: "the
    // server MUST return membership events for events in the gap").
    let frank = Client::new(&s, "frank").await;
    assert_eq!(frank.join(&room).await.0, StatusCode::OK);
    for _ in 0..3 {
        others[0].text(&room, "after frank came").await;
    }
    let sync = viewer.sync(&since_with(&since, lazy.clone())).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true, "{joined}");
    assert!(
        member_keys(&joined["state"]["events"]).contains(&frank.user_id),
        "{joined}"
    );

    // A device that was never sent carol's membership: she speaks, then changes her
    // display name. Her first message is shown with the membership from before the
    // timeline, so that one is sent although a newer one is in the timeline.
    let other_device = alice.another_device().await;
    for _ in 0..2 {
        others[0].text(&room, "bob fills").await;
    }
    let sync = other_device.sync(&with_filter(lazy.clone())).await;
    let joined = &sync["rooms"]["join"][&room];
    assert!(
        !member_keys(&joined["state"]["events"]).contains(&others[1].user_id),
        "{joined}"
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    others[1].text(&room, "carol before renaming").await;
    let (status, _) = others[1]
        .put(
            &format!("/profile/{}/displayname", others[1].user_id),
            json!({"displayname": "Carol Renamed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let sync = other_device.sync(&since_with(&since, lazy.clone())).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], false, "{joined}");
    let state = joined["state"]["events"].as_array().unwrap();
    let carol_before: Vec<&Value> = state
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == others[1].user_id.as_str())
        .collect();
    assert_eq!(carol_before.len(), 1, "{joined}");
    assert_ne!(carol_before[0]["content"]["displayname"], "Carol Renamed");
    s.stop().await;
}

#[tokio::test]
async fn filters_are_checked_when_uploaded() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let path = format!("/user/{}/filter", alice.user_id);
    let bad: [(Value, &str); 7] = [
        (json!({"room": {"rooms": ["not a room id"]}}), "room.rooms"),
        // Spec: "must be an integer greater than 0".
        (
            json!({"room": {"timeline": {"limit": 0}}}),
            "room.timeline.limit",
        ),
        (
            json!({"room": {"timeline": {"senders": ["nobody"]}}}),
            "room.timeline.senders",
        ),
        (
            json!({"presence": {"not_senders": [42]}}),
            "presence.not_senders",
        ),
        (
            json!({"room": {"timeline": {"limit": -1}}}),
            "room.timeline.limit",
        ),
        (json!({"event_format": "xml"}), "event_format"),
        (
            json!({"room": {"state": {"types": "m.room.name"}}}),
            "room.state.types",
        ),
    ];
    for (filter, field) in bad {
        let (status, body) = alice.post(&path, filter.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{filter}: {body}");
        let code = body["errcode"].as_str().unwrap();
        assert!(
            code == "M_BAD_JSON" || code == "M_INVALID_PARAM",
            "{filter}: {body}"
        );
        assert!(
            body["error"].as_str().unwrap().contains(field),
            "{filter}: the error should name {field}: {body}"
        );
    }
    let (status, body) = alice
        .post(
            &path,
            json!({"room": {"rooms": ["!a:localhost"], "timeline": {"limit": 10,
                   "types": ["m.room.*"], "senders": ["@bob:localhost"]}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An inline filter is checked the same way.
    let (status, body) = alice
        .get(&format!(
            "/sync?{}",
            with_filter(json!({"room": {"rooms": ["nope"]}}))
        ))
        .await;
    assert_error(status, &body, 400, body["errcode"].as_str().unwrap_or("?"));
    s.stop().await;
}

#[tokio::test]
async fn a_full_sync_of_many_rooms_is_built_while_it_is_sent_and_complete() {
    // 300 rooms: past the size where the server builds rooms batch by batch as the
    // answer goes out; the answer must still hold every room, grouped by membership.
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let mut joined = Vec::new();
    for n in 0..296 {
        let room = bob.create_room(json!({"preset": "public_chat"})).await;
        assert_eq!(alice.join(&room).await.0, StatusCode::OK);
        bob.text(&room, &format!("message {n}")).await;
        joined.push(room);
    }
    let mut invited = Vec::new();
    for _ in 0..2 {
        let room = bob
            .create_room(json!({"invite": [alice.user_id.clone()]}))
            .await;
        invited.push(room);
    }
    let mut left = Vec::new();
    for _ in 0..2 {
        let room = bob.create_room(json!({"preset": "public_chat"})).await;
        assert_eq!(alice.join(&room).await.0, StatusCode::OK);
        let (status, _) = alice.post(&format!("/rooms/{room}/leave"), json!({})).await;
        assert_eq!(status, StatusCode::OK);
        left.push(room);
    }
    let sync = alice
        .sync(&with_filter(json!({"room": {"include_leave": true}})))
        .await;
    let rooms = &sync["rooms"];
    assert_eq!(rooms["join"].as_object().unwrap().len(), joined.len());
    for (n, room) in joined.iter().enumerate() {
        assert_eq!(
            bodies(&rooms["join"][room]["timeline"]["events"]),
            vec![format!("message {n}")]
        );
        let section = &rooms["join"][room];
        let members = &member_keys(&section["state"]["events"])
            | &member_keys(&section["timeline"]["events"]);
        assert_eq!(
            members,
            BTreeSet::from([alice.user_id.clone(), bob.user_id.clone()])
        );
    }
    let invites: BTreeSet<&String> = rooms["invite"].as_object().unwrap().keys().collect();
    assert_eq!(invites, invited.iter().collect());
    let leaves: BTreeSet<&String> = rooms["leave"].as_object().unwrap().keys().collect();
    assert_eq!(leaves, left.iter().collect());
    assert!(sync["next_batch"].is_string());
    // The token it gave works: nothing new.
    let next = alice
        .sync(&format!(
            "since={}&timeout=0",
            sync["next_batch"].as_str().unwrap()
        ))
        .await;
    assert!(next.get("rooms").is_none(), "{next}");
    s.stop().await;
}
