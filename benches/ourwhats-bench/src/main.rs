//! `ourwhats-bench`: a load generator that measures any Matrix homeserver through the
//! client-server API only (`benches/compare.sh` runs it against ourwhats and Synapse).
//!
//! Each scenario registers its own users (user-interactive auth, dummy stage), sets up
//! its rooms, then measures: one JSON line per measured phase on stdout, a readable
//! summary on stderr. With `--server-pid` (same machine), the server's CPU seconds per
//! operation and its RSS (at the phase's start, and the peak sampled every 10 ms).

mod client;
mod gateway;
mod noise;
mod process;
mod report;
mod scenarios;
mod signing;
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
        /// Every member sets an http pusher to a push gateway the tool runs on loopback
        /// (the server must let pushes reach 127.0.0.1: `federation.ip_range_allowlist`).
        #[arg(long)]
        pushers: bool,
        /// With --pushers: point the pushers at this URL instead (e.g. a closed port, to
        /// measure queueing without deliveries).
        #[arg(long)]
        pusher_url: Option<String>,
        /// With --pushers (the tool's gateway): after the sends, wait (at most 5 minutes)
        /// until every push has arrived, and say how long that took.
        #[arg(long)]
        wait_for_pushes: bool,
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
    /// The server's memory with no load (run first, on a fresh server; needs --server-pid).
    Idle {
        #[arg(long, default_value_t = 2)]
        seconds: u64,
    },
    /// Requests/s of a cheap endpoint from C connections for T seconds.
    Requests {
        #[arg(long, value_enum, default_value = "versions")]
        endpoint: scenarios::requests::Endpoint,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// GET /messages latency, paging back through a room of N messages.
    Messages {
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value_t = 200)]
        requests: usize,
    },
    /// The server's memory while C long-polling /sync (or /events) clients wait (raise
    /// `ulimit -n`).
    Longpolls {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        users: usize,
        #[arg(long, default_value_t = 3)]
        hold_seconds: u64,
        /// `sync` or `events`.
        #[arg(long, default_value = "sync")]
        endpoint: String,
    },
    /// The server's memory while one large file is streamed to it.
    BigUpload {
        #[arg(long, default_value_t = 1024.0)]
        size_mib: f64,
    },
    /// Thumbnail of a large JPEG photo: first request and cached ones.
    Thumbnail {
        #[arg(long, default_value_t = 4000)]
        width: u32,
        #[arg(long, default_value_t = 3000)]
        height: u32,
        #[arg(long, default_value_t = 50)]
        cached: usize,
    },
    /// /keys/claim from D devices and /keys/query of U users, in one request each.
    Keys {
        #[arg(long, default_value_t = 100)]
        devices: usize,
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
}

/// `--size-mib` within what the tool sends.
fn check_size(size_mib: f64) -> BenchResult<()> {
    if size_mib > 0.0 && size_mib <= 4096.0 {
        Ok(())
    } else {
        Err("--size-mib must be in (0, 4096]".into())
    }
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
            pushers,
            ref pusher_url,
            wait_for_pushes,
        } => {
            let pushers = pushers.then(|| pusher_url.clone());
            scenarios::send::run(target, senders, members, seconds, pushers, wait_for_pushes).await
        }
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
            check_size(size_mib)?;
            scenarios::media::run(target, size_mib, count.max(1)).await
        }
        Scenario::Idle { seconds } => scenarios::idle::run(target, seconds).await,
        Scenario::Requests {
            endpoint,
            connections,
            seconds,
        } => scenarios::requests::run(target, endpoint, connections.max(1), seconds).await,
        Scenario::Messages {
            messages,
            limit,
            requests,
        } => {
            if !(1..=1000).contains(&limit) {
                return Err("--limit must be in 1..=1000".into());
            }
            scenarios::messages::run(target, messages.max(1), limit, requests.max(1)).await
        }
        Scenario::Longpolls {
            clients,
            users,
            hold_seconds,
            ref endpoint,
        } => {
            scenarios::longpolls::run(target, clients.max(1), users.max(1), hold_seconds, endpoint)
                .await
        }
        Scenario::BigUpload { size_mib } => {
            check_size(size_mib)?;
            scenarios::big_upload::run(target, size_mib).await
        }
        Scenario::Thumbnail {
            width,
            height,
            cached,
        } => {
            if !(300..=10_000).contains(&width) || !(300..=10_000).contains(&height) {
                return Err("--width and --height must be in 300..=10000".into());
            }
            scenarios::thumbnail::run(target, width, height, cached.max(1)).await
        }
        Scenario::Keys {
            devices,
            users,
            rounds,
        } => {
            if !(1..=100).contains(&rounds) {
                return Err("--rounds must be in 1..=100 (one one-time key per round)".into());
            }
            scenarios::keys::run(target, devices.max(1), users.max(1), rounds).await
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
