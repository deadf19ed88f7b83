//! End-to-end encryption support over HTTP: device keys, one-time and fallback keys,
//! device lists in /sync and `/keys/changes`, cross-signing, and key backup, as two users
//! with two devices each see them.

use crate::common;

use common::client::Client;
use common::{assert_error, TestServer};
use ourwhats::core::signatures::sign_json;
use ourwhats::core::SigningKeyPair;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A fixed seed per name, so a test can make the same key twice.
fn seed_of(name: &str) -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (i, b) in name.bytes().enumerate() {
        seed[i % 32] ^= b.wrapping_mul(7).wrapping_add(i as u8);
    }
    seed
}

/// A device's Ed25519 key pair: its key id is `ed25519:<device id>`.
fn key_pair(device_id: &str) -> SigningKeyPair {
    SigningKeyPair::from_seed(&seed_of(device_id), device_id)
}

/// A cross-signing key pair: its key id is `ed25519:<its public key>`.
fn cross_signing_pair(label: &str) -> SigningKeyPair {
    let seed = seed_of(label);
    let public = SigningKeyPair::from_seed(&seed, "unnamed").public_key_base64();
    SigningKeyPair::from_seed(&seed, &public)
}

/// The device's keys, signed by the device.
fn device_keys(client: &Client<'_>) -> Value {
    let pair = key_pair(&client.device_id);
    let mut keys = json!({
        "user_id": client.user_id,
        "device_id": client.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", client.device_id): "curve+key+of+".to_owned() + &client.device_id,
            format!("ed25519:{}", client.device_id): pair.public_key_base64(),
        },
    });
    sign_json(&mut keys, &client.user_id, &pair).unwrap();
    keys
}

/// A signed one-time (or fallback) key object.
fn signed_key(client: &Client<'_>, n: usize, fallback: bool) -> Value {
    let mut key = json!({ "key": format!("otk{n}of{}", client.device_id) });
    if fallback {
        key["fallback"] = json!(true);
    }
    sign_json(&mut key, &client.user_id, &key_pair(&client.device_id)).unwrap();
    key
}

async fn upload(client: &Client<'_>, body: Value) -> Value {
    let (status, answer) = client.post("/keys/upload", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

async fn query(client: &Client<'_>, users: Value) -> Value {
    let (status, answer) = client
        .post("/keys/query", json!({ "device_keys": users }))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

async fn claim(client: &Client<'_>, user: &str, device: &str) -> Value {
    let (status, answer) = client
        .post(
            "/keys/claim",
            json!({ "one_time_keys": { user: { device: "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["one_time_keys"][user][device].clone()
}

/// Alice and Bob in one room, each with a second device.
async fn two_users_in_a_room(server: &TestServer) -> (Client<'_>, Client<'_>, String) {
    let alice = Client::new(server, "alice").await;
    let bob = Client::new(server, "bob").await;
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    (alice, bob, room)
}

#[tokio::test]
async fn keys_uploaded_by_one_user_are_seen_by_the_other_through_query() {
    let server = TestServer::start().await;
    let (alice, bob, _) = two_users_in_a_room(&server).await;
    let alice2 = alice.another_device().await;
    let (status, _) = alice2
        .put(
            &format!("/devices/{}", alice2.device_id),
            json!({"display_name": "Alice's phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let answer = upload(
        &alice,
        json!({
            "device_keys": device_keys(&alice),
            "one_time_keys": {
                "signed_curve25519:AAAA": signed_key(&alice, 1, false),
                "signed_curve25519:AAAB": signed_key(&alice, 2, false),
            },
        }),
    )
    .await;
    assert_eq!(answer["one_time_key_counts"]["signed_curve25519"], 2);
    upload(&alice2, json!({ "device_keys": device_keys(&alice2) })).await;

    // Bob sees both of Alice's devices, as uploaded, with the name in `unsigned`.
    let seen = query(&bob, json!({ &alice.user_id: [] })).await;
    let devices = &seen["device_keys"][&alice.user_id];
    assert_eq!(devices.as_object().unwrap().len(), 2, "{seen}");
    let mine = device_keys(&alice);
    assert_eq!(devices[&alice.device_id]["keys"], mine["keys"]);
    assert_eq!(devices[&alice.device_id]["signatures"], mine["signatures"]);
    assert_eq!(
        devices[&alice2.device_id]["unsigned"]["device_display_name"],
        "Alice's phone"
    );
    // One device by name; unknown users are left out; remote servers are failures.
    let seen = query(
        &bob,
        json!({
            &alice.user_id: [alice2.device_id],
            "@nobody:localhost": [],
            "@someone:elsewhere.example": [],
        }),
    )
    .await;
    let devices = seen["device_keys"][&alice.user_id].as_object().unwrap();
    assert_eq!(devices.keys().collect::<Vec<_>>(), vec![&alice2.device_id]);
    assert!(
        seen["device_keys"].get("@nobody:localhost").is_none(),
        "{seen}"
    );
    assert!(seen["failures"]["elsewhere.example"].is_object(), "{seen}");

    // Re-uploading the same one-time key is a no-op; a different key under its id is not.
    let answer = upload(
        &alice,
        json!({ "one_time_keys": { "signed_curve25519:AAAA": signed_key(&alice, 1, false) } }),
    )
    .await;
    assert_eq!(answer["one_time_key_counts"]["signed_curve25519"], 2);
    let (status, body) = alice
        .post(
            "/keys/upload",
            json!({ "one_time_keys": { "signed_curve25519:AAAA": signed_key(&alice, 9, false) } }),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // Keys must be the uploader's and signed by the device.
    let mut forged = device_keys(&alice);
    forged["keys"][format!("curve25519:{}", alice.device_id)] = json!("another+key");
    let (status, body) = alice
        .post("/keys/upload", json!({ "device_keys": forged }))
        .await;
    assert_error(status, &body, 400, "M_INVALID_SIGNATURE");
    let (status, body) = bob
        .post(
            "/keys/upload",
            json!({ "device_keys": device_keys(&alice) }),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice
        .post(
            "/keys/upload",
            json!({ "one_time_keys": { "no-algorithm": "abc" } }),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    server.stop().await;
}

#[tokio::test]
async fn a_one_time_key_claimed_twice_concurrently_is_handed_out_once() {
    let server = TestServer::start().await;
    let (alice, bob, _) = two_users_in_a_room(&server).await;
    let bob2 = bob.another_device().await;
    upload(
        &alice,
        json!({
            "device_keys": device_keys(&alice),
            "one_time_keys": { "signed_curve25519:ONLY": signed_key(&alice, 1, false) },
        }),
    )
    .await;
    let (a, b) = tokio::join!(
        claim(&bob, &alice.user_id, &alice.device_id),
        claim(&bob2, &alice.user_id, &alice.device_id)
    );
    let handed_out: Vec<&Value> = [&a, &b].into_iter().filter(|v| !v.is_null()).collect();
    assert_eq!(handed_out.len(), 1, "one claim gets the key: {a} / {b}");
    assert_eq!(
        handed_out[0]["signed_curve25519:ONLY"],
        signed_key(&alice, 1, false)
    );

    // Many keys, many concurrent claims: no key twice, and oldest uploads first.
    let keys: serde_json::Map<String, Value> = (0..5)
        .map(|n| {
            (
                format!("signed_curve25519:K{n}"),
                signed_key(&alice, n, false),
            )
        })
        .collect();
    upload(&alice, json!({ "one_time_keys": keys })).await;
    upload(
        &alice,
        json!({ "one_time_keys": { "signed_curve25519:LATE": signed_key(&alice, 99, false) } }),
    )
    .await;
    let claims = (0..8).map(|i| {
        let client = if i % 2 == 0 { &bob } else { &bob2 };
        claim(client, &alice.user_id, &alice.device_id)
    });
    let results = futures_util::future::join_all(claims).await;
    let mut ids: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_object())
        .flat_map(|o| o.keys().cloned())
        .collect();
    assert_eq!(ids.len(), 6, "{results:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "a key was handed out twice: {results:?}");
    let (_, body) = alice.post("/keys/upload", json!({})).await;
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 0);
    server.stop().await;
}

#[tokio::test]
async fn the_fallback_key_serves_when_one_time_keys_run_out() {
    let server = TestServer::start().await;
    let (alice, bob, _) = two_users_in_a_room(&server).await;
    upload(
        &alice,
        json!({
            "device_keys": device_keys(&alice),
            "one_time_keys": { "signed_curve25519:OTK": signed_key(&alice, 1, false) },
            "fallback_keys": { "signed_curve25519:FB1": signed_key(&alice, 100, true) },
        }),
    )
    .await;
    let sync = alice.sync("timeout=0").await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 1);
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    let first = claim(&bob, &alice.user_id, &alice.device_id).await;
    assert!(first.get("signed_curve25519:OTK").is_some(), "{first}");
    let second = claim(&bob, &alice.user_id, &alice.device_id).await;
    assert_eq!(
        second["signed_curve25519:FB1"],
        signed_key(&alice, 100, true),
        "{second}"
    );
    // The fallback key is not consumed; the device is told it was used.
    let third = claim(&bob, &alice.user_id, &alice.device_id).await;
    assert_eq!(third, second);
    let sync = alice.sync("timeout=0").await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));

    // A new fallback key replaces it and is unused again.
    upload(
        &alice,
        json!({ "fallback_keys": { "signed_curve25519:FB2": signed_key(&alice, 200, true) } }),
    )
    .await;
    let sync = alice.sync("timeout=0").await;
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    let fourth = claim(&bob, &alice.user_id, &alice.device_id).await;
    assert!(fourth.get("signed_curve25519:FB2").is_some(), "{fourth}");
    // A device without keys is simply absent.
    let none = claim(&alice, &bob.user_id, &bob.device_id).await;
    assert!(none.is_null(), "{none}");
    server.stop().await;
}

#[tokio::test]
async fn device_lists_changed_appears_in_the_other_users_sync_after_a_new_device_logs_in() {
    let server = TestServer::start().await;
    let (alice, bob, room) = two_users_in_a_room(&server).await;
    let carol = Client::new(&server, "carol").await;
    upload(&alice, json!({ "device_keys": device_keys(&alice) })).await;
    let before = bob.sync("timeout=0").await;
    let since = before["next_batch"].as_str().unwrap().to_owned();
    let carol_before = carol.sync("timeout=0").await;

    // Bob long-polls; Alice logs in on a new device and uploads its keys.
    let poll_query = format!("since={since}&timeout=10000");
    let poll = bob.sync(&poll_query);
    let login = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let alice2 = alice.another_device().await;
        upload(&alice2, json!({ "device_keys": device_keys(&alice2) })).await;
        alice2
    };
    let (woken, alice2) = tokio::join!(poll, login);
    assert_eq!(
        woken["device_lists"]["changed"],
        json!([alice.user_id]),
        "{woken}"
    );
    // Carol shares no room with Alice: she hears nothing of it.
    let carol_after = carol.sync_since(&carol_before["next_batch"]).await;
    assert!(carol_after.get("device_lists").is_none(), "{carol_after}");

    // /keys/changes tells the same between the two tokens.
    let next = bob.sync_since(&before["next_batch"]).await;
    let to = next["next_batch"].as_str().unwrap();
    let (status, changes) = bob
        .get(&format!("/keys/changes?from={since}&to={to}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{changes}");
    assert_eq!(changes["changed"], json!([alice.user_id]));

    // Carol joins the room: Bob is told to fetch her keys, and she his and Alice's.
    let bob_before_carol = bob.sync_since(&next["next_batch"]).await;
    let carol_since = carol.sync("timeout=0").await["next_batch"].clone();
    let (status, _) = alice.invite(&room, &carol.user_id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(carol.join(&room).await.0, StatusCode::OK);
    let bob_sees = bob.sync_since(&bob_before_carol["next_batch"]).await;
    assert_eq!(bob_sees["device_lists"]["changed"], json!([carol.user_id]));
    let carol_sees = carol.sync_since(&carol_since).await;
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    assert_eq!(carol_sees["device_lists"]["changed"], json!(expected));

    // Bob leaves: Alice and Carol no longer share a room with him.
    let alice_since = alice2.sync("timeout=0").await["next_batch"].clone();
    let (status, _) = bob.post(&format!("/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let alice_sees = alice2.sync_since(&alice_since).await;
    assert_eq!(
        alice_sees["device_lists"]["left"],
        json!([bob.user_id]),
        "{alice_sees}"
    );

    // Deleting a device deletes its keys and tells the users who share a room.
    let carol_since = carol.sync("timeout=0").await["next_batch"].clone();
    let (status, _) = alice
        .call(
            Method::DELETE,
            &format!("/devices/{}", alice2.device_id),
            Some(json!({"auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": alice.user_id},
                "password": "correct horse battery",
            }})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let carol_sees = carol.sync_since(&carol_since).await;
    assert_eq!(
        carol_sees["device_lists"]["changed"],
        json!([alice.user_id])
    );
    let seen = query(&carol, json!({ &alice.user_id: [] })).await;
    let devices = seen["device_keys"][&alice.user_id].as_object().unwrap();
    assert_eq!(devices.keys().collect::<Vec<_>>(), vec![&alice.device_id]);
    server.stop().await;
}

/// Cross-signing keys of `user`, signed as the spec asks.
struct CrossSigning {
    master: SigningKeyPair,
    self_signing: SigningKeyPair,
    user_signing: SigningKeyPair,
}

impl CrossSigning {
    fn new(label: &str) -> Self {
        Self {
            master: cross_signing_pair(&format!("{label}-master")),
            self_signing: cross_signing_pair(&format!("{label}-ssk")),
            user_signing: cross_signing_pair(&format!("{label}-usk")),
        }
    }

    fn key(
        user: &str,
        pair: &SigningKeyPair,
        usage: &str,
        signer: Option<&SigningKeyPair>,
    ) -> Value {
        let public = pair.public_key_base64();
        let mut key = json!({
            "user_id": user,
            "usage": [usage],
            "keys": { format!("ed25519:{public}"): public },
        });
        if let Some(signer) = signer {
            sign_json(&mut key, user, signer).unwrap();
        }
        key
    }

    fn upload_body(&self, user: &str) -> Value {
        json!({
            "master_key": Self::key(user, &self.master, "master", None),
            "self_signing_key": Self::key(user, &self.self_signing, "self_signing", Some(&self.master)),
            "user_signing_key": Self::key(user, &self.user_signing, "user_signing", Some(&self.master)),
        })
    }
}

#[tokio::test]
async fn cross_signing_signatures_with_a_bad_signature_are_refused() {
    let server = TestServer::start().await;
    let (alice, bob, _) = two_users_in_a_room(&server).await;
    upload(&alice, json!({ "device_keys": device_keys(&alice) })).await;
    let alice_keys = CrossSigning::new("alice");
    let bob_keys = CrossSigning::new("bob");

    // First upload needs no password (spec 1.11); the same keys again neither.
    for _ in 0..2 {
        let (status, body) = alice
            .post(
                "/keys/device_signing/upload",
                alice_keys.upload_body(&alice.user_id),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = bob
        .post(
            "/keys/device_signing/upload",
            bob_keys.upload_body(&bob.user_id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Replacing keys needs the password.
    let other = CrossSigning::new("alice-again");
    let (status, challenge) = alice
        .post(
            "/keys/device_signing/upload",
            other.upload_body(&alice.user_id),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(challenge["flows"][0]["stages"], json!(["m.login.password"]));
    // A self-signing key not signed by the master key is refused.
    let mut bad = alice_keys.upload_body(&alice.user_id);
    bad["self_signing_key"] = CrossSigning::key(
        &alice.user_id,
        &alice_keys.self_signing,
        "self_signing",
        Some(&other.master),
    );
    // (A session serves the body it was opened with.)
    let (status, challenge) = alice.post("/keys/device_signing/upload", bad.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    bad["auth"] = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": alice.user_id},
        "password": "correct horse battery",
        "session": challenge["session"],
    });
    let (status, body) = alice.post("/keys/device_signing/upload", bad).await;
    assert_error(status, &body, 400, "M_INVALID_SIGNATURE");

    // Alice signs her device with her self-signing key; Bob sees the signature.
    let ssk_id = format!("ed25519:{}", alice_keys.self_signing.public_key_base64());
    let mut signed_device = device_keys(&alice);
    sign_json(&mut signed_device, &alice.user_id, &alice_keys.self_signing).unwrap();
    // A forged one: signed by a key that is not her self-signing key.
    let mut forged_master = CrossSigning::key(&alice.user_id, &alice_keys.master, "master", None);
    let wrong = SigningKeyPair::from_seed(&[9; 32], &alice.device_id);
    sign_json(&mut forged_master, &alice.user_id, &wrong).unwrap();
    let (status, answer) = alice
        .post(
            "/keys/signatures/upload",
            json!({ &alice.user_id: {
                &alice.device_id: signed_device,
                alice_keys.master.public_key_base64(): forged_master,
            } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let failures = &answer["failures"][&alice.user_id];
    assert!(failures.get(&alice.device_id).is_none(), "{answer}");
    assert_eq!(
        failures[alice_keys.master.public_key_base64()]["errcode"],
        "M_INVALID_SIGNATURE",
        "{answer}"
    );
    // Uploading the same device keys again, with another signature and an explicit null
    // for the keys it does not send, keeps the self-signing signature.
    let mut resigned = device_keys(&alice);
    resigned["signatures"][&alice.user_id]["ed25519:EXTRA"] = json!("c2lnbmF0dXJl");
    upload(
        &alice,
        json!({ "device_keys": resigned, "one_time_keys": null, "fallback_keys": null }),
    )
    .await;
    let seen = query(&bob, json!({ &alice.user_id: [] })).await;
    assert!(
        seen["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id]
            [&ssk_id]
            .is_string(),
        "{seen}"
    );
    // Merged with the device's own signatures as uploaded, not instead of them.
    let own_signatures =
        &seen["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
    assert_eq!(own_signatures["ed25519:EXTRA"], "c2lnbmF0dXJl", "{seen}");
    assert_eq!(
        own_signatures[format!("ed25519:{}", alice.device_id)],
        resigned["signatures"][&alice.user_id][format!("ed25519:{}", alice.device_id)],
        "{seen}"
    );
    assert_eq!(
        seen["master_keys"][&alice.user_id]["keys"],
        CrossSigning::key(&alice.user_id, &alice_keys.master, "master", None)["keys"]
    );
    assert!(
        seen["self_signing_keys"][&alice.user_id].is_object(),
        "{seen}"
    );
    // The user-signing key is shown to its owner only.
    assert!(
        seen["user_signing_keys"].get(&alice.user_id).is_none(),
        "{seen}"
    );
    let own = query(&alice, json!({ &alice.user_id: [] })).await;
    assert!(
        own["user_signing_keys"][&alice.user_id].is_object(),
        "{own}"
    );

    // Alice signs Bob's master key with her user-signing key: she sees it, Bob does not.
    // Only Alice's devices hear of it, as a change of Bob's keys.
    let alice_since = alice.sync("timeout=0").await["next_batch"].clone();
    let bob_since = bob.sync("timeout=0").await["next_batch"].clone();
    let usk_id = format!("ed25519:{}", alice_keys.user_signing.public_key_base64());
    let mut bob_master = CrossSigning::key(&bob.user_id, &bob_keys.master, "master", None);
    sign_json(&mut bob_master, &alice.user_id, &alice_keys.user_signing).unwrap();
    let (status, answer) = alice
        .post(
            "/keys/signatures/upload",
            json!({ &bob.user_id: { bob_keys.master.public_key_base64(): bob_master } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["failures"], json!({}), "{answer}");
    let alice_sync = alice.sync_since(&alice_since).await;
    assert_eq!(
        alice_sync["device_lists"]["changed"],
        json!([bob.user_id]),
        "{alice_sync}"
    );
    let bob_sync = bob.sync_since(&bob_since).await;
    assert!(bob_sync.get("device_lists").is_none(), "{bob_sync}");
    let (status, changes) = alice
        .get(&format!(
            "/keys/changes?from={}&to={}",
            alice_since.as_str().unwrap(),
            alice_sync["next_batch"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{changes}");
    assert_eq!(changes["changed"], json!([bob.user_id]), "{changes}");
    let alice_view = query(&alice, json!({ &bob.user_id: [] })).await;
    assert!(
        alice_view["master_keys"][&bob.user_id]["signatures"][&alice.user_id][&usk_id].is_string(),
        "{alice_view}"
    );
    let bob_view = query(&bob, json!({ &bob.user_id: [] })).await;
    assert!(
        bob_view["master_keys"][&bob.user_id]["signatures"]
            .get(&alice.user_id)
            .is_none(),
        "{bob_view}"
    );
    // A signature of Bob's master key by a key that is not Alice's user-signing key.
    let mut bob_master = CrossSigning::key(&bob.user_id, &bob_keys.master, "master", None);
    let impostor =
        SigningKeyPair::from_seed(&[3; 32], &alice_keys.user_signing.public_key_base64());
    sign_json(&mut bob_master, &alice.user_id, &impostor).unwrap();
    let (_, answer) = alice
        .post(
            "/keys/signatures/upload",
            json!({ &bob.user_id: { bob_keys.master.public_key_base64(): bob_master } }),
        )
        .await;
    assert_eq!(
        answer["failures"][&bob.user_id][bob_keys.master.public_key_base64()]["errcode"],
        "M_INVALID_SIGNATURE",
        "{answer}"
    );
    server.stop().await;
}

#[tokio::test]
async fn key_backup_versions_and_session_replacement_rules() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let (status, body) = alice.get("/room_keys/version").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let auth_data = json!({"public_key": "abcdefg", "signatures": {}});
    let algorithm = "m.megolm_backup.v1.curve25519-aes-sha2";
    let (status, created) = alice
        .post(
            "/room_keys/version",
            json!({"algorithm": algorithm, "auth_data": auth_data}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let v1 = created["version"].as_str().unwrap().to_owned();
    let (_, current) = alice.get("/room_keys/version").await;
    assert_eq!(current["version"], v1);
    assert_eq!(current["count"], 0);
    assert_eq!(current["auth_data"], auth_data);
    let etag0 = current["etag"].as_str().unwrap().to_owned();

    let session = |verified: bool, index: u64, forwarded: u64, tag: &str| {
        json!({
            "first_message_index": index,
            "forwarded_count": forwarded,
            "is_verified": verified,
            "session_data": {"ciphertext": tag, "ephemeral": "e", "mac": "m"},
        })
    };
    let path = |room: &str, session: &str, v: &str| {
        format!("/room_keys/keys/{room}/{session}?version={v}")
    };
    let room = "!room:localhost";
    let (status, body) = alice
        .put(&path(room, "S1", &v1), session(false, 5, 0, "first"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1);
    assert_ne!(body["etag"], etag0);
    let etag1 = body["etag"].clone();

    // Worse keys do not replace it (and change nothing, not even the etag).
    for worse in [
        session(false, 6, 0, "later index"),
        session(false, 5, 1, "forwarded"),
    ] {
        let (_, body) = alice.put(&path(room, "S1", &v1), worse).await;
        assert_eq!(body["etag"], etag1);
    }
    let (_, stored) = alice.get(&path(room, "S1", &v1)).await;
    assert_eq!(stored["session_data"]["ciphertext"], "first");
    // A verified key wins even with a later index; then only a better verified one.
    alice
        .put(&path(room, "S1", &v1), session(true, 9, 3, "verified"))
        .await;
    alice
        .put(&path(room, "S1", &v1), session(false, 0, 0, "unverified"))
        .await;
    alice
        .put(
            &path(room, "S1", &v1),
            session(true, 9, 2, "fewer forwards"),
        )
        .await;
    let (_, stored) = alice.get(&path(room, "S1", &v1)).await;
    assert_eq!(stored["session_data"]["ciphertext"], "fewer forwards");

    // Whole-room and whole-backup forms.
    let (status, body) = alice
        .put(
            &format!("/room_keys/keys?version={v1}"),
            json!({"rooms": {"!other:localhost": {"sessions": {"S2": session(false, 0, 0, "s2")}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 2);
    let (_, all) = alice.get(&format!("/room_keys/keys?version={v1}")).await;
    assert_eq!(all["rooms"].as_object().unwrap().len(), 2, "{all}");
    let (_, empty_room) = alice
        .get(&format!("/room_keys/keys/!nothing:localhost?version={v1}"))
        .await;
    assert_eq!(empty_room, json!({"sessions": {}}));
    let (status, body) = alice.get(&path(room, "nope", &v1)).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice.get("/room_keys/keys").await;
    assert_error(status, &body, 400, "M_MISSING_PARAM");

    // A new version: the old one refuses writes, naming the current one.
    let (_, created) = alice
        .post(
            "/room_keys/version",
            json!({"algorithm": algorithm, "auth_data": auth_data}),
        )
        .await;
    let v2 = created["version"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let (status, body) = alice
        .put(&path(room, "S3", &v1), session(false, 0, 0, "late"))
        .await;
    assert_error(status, &body, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(body["current_version"], v2);

    // Only auth_data may change.
    let (status, body) = alice
        .put(
            &format!("/room_keys/version/{v2}"),
            json!({"algorithm": "other.algorithm", "auth_data": {}}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, _) = alice
        .put(
            &format!("/room_keys/version/{v2}"),
            json!({"algorithm": algorithm, "auth_data": {"public_key": "new"}, "version": v2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, info) = alice.get(&format!("/room_keys/version/{v2}")).await;
    assert_eq!(info["auth_data"]["public_key"], "new");

    // Deleting keys and versions.
    let (_, body) = alice
        .call(Method::DELETE, &path(room, "S1", &v1), None)
        .await;
    assert_eq!(body["count"], 1);
    let (status, _) = alice
        .call(Method::DELETE, &format!("/room_keys/version/{v1}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = alice.get(&format!("/room_keys/version/{v1}")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, _) = alice
        .call(Method::DELETE, &format!("/room_keys/version/{v1}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "deleting again is fine");
    let (status, body) = alice
        .call(Method::DELETE, "/room_keys/version/77", None)
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn dehydrated_devices_are_not_offered() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let (status, body) = server
        .get(
            "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device",
            Some(&alice.token),
        )
        .await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    server.stop().await;
}
