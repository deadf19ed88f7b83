//! State resolution end to end, through storage (the event graph issue's target: a fork
//! with 1,000 conflicted events in a room whose state holds 100,000 events resolves in
//! at most 50 ms). A real server in a temp folder; a made-up origin (`remote.example`, a
//! fixed test key) whose users join one room until its state holds `--members` member
//! events. Then, per run, 1,000 of them change their display name in a chain from the
//! room's newest event, and another event names that same newest event as its only
//! prev event: a fork whose two states differ in 1,000 members. Timed: receiving that
//! fork event (its state is one stored snapshot; the room's current state is then the
//! resolution of both branches), and receiving the event that merges the branches
//! (its state before is that resolution); and, apart, resolving the states after the
//! branch's last event and the fork event straight from storage, as the writer does
//! (`resolution::resolve_snapshots`, both states loaded and compared). Building and
//! signing events is the origin's work and is done before the clock starts. Prints the
//! median of the runs.
//!
//! `cargo bench --bench fork_resolution [-- --members 100000 --runs 5]` (under `cargo test` a
//! short run with a small room checks that it works).

#[path = "common/origin.rs"]
mod origin;

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use origin::{public_room, remote_key, send_in_transactions, Origin, REMOTE};
use ourwhats::core::pdu::{self, PduTemplate};
use ourwhats::core::RoomVersion;
use ourwhats::services::rooms::receive::PduOutcome;
use ourwhats::services::rooms::resolution;
use ourwhats::services::Services;

fn user(n: usize) -> String {
    format!("@u{n}:{REMOTE}")
}

/// What the origin knows of the room.
struct Room {
    id: String,
    levels: String,
    rules: String,
    /// Each member's membership event.
    members: Vec<String>,
    depth: u64,
    ts: u64,
}

impl Room {
    fn build(
        &mut self,
        sender: usize,
        kind: &str,
        state_key: Option<String>,
        content: Value,
        (prev, auth): (Vec<String>, Vec<String>),
    ) -> (String, Value) {
        self.depth += 1;
        self.ts += 1;
        let built = pdu::build(
            RoomVersion::V12,
            PduTemplate {
                room_id: Some(self.id.clone()),
                sender: user(sender),
                kind: kind.into(),
                state_key,
                content,
                prev_events: prev,
                auth_events: auth,
                depth: self.depth,
                origin_server_ts: self.ts,
                redacts: None,
            },
            REMOTE,
            &remote_key(),
        )
        .expect("the origin builds its event");
        (built.event_id, built.pdu)
    }

    /// Member `n` joins (first time) or changes its display name, after `prev`.
    fn member(&mut self, n: usize, prev: String, name: &str) -> (String, Value) {
        let mut auth = vec![self.levels.clone(), self.rules.clone()];
        if let Some(own) = self.members.get(n) {
            auth.push(own.clone());
        }
        let (id, pdu) = self.build(
            n,
            "m.room.member",
            Some(user(n)),
            json!({"membership": "join", "displayname": name}),
            (vec![prev], auth),
        );
        if n < self.members.len() {
            self.members[n] = id.clone();
        } else {
            self.members.push(id.clone());
        }
        (id, pdu)
    }

    fn message(&mut self, sender: usize, prev: Vec<String>) -> (String, Value) {
        let auth = vec![self.levels.clone(), self.members[sender].clone()];
        self.build(
            sender,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "on a fork"}),
            (prev, auth),
        )
    }
}

async fn create(services: &Arc<Services>) -> (Room, String) {
    let created = public_room(services).await;
    let room = Room {
        id: created.id,
        levels: created.levels,
        rules: created.rules,
        members: Vec::new(),
        depth: created.depth,
        ts: 1,
    };
    (room, created.tip)
}

async fn receive_all(services: &Services, origin: &Origin, pdus: Vec<Value>) {
    send_in_transactions(services, (REMOTE, origin), pdus).await
}

async fn timed(services: &Services, origin: &Origin, pdu: Value) -> f64 {
    let started = Instant::now();
    let (_, outcome) = services
        .rooms
        .receive_pdu(REMOTE, pdu, origin)
        .await
        .expect("no storage error");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(outcome, PduOutcome::Accepted);
    ms
}

/// Resolving the states after two stored events, as the room writer does for a fork
/// (`resolution::resolve_snapshots`, the median of three): wall and thread CPU time, ms.
fn resolve_alone(services: &Services, events: [&String; 2]) -> (f64, f64) {
    let store = services.rooms.store();
    let snapshots: Vec<u64> = events
        .iter()
        .map(|id| {
            store
                .event_by_id(id)
                .expect("readable")
                .expect("stored")
                .meta
                .state_after
        })
        .collect();
    let mut times: Vec<(f64, f64)> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let cpu = thread_cpu_ms();
            resolution::resolve_snapshots(store, RoomVersion::V12, &snapshots).expect("resolved");
            (
                started.elapsed().as_secs_f64() * 1000.0,
                thread_cpu_ms() - cpu,
            )
        })
        .collect();
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    times[1]
}

/// The calling thread's CPU time so far, in ms (Linux: `/proc/thread-self/schedstat`'s
/// first field, in ns; 0 where it cannot be read): on a shared machine, CPU time varies
/// less than wall time.
fn thread_cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e6)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse::<usize>().ok())
    };
    let (default_members, runs, changed) = if full {
        (100_000, 5, 1_000)
    } else {
        (300, 2, 50)
    };
    let runs = arg("--runs").unwrap_or(runs).max(1);
    let members = arg("--members")
        .unwrap_or(default_members)
        .max(changed * runs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp folder");
    let origin = Origin::new();
    runtime.block_on(async {
        let mut config = ourwhats::Config::embedded_default();
        config.data_dir = dir.path().to_path_buf();
        config.client.listen = "127.0.0.1:0".parse().expect("an address");
        config.federation.enabled = false;
        config.logging.level = "warn".into();
        let server = ourwhats::Server::start(config).await.expect("the server starts");
        let services = Arc::clone(&server.services);
        let (mut room, mut tip) = create(&services).await;

        let started = Instant::now();
        let mut joins = Vec::with_capacity(members);
        for n in 0..members {
            let (id, pdu) = room.member(n, tip, "joined");
            tip = id;
            joins.push(pdu);
        }
        receive_all(&services, &origin, joins).await;
        println!(
            "{members} members joined in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let mut fork_ms = Vec::new();
        let mut merge_ms = Vec::new();
        let mut resolve_ms = Vec::new();
        let mut resolve_cpu_ms = Vec::new();
        for run in 0..runs {
            let fork_point = tip.clone();
            let mut branch = Vec::with_capacity(changed);
            let mut branch_tip = fork_point.clone();
            for n in run * changed..(run + 1) * changed {
                let (id, pdu) = room.member(n, branch_tip, &format!("renamed in run {run}"));
                branch_tip = id;
                branch.push(pdu);
            }
            receive_all(&services, &origin, branch).await;
            let (fork, fork_pdu) = room.message(members - 1 - run, vec![fork_point]);
            fork_ms.push(timed(&services, &origin, fork_pdu).await);
            let (wall, cpu) = resolve_alone(&services, [&branch_tip, &fork]);
            resolve_ms.push(wall);
            resolve_cpu_ms.push(cpu);
            let (merge, merge_pdu) = room.message(members - 1 - run, vec![branch_tip, fork]);
            merge_ms.push(timed(&services, &origin, merge_pdu).await);
            tip = merge;
            println!(
                "run {run}: fork {:.1} ms, merge {:.1} ms, the resolution alone {:.1} ms ({:.1} ms CPU)",
                fork_ms[run], merge_ms[run], resolve_ms[run], resolve_cpu_ms[run]
            );
        }
        // Every run's renamed members kept their new names: the branch won.
        let store = services.rooms.store();
        let record = store.room(&room.id).expect("readable").expect("the room").record;
        for n in [0, changed * runs - 1] {
            let member = store
                .state_event(record.state, "m.room.member", &user(n))
                .expect("readable")
                .expect("a member");
            assert!(member.pdu()["content"]["displayname"]
                .as_str()
                .is_some_and(|name| name.starts_with("renamed")));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        println!(
            "fork of {changed} conflicted members in a state of {members}: receiving the fork event median {:.1} ms, the merging event {:.1} ms, resolving the two branches' stored states alone {:.1} ms, {:.1} ms of CPU ({runs} runs)",
            median(&mut fork_ms),
            median(&mut merge_ms),
            median(&mut resolve_ms),
            median(&mut resolve_cpu_ms)
        );
        server.shutdown().await;
    });
}
