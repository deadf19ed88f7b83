//! Joining a big room held by another server (the federated rooms issue's target: a room
//! of 10,000 members usable in ≤ 3 s, its full member list in ≤ 30 s, peak RSS growth ≤
//! 200 MiB), ourwhats joining ourwhats, and Synapse joining the same room in the same run.
//!
//! Server A holds a public room whose members join through A's rooms service (no HTTP:
//! only the room's size matters here); bob on server B then joins over federation with a
//! partial state (`omit_members`, the default), and carl on server C with the whole state
//! (`federation.partial_state_joins = false`). Times, for each: the `POST /join`, then
//! the first message sent and the room's name and topic read back ("usable"), then the
//! member list (`/joined_members`, which waits for the partial state's resync). RSS is
//! the whole process's (all in-process servers), sampled every 50 ms during each join.
//! Then a Synapse user joins the same room through A (Synapse joins with a partial
//! state too), timed to its `/join` and to its member list.
//!
//! `cargo bench -p federation-tests --bench big_join -- --members 10000 [--whole-first]`
//! (default 10,000 with `--bench`; under `cargo test` a short run of 200 members without
//! Synapse).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use federation_tests::synapse::Synapse;
use federation_tests::{enc, Cluster, User};
use ourwhats::core::UserId;
use ourwhats::services::rooms::membership::MemberProfile;
use serde_json::json;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let members: usize = args
        .iter()
        .position(|a| a == "--members")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if full { 10_000 } else { 200 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let cluster = Cluster::start_with(3, |i, config| {
            config.federation.partial_state_joins = i != 2;
        })
        .await
        .expect("three servers");
        let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
        let alice = User::register(a, "alice").await.expect("alice");
        let bob = User::register(b, "bob").await.expect("bob");
        let (status, created) = alice
            .post(
                "/createRoom",
                json!({"preset": "public_chat", "name": "big", "topic": "many members"}),
            )
            .await;
        assert_eq!(status, 200, "{created}");
        let room = created["room_id"].as_str().expect("a room id").to_owned();

        let filled = Instant::now();
        let rooms = Arc::clone(&a.running().services);
        let mut tasks = tokio::task::JoinSet::new();
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..64 {
            let (services, room, next) = (Arc::clone(&rooms), room.clone(), Arc::clone(&next));
            let server = a.name().to_owned();
            tasks.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= members {
                        return;
                    }
                    let user = UserId::parse(&format!("@m{n}:{server}")).expect("a user id");
                    let profile = MemberProfile {
                        displayname: Some(format!("Member {n}")),
                        avatar_url: None,
                    };
                    services
                        .rooms
                        .join(&user, &room, None, &profile, false)
                        .await
                        .expect("a member joins");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        println!(
            "room of {} members made on A in {:.1} s",
            members + 1,
            filled.elapsed().as_secs_f64()
        );

        let carl = User::register(&cluster.instances[2], "carl")
            .await
            .expect("carl");
        // `--whole-first`: carl's join first (the first join in a process pays for the
        // allocator's growth, which the second reuses).
        let mut order = [(&bob, "partial state"), (&carl, "whole state")];
        if args.iter().any(|a| a == "--whole-first") {
            order.reverse();
        }
        for (joiners, (user, how)) in order.into_iter().enumerate() {
            let (join_s, usable_s, members_s, count, growth_mib) =
                timed_join(user, &room, a.name()).await;
            // alice, the members, the joiners before and this one.
            assert_eq!(count, members + 2 + joiners, "everyone, the joiner included");
            println!(
                "ourwhats joins ourwhats ({how}), {} members: join {join_s:.2} s, usable (sent, name and topic read) {usable_s:.2} s, member list ({count}) {members_s:.2} s, peak RSS growth {growth_mib:.0} MiB (all servers)",
                members + 1
            );
        }

        if full {
            match Synapse::start(&cluster.ca).await {
                Ok(synapse) => {
                    let sam = User::register_at(&synapse.client_url, "sam")
                        .await
                        .expect("sam");
                    let started = Instant::now();
                    let (status, joined) = sam
                        .post(
                            &format!("/join/{}?server_name={}", enc(&room), enc(a.name())),
                            json!({}),
                        )
                        .await;
                    let synapse_s = started.elapsed().as_secs_f64();
                    if status == 200 {
                        let (_, listed) = sam
                            .get(&format!("/rooms/{}/joined_members", enc(&room)))
                            .await;
                        let count = listed["joined"].as_object().map_or(0, |m| m.len());
                        let members_s = started.elapsed().as_secs_f64();
                        println!(
                            "Synapse joins ourwhats, {} members: join {synapse_s:.2} s, member list ({count}) {members_s:.2} s",
                            members + 4
                        );
                    } else {
                        println!("Synapse's join failed after {synapse_s:.1} s: {joined}");
                    }
                }
                Err(e) => println!("Synapse not measured: {e}"),
            }
        }
        cluster.shutdown().await;
    });
}

/// `user` joins `room` through `via`: the seconds to the join's answer, to the room being
/// usable (a message sent, name and topic read), to the whole member list; its size; and
/// the peak RSS growth in MiB meanwhile.
async fn timed_join(user: &User, room: &str, via: &str) -> (f64, f64, f64, usize, f64) {
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let before = rss_kib();
    let sampler = {
        let (sampling, peak) = (Arc::clone(&sampling), Arc::clone(&peak));
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let (status, joined) = user
        .post(&format!("/join/{}?via={}", enc(room), enc(via)), json!({}))
        .await;
    let join_s = started.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{joined}");
    let (status, _) = user
        .put(
            &format!("/rooms/{}/send/m.room.message/first", enc(room)),
            json!({"msgtype": "m.text", "body": "hello, big room"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, name) = user
        .get(&format!("/rooms/{}/state/m.room.name/", enc(room)))
        .await;
    assert_eq!(name["name"], "big");
    let (_, topic) = user
        .get(&format!("/rooms/{}/state/m.room.topic/", enc(room)))
        .await;
    assert_eq!(topic["topic"], "many members");
    let usable_s = started.elapsed().as_secs_f64();
    let (_, listed) = user
        .get(&format!("/rooms/{}/joined_members", enc(room)))
        .await;
    let count = listed["joined"].as_object().map_or(0, |m| m.len());
    let members_s = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let growth_mib = peak.load(Ordering::Relaxed).saturating_sub(before) as f64 / 1024.0;
    (join_s, usable_s, members_s, count, growth_mib)
}
