//! The `ourwhats` binary as a child process: for what an in-process server cannot show
//! (a crash, a signal, the process's own file descriptor limit).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_ourwhats");

/// Starts `serve` on `config` (federation off, JSON logs), with its soft and hard
/// `RLIMIT_NOFILE` set to `nofile` when given; answers the child and its client API base
/// URL. The rest of its output is drained on a thread so the pipe never fills.
pub fn spawn_server(config: &Path, nofile: Option<u64>) -> (Child, String) {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config"])
        .arg(config)
        .env("OURWHATS_LOGGING__FORMAT", "json")
        .env("OURWHATS_FEDERATION__ENABLED", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(limit) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit runs between fork and exec, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("server exited early").unwrap();
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        if record["fields"]["message"] == "client API listening" {
            break record["fields"]["address"].as_str().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{address}"))
}
