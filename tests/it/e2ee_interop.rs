//! End-to-end encryption with a real client library: two matrix-nio clients (Olm and
//! Megolm through vodozemac) exchange encrypted messages through a real ourwhats on
//! loopback and each decrypts the other's (`tests/interop/nio_e2ee.py`).
//!
//! The Python environment is made once by `tests/interop/setup_nio.sh` (matrix-nio[e2e]
//! from PyPI) under `~/.cache/ourwhats/nio-venv`, or named by `NIO_E2EE_PYTHON`.
//! `.ci/run` makes it before the tests; without it this test makes it itself.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::TestServer;

/// The Python with matrix-nio[e2e], made on first use.
fn nio_python() -> PathBuf {
    // Not an `OURWHATS_` name: the server reads every `OURWHATS_*` variable as a config key.
    if let Some(python) = std::env::var_os("NIO_E2EE_PYTHON") {
        return PathBuf::from(python);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let venv = home.join(".cache/ourwhats/nio-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let status = Command::new("bash")
            .arg(root.join("tests/interop/setup_nio.sh"))
            .arg(&venv)
            .status()
            .expect("bash runs");
        assert!(
            status.success(),
            "could not install matrix-nio[e2e] from PyPI into {}",
            venv.display()
        );
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nio_clients_exchange_messages_each_decrypts_the_others() {
    let python = tokio::task::spawn_blocking(nio_python).await.unwrap();
    let server = TestServer::start().await;
    let store = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/nio_e2ee.py");
    let base = server.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(base)
            .arg(store.path())
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.lines().any(|l| l == "OK"),
        "matrix-nio story failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("bob decrypted: 'hello bob, only you can read this'"));
    assert!(stdout.contains("alice decrypted: 'hello alice, same here'"));
    server.stop().await;
}
