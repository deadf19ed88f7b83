//! Accounts over HTTP, as a client sees them: register, log in, devices, passwords,
//! deactivation. Spec: client-server API, "Client Authentication" and "Device Management".

use crate::common;

use common::{assert_error, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn registration_goes_through_the_dummy_flow() {
    let s = TestServer::start().await;
    let body = json!({"username": "alice", "password": "wonderland", "initial_device_display_name": "laptop"});
    let (status, challenge) = s
        .post("/_matrix/client/v3/register", None, body.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.dummy"]}]));
    assert_eq!(challenge["params"], json!({}));
    assert!(challenge.get("errcode").is_none(), "{challenge}");
    let session = challenge["session"].as_str().unwrap();

    let mut body = body;
    body["auth"] = json!({"type": "m.login.dummy", "session": session});
    let (status, done) = s.post("/_matrix/client/v3/register", None, body).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["user_id"], "@alice:localhost");
    assert_eq!(done["home_server"], "localhost");
    let token = done["access_token"].as_str().unwrap();
    assert!(token.len() >= 43, "token too short: {token}");

    let (status, me) = s
        .get("/_matrix/client/v3/account/whoami", Some(token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        me,
        json!({"user_id": "@alice:localhost", "device_id": done["device_id"], "is_guest": false})
    );

    // The device got the requested name.
    let (_, devices) = s.get("/_matrix/client/v3/devices", Some(token)).await;
    assert_eq!(devices["devices"][0]["display_name"], "laptop");
    s.stop().await;
}

#[tokio::test]
async fn an_empty_first_request_gets_the_flows_and_a_session_survives_a_failed_attempt() {
    let s = TestServer::start().await;
    let (status, challenge) = s.post("/_matrix/client/v3/register", None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert!(challenge["session"].is_string());
    // Auth passes but the password is missing: 400, and the session stays usable.
    let session = challenge["session"].clone();
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "pat", "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_error(status, &body, 400, "M_MISSING_PARAM");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "pat", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Bad device parameters are refused before anything is created.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "quin", "password": "pw", "device_id": ""}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, _) = s
        .get("/_matrix/client/v3/register/available?username=quin", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn taken_and_invalid_names_are_refused_before_auth() {
    let s = TestServer::start().await;
    s.register("bob", "secret-1").await;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "bob", "password": "x"}),
        )
        .await;
    assert_error(status, &body, 400, "M_USER_IN_USE");
    // Requested names are lower-cased, so BOB is bob.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "BOB", "password": "x"}),
        )
        .await;
    assert_error(status, &body, 400, "M_USER_IN_USE");
    for bad in ["bob smith", "bøb", "a:b", "", "@carol:elsewhere.org"] {
        let (status, body) = s
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": bad, "password": "x"}),
            )
            .await;
        assert_error(status, &body, 400, "M_INVALID_USERNAME");
    }
    let (status, body) = s
        .get("/_matrix/client/v3/register/available?username=bob", None)
        .await;
    assert_error(status, &body, 400, "M_USER_IN_USE");
    let (status, body) = s
        .get("/_matrix/client/v3/register/available?username=carol", None)
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"available": true})));
    let (status, body) = s
        .get(
            "/_matrix/client/v3/register/available?username=Not%20Valid",
            None,
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_USERNAME");
    let (status, body) = s.get("/_matrix/client/v3/register/available", None).await;
    assert_error(status, &body, 400, "M_MISSING_PARAM");
    s.stop().await;
}

#[tokio::test]
async fn inhibit_login_creates_the_account_without_a_token() {
    let s = TestServer::start().await;
    let (_, challenge) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "dora", "password": "pw", "inhibit_login": true}),
        )
        .await;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "dora", "password": "pw", "inhibit_login": true,
                   "auth": {"type": "m.login.dummy", "session": challenge["session"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@dora:localhost");
    assert!(body.get("access_token").is_none());
    let (status, _) = s.login("dora", "pw").await;
    assert_eq!(status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn login_with_right_and_wrong_password() {
    let s = TestServer::start().await;
    let (user_id, _, _) = s.register("erin", "correct horse").await;

    let (status, flows) = s.get("/_matrix/client/v3/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flows, json!({"flows": [{"type": "m.login.password"}]}));

    let (status, body) = s.login("erin", "correct horse").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id);
    let (status, body) = s.login(&user_id, "correct horse").await;
    assert_eq!(status, StatusCode::OK, "login by full id: {body}");
    // The deprecated top-level `user` still works.
    let (status, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "user": "erin", "password": "correct horse"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = s.login("erin", "wrong horse").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = s.login("nobody", "whatever").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.token", "token": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn login_with_an_existing_device_id_replaces_its_token() {
    let s = TestServer::start().await;
    s.register("fay", "pw").await;
    let login = |device: &str| {
        s.post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "fay"},
                   "password": "pw", "device_id": device}),
        )
    };
    let (_, first) = login("PHONE").await;
    assert_eq!(first["device_id"], "PHONE");
    let (_, second) = login("PHONE").await;
    // A name given for a known device is ignored (spec: only for new devices).
    let body = |name: &str| {
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "fay"},
               "password": "pw", "device_id": "TABLET", "initial_device_display_name": name})
    };
    s.post("/_matrix/client/v3/login", None, body("Tablet"))
        .await;
    let (_, again) = s
        .post("/_matrix/client/v3/login", None, body("Renamed"))
        .await;
    let (_, device) = s
        .get(
            "/_matrix/client/v3/devices/TABLET",
            again["access_token"].as_str(),
        )
        .await;
    assert_eq!(device["display_name"], "Tablet");
    let (status, body) = s
        .get(
            "/_matrix/client/v3/account/whoami",
            first["access_token"].as_str(),
        )
        .await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    let (status, _) = s
        .get(
            "/_matrix/client/v3/account/whoami",
            second["access_token"].as_str(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn logout_kills_the_token_and_logout_all_kills_every_token() {
    let s = TestServer::start().await;
    let (_, token, device) = s.register("gus", "pw").await;
    let (status, body) = s
        .post("/_matrix/client/v3/logout", Some(&token), json!({}))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = s
        .get("/_matrix/client/v3/account/whoami", Some(&token))
        .await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(body["soft_logout"], false);

    let (_, a) = s.login("gus", "pw").await;
    let (_, b) = s.login("gus", "pw").await;
    let (_, devices) = s
        .get("/_matrix/client/v3/devices", a["access_token"].as_str())
        .await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&device.as_str()), "logout deletes the device");
    let (status, _) = s
        .post(
            "/_matrix/client/v3/logout/all",
            a["access_token"].as_str(),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for token in [&a, &b] {
        let (status, body) = s
            .get(
                "/_matrix/client/v3/account/whoami",
                token["access_token"].as_str(),
            )
            .await;
        assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    }
    s.stop().await;
}

#[tokio::test]
async fn tokens_are_checked() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/v3/account/whoami", None).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (status, body) = s
        .get(
            "/_matrix/client/v3/account/whoami",
            Some("ow_not-a-real-token"),
        )
        .await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    // The deprecated query parameter works too.
    let (_, token, _) = s.register("hal", "pw").await;
    let (status, me) = s
        .get(
            &format!("/_matrix/client/v3/account/whoami?access_token={token}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user_id"], "@hal:localhost");
    s.stop().await;
}

#[tokio::test]
async fn devices_can_be_listed_renamed_and_deleted_with_the_password() {
    let s = TestServer::start().await;
    let (_, token, device) = s.register("ivy", "pw").await;
    let (_, other) = s.login("ivy", "pw").await;
    let other_device = other["device_id"].as_str().unwrap().to_owned();
    let other_token = other["access_token"].as_str().unwrap().to_owned();

    let path = format!("/_matrix/client/v3/devices/{other_device}");
    let (status, body) = s
        .call(
            Method::PUT,
            &path,
            Some(&token),
            Some(json!({"display_name": "tablet"})),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = s.get(&path, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["display_name"], "tablet");
    assert_eq!(body["device_id"], other_device.as_str());
    assert!(body["last_seen_ts"].is_u64());
    // Omitting display_name leaves it unchanged.
    s.call(Method::PUT, &path, Some(&token), Some(json!({})))
        .await;
    assert_eq!(s.get(&path, Some(&token)).await.1["display_name"], "tablet");

    let (status, body) = s.get("/_matrix/client/v3/devices/NOPE", Some(&token)).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = s
        .call(
            Method::PUT,
            "/_matrix/client/v3/devices/NOPE",
            Some(&token),
            Some(json!({"display_name": "x"})),
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Deleting needs the password: first a challenge, then a wrong password, then the right one.
    let (status, challenge) = s.call(Method::DELETE, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.password"]}])
    );
    let session = challenge["session"].as_str().unwrap();
    let auth = |password: &str| {
        json!({"auth": {"type": "m.login.password", "session": session,
        "identifier": {"type": "m.id.user", "user": "ivy"}, "password": password}})
    };
    let (status, body) = s
        .call(Method::DELETE, &path, Some(&token), Some(auth("wrong")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(body["session"], session);
    let (status, body) = s
        .call(Method::DELETE, &path, Some(&token), Some(auth("pw")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = s
        .get("/_matrix/client/v3/account/whoami", Some(&other_token))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A session ends with its successful operation: it cannot be replayed.
    let (status, body) = s
        .call(Method::DELETE, &path, Some(&token), Some(auth("pw")))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    // Deleting a device that is already gone succeeds (after auth), as the spec says.
    let (_, challenge) = s.call(Method::DELETE, &path, Some(&token), None).await;
    let again = json!({"auth": {"type": "m.login.password", "session": challenge["session"],
        "identifier": {"type": "m.id.user", "user": "ivy"}, "password": "pw"}});
    let (status, _) = s
        .call(Method::DELETE, &path, Some(&token), Some(again))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Bulk deletion (the session is bound to the list of devices it opened for).
    let (_, third) = s.login("ivy", "pw").await;
    let third_device = third["device_id"].as_str().unwrap();
    let (status, challenge) = s
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&token),
            json!({"devices": [third_device, "UNKNOWN"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = s
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&token),
            json!({"devices": [third_device, "UNKNOWN"], "auth": {"type": "m.login.password", "session": challenge["session"],
                   "identifier": {"type": "m.id.user", "user": "@ivy:localhost"}, "password": "pw"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, devices) = s.get("/_matrix/client/v3/devices", Some(&token)).await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![device.as_str()]);
    s.stop().await;
}

#[tokio::test]
async fn password_change_needs_the_old_password_and_logs_out_other_devices() {
    let s = TestServer::start().await;
    let (_, token, _) = s.register("jan", "old-pw").await;
    let (_, other) = s.login("jan", "old-pw").await;
    let (status, challenge) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({"new_password": "new-pw"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({"new_password": "new-pw", "auth": {"type": "m.login.password", "session": challenge["session"],
                   "identifier": {"type": "m.id.user", "user": "jan"}, "password": "old-pw"}}),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert_eq!(s.login("jan", "old-pw").await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.login("jan", "new-pw").await.0, StatusCode::OK);
    // This device stays logged in, the other one does not.
    assert_eq!(
        s.get("/_matrix/client/v3/account/whoami", Some(&token))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        s.get(
            "/_matrix/client/v3/account/whoami",
            other["access_token"].as_str()
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );

    // With logout_devices=false the other devices stay.
    let (_, keep) = s.login("jan", "new-pw").await;
    let (_, challenge) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({"new_password": "third", "logout_devices": false}),
        )
        .await;
    let (status, _) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({"new_password": "third", "logout_devices": false, "auth": {"type": "m.login.password",
                   "session": challenge["session"], "identifier": {"type": "m.id.user", "user": "jan"}, "password": "new-pw"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        s.get(
            "/_matrix/client/v3/account/whoami",
            keep["access_token"].as_str()
        )
        .await
        .0,
        StatusCode::OK
    );
    s.stop().await;
}

#[tokio::test]
async fn a_uia_session_is_bound_to_its_operation() {
    let s = TestServer::start().await;
    let (_, token, _) = s.register("kim", "pw").await;
    let (_, challenge) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({"new_password": "x"}),
        )
        .await;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&token),
            json!({"auth": {"type": "m.login.password", "session": challenge["session"],
                   "identifier": {"type": "m.id.user", "user": "kim"}, "password": "pw"}}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&token),
            json!({"auth": {"type": "m.login.password", "session": "made-up"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn deactivation_ends_every_session_and_keeps_the_name_reserved() {
    let s = TestServer::start().await;
    let (_, token, _) = s.register("lea", "pw").await;
    let (status, challenge) = s
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&token),
            json!({"auth": {"type": "m.login.password", "session": challenge["session"],
                   "identifier": {"type": "m.id.user", "user": "lea"}, "password": "pw"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "success");
    assert_eq!(
        s.get("/_matrix/client/v3/account/whoami", Some(&token))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = s.login("lea", "pw").await;
    assert_error(status, &body, 403, "M_USER_DEACTIVATED");
    let (status, body) = s.login("lea", "wrong").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "lea", "password": "pw"}),
        )
        .await;
    assert_error(status, &body, 400, "M_USER_IN_USE");
    s.stop().await;
}

#[tokio::test]
async fn guests_are_refused_unless_enabled() {
    let s = TestServer::start().await;
    let (status, body) = s
        .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
        .await;
    assert_error(status, &body, 403, "M_GUEST_ACCESS_FORBIDDEN");
    let (status, body) = s
        .post("/_matrix/client/v3/register?kind=robot", None, json!({}))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    s.stop().await;

    let s = TestServer::start_with(|c| c.registration.allow_guests = true).await;
    // Spec: a guest's device id is the server's choice, and inhibit_login is ignored.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register?kind=guest",
            None,
            json!({"device_id": "MINE", "inhibit_login": true}),
        )
        .await;
    assert_ne!(body["device_id"], "MINE");
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, me) = s
        .get(
            "/_matrix/client/v3/account/whoami",
            body["access_token"].as_str(),
        )
        .await;
    assert_eq!(me["is_guest"], true);
    assert_eq!(me["user_id"], body["user_id"]);
    s.stop().await;
}

#[tokio::test]
async fn registration_can_be_turned_off() {
    let s = TestServer::start_with(|c| c.registration.enabled = false).await;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "max", "password": "pw"}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Accounts made by the operator still work.
    let running = s.running();
    let user = ourwhats::core::UserId::parse("@max:localhost").unwrap();
    running
        .services
        .accounts
        .create_account(&user, Some("pw"), true, false)
        .await
        .unwrap();
    assert_eq!(s.login("max", "pw").await.0, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn a_registration_token_is_required_when_configured() {
    let s = TestServer::start_with(|c| c.registration.token = Some("let-me-in".into())).await;
    let body = json!({"username": "ned", "password": "pw"});
    let (status, challenge) = s
        .post("/_matrix/client/v3/register", None, body.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.registration_token"]}])
    );
    let session = challenge["session"].as_str().unwrap();

    let mut wrong = body.clone();
    wrong["auth"] =
        json!({"type": "m.login.registration_token", "token": "guess", "session": session});
    let (status, failed) = s.post("/_matrix/client/v3/register", None, wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(failed["errcode"], "M_FORBIDDEN");

    let mut dummy = body.clone();
    dummy["auth"] = json!({"type": "m.login.dummy", "session": session});
    let (status, _) = s.post("/_matrix/client/v3/register", None, dummy).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "dummy is not offered when a token is required"
    );

    let mut right = body;
    right["auth"] =
        json!({"type": "m.login.registration_token", "token": "let-me-in", "session": session});
    let (status, done) = s.post("/_matrix/client/v3/register", None, right).await;
    assert_eq!(status, StatusCode::OK, "{done}");

    let path = "/_matrix/client/v1/register/m.login.registration_token/validity";
    assert_eq!(
        s.get(&format!("{path}?token=let-me-in"), None).await.1,
        json!({"valid": true})
    );
    assert_eq!(
        s.get(&format!("{path}?token=nope"), None).await.1,
        json!({"valid": false})
    );
    s.stop().await;
}

/// A deactivated account leaves its rooms, and its pending invites are rejected (as
/// Synapse does), so member lists do not keep a user who cannot come back.
#[tokio::test]
async fn a_deactivated_user_leaves_their_rooms_and_rejects_their_invites() {
    let s = TestServer::start().await;
    let alice = common::client::Client::new(&s, "alice").await;
    let bob = common::client::Client::new(&s, "bob").await;
    let joined = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&joined).await.0, StatusCode::OK);
    let invited = alice.create_room(json!({})).await;
    assert_eq!(alice.invite(&invited, &bob.user_id).await.0, StatusCode::OK);

    let (status, body) = bob.deactivate(false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // In a task of its own, after the answer.
    for room in [&joined, &invited] {
        let member = alice.member_once(room, &bob.user_id, "leave").await;
        assert_eq!(member["membership"], "leave", "{room}: {member}");
        assert!(member.get("displayname").is_none(), "{member}");
    }
    s.stop().await;
}
