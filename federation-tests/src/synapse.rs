//! A real Synapse (from PyPI, pinned, in a venv the setup makes) as a federation peer on
//! loopback: named `127.0.0.1:PORT`, TLS with a certificate from the cluster's test CA,
//! trusting that CA, with a plain client listener for the test's users.
//!
//! The venv is `$SYNAPSE_VENV` or `~/.cache/ourwhats/synapse-venv`; when it lacks the
//! pinned Synapse, `synapse/setup_synapse.sh` makes it (a minute or two, once).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, TestCa};

/// The venv Synapse runs from.
pub fn venv() -> PathBuf {
    std::env::var_os("SYNAPSE_VENV").map_or_else(
        || {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ourwhats/synapse-venv")
        },
        PathBuf::from,
    )
}

fn setup_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("synapse")
}

/// Makes the venv when it lacks the pinned Synapse (serialized across test processes by
/// the script's own temp-and-rename).
pub fn ensure_venv() -> Result<PathBuf, String> {
    let venv = venv();
    let status = Command::new("bash")
        .arg(setup_dir().join("setup_synapse.sh"))
        .arg(&venv)
        .status()
        .map_err(|e| format!("cannot run setup_synapse.sh: {e}"))?;
    if !status.success() {
        return Err(
            "setup_synapse.sh failed (python3-venv and network access to PyPI are needed)".into(),
        );
    }
    Ok(venv)
}

/// A running Synapse; killed when dropped.
pub struct Synapse {
    process: Child,
    /// `127.0.0.1:PORT`: the port it listens on, or its proxy's.
    pub server_name: String,
    /// The client API's base URL (plain HTTP).
    pub client_url: String,
    /// Its folder (config, database, log).
    pub dir: tempfile::TempDir,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Synapse {
    /// Starts Synapse with a certificate from `ca`, and waits until its client API answers.
    pub async fn start(ca: &TestCa) -> Result<Self, String> {
        Self::start_on(ca, None).await
    }

    /// As [`Synapse::start`]; with `(name_port, listen_port)`, Synapse is named
    /// `127.0.0.1:name_port` (where a proxy forwards to it) and listens on `listen_port`.
    pub async fn start_on(ca: &TestCa, ports: Option<(u16, u16)>) -> Result<Self, String> {
        let venv = ensure_venv()?;
        let python = venv.join("bin/python");
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (cert, key) = ca.issue(dir.path(), "synapse")?;
        let (name_port, fed_port) = match ports {
            Some(ports) => ports,
            None => {
                let port = free_port()?;
                (port, port)
            }
        };
        let client_port = free_port()?;
        let status = Command::new(&python)
            .arg(setup_dir().join("synapse_config.py"))
            .arg(dir.path())
            .arg(fed_port.to_string())
            .arg(client_port.to_string())
            .arg(&cert)
            .arg(&key)
            .arg(&ca.cert_path)
            .arg(name_port.to_string())
            .status()
            .map_err(|e| format!("cannot run synapse_config.py: {e}"))?;
        if !status.success() {
            return Err("synapse_config.py failed".into());
        }
        let process = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c", "homeserver.yaml"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start Synapse: {e}"))?;
        let synapse = Self {
            process,
            server_name: format!("127.0.0.1:{name_port}"),
            client_url: format!("http://127.0.0.1:{client_port}"),
            dir,
        };
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let url = format!("{}/_matrix/client/versions", synapse.client_url);
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(synapse);
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "Synapse did not start; its log:\n{}",
                    synapse.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether Synapse's log holds `text` (a warning it gives, say).
    pub fn log_contains(&self, text: &str) -> bool {
        std::fs::read_to_string(self.dir.path().join("homeserver.log"))
            .is_ok_and(|log| log.contains(text))
    }

    /// The end of Synapse's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("homeserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}
