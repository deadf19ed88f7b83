//! Interop with a real Synapse (1.163.2 from PyPI, in a venv the harness makes) over
//! verified TLS through the test CA: profile and alias lookups, device key queries,
//! to-device messages and media, both ways. Each direction makes the asking server sign its request and the answering
//! server fetch the asker's key and check the signature.

use std::time::Duration;

use federation_tests::synapse::Synapse;
use federation_tests::{enc, Cluster, User};
use serde_json::{json, Value};

#[tokio::test]
async fn synapse_and_ourwhats_exchange_lookups_keys_to_device_and_media() {
    let cluster = Cluster::start(1).await.unwrap();
    let ours = &cluster.instances[0];
    let synapse = Synapse::start(&cluster.ca).await.unwrap();
    let alice = User::register(ours, "alice").await.unwrap();
    let sam = User::register_at(&synapse.client_url, "sam").await.unwrap();
    assert!(sam.user_id.ends_with(&synapse.server_name));

    // Profiles.
    let (status, _) = alice
        .put(
            &format!("/profile/{}/displayname", enc(&alice.user_id)),
            json!({"displayname": "Alice of ourwhats"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, profile) = sam.get(&format!("/profile/{}", enc(&alice.user_id))).await;
    assert_eq!(
        status,
        200,
        "Synapse asking us: {profile}\n{}",
        synapse.log_tail()
    );
    assert_eq!(profile["displayname"], "Alice of ourwhats");
    let (status, profile) = alice.get(&format!("/profile/{}", enc(&sam.user_id))).await;
    assert_eq!(
        status,
        200,
        "we asking Synapse: {profile}\n{}",
        synapse.log_tail()
    );
    assert_eq!(profile["displayname"], "sam");

    // Aliases.
    let (status, ours_room) = alice
        .post("/createRoom", json!({"room_alias_name": "here"}))
        .await;
    assert_eq!(status, 200, "{ours_room}");
    let (status, theirs_room) = sam
        .post("/createRoom", json!({"room_alias_name": "there"}))
        .await;
    assert_eq!(status, 200, "{theirs_room}");
    let our_alias = format!("#here:{}", ours.name());
    let their_alias = format!("#there:{}", synapse.server_name);
    let (status, found) = sam
        .get(&format!("/directory/room/{}", enc(&our_alias)))
        .await;
    assert_eq!(status, 200, "{found}\n{}", synapse.log_tail());
    assert_eq!(found["room_id"], ours_room["room_id"]);
    let (status, found) = alice
        .get(&format!("/directory/room/{}", enc(&their_alias)))
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["room_id"], theirs_room["room_id"]);
    assert!(
        found["servers"]
            .as_array()
            .unwrap()
            .contains(&json!(synapse.server_name)),
        "{found}"
    );

    // Device keys.
    let alice_keys = alice.upload_device_keys(3).await;
    let sam_keys = sam.upload_device_keys(4).await;
    let (status, answer) = sam
        .post(
            "/keys/query",
            json!({"device_keys": {alice.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["device_keys"][&alice.user_id][&alice.device_id]["keys"],
        alice_keys,
        "Synapse got our user's keys: {answer}\n{}",
        synapse.log_tail()
    );
    let (status, answer) = alice
        .post(
            "/keys/query",
            json!({"device_keys": {sam.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["device_keys"][&sam.user_id][&sam.device_id]["keys"], sam_keys,
        "we got Synapse's user's keys: {answer}"
    );

    // To-device messages, both ways, through each server's federation sender.
    let (_, sam_since) = sam.to_device_events(None, 0, Duration::ZERO).await;
    let (_, alice_since) = alice.to_device_events(None, 0, Duration::ZERO).await;
    let (status, body) = alice
        .put(
            "/sendToDevice/m.test/from-ours",
            json!({"messages": {sam.user_id.clone(): {sam.device_id.clone(): {"hello": "Synapse"}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sam
        .put(
            "/sendToDevice/m.test/from-synapse",
            json!({"messages": {alice.user_id.clone(): {"*": {"hello": "ourwhats"}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (events, _) = sam
        .to_device_events(sam_since, 1, Duration::from_secs(30))
        .await;
    assert_eq!(
        events.len(),
        1,
        "Synapse's user got ours: {events:?}\n{}",
        synapse.log_tail()
    );
    assert_eq!(events[0]["sender"], alice.user_id);
    assert_eq!(events[0]["content"], json!({"hello": "Synapse"}));
    let (events, _) = alice
        .to_device_events(alice_since, 1, Duration::from_secs(30))
        .await;
    assert_eq!(
        events.len(),
        1,
        "our user got Synapse's: {events:?}\n{}",
        synapse.log_tail()
    );
    assert_eq!(events[0]["sender"], sam.user_id);
    assert_eq!(events[0]["content"], json!({"hello": "ourwhats"}));

    // Media, both ways (the federation media endpoints, multipart).
    let ours_mxc = upload(&alice, b"from ourwhats\r\n--with dashes".to_vec()).await;
    let theirs_mxc = upload(&sam, b"from Synapse".to_vec()).await;
    let (status, bytes) = download(&sam, &ours_mxc).await;
    assert_eq!(
        status,
        200,
        "Synapse fetching ours: {}\n{}",
        String::from_utf8_lossy(&bytes),
        synapse.log_tail()
    );
    assert_eq!(bytes, b"from ourwhats\r\n--with dashes");
    let (status, bytes) = download(&alice, &theirs_mxc).await;
    assert_eq!(
        status,
        200,
        "we fetching Synapse's: {}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(bytes, b"from Synapse");
    cluster.shutdown().await;
}

async fn upload(user: &User, bytes: Vec<u8>) -> String {
    let response = user
        .http
        .post(format!(
            "{}/_matrix/media/v3/upload?filename=note.txt",
            user.base
        ))
        .bearer_auth(&user.token)
        .header("Content-Type", "text/plain")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["content_uri"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned()
}

async fn download(user: &User, mxc: &str) -> (u16, Vec<u8>) {
    let path = mxc.trim_start_matches("mxc://");
    let response = user
        .http
        .get(format!(
            "{}/_matrix/client/v1/media/download/{path}",
            user.base
        ))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.bytes().await.unwrap().to_vec(),
    )
}
