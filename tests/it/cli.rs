//! The `ourwhats` binary: version, offline user creation, config errors, signals.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::process::{spawn_server, BIN};

fn config_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("homeserver.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[client]\nlisten = \"127.0.0.1:0\"\n[federation]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("data")
        ),
    )
    .unwrap();
    path
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ourwhats {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn create_user_from_a_password_file_then_refuses_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path());
    let pw = dir.path().join("pw.txt");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let run = || {
        Command::new(BIN)
            .args(["create-user", "alice", "--admin", "--password-file"])
            .arg(&pw)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "created @alice:localhost (admin)"
    );
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already taken"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_bad_config_value_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path());
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("OURWHATS_FEDERATION__ENABLED", "maybe")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("OURWHATS_FEDERATION__ENABLED"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.toml"));
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path());
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("OURWHATS_LOGGING__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    loop {
        let line = lines.next().expect("server exited early").unwrap();
        let record: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
        if record["fields"]["message"] == "client API listening" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The data folder now holds the database and the signing key.
    assert!(dir.path().join("data/signing.key").exists());
    assert!(dir.path().join("data/db").exists());
}

/// An acknowledged registration survives `kill -9` right after the answer: the batch was
/// in the fsynced WAL before the server replied.
#[tokio::test]
async fn acknowledged_writes_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (mut child, base) = spawn_server(&config, None);
    let http = reqwest::Client::new();
    let register = |body: serde_json::Value| {
        http.post(format!("{base}/_matrix/client/v3/register"))
            .json(&body)
            .send()
    };
    let challenge: serde_json::Value =
        register(serde_json::json!({"username": "crash", "password": "pw"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let done = register(serde_json::json!({"username": "crash", "password": "pw",
        "auth": {"type": "m.login.dummy", "session": challenge["session"]}}))
    .await
    .unwrap();
    assert_eq!(done.status(), 200);
    child.kill().unwrap(); // SIGKILL: no shutdown, no flush.
    child.wait().unwrap();

    let (mut child, base) = spawn_server(&config, None);
    let login = http
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&serde_json::json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "crash"}, "password": "pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    child.kill().unwrap();
    child.wait().unwrap();
}
