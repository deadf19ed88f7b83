//! A server ACL of 10,000 patterns (the hostile-federation issue: "evaluated in ≤ 1 ms a
//! request"): compiling it once, then judging server names against it, in-process.
//! Patterns are a mix of plain names, `*.suffix` patterns and general globs (`a?b*`
//! shapes, which are tried one by one), 1,000 of those. Prints the compile time and the
//! median, p99 and worst time of a check over names that match nothing (the slowest case: every
//! list is consulted). Usage: `cargo bench --bench server_acl -- run` (without `run`, as
//! `cargo test --all-targets` runs it, it checks 100 names only).

use std::time::Instant;

use ourwhats::core::server_acl::ServerAcl;
use serde_json::{json, Value};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn patterns() -> Value {
    let mut deny = Vec::with_capacity(10_000);
    for i in 0..6_000 {
        deny.push(format!("spam{i}.example.org"));
    }
    for i in 0..3_000 {
        deny.push(format!("*.bad{i}.example.net"));
    }
    for i in 0..1_000 {
        deny.push(format!("ev?l{i}*.example.*"));
    }
    json!({"allow": ["*"], "deny": deny, "allow_ip_literals": false})
}

fn main() {
    let full = std::env::args().any(|a| a == "run");
    let content = patterns();
    let started = Instant::now();
    let acl = ServerAcl::compile(&content);
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let names = if full { 10_000 } else { 100 };
    let mut times = Vec::with_capacity(names);
    let mut allowed = 0;
    for i in 0..names {
        let name = format!("matrix{i}.some-long-subdomain.friendly-server.example.com:8448");
        let started = Instant::now();
        allowed += usize::from(acl.allows(&name));
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    assert_eq!(allowed, names, "no name should be denied");
    assert!(!acl.allows("spam17.example.org"));
    assert!(!acl.allows("x.y.bad2999.example.net:8448"));
    assert!(!acl.allows("eval999zzz.example.com"));
    let worst = times.iter().copied().fold(0.0, f64::max);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[sorted.len() * 99 / 100];
    println!(
        "server ACL of 10,000 patterns: compiled in {compile_ms:.1} ms; a check: median {:.1} µs, p99 {p99:.1} µs, worst {worst:.1} µs over {names} names",
        median(times)
    );
}
