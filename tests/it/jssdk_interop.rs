//! A real JavaScript client: matrix-js-sdk (the library Element Web is built on), pinned in
//! `tests/interop/jssdk/`, runs a chat story between two users through a real ourwhats on
//! loopback (`tests/interop/jssdk_chat.mjs`): invite and join, messages both ways, an edit,
//! the unread count and a read receipt, typing, a display name, paging back to the room's
//! creation, a leave.
//!
//! The SDK is installed once by `tests/interop/setup_jssdk.sh` (Node.js 20+ and npm) under
//! `~/.cache/ourwhats/jssdk`, or named by `JSSDK_DIR`. `.ci/run` installs it before the
//! tests; without it this test installs it itself.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::TestServer;

/// The folder with matrix-js-sdk installed, made on first use.
fn sdk_dir() -> PathBuf {
    // Not an `OURWHATS_` name: the server reads every `OURWHATS_*` variable as a config key.
    if let Some(dir) = std::env::var_os("JSSDK_DIR") {
        return PathBuf::from(dir);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let dir = home.join(".cache/ourwhats/jssdk");
    // A changed pin (package.json) makes a new install.
    let wanted = std::fs::read(root.join("tests/interop/jssdk/package-lock.json"))
        .expect("the pinned lock file is in the repository");
    let installed = std::fs::read(dir.join("package-lock.json")).ok();
    if installed.as_deref() != Some(wanted.as_slice())
        || !dir.join("node_modules/matrix-js-sdk").exists()
    {
        let status = Command::new("bash")
            .arg(root.join("tests/interop/setup_jssdk.sh"))
            .arg(&dir)
            .status()
            .expect("bash runs");
        assert!(
            status.success(),
            "could not install matrix-js-sdk from npm into {}",
            dir.display()
        );
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_js_sdk_chat_story_works_end_to_end() {
    let dir = tokio::task::spawn_blocking(sdk_dir).await.unwrap();
    let server = TestServer::start().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/jssdk_chat.mjs");
    let base = server.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(base)
            .arg(dir)
            .output()
            .expect("node runs (Node.js 20 or newer)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.lines().any(|l| l == "OK"),
        "matrix-js-sdk story failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("unread count and receipt round trip"),
        "{stdout}"
    );
    assert!(stdout.contains("to the room's creation"), "{stdout}");
    server.stop().await;
}
