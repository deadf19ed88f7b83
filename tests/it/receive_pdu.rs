//! The receipt checks on events from another server, through the rooms service's entry
//! point, on a real server: PDUs built and signed by a test key of a made-up server
//! (`remote.example`), whose keys and events a [`TestSource`] hands out as federation
//! would. What the checks decide is then looked at through the client API.

use crate::common;

use common::client::Client;
use common::remote::{remote_pdu, remote_pdu_in, RemoteDraft, TestSource, BOB, REMOTE};
use common::TestServer;
use ourwhats::core::{event_hashes, pdu, RoomVersion};
use ourwhats::services::rooms::graph::{self, EventStatus};
use ourwhats::services::rooms::receive::PduOutcome;
use ourwhats::services::rooms::resolution;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A room of alice's that remote users may join, and what the tests read of it.
struct Room<'a> {
    s: &'a TestServer,
    alice: Client<'a>,
    id: String,
    version: RoomVersion,
}

impl<'a> Room<'a> {
    async fn public(s: &'a TestServer) -> Room<'a> {
        Self::public_in(s, RoomVersion::V12).await
    }

    async fn public_in(s: &'a TestServer, version: RoomVersion) -> Room<'a> {
        let alice = Client::new(s, "alice").await;
        let id = alice
            .create_room(json!({"preset": "public_chat", "room_version": version.as_str()}))
            .await;
        Room {
            s,
            alice,
            id,
            version,
        }
    }

    fn store(&self) -> &ourwhats::services::rooms::event_store::EventStore {
        self.s.running().services.rooms.store()
    }

    fn extremities(&self) -> Vec<String> {
        let mut ids = self
            .store()
            .room(&self.id)
            .unwrap()
            .unwrap()
            .record
            .extremities;
        ids.sort();
        ids
    }

    /// The current state event id of `(kind, key)`.
    async fn state_id(&self, kind: &str, key: &str) -> String {
        let (status, body) = self.alice.get(&format!("/rooms/{}/state", self.id)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == kind && e["state_key"] == key)
            .unwrap_or_else(|| panic!("no {kind} {key} in {body}"))["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Alice changes the power levels with `edit`; answers the event id.
    async fn alice_sets_levels(&self, edit: impl FnOnce(&mut Value)) -> String {
        let (status, mut levels) = self.alice.state(&self.id, "m.room.power_levels", "").await;
        assert_eq!(status, StatusCode::OK, "{levels}");
        edit(&mut levels);
        let (status, body) = self
            .alice
            .put(
                &format!("/rooms/{}/state/m.room.power_levels/", self.id),
                levels,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["event_id"].as_str().unwrap().to_owned()
    }

    /// Alice sets the topic; answers the event id.
    async fn alice_sets_topic(&self, topic: &str) -> String {
        let (status, body) = self
            .alice
            .put(
                &format!("/rooms/{}/state/m.room.topic/", self.id),
                json!({ "topic": topic }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["event_id"].as_str().unwrap().to_owned()
    }

    /// The ids of the room's current state events, as alice reads them.
    async fn current_state_ids(&self) -> Vec<String> {
        let (status, state) = self.alice.get(&format!("/rooms/{}/state", self.id)).await;
        assert_eq!(status, StatusCode::OK, "{state}");
        state
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn depth_of(&self, ids: &[String]) -> u64 {
        ids.iter()
            .filter_map(|id| self.store().event_by_id(id).unwrap())
            .map(|e| e.pdu()["depth"].as_u64().unwrap())
            .max()
            .unwrap_or(0)
    }

    /// An event by `sender` (of the remote server) on `prev`, with `auth` as its auth
    /// events, signed by the remote key.
    fn remote(
        &self,
        (kind, key): (&str, Option<&str>),
        content: Value,
        prev: &[String],
        auth: &[String],
    ) -> (String, Value) {
        let draft = RemoteDraft {
            room_id: &self.id,
            sender: BOB,
            kind,
            state_key: key,
            content,
            prev: prev.to_vec(),
            auth: auth.to_vec(),
            depth: self.depth_of(prev) + 1,
        };
        // Rooms v1 and v2 name each referenced event with its reference hash.
        let hash = |id: &str| {
            let event = self.store().event_by_id(id).unwrap()?;
            event_hashes::reference_hash(event.pdu(), self.version).ok()
        };
        remote_pdu_in(self.version, draft, &hash)
    }

    async fn receive(&self, pdu: &Value, source: &TestSource) -> PduOutcome {
        let (_, outcome) = self
            .s
            .running()
            .services
            .rooms
            .receive_pdu(REMOTE, pdu.clone(), source)
            .await
            .unwrap();
        outcome
    }

    /// Bob's join on the current extremities.
    async fn bob_join(&self) -> (String, Value) {
        let mut auth = vec![
            self.state_id("m.room.power_levels", "").await,
            self.state_id("m.room.join_rules", "").await,
        ];
        // Before v12 the create event is one of the auth events.
        if !self.version.room_id_is_create_event_hash() {
            auth.push(self.state_id("m.room.create", "").await);
        }
        self.remote(
            ("m.room.member", Some(BOB)),
            json!({"membership": "join"}),
            &self.extremities(),
            &auth,
        )
    }

    /// Bob joined through the entry point; answers his join.
    async fn with_bob(&self) -> (String, Value) {
        let join = self.bob_join().await;
        assert_eq!(
            self.receive(&join.1, &TestSource::default()).await,
            PduOutcome::Accepted
        );
        join
    }

    /// A message of bob's on `prev`, authorised by his member event `member`.
    async fn bob_says(&self, text: &str, prev: &[String], member: &str) -> (String, Value) {
        let auth = vec![
            self.state_id("m.room.power_levels", "").await,
            member.to_owned(),
        ];
        self.remote(
            ("m.room.message", None),
            json!({"msgtype": "m.text", "body": text}),
            prev,
            &auth,
        )
    }

    /// The event ids alice's `/messages` shows, newest first.
    async fn timeline(&self) -> Vec<String> {
        let body = self.alice.messages(&self.id, "dir=b&limit=100").await;
        body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn status(&self, id: &str) -> EventStatus {
        let short = self
            .store()
            .state()
            .find_event(id)
            .unwrap()
            .expect("stored");
        graph::record(self.store(), short).unwrap().unwrap().status
    }

    /// Bob's rename (to `name`, on his join `join_id`) that reaches us only as an auth
    /// event of a message of his: held as an outlier. Answers the rename and the message.
    async fn rename_held_as_outlier(
        &self,
        join_id: &str,
        name: &str,
    ) -> ((String, Value), (String, Value)) {
        let levels = self.state_id("m.room.power_levels", "").await;
        let rules = self.state_id("m.room.join_rules", "").await;
        let prev = [join_id.to_owned()];
        let rename = self.remote(
            ("m.room.member", Some(BOB)),
            json!({"membership": "join", "displayname": name}),
            &prev,
            &[levels.clone(), rules, join_id.to_owned()],
        );
        let said = self.remote(
            ("m.room.message", None),
            json!({"msgtype": "m.text", "body": "renamed"}),
            &prev,
            &[levels, rename.0.clone()],
        );
        let source = TestSource::holding(&[&rename]);
        assert_eq!(self.receive(&said.1, &source).await, PduOutcome::Accepted);
        assert_eq!(self.status(&rename.0), EventStatus::Outlier);
        (rename, said)
    }

    async fn fetch_event(&self, id: &str) -> StatusCode {
        self.alice
            .get(&format!("/rooms/{}/event/{id}", self.id))
            .await
            .0
    }
}

#[tokio::test]
async fn a_remote_join_and_message_are_accepted_shown_to_clients_and_a_duplicate_is_known() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let (members_status, members) = room
        .alice
        .get(&format!("/rooms/{}/joined_members", room.id))
        .await;
    assert_eq!(members_status, StatusCode::OK);
    assert!(members["joined"].get(BOB).is_some(), "{members}");

    let message = room
        .bob_says("hello from afar", std::slice::from_ref(&join_id), &join_id)
        .await;
    assert_eq!(
        room.receive(&message.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert_eq!(room.timeline().await[0], message.0);
    assert_eq!(room.extremities(), vec![message.0.clone()]);
    assert_eq!(room.fetch_event(&message.0).await, StatusCode::OK);
    // Alice answers on top of it: her event names it.
    let reply = room.alice.text(&room.id, "welcome").await;
    let stored = room.store().event_by_id(&reply).unwrap().unwrap();
    assert_eq!(stored.pdu()["prev_events"], json!([message.0]));

    // The same PDU again changes nothing.
    assert_eq!(
        room.receive(&message.1, &TestSource::default()).await,
        PduOutcome::AlreadyKnown
    );
    assert_eq!(
        room.timeline()
            .await
            .iter()
            .filter(|id| **id == message.0)
            .count(),
        1
    );
}

#[tokio::test]
async fn checks_1_to_3_drop_malformed_and_badly_signed_events_and_redact_a_bad_hash() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let dropped = |o: PduOutcome| match o {
        PduOutcome::Dropped(reason) => reason,
        other => panic!("expected dropped, got {other:?}"),
    };

    // Check 1: a float is not canonical JSON.
    let (_, mut pdu) = room
        .bob_says("x", std::slice::from_ref(&join_id), &join_id)
        .await;
    pdu["content"]["amount"] = json!(1.5);
    let reason = dropped(room.receive(&pdu, &TestSource::default()).await);
    assert!(reason.contains("malformed"), "{reason}");

    // Check 2: a field the signature covers, changed after signing.
    let (_, mut pdu) = room
        .bob_says("x", std::slice::from_ref(&join_id), &join_id)
        .await;
    pdu["origin_server_ts"] = json!(pdu["origin_server_ts"].as_u64().unwrap() + 1);
    let reason = dropped(room.receive(&pdu, &TestSource::default()).await);
    assert!(reason.contains("does not verify"), "{reason}");
    // ... no signature of the sender's server at all,
    let (_, mut pdu) = room
        .bob_says("x", std::slice::from_ref(&join_id), &join_id)
        .await;
    pdu["signatures"] = json!({"other.example": {"ed25519:a": "AAAA"}});
    let reason = dropped(room.receive(&pdu, &TestSource::default()).await);
    assert!(
        reason.contains("no signature from remote.example"),
        "{reason}"
    );
    // ... or a key nobody can find.
    let (_, pdu) = room
        .bob_says("x", std::slice::from_ref(&join_id), &join_id)
        .await;
    let keyless = TestSource {
        without_keys: true,
        ..TestSource::default()
    };
    let reason = dropped(room.receive(&pdu, &keyless).await);
    assert!(reason.contains("no key found"), "{reason}");
    // Nothing of these was stored.
    assert_eq!(room.extremities(), vec![join_id.clone()]);

    // Check 3: the content changed, the hash no longer matches: kept redacted.
    let (_, mut pdu) = room
        .bob_says("the original", std::slice::from_ref(&join_id), &join_id)
        .await;
    pdu["content"]["body"] = json!("a forgery");
    assert_eq!(
        room.receive(&pdu, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let newest = room.alice.messages(&room.id, "dir=b&limit=1").await;
    assert_eq!(newest["chunk"][0]["sender"], BOB);
    assert_eq!(newest["chunk"][0]["content"], json!({}), "{newest}");
}

#[tokio::test]
async fn check_4_rejects_events_their_auth_events_do_not_allow() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let other_room = room
        .alice
        .create_room(json!({"preset": "public_chat"}))
        .await;

    // Bob is not in the room: his message is not allowed by its auth events.
    let levels = room.state_id("m.room.power_levels", "").await;
    let (id, pdu) = room.remote(
        ("m.room.message", None),
        json!({"msgtype": "m.text", "body": "let me in"}),
        &room.extremities(),
        std::slice::from_ref(&levels),
    );
    match room.receive(&pdu, &TestSource::default()).await {
        PduOutcome::Rejected(reason) => assert!(reason.contains("auth events"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Kept as rejected, so it is not fetched again; never shown.
    assert!(matches!(room.status(&id), EventStatus::Rejected { .. }));
    assert_eq!(room.fetch_event(&id).await, StatusCode::NOT_FOUND);
    assert!(!room.extremities().contains(&id));
    assert_eq!(
        room.receive(&pdu, &TestSource::default()).await,
        PduOutcome::AlreadyKnown
    );

    let (join_id, _) = room.with_bob().await;
    // Auth events of another room.
    let (status, body) = room
        .alice
        .get(&format!("/rooms/{other_room}/state/m.room.power_levels/"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let foreign_levels = {
        let (_, state) = room.alice.get(&format!("/rooms/{other_room}/state")).await;
        state
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "m.room.power_levels")
            .unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (_, pdu) = room.remote(
        ("m.room.message", None),
        json!({"msgtype": "m.text", "body": "wrong room"}),
        std::slice::from_ref(&join_id),
        &[foreign_levels, join_id.clone()],
    );
    match room.receive(&pdu, &TestSource::default()).await {
        PduOutcome::Rejected(reason) => assert!(reason.contains("another room"), "{reason}"),
        other => panic!("{other:?}"),
    }

    // Bob may not change the power levels: rejected...
    let (levels_id, pdu) = room.remote(
        ("m.room.power_levels", Some("")),
        json!({"users": {BOB: 100}}),
        std::slice::from_ref(&join_id),
        &[levels.clone(), join_id.clone()],
    );
    assert!(matches!(
        room.receive(&pdu, &TestSource::default()).await,
        PduOutcome::Rejected(_)
    ));
    // ... and an event that names the rejected one among its auth events is rejected too.
    let (_, pdu) = room.remote(
        ("m.room.message", None),
        json!({"msgtype": "m.text", "body": "by my new power"}),
        std::slice::from_ref(&join_id),
        &[levels_id.clone(), join_id.clone()],
    );
    match room.receive(&pdu, &TestSource::default()).await {
        PduOutcome::Rejected(reason) => assert!(reason.contains("was rejected"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(room.extremities(), vec![join_id]);
}

#[tokio::test]
async fn check_5_rejects_what_the_state_before_the_event_forbids() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let (status, body) = room
        .alice
        .post(&format!("/rooms/{}/ban", room.id), json!({"user_id": BOB}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Bob names his old join as auth event (allowed by it) but comes after the ban.
    let (id, pdu) = room
        .bob_says("I am still here", &room.extremities(), &join_id)
        .await;
    match room.receive(&pdu, &TestSource::default()).await {
        PduOutcome::Rejected(reason) => assert!(reason.contains("state before"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(!room.timeline().await.contains(&id));
}

#[tokio::test]
async fn check_6_soft_fails_what_the_current_state_forbids_and_it_survives_a_restart() {
    let mut s = TestServer::start().await;
    let (room_id, join_id, first, late) = {
        let room = Room::public(&s).await;
        let (join_id, _) = room.with_bob().await;
        let first = room
            .bob_says("one", std::slice::from_ref(&join_id), &join_id)
            .await;
        assert_eq!(
            room.receive(&first.1, &TestSource::default()).await,
            PduOutcome::Accepted
        );
        let (status, _) = room
            .alice
            .post(&format!("/rooms/{}/ban", room.id), json!({"user_id": BOB}))
            .await;
        assert_eq!(status, StatusCode::OK);
        let ban_extremities = room.extremities();
        // Bob's second message forks from before the ban: allowed by its auth events and
        // by the state before it, not by the room's current state.
        let late = room
            .bob_says("two", std::slice::from_ref(&first.0), &join_id)
            .await;
        match room.receive(&late.1, &TestSource::default()).await {
            PduOutcome::SoftFailed(reason) => assert!(reason.contains("current state"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(room.status(&late.0), EventStatus::SoftFailed);
        assert_eq!(room.extremities(), ban_extremities, "not an extremity");
        assert!(!room.timeline().await.contains(&late.0), "not shown");
        assert_eq!(room.fetch_event(&late.0).await, StatusCode::NOT_FOUND);
        let sync = room.alice.sync("").await;
        assert!(!sync.to_string().contains(&late.0));
        (room.id.clone(), join_id, first.0, late.0)
    };
    s.restart().await;
    let store = s.running().services.rooms.store();
    let status = |id: &str| {
        let short = store.state().find_event(id).unwrap().unwrap();
        graph::record(store, short).unwrap().unwrap().status
    };
    assert_eq!(status(&late), EventStatus::SoftFailed);
    assert_eq!(status(&first), EventStatus::Accepted);
    assert_eq!(status(&join_id), EventStatus::Accepted);
    assert!(!store
        .room(&room_id)
        .unwrap()
        .unwrap()
        .record
        .extremities
        .contains(&late));
}

#[tokio::test]
async fn missing_prev_events_are_fetched_or_named_and_a_missing_auth_event_becomes_an_outlier() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;

    // A prev event nobody has: named in the outcome, nothing stored.
    let unknown = "$yRzSgsydKkkEcwFZKVQDQoFvFRSDBvnyvjvXVoMRV7I".to_owned();
    let (id, pdu) = room
        .bob_says("after a gap", std::slice::from_ref(&unknown), &join_id)
        .await;
    assert_eq!(
        room.receive(&pdu, &TestSource::default()).await,
        PduOutcome::MissingEvents(vec![unknown])
    );
    assert!(room.store().state().find_event(&id).unwrap().is_none());

    // Prev events the source has: fetched, received first, oldest first.
    let a = room
        .bob_says("a", std::slice::from_ref(&join_id), &join_id)
        .await;
    let depth_a = a.1["depth"].as_u64().unwrap();
    let levels = room.state_id("m.room.power_levels", "").await;
    let b = remote_pdu(RemoteDraft {
        room_id: &room.id,
        sender: BOB,
        kind: "m.room.message",
        state_key: None,
        content: json!({"msgtype": "m.text", "body": "b"}),
        prev: vec![a.0.clone()],
        auth: vec![levels, join_id.clone()],
        depth: depth_a + 1,
    });
    let source = TestSource::holding(&[&a]);
    assert_eq!(room.receive(&b.1, &source).await, PduOutcome::Accepted);
    assert_eq!(*source.asked.lock().unwrap(), vec![a.0.clone()]);
    let timeline = room.timeline().await;
    assert_eq!(timeline[..2], [b.0.clone(), a.0.clone()]);

    // Bob's display name event arrives only as an auth event of a later message: held
    // as an outlier, without a place in the timeline...
    let levels = room.state_id("m.room.power_levels", "").await;
    let rules = room.state_id("m.room.join_rules", "").await;
    let rename = room.remote(
        ("m.room.member", Some(BOB)),
        json!({"membership": "join", "displayname": "Bob"}),
        std::slice::from_ref(&b.0),
        &[levels.clone(), rules, join_id.clone()],
    );
    let (said_id, said) = room.remote(
        ("m.room.message", None),
        json!({"msgtype": "m.text", "body": "renamed"}),
        std::slice::from_ref(&b.0),
        &[levels, rename.0.clone()],
    );
    let source = TestSource::holding(&[&rename]);
    assert_eq!(room.receive(&said, &source).await, PduOutcome::Accepted);
    assert_eq!(room.status(&rename.0), EventStatus::Outlier);
    assert_eq!(room.fetch_event(&rename.0).await, StatusCode::NOT_FOUND);
    assert!(!room.timeline().await.contains(&rename.0));
    assert_eq!(room.extremities(), vec![said_id.clone()]);
    // ... until it comes as a live event: then it takes its place (a fork beside the
    // message) and the room's state.
    assert_eq!(
        room.receive(&rename.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert_eq!(room.status(&rename.0), EventStatus::Accepted);
    assert_eq!(room.timeline().await[0], rename.0);
    let mut both = vec![said_id, rename.0.clone()];
    both.sort();
    assert_eq!(room.extremities(), both);
    let (status, member) = room.alice.state(&room.id, "m.room.member", BOB).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(member["displayname"], "Bob");
}

/// An event held as an outlier and redacted there stays redacted when it later comes as
/// a live event and takes its place (it used to be written back whole).
#[tokio::test]
async fn an_outlier_redacted_while_held_stays_redacted_once_it_takes_its_place() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let (rename, said) = room
        .rename_held_as_outlier(&join_id, "Bob the Secret")
        .await;
    let levels = room.state_id("m.room.power_levels", "").await;
    // Bob redacts his rename.
    let redaction = room.remote(
        ("m.room.redaction", None),
        json!({"redacts": rename.0}),
        std::slice::from_ref(&said.0),
        &[levels, join_id],
    );
    assert_eq!(
        room.receive(&redaction.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let held = room.store().event_by_id(&rename.0).unwrap().unwrap();
    assert!(
        held.pdu()["content"].get("displayname").is_none(),
        "{}",
        held.pdu()
    );

    // Bob's server sends the rename as a live event: it takes its place, redacted.
    assert_eq!(
        room.receive(&rename.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert_eq!(room.status(&rename.0), EventStatus::Accepted);
    let placed = room.store().event_by_id(&rename.0).unwrap().unwrap();
    assert!(placed.has_timeline_place());
    assert!(
        placed.pdu()["content"].get("displayname").is_none(),
        "{}",
        placed.pdu()
    );
    let (status, body) = room
        .alice
        .get(&format!("/rooms/{}/event/{}", room.id, rename.0))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["content"].get("displayname").is_none(), "{body}");
    assert_eq!(
        body["unsigned"]["redacted_because"]["event_id"],
        redaction.0.as_str()
    );
    let messages = room.alice.messages(&room.id, "dir=b&limit=100").await;
    let in_timeline = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == rename.0.as_str())
        .cloned()
        .expect("the rename in the timeline");
    assert!(
        in_timeline["content"].get("displayname").is_none(),
        "{in_timeline}"
    );
    assert_eq!(
        in_timeline["unsigned"]["redacted_because"]["event_id"],
        redaction.0.as_str()
    );
}

/// A redaction that comes before the event it redacts (backfill goes from the newest
/// history back; here a fork delivered out of order) waits for it, and the event is
/// stored redacted when it comes (it used to be stored and shown whole), notifying
/// nobody.
#[tokio::test]
async fn a_redaction_that_comes_before_its_target_applies_when_the_target_comes() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let message = room
        .bob_says(
            "a secret said too soon",
            std::slice::from_ref(&join_id),
            &join_id,
        )
        .await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let redaction = room.remote(
        ("m.room.redaction", None),
        json!({"redacts": message.0}),
        std::slice::from_ref(&join_id),
        &[levels, join_id.clone()],
    );
    assert_eq!(
        room.receive(&redaction.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert!(room.store().event_by_id(&message.0).unwrap().is_none());
    assert_eq!(
        room.receive(&message.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let stored = room.store().event_by_id(&message.0).unwrap().unwrap();
    assert!(
        stored.pdu()["content"].get("body").is_none(),
        "{}",
        stored.pdu()
    );
    let (status, body) = room
        .alice
        .get(&format!("/rooms/{}/event/{}", room.id, message.0))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"], json!({}), "{body}");
    assert_eq!(
        body["unsigned"]["redacted_because"]["event_id"],
        redaction.0.as_str()
    );
    // Its words are not found.
    let (status, found) = room
        .alice
        .post(
            "/search",
            json!({"search_categories": {"room_events": {"search_term": "secret"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(
        found["search_categories"]["room_events"]["count"], 0,
        "{found}"
    );
    // A message of bob's whose words are found, so that the search above means something.
    let told = room
        .bob_says(
            "a secret told later",
            std::slice::from_ref(&message.0),
            &join_id,
        )
        .await;
    assert_eq!(
        room.receive(&told.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let (_, found) = room
        .alice
        .post(
            "/search",
            json!({"search_categories": {"room_events": {"search_term": "secret"}}}),
        )
        .await;
    assert_eq!(
        found["search_categories"]["room_events"]["count"], 1,
        "{found}"
    );
    // Nor does it notify alice, as the message told later does.
    assert_eq!(
        room.alice.notified_event_ids().await,
        std::slice::from_ref(&told.0)
    );
}

/// Before rooms v11 a redaction names its target at the top level, which the redaction
/// algorithm drops: a redaction stored redacted (its own redaction came first, as
/// backfill brings the newest first) still redacts what it names.
#[tokio::test]
async fn in_a_v10_room_a_redaction_redacted_before_it_came_still_redacts_its_target() {
    let s = TestServer::start().await;
    let room = Room::public_in(&s, RoomVersion::V10).await;
    let (join_id, _) = room.with_bob().await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let create = room.state_id("m.room.create", "").await;
    let auth = [levels, join_id.clone(), create];
    let at_join = std::slice::from_ref(&join_id);
    let message = room.remote(
        ("m.room.message", None),
        json!({"msgtype": "m.text", "body": "soon gone"}),
        at_join,
        &auth,
    );
    let first = room.remote(
        ("m.room.redaction", None),
        json!({"redacts": message.0}),
        at_join,
        &auth,
    );
    assert_eq!(first.1["redacts"], message.0.as_str(), "top-level in v10");
    let second = room.remote(
        ("m.room.redaction", None),
        json!({"redacts": first.0}),
        at_join,
        &auth,
    );
    for pdu in [&second.1, &first.1, &message.1] {
        assert_eq!(
            room.receive(pdu, &TestSource::default()).await,
            PduOutcome::Accepted
        );
    }
    let stored_first = room.store().event_by_id(&first.0).unwrap().unwrap();
    assert!(
        stored_first.pdu().get("redacts").is_none(),
        "{}",
        stored_first.pdu()
    );
    assert_ne!(stored_first.meta.redacted_by, 0);
    let stored = room.store().event_by_id(&message.0).unwrap().unwrap();
    assert!(
        stored.pdu()["content"].get("body").is_none(),
        "{}",
        stored.pdu()
    );
    assert_eq!(
        stored.meta.redacted_by,
        room.store().state().find_event(&first.0).unwrap().unwrap()
    );
}

/// From rooms v11 a redaction names its target in `content.redacts` only (spec: room
/// version 11, as Synapse reads it): a top-level `redacts` naming another event, which
/// the origin is free to add, redacts nothing.
#[tokio::test]
async fn in_a_v11_room_a_redaction_redacts_what_its_content_names_not_its_top_level() {
    let s = TestServer::start().await;
    let room = Room::public_in(&s, RoomVersion::V11).await;
    let (join_id, _) = room.with_bob().await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let create = room.state_id("m.room.create", "").await;
    let auth = [levels, join_id.clone(), create];
    let at_join = std::slice::from_ref(&join_id);
    let said = |body: &str| {
        room.remote(
            ("m.room.message", None),
            json!({"msgtype": "m.text", "body": body}),
            at_join,
            &auth,
        )
    };
    let (kept, meant) = (said("kept"), said("meant"));
    let (_, mut redaction) = room.remote(
        ("m.room.redaction", None),
        json!({"redacts": meant.0}),
        at_join,
        &auth,
    );
    // The origin adds a top-level `redacts` naming the other message, hashed and signed.
    let object = redaction.as_object_mut().unwrap();
    object.insert("redacts".into(), json!(kept.0));
    object.remove("hashes");
    object.remove("signatures");
    event_hashes::hash_and_sign_event(
        &mut redaction,
        REMOTE,
        &common::remote::remote_key(),
        RoomVersion::V11,
    )
    .unwrap();
    let redaction_id = event_hashes::event_id(&redaction, RoomVersion::V11).unwrap();
    for pdu in [&kept.1, &meant.1, &redaction] {
        assert_eq!(
            room.receive(pdu, &TestSource::default()).await,
            PduOutcome::Accepted
        );
    }
    let body = |id: &str| {
        room.store().event_by_id(id).unwrap().unwrap().pdu()["content"]
            .get("body")
            .cloned()
    };
    assert_eq!(body(&kept.0), Some(json!("kept")));
    assert_eq!(body(&meant.0), None);
    // Clients are shown the target the server redacted, at the top level and in the
    // content (spec: room version 11, "Moving the `redacts` property").
    let (status, shown) = room
        .alice
        .get(&format!("/rooms/{}/event/{}", room.id, redaction_id))
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["redacts"], json!(meant.0), "{shown}");
    assert_eq!(shown["content"]["redacts"], json!(meant.0), "{shown}");
}

#[tokio::test]
async fn a_gap_is_filled_with_one_get_missing_events_request() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    // Eight messages of bob's in a line; only the last one reaches us.
    let mut chain: Vec<(String, Value)> = Vec::new();
    let mut prev = join_id.clone();
    let levels = room.state_id("m.room.power_levels", "").await;
    let join_depth = room.depth_of(std::slice::from_ref(&join_id));
    for n in 0..8u64 {
        let said = remote_pdu(RemoteDraft {
            room_id: &room.id,
            sender: BOB,
            kind: "m.room.message",
            state_key: None,
            content: json!({"msgtype": "m.text", "body": format!("line {n}")}),
            prev: vec![prev.clone()],
            auth: vec![levels.clone(), join_id.clone()],
            depth: join_depth + n + 1,
        });
        prev = said.0.clone();
        chain.push(said);
    }
    let held: Vec<&(String, Value)> = chain.iter().collect();
    let mut source = TestSource::holding(&held);
    source.serves_gaps = true;
    let last = chain.last().unwrap();
    assert_eq!(room.receive(&last.1, &source).await, PduOutcome::Accepted);
    assert_eq!(*source.gap_requests.lock().unwrap(), 1);
    assert!(
        source.asked.lock().unwrap().is_empty(),
        "no event fetched alone: {:?}",
        source.asked.lock().unwrap()
    );
    let timeline = room.timeline().await;
    let newest_first: Vec<String> = chain.iter().rev().map(|(id, _)| id.clone()).collect();
    assert_eq!(timeline[..8], newest_first[..]);
    assert_eq!(room.extremities(), vec![last.0.clone()]);
}

#[tokio::test]
async fn a_gap_that_cannot_be_filled_takes_the_state_the_sender_tells() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let rules = room.state_id("m.room.join_rules", "").await;
    let join_depth = room.depth_of(std::slice::from_ref(&join_id));
    // Bob renames himself on an event bob's server cannot give, then says something;
    // only the message reaches us. The rename cannot be placed (its prev event is
    // missing for good), so the message's prev events cannot be had either.
    let lost = "$lostlostlostlostlostlostlostlostlostlostlos".to_owned();
    let rename = remote_pdu(RemoteDraft {
        room_id: &room.id,
        sender: BOB,
        kind: "m.room.member",
        state_key: Some(BOB),
        content: json!({"membership": "join", "displayname": "Bob at the gap"}),
        prev: vec![lost.clone()],
        auth: vec![levels.clone(), rules.clone(), join_id.clone()],
        depth: join_depth + 1,
    });
    let said = remote_pdu(RemoteDraft {
        room_id: &room.id,
        sender: BOB,
        kind: "m.room.message",
        state_key: None,
        content: json!({"msgtype": "m.text", "body": "after the gap"}),
        prev: vec![rename.0.clone()],
        auth: vec![levels.clone(), rename.0.clone()],
        depth: join_depth + 2,
    });
    // Without the state, the message waits for what it lacks.
    let outcome = room.receive(&said.1, &TestSource::default()).await;
    assert!(
        matches!(outcome, PduOutcome::MissingEvents(_)),
        "{outcome:?}"
    );

    let ids = room.current_state_ids().await;
    // Bob's server tells the state before the rename (the room's state as we hold it).
    // The rename's own prev event cannot be had: that told state stands for the state
    // after it, and the rename is placed; the message follows it.
    let source = TestSource::holding(&[&rename]);
    source
        .state_ids
        .lock()
        .unwrap()
        .insert(rename.0.clone(), ids);
    assert_eq!(room.receive(&said.1, &source).await, PduOutcome::Accepted);
    assert!(source.asked.lock().unwrap().contains(&lost));
    // Both are in the timeline. The state before the message is the state after the
    // rename (his new name), and the room resolves its extremities: our join (the
    // rename named none of ours) and the message.
    let timeline = room.timeline().await;
    assert_eq!(timeline[..2], [said.0.clone(), rename.0.clone()]);
    let stored = room.store().event_by_id(&said.0).unwrap().unwrap();
    let before = room
        .store()
        .state_event(stored.meta.state_before, "m.room.member", BOB)
        .unwrap()
        .unwrap();
    assert_eq!(before.event_id, rename.0);
    let mut both = vec![join_id.clone(), said.0.clone()];
    both.sort();
    assert_eq!(room.extremities(), both);
    let (_, member) = room.alice.state(&room.id, "m.room.member", BOB).await;
    assert_eq!(member["displayname"], "Bob at the gap");
}

/// A thread reply that comes before its root (a fork delivered out of order) waits for it
/// and is related to it once the root comes.
#[tokio::test]
async fn a_reply_that_comes_before_its_root_is_related_to_it_when_the_root_comes() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let root = room
        .bob_says("root", std::slice::from_ref(&join_id), &join_id)
        .await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let reply = room.remote(
        ("m.room.message", None),
        json!({"msgtype": "m.text", "body": "reply",
               "m.relates_to": {"rel_type": "m.thread", "event_id": root.0}}),
        std::slice::from_ref(&join_id),
        &[levels, join_id.clone()],
    );
    assert_eq!(
        room.receive(&reply.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert_eq!(
        room.receive(&root.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let (status, body) = room
        .alice
        .get(&format!("/rooms/{}/relations/{}", room.id, root.0))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let related: Vec<&str> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(related, [reply.0.as_str()], "{body}");
}

/// An event whose prev event is not held is placed on the state its sender tells; when
/// the prev event comes later (here after a restart), it is placed too but does not
/// become a forward extremity, since an event already builds on it.
#[tokio::test]
async fn a_prev_event_that_comes_after_its_successor_is_no_extremity_even_after_a_restart() {
    let mut s = TestServer::start().await;
    let (room_id, first, second) = {
        let room = Room::public(&s).await;
        let (join_id, _) = room.with_bob().await;
        let first = room
            .bob_says("one", std::slice::from_ref(&join_id), &join_id)
            .await;
        let second = room
            .bob_says("two", std::slice::from_ref(&first.0), &join_id)
            .await;
        // The first cannot be had; bob's server tells the state before the second.
        let source = TestSource::default();
        let ids = room.current_state_ids().await;
        source
            .state_ids
            .lock()
            .unwrap()
            .insert(second.0.clone(), ids);
        assert_eq!(room.receive(&second.1, &source).await, PduOutcome::Accepted);
        let mut both = vec![join_id.clone(), second.0.clone()];
        both.sort();
        assert_eq!(room.extremities(), both);
        (room.id.clone(), first, second)
    };
    s.restart().await;
    let rooms = &s.running().services.rooms;
    let (_, outcome) = rooms
        .receive_pdu(REMOTE, first.1.clone(), &TestSource::default())
        .await
        .unwrap();
    assert_eq!(outcome, PduOutcome::Accepted);
    let extremities = rooms
        .store()
        .room(&room_id)
        .unwrap()
        .unwrap()
        .record
        .extremities;
    assert_eq!(extremities, vec![second.0.clone()]);
}

#[tokio::test]
async fn a_prev_event_held_only_as_an_outlier_takes_the_state_its_sender_tells_merged_with_ours() {
    // Found by the seeded split runs: an event on a prev event we hold only as an
    // outlier (the state a join took, or an auth event fetched alone) was answered
    // "missing" for good, and everything after it with it.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let state_at_join = room.current_state_ids().await;
    let (rename, _) = room.rename_held_as_outlier(&join_id, "Bob").await;
    // Our side of the fork: alice sets the topic.
    let topic = room.alice_sets_topic("ours").await;
    // Bob answers on our topic and on his rename.
    let after = room.remote(
        ("m.room.message", None),
        json!({"msgtype": "m.text", "body": "after both"}),
        &[topic.clone(), rename.0.clone()],
        &[levels, rename.0.clone()],
    );
    // Without the state after the rename, the message waits for it.
    assert_eq!(
        room.receive(&after.1, &TestSource::default()).await,
        PduOutcome::MissingEvents(vec![rename.0.clone()])
    );
    // Bob's server tells the state before the rename (the state at his join); the state
    // after it adds the rename, and it is resolved with the state after our topic.
    let source = TestSource::default();
    source
        .state_ids
        .lock()
        .unwrap()
        .insert(rename.0.clone(), state_at_join);
    assert_eq!(room.receive(&after.1, &source).await, PduOutcome::Accepted);
    assert_eq!(room.status(&rename.0), EventStatus::Outlier);
    assert_eq!(room.timeline().await[0], after.0);
    assert_eq!(room.extremities(), vec![after.0.clone()]);
    let stored = room.store().event_by_id(&after.0).unwrap().unwrap();
    let before = |kind: &str, key: &str| {
        room.store()
            .state_event(stored.meta.state_before, kind, key)
            .unwrap()
            .unwrap()
            .event_id
    };
    assert_eq!(before("m.room.member", BOB), rename.0);
    assert_eq!(before("m.room.topic", ""), topic);
    let (_, member) = room.alice.state(&room.id, "m.room.member", BOB).await;
    assert_eq!(member["displayname"], "Bob");
    let (_, topic_now) = room.alice.state(&room.id, "m.room.topic", "").await;
    assert_eq!(topic_now["topic"], "ours");
}

#[tokio::test]
async fn an_outlier_soft_failed_when_offered_again_is_no_longer_judged_an_outlier() {
    // The room's writer keeps what it read of the prev and auth events of the events it
    // receives (their status and snapshots): an outlier offered again and stored with
    // another status must not be remembered as the outlier it was.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let (rename, _) = room.rename_held_as_outlier(&join_id, "Bob").await;
    let on_rename = |body: &str| {
        room.remote(
            ("m.room.message", None),
            json!({"msgtype": "m.text", "body": body}),
            std::slice::from_ref(&rename.0),
            &[levels.clone(), rename.0.clone()],
        )
    };
    // On an outlier with no state told, a message waits (the writer read the rename's
    // facts: an outlier).
    let first = on_rename("on the outlier");
    assert_eq!(
        room.receive(&first.1, &TestSource::default()).await,
        PduOutcome::MissingEvents(vec![rename.0.clone()])
    );
    // Bob is banned; the rename, offered again in the timeline on his join, passes the
    // state before it but not the current state: soft-failed, with a state of ours.
    let (status, body) = room
        .alice
        .post(&format!("/rooms/{}/ban", room.id), json!({"user_id": BOB}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    match room.receive(&rename.1, &TestSource::default()).await {
        PduOutcome::SoftFailed(reason) => assert!(reason.contains("current state"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(room.status(&rename.0), EventStatus::SoftFailed);
    // A message on it now takes the state after it (and soft-fails too): it no longer
    // waits for an outlier's state.
    let second = on_rename("on the soft-failed rename");
    match room.receive(&second.1, &TestSource::default()).await {
        PduOutcome::SoftFailed(reason) => assert!(reason.contains("current state"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_event_accepted_on_a_soft_failed_one_leaves_no_dangling_extremity_behind_it() {
    // Found by the seeded split runs: an event we soft-failed (and another server
    // accepted) never named its prev event's successor here, so that prev event stayed a
    // forward extremity for good, resolving an old state into the room's.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let rules = room.state_id("m.room.join_rules", "").await;
    // Alice silences everyone below 100.
    let silence = room
        .alice_sets_levels(|levels| levels["events_default"] = json!(100))
        .await;
    let old_levels = room.store().event_by_id(&join_id).unwrap().unwrap().pdu()["auth_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .find(|id| room.store().event_by_id(id).unwrap().unwrap().kind() == "m.room.power_levels")
        .unwrap();
    // Bob, on a branch from his join: a rename (allowed now too), then a message (allowed
    // before the silence only: soft-failed), then another rename on the message.
    let rename = room.remote(
        ("m.room.member", Some(BOB)),
        json!({"membership": "join", "displayname": "Bob 1"}),
        std::slice::from_ref(&join_id),
        &[old_levels.clone(), rules.clone(), join_id.clone()],
    );
    assert_eq!(
        room.receive(&rename.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let mut both = vec![silence.clone(), rename.0.clone()];
    both.sort();
    assert_eq!(room.extremities(), both);
    let said = room.remote(
        ("m.room.message", None),
        json!({"msgtype": "m.text", "body": "before the silence, as I see it"}),
        std::slice::from_ref(&rename.0),
        &[old_levels.clone(), rename.0.clone()],
    );
    assert!(matches!(
        room.receive(&said.1, &TestSource::default()).await,
        PduOutcome::SoftFailed(_)
    ));
    let again = room.remote(
        ("m.room.member", Some(BOB)),
        json!({"membership": "join", "displayname": "Bob 2"}),
        std::slice::from_ref(&said.0),
        &[old_levels, rules, rename.0.clone()],
    );
    assert_eq!(
        room.receive(&again.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    // The rename before the soft-failed message is built on: no longer an extremity.
    let mut now = vec![silence, again.0.clone()];
    now.sort();
    assert_eq!(room.extremities(), now);
    let (_, member) = room.alice.state(&room.id, "m.room.member", BOB).await;
    assert_eq!(member["displayname"], "Bob 2");
}

#[tokio::test]
async fn a_member_forking_the_graph_on_purpose_leaves_at_most_the_cap_of_extremities() {
    // Attack class (hostile-federation issue): every event resolves the states of all
    // forward extremities, so a member adding one branch per event would make each later
    // event cost more. At the cap a new fork does not become an extremity, and nothing
    // already one is dropped (forks choose their depths: dropping the "shallowest" would
    // let them push the room's state back).
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    // Each step: a branch left alone, and a stem the next step builds on.
    let mut last = join_id.clone();
    let mut branches = Vec::new();
    for n in 0..graph::MAX_EXTREMITIES + 10 {
        let base = std::slice::from_ref(&last);
        let (branch_id, branch) = room.bob_says(&format!("branch {n}"), base, &join_id).await;
        let (stem_id, stem) = room.bob_says(&format!("stem {n}"), base, &join_id).await;
        for pdu in [&stem, &branch] {
            assert_eq!(
                room.receive(pdu, &TestSource::default()).await,
                PduOutcome::Accepted
            );
        }
        branches.push(branch_id);
        last = stem_id;
    }
    let extremities = room.extremities();
    assert_eq!(extremities.len(), graph::MAX_EXTREMITIES);
    assert!(
        extremities.contains(&last),
        "the stem replaces one: it stays"
    );
    assert!(extremities.contains(&branches[0]), "the first fork is kept");
    assert!(
        !extremities.contains(branches.last().unwrap()),
        "a fork past the cap is not an extremity"
    );
    // A state event forking at the cap: stored, but not in the room's state either.
    let levels = room.state_id("m.room.power_levels", "").await;
    let rules = room.state_id("m.room.join_rules", "").await;
    let rename = room.remote(
        ("m.room.member", Some(BOB)),
        json!({"membership": "join", "displayname": "Bob at the cap"}),
        std::slice::from_ref(&join_id),
        &[levels, rules, join_id.clone()],
    );
    assert_eq!(
        room.receive(&rename.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert_eq!(room.extremities(), extremities);
    let (_, member) = room.alice.state(&room.id, "m.room.member", BOB).await;
    assert_ne!(member["displayname"], "Bob at the cap");
    // Alice's next message names ten of them, the deepest.
    let (status, body) = room
        .alice
        .put(
            &format!("/rooms/{}/send/m.room.message/t1", room.id),
            json!({"msgtype": "m.text", "body": "merging"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let merged = room
        .store()
        .event_by_id(body["event_id"].as_str().unwrap())
        .unwrap()
        .unwrap();
    let prev = merged.pdu()["prev_events"].as_array().unwrap();
    assert_eq!(prev.len(), graph::LOCAL_PREV_EVENTS);
    assert!(prev.iter().any(|p| p == last.as_str()));
    assert_eq!(
        room.extremities().len(),
        graph::MAX_EXTREMITIES - graph::LOCAL_PREV_EVENTS + 1
    );
}

#[tokio::test]
async fn an_event_on_one_rejected_without_a_state_takes_no_extremity_away() {
    // Found by review: an event rejected before its state was known (it names another
    // room's event) must not count as built on our extremities, or an event on it (taking
    // the state its sender tells) would replace our extremities and so the room's state.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let other = room
        .alice
        .create_room(json!({"preset": "public_chat"}))
        .await;
    let other_create = room
        .store()
        .room(&other)
        .unwrap()
        .unwrap()
        .record
        .extremities[0]
        .clone();
    let state_ids = room.current_state_ids().await;
    let (bad_id, bad) = room
        .bob_says("on two rooms", &[join_id.clone(), other_create], &join_id)
        .await;
    assert!(matches!(
        room.receive(&bad, &TestSource::default()).await,
        PduOutcome::Rejected(_)
    ));
    let (next_id, next) = room
        .bob_says(
            "on the rejected one",
            std::slice::from_ref(&bad_id),
            &join_id,
        )
        .await;
    let source = TestSource::default();
    source
        .state_ids
        .lock()
        .unwrap()
        .insert(bad_id.clone(), state_ids);
    assert_eq!(room.receive(&next, &source).await, PduOutcome::Accepted);
    let mut both = vec![join_id, next_id];
    both.sort();
    assert_eq!(room.extremities(), both, "our extremity stays");
}

#[tokio::test]
async fn an_event_on_many_prev_events_we_cannot_have_takes_the_state_told_before_it() {
    // With more than five prev events we cannot place, the state after each is not asked
    // one by one (two requests each): the state before the event, once, stands for them.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let state_ids = room.current_state_ids().await;
    let lost: Vec<String> = (0..6)
        .map(|n| format!("$lost{n}lostlostlostlostlostlostlostlostlostlo"))
        .collect();
    let (said_id, said) = room.bob_says("after six gaps", &lost, &join_id).await;
    let source = TestSource::default();
    source
        .state_ids
        .lock()
        .unwrap()
        .insert(said_id.clone(), state_ids);
    assert_eq!(room.receive(&said, &source).await, PduOutcome::Accepted);
    let mut both = vec![join_id, said_id];
    both.sort();
    assert_eq!(room.extremities(), both);
}

#[tokio::test]
async fn a_rejected_event_replayed_through_send_gap_filling_and_backfill_stays_rejected() {
    // Attack class (hostile-federation issue): a rejected event offered again, by
    // itself, as a prev event of a valid one, and as history, must stay rejected and
    // leave the state alone.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let levels = room.state_id("m.room.power_levels", "").await;
    // Bob, without the power, changes the topic: rejected.
    let topic = room.remote(
        ("m.room.topic", Some("")),
        json!({"topic": "taken over"}),
        std::slice::from_ref(&join_id),
        &[levels.clone(), join_id.clone()],
    );
    let outcome = room.receive(&topic.1, &TestSource::default()).await;
    assert!(matches!(outcome, PduOutcome::Rejected(_)), "{outcome:?}");
    // Again through /send.
    assert_eq!(
        room.receive(&topic.1, &TestSource::default()).await,
        PduOutcome::AlreadyKnown
    );
    // As history (a backfill answer naming it).
    let rooms = &s.running().services.rooms;
    let placed = rooms
        .receive_history(
            REMOTE,
            (&room.id, std::slice::from_ref(&topic.0)),
            vec![topic.1.clone()],
            &TestSource::default(),
        )
        .await
        .unwrap();
    assert_eq!(placed, 0);
    // As the prev event of a valid message, fetched with a gap: the message is judged on
    // the state after the rejected event, which is the state before it.
    let said = room
        .bob_says(
            "after the attempt",
            std::slice::from_ref(&topic.0),
            &join_id,
        )
        .await;
    let mut source = TestSource::holding(&[&topic]);
    source.serves_gaps = true;
    assert_eq!(room.receive(&said.1, &source).await, PduOutcome::Accepted);
    assert!(matches!(
        room.status(&topic.0),
        EventStatus::Rejected { .. }
    ));
    let timeline = room.timeline().await;
    assert!(!timeline.contains(&topic.0));
    assert_eq!(timeline[0], said.0);
    let (status, _) = room.alice.state(&room.id, "m.room.topic", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no topic was ever set");
}

#[tokio::test]
async fn a_no_power_levels_take_over_is_rejected_and_the_state_stays() {
    // Attack class (hostile-federation issue): "there is no power-levels event". Bob
    // names no power levels among the auth events of his own power levels event (with
    // none, everybody may set state); the state before it has alice's, so it is rejected.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let levels_before = room.state_id("m.room.power_levels", "").await;
    let take_over = room.remote(
        ("m.room.power_levels", Some("")),
        json!({"users": {BOB: 100}, "state_default": 0}),
        std::slice::from_ref(&join_id),
        std::slice::from_ref(&join_id),
    );
    let outcome = room.receive(&take_over.1, &TestSource::default()).await;
    assert!(matches!(outcome, PduOutcome::Rejected(_)), "{outcome:?}");
    assert_eq!(
        room.state_id("m.room.power_levels", "").await,
        levels_before
    );
    // Nor does a message built on it give bob the power: his topic after it is refused.
    let topic = room.remote(
        ("m.room.topic", Some("")),
        json!({"topic": "mine now"}),
        std::slice::from_ref(&take_over.0),
        &[take_over.0.clone(), join_id.clone()],
    );
    let outcome = room.receive(&topic.1, &TestSource::default()).await;
    assert!(matches!(outcome, PduOutcome::Rejected(_)), "{outcome:?}");
    let (status, _) = room.alice.state(&room.id, "m.room.topic", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Alice (the creator) keeps her power: her topic goes through.
    room.alice_sets_topic("still ours").await;
}

#[tokio::test]
async fn a_remote_state_event_merging_a_fork_is_stored() {
    // Found by the seeded split runs: a state event on several prev events whose
    // resolution differs from the first's state saved its state on a snapshot that was
    // not written yet (500 to the sending server, for good).
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let topic = room.alice_sets_topic("ours").await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let rules = room.state_id("m.room.join_rules", "").await;
    let rename = room.remote(
        ("m.room.member", Some(BOB)),
        json!({"membership": "join", "displayname": "Bobby"}),
        std::slice::from_ref(&join_id),
        &[levels.clone(), rules.clone(), join_id.clone()],
    );
    assert_eq!(
        room.receive(&rename.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    // Bob renames himself again, on both branches.
    let merge = room.remote(
        ("m.room.member", Some(BOB)),
        json!({"membership": "join", "displayname": "Bob merged"}),
        &[topic.clone(), rename.0.clone()],
        &[levels, rules, rename.0.clone()],
    );
    assert_eq!(
        room.receive(&merge.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert_eq!(room.extremities(), vec![merge.0.clone()]);
    let (_, member) = room.alice.state(&room.id, "m.room.member", BOB).await;
    assert_eq!(member["displayname"], "Bob merged");
    let (_, topic_now) = room.alice.state(&room.id, "m.room.topic", "").await;
    assert_eq!(topic_now["topic"], "ours");
}

#[tokio::test]
async fn a_fork_is_merged_by_state_resolution_and_local_events_name_both_sides() {
    let mut s = TestServer::start().await;
    let room_id;
    let topic_local;
    {
        let room = Room::public(&s).await;
        room_id = room.id.clone();
        let (join_id, _) = room.with_bob().await;
        // Alice changes the topic; bob, not having seen it, renames himself on a branch
        // from his join.
        topic_local = room.alice_sets_topic("ours").await;
        let levels = room.state_id("m.room.power_levels", "").await;
        let rules = room.state_id("m.room.join_rules", "").await;
        let rename = room.remote(
            ("m.room.member", Some(BOB)),
            json!({"membership": "join", "displayname": "Bobby"}),
            std::slice::from_ref(&join_id),
            &[levels, rules, join_id.clone()],
        );
        assert_eq!(
            room.receive(&rename.1, &TestSource::default()).await,
            PduOutcome::Accepted
        );
        // Two extremities; the current state holds both sides' changes.
        let mut both = vec![topic_local.clone(), rename.0.clone()];
        both.sort();
        assert_eq!(room.extremities(), both);
        let (_, topic) = room.alice.state(&room.id, "m.room.topic", "").await;
        assert_eq!(topic["topic"], "ours");
        let (_, member) = room.alice.state(&room.id, "m.room.member", BOB).await;
        assert_eq!(member["displayname"], "Bobby");
        // Alice's next event names both and closes the fork.
        let merge = room.alice.text(&room.id, "merged").await;
        let stored = room.store().event_by_id(&merge).unwrap().unwrap();
        let mut prev: Vec<String> = pdu::event_ids(stored.pdu(), "prev_events")
            .map(str::to_owned)
            .collect();
        prev.sort();
        assert_eq!(prev, both);
        assert_eq!(room.extremities(), vec![merge]);
    }
    s.restart().await;
    let alice_login = s.login("@alice:localhost", "correct horse battery").await;
    assert_eq!(alice_login.0, StatusCode::OK);
    let token = alice_login.1["access_token"].as_str().unwrap();
    let (status, member) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{BOB}"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["displayname"], "Bobby");
}

#[tokio::test]
async fn forged_old_power_levels_after_a_fork_leave_the_state_unchanged() {
    // Attack class (hostile-federation issue): "forged old power levels after a fork".
    // Alice (the v12 creator) gave bob 100, then took it back. Bob's server forks from
    // before the demotion: a power levels event that the old levels allow (bob at 100),
    // giving bob 100 again and the room's defaults to him. It is soft-failed (the current
    // state forbids it), and a message of bob's built on it (which the current state
    // allows) brings the fork into state resolution, where alice's demotion wins: her power
    // as creator is infinite, so hers sorts first and bob's is checked against it.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let promote =
        |level: i64| json!({"users": {BOB: level}, "state_default": 50, "events_default": 0});
    let path = format!("/rooms/{}/state/m.room.power_levels/", room.id);
    let (status, body) = room.alice.put(&path, promote(100)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let promotion = body["event_id"].as_str().unwrap().to_owned();
    let (status, body) = room.alice.put(&path, promote(0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let demotion = body["event_id"].as_str().unwrap().to_owned();

    let forged = room.remote(
        ("m.room.power_levels", Some("")),
        json!({"users": {BOB: 100}, "state_default": 0, "events_default": 0,
               "events": {"m.room.power_levels": 0}}),
        std::slice::from_ref(&promotion),
        &[promotion.clone(), join_id.clone()],
    );
    match room.receive(&forged.1, &TestSource::default()).await {
        PduOutcome::SoftFailed(_) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(room.state_id("m.room.power_levels", "").await, demotion);

    // Bob's message on the forged levels: allowed by the current state (events_default
    // 0), so accepted, and its state (the forged levels) meets ours in a resolution.
    let message = room.remote(
        ("m.room.message", None),
        json!({"msgtype": "m.text", "body": "on my fork"}),
        std::slice::from_ref(&forged.0),
        &[forged.0.clone(), join_id.clone()],
    );
    assert_eq!(
        room.receive(&message.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert!(room.extremities().contains(&message.0));
    assert_eq!(room.state_id("m.room.power_levels", "").await, demotion);
    // Bob has no power: his topic on his message is soft-failed, alice's goes through.
    let topic = room.remote(
        ("m.room.topic", Some("")),
        json!({"topic": "mine now"}),
        std::slice::from_ref(&message.0),
        &[forged.0.clone(), join_id.clone()],
    );
    match room.receive(&topic.1, &TestSource::default()).await {
        PduOutcome::SoftFailed(_) => {}
        other => panic!("{other:?}"),
    }
    let (status, _) = room.alice.state(&room.id, "m.room.topic", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    room.alice_sets_topic("still ours").await;
    assert_eq!(room.state_id("m.room.power_levels", "").await, demotion);
}

/// `rooms.join.{room}` of alice's sync since `since` (`None`: initial), with
/// `use_state_after` as asked.
async fn room_sync(room: &Room<'_>, since: Option<&str>, state_after: bool) -> (Value, String) {
    let mut query = format!("use_state_after={state_after}");
    if let Some(since) = since {
        query.push_str(&format!("&since={since}"));
    }
    let body = room.alice.sync(&query).await;
    let token = body["next_batch"].as_str().unwrap().to_owned();
    (body["rooms"]["join"][&room.id].clone(), token)
}

fn ids_in(section: &Value) -> Vec<String> {
    section["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn sync_state_after_gives_the_resolved_state_when_a_losing_fork_comes_last_in_the_timeline() {
    // Spec v1.16, `use_state_after`: the state up to the end of the timeline, which
    // clients take instead of applying the timeline's state events. Bob renames himself
    // twice on two branches from his join; the rename made first (the earlier
    // timestamp) arrives last. State resolution orders them by timestamp and keeps the
    // later one, so the timeline's last state event is not the room's state.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let (first, token) = room_sync(&room, None, true).await;
    assert!(first.get("state").is_none(), "{first}");
    let initial = ids_in(&first["state_after"]);
    assert!(
        initial.contains(&join_id),
        "the state up to the end: {first}"
    );
    let (_, old_token) = room_sync(&room, None, false).await;

    let levels = room.state_id("m.room.power_levels", "").await;
    let rules = room.state_id("m.room.join_rules", "").await;
    let auth = [levels, rules, join_id.clone()];
    let early = room.remote(
        ("m.room.member", Some(BOB)),
        json!({"membership": "join", "displayname": "early"}),
        std::slice::from_ref(&join_id),
        &auth,
    );
    let late = room.remote(
        ("m.room.member", Some(BOB)),
        json!({"membership": "join", "displayname": "late"}),
        std::slice::from_ref(&join_id),
        &auth,
    );
    assert_eq!(
        room.receive(&late.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert_eq!(
        room.receive(&early.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let (_, member) = room.alice.state(&room.id, "m.room.member", BOB).await;
    assert_eq!(member["displayname"], "late", "resolved by timestamp");

    let (section, _) = room_sync(&room, Some(&token), true).await;
    assert_eq!(
        ids_in(&section["timeline"]),
        vec![late.0.clone(), early.0.clone()]
    );
    assert!(section.get("state").is_none(), "{section}");
    // The member event the room holds, though the timeline's last is the other.
    assert_eq!(ids_in(&section["state_after"]), vec![late.0.clone()]);

    // Without `use_state_after`: `state`, up to the timeline's start, and no
    // `state_after`.
    let (old, _) = room_sync(&room, Some(&old_token), false).await;
    assert!(old.get("state_after").is_none(), "{old}");
    assert!(old["state"]["events"].is_array(), "{old}");
}

#[tokio::test]
async fn sync_says_limited_when_an_event_comes_with_a_gap_before_it() {
    // The "/sync says limited when a fork brings a gap": bob's message names
    // events we could not fetch (their state was told); the timeline does not run on
    // into it.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let (_, token) = room_sync(&room, None, false).await;
    let own = room.alice.text(&room.id, "before the gap").await;
    let (section, after_own) = room_sync(&room, Some(&token), false).await;
    assert_eq!(section["timeline"]["limited"], false, "{section}");
    assert_eq!(ids_in(&section["timeline"]), vec![own.clone()]);

    let state_ids = room.current_state_ids().await;
    let lost: Vec<String> = (0..6)
        .map(|n| format!("$lost{n}lostlostlostlostlostlostlostlostlostlo"))
        .collect();
    let (said_id, said) = room.bob_says("after a gap", &lost, &join_id).await;
    let source = TestSource::default();
    source
        .state_ids
        .lock()
        .unwrap()
        .insert(said_id.clone(), state_ids);
    assert_eq!(room.receive(&said, &source).await, PduOutcome::Accepted);

    let (section, next) = room_sync(&room, Some(&after_own), false).await;
    assert_eq!(section["timeline"]["limited"], true, "{section}");
    let timeline = ids_in(&section["timeline"]);
    assert_eq!(timeline.last(), Some(&said_id), "{section}");
    assert!(section["timeline"]["prev_batch"].is_string());
    // Events after it run on as usual.
    let again = room.alice.text(&room.id, "after the gap").await;
    let (section, _) = room_sync(&room, Some(&next), false).await;
    assert_eq!(section["timeline"]["limited"], false, "{section}");
    assert_eq!(ids_in(&section["timeline"]), vec![again]);
}

#[tokio::test]
async fn a_stale_auth_height_makes_the_index_step_aside_for_one_resolution() {
    // The auth index's walk relies on kept auth heights falling along every auth edge;
    // one that does not (kept before its event was written again) is found, forgotten,
    // and the auth difference comes from walking the chains instead: the same answer.
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let topic = room.alice_sets_topic("ours").await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let rules = room.state_id("m.room.join_rules", "").await;
    let rename = room.remote(
        ("m.room.member", Some(BOB)),
        json!({"membership": "join", "displayname": "Bobby"}),
        std::slice::from_ref(&join_id),
        &[levels.clone(), rules, join_id.clone()],
    );
    assert_eq!(
        room.receive(&rename.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let store = room.store();
    let snapshot = |id: &str| store.event_by_id(id).unwrap().unwrap().meta.state_after;
    let snapshots = [snapshot(&topic), snapshot(&rename.0)];
    let expected = resolution::auth_difference(store, &snapshots).unwrap();
    assert!(expected.contains(&join_id), "{expected:?}");

    let db = &s.running().services.db;
    let levels_short = store.event_by_id(&levels).unwrap().unwrap().short;
    let mut batch = db.batch();
    batch.put(
        ourwhats::storage::Table::ShorteventidAuthheight,
        levels_short.to_be_bytes(),
        999u32.to_be_bytes(),
    );
    db.commit_blocking(batch).unwrap();
    assert_eq!(
        resolution::auth_difference(store, &snapshots).unwrap(),
        expected
    );
    let kept = db
        .get(
            ourwhats::storage::Table::ShorteventidAuthheight,
            levels_short.to_be_bytes(),
        )
        .unwrap();
    assert_ne!(kept, Some(999u32.to_be_bytes().to_vec()), "forgotten");
    // The next resolution works the heights out again and uses the index.
    assert_eq!(
        resolution::auth_difference(store, &snapshots).unwrap(),
        expected
    );
}

/// A fork in rooms v1 and v2 (`rooms/v1.md`, `v2.md`): the same two branches of topics
/// resolve by depth under state resolution v1 and by power and time under v2. Bob's
/// events carry ids of his server and reference their events with hashes.
#[tokio::test]
async fn a_fork_in_a_v1_room_is_resolved_by_depth_and_in_a_v2_room_by_time() {
    for (version, winner) in [(RoomVersion::V1, "B2"), (RoomVersion::V2, "A")] {
        let s = TestServer::start().await;
        let room = Room::public_in(&s, version).await;
        let (join_id, join) = room.with_bob().await;
        assert!(join_id.ends_with(&format!(":{REMOTE}")), "{join_id}");
        assert!(join["prev_events"][0][1]["sha256"].is_string(), "{join}");
        // Alice gives bob the power to set the topic.
        let (_, mut levels) = room.alice.state(&room.id, "m.room.power_levels", "").await;
        levels["users"][BOB] = json!(50);
        let (status, body) = room
            .alice
            .put(
                &format!("/rooms/{}/state/m.room.power_levels/", room.id),
                levels,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let fork_point = room.extremities();
        let auth = vec![
            room.state_id("m.room.create", "").await,
            room.state_id("m.room.power_levels", "").await,
            join_id.clone(),
        ];
        // Alice sets topic A (now); bob, not having seen it, sets B1 and then B2 on
        // the fork point, with timestamps of the past: his branch is the deeper one.
        let a = room.alice_sets_topic("A").await;
        assert!(a.ends_with(":localhost"), "{a}");
        let topic = |text: &str, prev: &[String]| {
            room.remote(
                ("m.room.topic", Some("")),
                json!({ "topic": text }),
                prev,
                &auth,
            )
        };
        let b1 = topic("B1", &fork_point);
        assert_eq!(
            room.receive(&b1.1, &TestSource::default()).await,
            PduOutcome::Accepted
        );
        let b2 = topic("B2", std::slice::from_ref(&b1.0));
        assert_eq!(
            room.receive(&b2.1, &TestSource::default()).await,
            PduOutcome::Accepted
        );
        let mut both = vec![a.clone(), b2.0.clone()];
        both.sort();
        assert_eq!(room.extremities(), both, "{version}");
        let (_, now) = room.alice.state(&room.id, "m.room.topic", "").await;
        assert_eq!(now["topic"], winner, "{version}");
        // Alice's next event closes the fork on the resolved state.
        room.alice.text(&room.id, "merged").await;
        assert_eq!(room.extremities().len(), 1);
        let (_, now) = room.alice.state(&room.id, "m.room.topic", "").await;
        assert_eq!(now["topic"], winner, "{version}");
        s.stop().await;
    }
}

/// Rooms v1 and v2: an event id is the sender's choice, so a PDU under the id of an event
/// we hold but with other content is not that event: dropped, not "already known" (a
/// `send_join` answered for it would hand out the state before the held event).
#[tokio::test]
async fn in_a_v1_room_another_event_under_a_held_id_is_dropped() {
    let s = TestServer::start().await;
    let room = Room::public_in(&s, RoomVersion::V1).await;
    let (join_id, join) = room.with_bob().await;
    // The same event again is known.
    assert_eq!(
        room.receive(&join, &TestSource::default()).await,
        PduOutcome::AlreadyKnown
    );
    // A message of bob's server that claims the join's id.
    let (_, mut other) = room
        .bob_says("not the join", &room.extremities(), &join_id)
        .await;
    other["event_id"] = json!(join_id);
    ourwhats::core::event_hashes::hash_and_sign_event(
        &mut other,
        REMOTE,
        &common::remote::remote_key(),
        RoomVersion::V1,
    )
    .unwrap();
    match room.receive(&other, &TestSource::default()).await {
        PduOutcome::Dropped(why) => assert!(why.contains("another event"), "{why}"),
        outcome => panic!("{outcome:?}"),
    }
    // The held event is unchanged.
    let held = room.store().event_by_id(&join_id).unwrap().unwrap();
    assert_eq!(held.pdu()["type"], "m.room.member");
}

/// Whether a redaction of another server's event takes effect by power is judged, as
/// Synapse judges it, by the power levels among its auth events, before it (where its
/// server made it) and in the room's state when it reaches us: a redaction made on a
/// fork before bob was given the power does not apply though he has it now, nor one
/// made before he lost it, nor one whose auth events cite power levels without it; one
/// made with the power he still has applies.
#[tokio::test]
async fn a_redaction_needs_the_power_where_it_was_made_and_where_it_comes() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let set_bobs_level =
        |level: u64| room.alice_sets_levels(move |levels| levels["users"][BOB] = json!(level));
    let redacted = |id: String| {
        let room = &room;
        async move {
            let (status, body) = room
                .alice
                .get(&format!("/rooms/{}/event/{id}", room.id))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["content"] == json!({})
        }
    };
    let bob_redacts = |target: &str, prev: &str, levels: &str| {
        room.remote(
            ("m.room.redaction", None),
            json!({"redacts": target}),
            &[prev.to_owned()],
            &[levels.to_owned(), join_id.clone()],
        )
    };

    // Without power where he redacted; promoted since.
    let levels_before = room.state_id("m.room.power_levels", "").await;
    let first = room.alice.text(&room.id, "first").await;
    set_bobs_level(50).await;
    let refused = bob_redacts(&first, &first, &levels_before);
    assert_eq!(
        room.receive(&refused.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert!(!redacted(first.clone()).await, "applied without the power");

    // With the power where he redacted and here.
    let levels_with_power = room.state_id("m.room.power_levels", "").await;
    let second = room.alice.text(&room.id, "second").await;
    let applied = bob_redacts(&second, &second, &levels_with_power);
    assert_eq!(
        room.receive(&applied.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert!(
        redacted(second).await,
        "not applied though he has the power"
    );

    // With the power where he redacted and here, but citing power levels that do not
    // give it to him among its auth events.
    let fourth = room.alice.text(&room.id, "fourth").await;
    let cited = bob_redacts(&fourth, &fourth, &levels_before);
    assert_eq!(
        room.receive(&cited.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert!(
        !redacted(fourth).await,
        "applied by its auth events' levels"
    );

    // With the power where he redacted; demoted since.
    let third = room.alice.text(&room.id, "third").await;
    set_bobs_level(0).await;
    let late = bob_redacts(&third, &third, &levels_with_power);
    assert_eq!(
        room.receive(&late.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    assert!(!redacted(third).await, "applied after he lost the power");
}

/// An event fetched by id (a missing prev event) is taken in only if it is the one asked
/// for: a source answering with another event of the room, validly signed, does not get
/// it in, and the wanted one stays missing.
#[tokio::test]
async fn a_fetched_event_that_is_not_the_one_asked_for_is_not_taken() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let join_depth = room.depth_of(std::slice::from_ref(&join_id));
    let message = |body: &str, prev: &str, depth: u64| {
        remote_pdu(RemoteDraft {
            room_id: &room.id,
            sender: BOB,
            kind: "m.room.message",
            state_key: None,
            content: json!({"msgtype": "m.text", "body": body}),
            prev: vec![prev.to_owned()],
            auth: vec![levels.clone(), join_id.clone()],
            depth,
        })
    };
    let wanted = message("wanted", &join_id, join_depth + 1);
    let other = message("other", &join_id, join_depth + 1);
    let latest = message("latest", &wanted.0, join_depth + 2);
    // Asked for `wanted`, the source answers `other`.
    let source = TestSource::default();
    source
        .events
        .lock()
        .unwrap()
        .insert(wanted.0.clone(), other.1.clone());
    let outcome = room.receive(&latest.1, &source).await;
    assert_ne!(outcome, PduOutcome::Accepted);
    let store = s.running().services.rooms.store();
    assert!(
        store.event_by_id(&other.0).unwrap().is_none(),
        "the other event was taken"
    );
    assert!(store.event_by_id(&wanted.0).unwrap().is_none());
    let asked = source.asked.lock().unwrap();
    assert!(
        !asked.is_empty() && asked.iter().all(|id| *id == wanted.0),
        "{asked:?}"
    );
}

/// A prev event of another room is refused whatever it is held as: here our user's invite
/// to another server's room, kept out of band (it was taken as unplaced, its state asked
/// of the sender, and the event accepted with an edge into the other room).
#[tokio::test]
async fn a_prev_event_of_another_room_kept_out_of_band_is_refused() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let alice = room.alice.user_id.clone();
    // Bob's server invites alice to a room of its own (version 11: the id is its own).
    let elsewhere = "!elsewhere:remote.example";
    let invite = remote_pdu_in(
        RoomVersion::V11,
        RemoteDraft {
            room_id: elsewhere,
            sender: BOB,
            kind: "m.room.member",
            state_key: Some(&alice),
            content: json!({"membership": "invite"}),
            prev: vec![format!("${}", "P".repeat(43))],
            auth: vec![format!("${}", "C".repeat(43))],
            depth: 5,
        },
        &|_| None,
    );
    let offer = ourwhats::services::rooms::remote_invite::InviteOffer {
        room_version: "11".into(),
        event: invite.1.clone(),
        invite_room_state: None,
    };
    let source = TestSource::default();
    s.running()
        .services
        .rooms
        .accept_remote_invite(REMOTE, (elsewhere, &invite.0), offer, &|_| true, &source)
        .await
        .unwrap();
    assert!(room.store().event_by_id(&invite.0).unwrap().is_some());

    // Bob's message in our room names the invite as its prev event; the sender would
    // tell a state at it.
    let join_depth = room.depth_of(std::slice::from_ref(&join_id));
    let said = remote_pdu(RemoteDraft {
        room_id: &room.id,
        sender: BOB,
        kind: "m.room.message",
        state_key: None,
        content: json!({"msgtype": "m.text", "body": "built on another room"}),
        prev: vec![invite.0.clone()],
        auth: vec![levels.clone(), join_id.clone()],
        depth: join_depth + 1,
    });
    let state = room.current_state_ids().await;
    source
        .state_ids
        .lock()
        .unwrap()
        .insert(invite.0.clone(), state);
    let outcome = room.receive(&said.1, &source).await;
    assert!(
        matches!(outcome, PduOutcome::Rejected(ref r) if r.contains("another room")),
        "{outcome:?}"
    );
}

/// Spec: "Guest Access", "Server behaviour": when the guest access changes to keep
/// guests out, they leave; a change another server sends too.
#[tokio::test]
async fn a_remote_change_of_the_guest_access_makes_our_guests_leave() {
    let s = TestServer::start_with(|c| c.registration.allow_guests = true).await;
    let room = Room::public(&s).await;
    let (join_id, _) = room.with_bob().await;
    let (status, _) = room
        .alice
        .put(
            &format!("/rooms/{}/state/m.room.guest_access/", room.id),
            json!({"guest_access": "can_join"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let bob_levels = room
        .alice_sets_levels(|levels| levels["users"][BOB] = json!(100))
        .await;
    let (status, guest) = s
        .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{guest}");
    let (guest_id, token) = (
        guest["user_id"].as_str().unwrap().to_owned(),
        guest["access_token"].as_str().unwrap().to_owned(),
    );
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", room.id),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let depth = room.depth_of(std::slice::from_ref(&bob_levels)) + 1;
    let closed = remote_pdu(RemoteDraft {
        room_id: &room.id,
        sender: BOB,
        kind: "m.room.guest_access",
        state_key: Some(""),
        content: json!({"guest_access": "forbidden"}),
        prev: room.extremities(),
        auth: vec![bob_levels.clone(), join_id.clone()],
        depth,
    });
    assert_eq!(
        room.receive(&closed.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let (status, member) = room.alice.state(&room.id, "m.room.member", &guest_id).await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["membership"], "leave", "{member}");
}

/// In rooms v1 and v2 the sender picks the event id, so a redaction may name itself. One
/// held as an outlier (fetched as another event's auth event) and then offered in the
/// timeline redacted "its target", the outlier copy of itself, writing that copy's
/// metadata (no timeline place, no state) over what its acceptance had just written. A
/// redaction naming itself redacts nothing (and, as any such, is shown to no client).
#[tokio::test]
async fn in_a_v1_room_a_redaction_naming_itself_redacts_nothing_and_keeps_its_place() {
    let s = TestServer::start().await;
    let room = Room::public_in(&s, RoomVersion::V1).await;
    let (join_id, _) = room.with_bob().await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let create = room.state_id("m.room.create", "").await;
    let (redaction_id, mut redaction) = room.remote(
        ("m.room.redaction", None),
        json!({"reason": "myself"}),
        &room.extremities(),
        &[create, levels, join_id.clone()],
    );
    redaction["redacts"] = json!(redaction_id);
    event_hashes::hash_and_sign_event(
        &mut redaction,
        REMOTE,
        &common::remote::remote_key(),
        RoomVersion::V1,
    )
    .unwrap();
    let redaction_event = (redaction_id.clone(), redaction.clone());
    // Named as an auth event of a message: fetched and held as an outlier (the message,
    // with a redaction among its auth events, is rejected).
    let (_, mut message) = room
        .bob_says("on a redaction", &room.extremities(), &join_id)
        .await;
    let with_reference = |id: &str, pdu: &Value| {
        json!([id, {"sha256": ourwhats::core::base64::encode(
            event_hashes::reference_hash(pdu, RoomVersion::V1).unwrap())}])
    };
    message["auth_events"]
        .as_array_mut()
        .unwrap()
        .push(with_reference(&redaction_id, &redaction));
    event_hashes::hash_and_sign_event(
        &mut message,
        REMOTE,
        &common::remote::remote_key(),
        RoomVersion::V1,
    )
    .unwrap();
    let outcome = room
        .receive(&message, &TestSource::holding(&[&redaction_event]))
        .await;
    assert!(matches!(outcome, PduOutcome::Rejected(_)), "{outcome:?}");
    assert_eq!(room.status(&redaction_id), EventStatus::Outlier);
    // Offered in the timeline: accepted, with its place and its state kept.
    assert_eq!(
        room.receive(&redaction, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let stored = room.store().event_by_id(&redaction_id).unwrap().unwrap();
    assert_ne!(stored.meta.pos, 0, "its timeline place");
    assert_ne!(stored.meta.state_before, 0, "its state");
    assert_eq!(stored.meta.redacted_by, 0);
    assert_eq!(stored.content()["reason"], "myself");
    assert_eq!(room.extremities(), vec![redaction_id.clone()]);
    // Shown to no client, as any redaction that redacted nothing.
    assert!(!room.timeline().await.contains(&redaction_id));
}

/// From room version 3 an event's id is its hash: an `event_id` field a redaction
/// carries means nothing, and naming its target there does not stop it (only in rooms v1
/// and v2 is a redaction naming itself nothing).
#[tokio::test]
async fn from_v3_an_event_id_field_naming_the_target_does_not_stop_a_redaction() {
    let s = TestServer::start().await;
    let room = Room::public(&s).await;
    assert!(room.version.event_ids_are_reference_hashes());
    let (join_id, _) = room.with_bob().await;
    let levels = room.state_id("m.room.power_levels", "").await;
    let said = room
        .bob_says("to be taken back", &room.extremities(), &join_id)
        .await;
    assert_eq!(
        room.receive(&said.1, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let (_, mut redaction) = room.remote(
        ("m.room.redaction", None),
        json!({"redacts": said.0}),
        std::slice::from_ref(&said.0),
        &[levels, join_id],
    );
    redaction["redacts"] = json!(said.0);
    redaction["event_id"] = json!(said.0);
    event_hashes::hash_and_sign_event(
        &mut redaction,
        REMOTE,
        &common::remote::remote_key(),
        room.version,
    )
    .unwrap();
    assert_eq!(
        room.receive(&redaction, &TestSource::default()).await,
        PduOutcome::Accepted
    );
    let target = room.store().event_by_id(&said.0).unwrap().unwrap();
    assert_ne!(target.meta.redacted_by, 0, "the redaction applied");
}
