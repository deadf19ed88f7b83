//! The `ourwhats` binary as a child process, for what an in-process server cannot show:
//! a `kill -9`. The binary is the one `cargo test --workspace` built next to the tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::TestCa;

/// The `ourwhats` binary beside the running test executable (`target/debug/ourwhats`).
pub fn binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("the test executable has no parent folder")?;
    let bin = dir.join("ourwhats");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not built (run the tests with --workspace)",
            bin.display()
        ))
    }
}

/// A server process named `127.0.0.1:<port>` with a certificate from `ca`, its data in
/// `dir`; its config file written there, loopback opened through the environment (the
/// comma-separated form of a list).
pub struct ServerProcess {
    child: Child,
    config: PathBuf,
    /// Its client API base URL.
    pub client_url: String,
    /// `127.0.0.1:<port>`.
    pub name: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path) -> Result<(Child, String), String> {
    let mut child = Command::new(binary()?)
        .args(["serve", "--config"])
        .arg(config)
        .env("OURWHATS_LOGGING__FORMAT", "json")
        .env(
            "OURWHATS_FEDERATION__IP_RANGE_ALLOWLIST",
            "127.0.0.0/8,::1/128",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let address = loop {
        let line = lines
            .next()
            .ok_or("the server exited early")?
            .map_err(|e| e.to_string())?;
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if record["fields"]["message"] == "client API listening" {
            break record["fields"]["address"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((child, format!("http://{address}")))
}

impl ServerProcess {
    /// Writes the config into `dir` and starts the server.
    pub fn start(ca: &TestCa, dir: &Path, port: u16) -> Result<Self, String> {
        let (cert, key) = ca.issue(dir, "federation")?;
        let config = dir.join("homeserver.toml");
        let text = format!(
            "server_name = \"127.0.0.1:{port}\"\n\
             data_dir = \"{data}\"\n\
             [client]\nlisten = \"127.0.0.1:0\"\n\
             [federation]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntrusted_ca = \"{ca}\"\n\
             [rate_limits]\nenabled = false\n\
             [logging]\nlevel = \"info\"\n",
            data = dir.join("data").display(),
            cert = cert.display(),
            key = key.display(),
            ca = ca.cert_path.display(),
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let (child, client_url) = spawn(&config)?;
        Ok(Self {
            child,
            config,
            client_url,
            name: format!("127.0.0.1:{port}"),
        })
    }

    /// `kill -9`, then a start on the same data.
    pub fn kill_and_restart(&mut self) -> Result<(), String> {
        self.child.kill().map_err(|e| e.to_string())?;
        self.child.wait().map_err(|e| e.to_string())?;
        let (child, client_url) = spawn(&self.config)?;
        self.child = child;
        self.client_url = client_url;
        Ok(())
    }
}
