//! Receiving remote PDUs into one room (the event graph issue's target: at least 5,000
//! per second on two cores, every signature and hash checked). A real server in a temp
//! folder; a made-up origin (`remote.example`, a fixed test key) whose user joined the
//! room sends a chain of messages in transactions of 50, as `/send` would hand them to
//! the rooms service. Building and signing them is the origin's work and is done before
//! the clock starts. Prints PDUs per second and CPU time per PDU (user + system of the
//! whole process), the median of several runs.
//!
//! With `--rooms N` the messages are spread over N rooms (the federated rooms issue's
//! target: at least 20,000 per second over 100 rooms), each transaction mixing rooms as a
//! busy origin's would. With `--origins K` they come from K origin servers at once (each
//! with its own key and user, each sending its transactions one after the other, as a
//! server does to one destination), the rooms shared out among them.
//!
//! `cargo bench --bench receive [-- --rooms 100 [--origins 4]]` (under `cargo test` a
//! short run checks that it works).

#[path = "common/origin.rs"]
mod origin;

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use origin::{numbered, public_room, send_in_transactions, Origin, PER_TRANSACTION};
use ourwhats::core::pdu::{self, PduTemplate};
use ourwhats::core::RoomVersion;
use ourwhats::services::rooms::receive::PduOutcome;
use ourwhats::services::Services;

/// CPU time of this process so far (user + system), in microseconds.
fn cpu_micros() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// A room as its origin server knows it.
struct Room {
    /// The origin that sends into it: its server name and key.
    origin: Arc<(String, ourwhats::core::SigningKeyPair)>,
    id: String,
    levels: String,
    join: String,
    prev: String,
    depth: u64,
}

fn remote_pdu(
    room: &Room,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
    auth: Vec<String>,
    ts: u64,
) -> (String, Value) {
    let (server, key) = &*room.origin;
    let built = pdu::build(
        RoomVersion::V12,
        PduTemplate {
            room_id: Some(room.id.clone()),
            sender: format!("@bob:{server}"),
            kind: kind.into(),
            state_key: state_key.map(str::to_owned),
            content,
            prev_events: vec![room.prev.clone()],
            auth_events: auth,
            depth: room.depth + 1,
            origin_server_ts: ts,
            redacts: None,
        },
        server,
        key,
    )
    .expect("the origin builds its event");
    (built.event_id, built.pdu)
}

async fn setup(
    services: &Arc<Services>,
    (sender, source): (Arc<(String, ourwhats::core::SigningKeyPair)>, &Origin),
) -> Room {
    let created = public_room(services).await;
    let (levels, rules) = (created.levels, created.rules);
    let bob = format!("@bob:{}", sender.0);
    let mut room = Room {
        origin: sender,
        id: created.id,
        levels: levels.clone(),
        join: String::new(),
        prev: created.tip,
        depth: created.depth,
    };
    let (join, pdu) = remote_pdu(
        &room,
        "m.room.member",
        Some(&bob),
        json!({"membership": "join"}),
        vec![levels, rules],
        1,
    );
    let (_, outcome) = services
        .rooms
        .receive_pdu(&room.origin.0, pdu, source)
        .await
        .expect("received");
    assert_eq!(outcome, PduOutcome::Accepted);
    room.join = join.clone();
    room.prev = join;
    room.depth += 1;
    room
}

/// `count` messages of bob's in a chain after the room's newest event.
fn messages(room: &mut Room, count: usize, first_ts: u64) -> Vec<Value> {
    (0..count)
        .map(|n| {
            let (id, pdu) = remote_pdu(
                room,
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": format!("remote message {n}, with a few words of text in it")}),
                vec![room.levels.clone(), room.join.clone()],
                first_ts + n as u64,
            );
            room.prev = id;
            room.depth += 1;
            pdu
        })
        .collect()
}

/// The value after `flag` on the command line, at least 1 (1 without it).
fn count_arg(args: &[String], flag: &str) -> usize {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let room_count = count_arg(&args, "--rooms");
    let origin_count = count_arg(&args, "--origins").min(room_count);
    let (runs, per_run) = if full { (5, 5_000) } else { (1, 200) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp folder");
    let source = Arc::new(Origin::many(origin_count));
    let origins: Vec<Arc<(String, ourwhats::core::SigningKeyPair)>> =
        (0..origin_count).map(|n| Arc::new(numbered(n))).collect();
    runtime.block_on(async {
        let mut config = ourwhats::Config::embedded_default();
        config.data_dir = dir.path().to_path_buf();
        config.client.listen = "127.0.0.1:0".parse().expect("an address");
        config.federation.enabled = false;
        config.logging.level = "warn".into();
        let server = ourwhats::Server::start(config).await.expect("the server starts");
        let services = Arc::clone(&server.services);
        let mut rooms = Vec::with_capacity(room_count);
        for n in 0..room_count {
            let origin = Arc::clone(&origins[n % origin_count]);
            rooms.push(setup(&services, (origin, &*source)).await);
        }
        let mut rates = Vec::new();
        let mut cpu_per_pdu = Vec::new();
        for run in 0..runs {
            let first_ts = 10 + (run * per_run) as u64;
            // Room n is origin n % K's; each origin's PDUs go round its rooms.
            let mut by_origin: Vec<Vec<Value>> = vec![Vec::new(); origin_count];
            for n in 0..per_run {
                let room = n % room_count;
                let pdu = messages(&mut rooms[room], 1, first_ts + n as u64);
                by_origin[room % origin_count].extend(pdu);
            }
            let started = Instant::now();
            let cpu = cpu_micros();
            // Each origin's transactions on a task of their own, as `/send` requests from
            // several servers are.
            let sends: Vec<_> = by_origin
                .into_iter()
                .zip(&origins)
                .map(|(pdus, origin)| {
                    let services = Arc::clone(&services);
                    let (origin, source) = (Arc::clone(origin), Arc::clone(&source));
                    tokio::spawn(async move {
                        send_in_transactions(&services, (&origin.0, &source), pdus).await
                    })
                })
                .collect();
            for send in sends {
                send.await.expect("an origin's sends");
            }
            let seconds = started.elapsed().as_secs_f64();
            rates.push(per_run as f64 / seconds);
            cpu_per_pdu.push((cpu_micros() - cpu) as f64 / per_run as f64);
            println!(
                "run {run}: {per_run} PDUs in {seconds:.2} s = {:.0} PDUs/s, CPU {:.0} µs/PDU",
                rates[run],
                cpu_per_pdu[run]
            );
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        println!(
            "receive into {room_count} room(s) from {origin_count} origin(s), transactions of {PER_TRANSACTION}: median {:.0} PDUs/s, CPU {:.0} µs/PDU ({runs} runs of {per_run})",
            median(&mut rates),
            median(&mut cpu_per_pdu)
        );
        server.shutdown().await;
    });
}
