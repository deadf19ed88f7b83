//! The federation sender under a dead destination and many idle ones (the transport
//! issue's targets):
//! 1. **Head of line**: to-device messages from a user of server A to a user of server B,
//!    delivery latency (send until B's client sees it in `/sync`) measured alone, then
//!    with a message to a *black hole* (a server that accepts connections and never
//!    answers) sent before each one. Medians; the target is no difference.
//! 2. **Idle destinations**: A's RSS before and after it has had something for 10,000
//!    destinations that refuse connections (each tried, backing off, then idle).
//!
//! `cargo bench -p federation-tests --bench sender` (under `cargo test` a short run).

use std::time::{Duration, Instant};

use federation_tests::{Cluster, User};
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Sends one message to `to` (a user id and device) as `from`.
async fn send(from: &User, to: (&str, &str), n: usize) {
    let (status, body) = from
        .put(
            &format!("/sendToDevice/m.bench/t{n}"),
            json!({"messages": {to.0: {to.1: {"n": n}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Delivery latency of `count` messages from `alice` to `bob`, each after one to the
/// black hole when `black_hole` is set.
async fn latencies(
    (alice, bob): (&User, &User),
    since: &mut Option<String>,
    count: usize,
    black_hole: Option<&str>,
    first_n: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let n = first_n + i;
        if let Some(hole) = black_hole {
            send(alice, (&format!("@nobody:{hole}"), "DEVICE"), n + 1_000_000).await;
        }
        let started = Instant::now();
        send(alice, (&bob.user_id, &bob.device_id), n).await;
        let (events, next) = bob
            .to_device_events(since.take(), 1, Duration::from_secs(30))
            .await;
        assert_eq!(events.len(), 1, "delivered");
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        *since = next;
    }
    out
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (count, idle) = if full { (100, 10_000) } else { (5, 200) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let cluster = Cluster::start(2).await.expect("two servers");
        let alice = User::register(&cluster.instances[0], "alice").await.expect("alice");
        let bob = User::register(&cluster.instances[1], "bob").await.expect("bob");

        // A black hole: accepts TCP connections, never answers.
        let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let hole_name = format!("127.0.0.1:{}", hole.local_addr().expect("an address").port());
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&held);
        std::thread::spawn(move || {
            for stream in hole.incoming().flatten() {
                keep.lock().expect("the list").push(stream);
            }
        });

        let (_, mut since) = bob.to_device_events(None, 0, Duration::ZERO).await;
        let alone = latencies((&alice, &bob), &mut since, count, None, 0).await;
        let with_hole = latencies((&alice, &bob), &mut since, count, Some(&hole_name), count).await;
        println!(
            "head of line: delivery A -> B median {:.2} ms alone, {:.2} ms with a black-hole destination queued before each message ({count} each)",
            median(alone),
            median(with_hole)
        );

        // Idle destinations: servers on loopback ports nothing listens on.
        let before = rss_kib();
        for n in 0..idle {
            let server = format!("127.0.0.2:{}", 10_000 + n);
            send(&alice, (&format!("@x:{server}"), "D"), 2_000_000 + n).await;
        }
        // Each is tried once and backs off; give them time to fail and settle.
        tokio::time::sleep(Duration::from_secs(if full { 40 } else { 3 })).await;
        let after = rss_kib();
        println!(
            "idle destinations: RSS {:.1} MiB before, {:.1} MiB after {idle} destinations were tried and backed off (+{:.1} MiB, the whole test process)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / 1024.0
        );
        drop(held);
        cluster.shutdown().await;
    });
}
