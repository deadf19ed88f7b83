//! Interop: the receipt checks 1–3 (`core::pdu_checks`) and our event ids on PDUs a real
//! Synapse made. Synapse creates a v11 and a v12 room with state and messages; the PDUs
//! are read from its database as it would send them, and each must pass our format,
//! signature (with Synapse's own key) and content hash checks and hash to the id
//! Synapse gave it.
//!
//! Needs Synapse in a venv (`$SYNAPSE_VENV`, default `~/.cache/ourwhats/synapse-venv`);
//! the test makes it when missing (`federation-tests/synapse/setup_synapse.sh`, the
//! pinned version), as `.ci/run` does up front.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ourwhats::core::pdu_checks::{self, KnownKey, SignatureCheck};
use ourwhats::core::{event_hashes, RoomVersion, SigningKeyPair};
use serde_json::{json, Value};

fn venv() -> PathBuf {
    std::env::var_os("SYNAPSE_VENV").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ourwhats/synapse-venv"),
        PathBuf::from,
    )
}

struct Synapse {
    process: Child,
    base: String,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn start_synapse(dir: &Path) -> Synapse {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let python = venv().join("bin/python");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/synapse_config.py");
    let status = Command::new(&python)
        .args([config, dir.to_str().unwrap(), &port.to_string()])
        .status()
        .expect("Synapse's venv python");
    assert!(status.success(), "synapse_config.py failed");
    let process = Command::new(&python)
        .args(["-m", "synapse.app.homeserver", "-c", "homeserver.yaml"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Synapse starts");
    Synapse {
        process,
        base: format!("http://127.0.0.1:{port}/_matrix/client/v3"),
    }
}

async fn post(http: &reqwest::Client, url: &str, token: Option<&str>, body: Value) -> Value {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

/// `(event_id, room version, PDU)` of every event in Synapse's database.
fn stored_pdus(dir: &Path) -> Vec<(String, String, Value)> {
    let script = "import json, sqlite3, sys\n\
        db = sqlite3.connect(sys.argv[1])\n\
        rows = db.execute('SELECT e.event_id, r.room_version, e.json FROM event_json e \
                           JOIN rooms r ON r.room_id = e.room_id').fetchall()\n\
        print(json.dumps([[i, v, json.loads(j)] for i, v, j in rows]))";
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", script, dir.join("homeserver.db").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, String, Value)> = serde_json::from_slice(&out.stdout).unwrap();
    rows
}

/// Makes the Synapse venv when it lacks the pinned version.
fn ensure_venv() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/federation-tests/synapse/setup_synapse.sh"
    );
    let status = Command::new("bash")
        .arg(script)
        .arg(venv())
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "setup_synapse.sh failed: python3-venv and PyPI are needed"
    );
}

#[tokio::test]
async fn synapse_pdus_pass_our_receipt_checks_and_hash_to_their_ids() {
    ensure_venv();
    // The provider the server installs at start; this test starts none of ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let synapse = start_synapse(dir.path());
    let http = reqwest::Client::new();
    let versions = synapse.base.replace("/v3", "/versions");
    let mut up = false;
    for _ in 0..600 {
        if http
            .get(&versions)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "Synapse did not start");

    let register = format!("{}/register", synapse.base);
    let first = post(
        &http,
        &register,
        None,
        json!({"username": "alice", "password": "pw-alice-123"}),
    )
    .await;
    let session = first["session"].as_str().unwrap();
    let done = post(
        &http,
        &register,
        None,
        json!({"username": "alice", "password": "pw-alice-123",
               "auth": {"type": "m.login.dummy", "session": session}}),
    )
    .await;
    let token = done["access_token"].as_str().unwrap().to_owned();
    for version in ["11", "12"] {
        let created = post(
            &http,
            &format!("{}/createRoom", synapse.base),
            Some(&token),
            json!({"room_version": version, "preset": "public_chat", "name": "interop",
                   "topic": "pdus"}),
        )
        .await;
        let room = created["room_id"]
            .as_str()
            .expect("room created")
            .to_owned();
        for n in 0..3 {
            let url = format!(
                "{}/rooms/{room}/send/m.room.message/t{version}-{n}",
                synapse.base
            );
            let sent: Value = http
                .put(url)
                .bearer_auth(&token)
                .json(&json!({"msgtype": "m.text", "body": format!("hello {n}")}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(sent["event_id"].is_string(), "{sent}");
        }
    }
    drop(synapse);

    let key_text = std::fs::read_to_string(dir.path().join("localhost.signing.key")).unwrap();
    let key = SigningKeyPair::from_text(key_text.trim()).unwrap();
    let known = |server: &str, key_id: &str| {
        (server == "localhost" && key_id == key.key_id()).then(|| KnownKey {
            key: key.verifying_key(),
            valid_until_ts: u64::MAX,
        })
    };
    let pdus = stored_pdus(dir.path());
    let mut checked = [0usize; 2];
    for (event_id, version_id, mut pdu) in pdus {
        let version = RoomVersion::from_id(&version_id).expect("a version we support");
        // What a server sends: the stored event without what only Synapse keeps.
        if let Some(object) = pdu.as_object_mut() {
            object.remove("unsigned");
        }
        pdu_checks::check_format(version, &pdu)
            .unwrap_or_else(|e| panic!("{event_id} (v{version_id}): {e}: {pdu}"));
        assert_eq!(
            pdu_checks::check_signatures(version, &pdu, &known),
            SignatureCheck::Verified,
            "{event_id}"
        );
        let (kept, redacted) = pdu_checks::check_content_hash(version, pdu.clone());
        assert!(!redacted, "{event_id}: content hash");
        assert_eq!(kept, pdu);
        assert_eq!(event_hashes::event_id(&pdu, version).unwrap(), event_id);
        checked[usize::from(version == RoomVersion::V12)] += 1;
    }
    // Create, member, power levels, join rules, history visibility, name, topic and
    // three messages, at least, in each room.
    assert!(checked[0] >= 9 && checked[1] >= 9, "{checked:?}");
}
