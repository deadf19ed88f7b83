//! `ourwhats-bench`: a load generator that measures any Matrix homeserver through the
//! client-server API only (`benches/compare.sh` runs it against ourwhats and Synapse).
//!
//! Each scenario registers its own users (user-interactive auth, dummy stage), sets up
//! its rooms, then measures: one JSON line per measured phase on stdout, a readable
//! summary on stderr. With `--server-pid` (same machine), the server's CPU seconds per
//! operation and its RSS (at the phase's start, and the peak sampled every 10 ms).

mod client;
mod process;
mod report;
mod scenarios;
mod stats;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

use client::BenchResult;
use report::Measure;
use scenarios::Target;

#[derive(Parser)]
#[command(
    name = "ourwhats-bench",
    about = "Measure a Matrix homeserver through the client-server API"
)]
struct Cli {
    /// Base URL of the homeserver's client-server API.
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    base: String,
    /// The server's process id, for CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Name of the server in the JSON lines (default: the base URL).
    #[arg(long)]
    label: Option<String>,
    /// Start of the localparts this run registers (default: unique per run).
    #[arg(long)]
    prefix: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N concurrent senders into one room of M members for T seconds.
    Send {
        #[arg(long, default_value_t = 32)]
        senders: usize,
        #[arg(long, default_value_t = 32)]
        members: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Send-to-receipt latency through a long-polling /sync.
    Delivery {
        #[arg(long, default_value_t = 300)]
        messages: usize,
    },
    /// Initial and empty incremental /sync of a user in R rooms.
    Sync {
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        /// Timed initial syncs.
        #[arg(long, default_value_t = 10)]
        initial: usize,
        /// Timed incremental syncs with nothing new.
        #[arg(long, default_value_t = 200)]
        incremental: usize,
    },
    /// POST /createRoom rate.
    Rooms {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// Upload and download speed of files of a given size.
    Media {
        #[arg(long, default_value_t = 10.0)]
        size_mib: f64,
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
}

/// A localpart prefix unique to this run: reruns against one server never collide.
fn unique_prefix() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("b{:x}{:x}_", millis, std::process::id())
}

async fn run(cli: &Cli, target: &Target) -> BenchResult<Vec<Measure>> {
    match cli.scenario {
        Scenario::Send {
            senders,
            members,
            seconds,
        } => scenarios::send::run(target, senders, members, seconds).await,
        Scenario::Delivery { messages } => scenarios::delivery::run(target, messages.max(1)).await,
        Scenario::Sync {
            rooms,
            initial,
            incremental,
        } => scenarios::sync::run(target, rooms, initial.max(1), incremental.max(1)).await,
        Scenario::Rooms { count, concurrency } => {
            scenarios::rooms::run(target, count, concurrency).await
        }
        Scenario::Media { size_mib, count } => {
            if !(size_mib > 0.0 && size_mib <= 4096.0) {
                return Err("--size-mib must be in (0, 4096]".into());
            }
            scenarios::media::run(target, size_mib, count.max(1)).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let target = Target {
        base: cli.base.trim_end_matches('/').to_owned(),
        pid: cli.server_pid,
        prefix: cli.prefix.clone().unwrap_or_else(unique_prefix),
    };
    let label = cli.label.clone().unwrap_or_else(|| target.base.clone());
    match run(&cli, &target).await {
        Ok(measures) => {
            for m in measures {
                println!("{}", m.to_json(&label));
                eprintln!("{}", m.summary(&label));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ourwhats-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
