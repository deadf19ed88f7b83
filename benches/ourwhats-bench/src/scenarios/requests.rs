//! `requests`: C connections ask one cheap endpoint as fast as answers come, for T seconds:
//! requests/s, latency and server CPU per request. `versions` is
//! `GET /_matrix/client/versions` (no authentication); `whoami` is
//! `GET /_matrix/client/v3/account/whoami` (an access-token check and nothing else).

use std::time::{Duration, Instant};

use serde_json::json;

use super::Target;
use crate::client::{http_client, register, BenchResult};
use crate::report::{Measure, Phase};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Endpoint {
    Versions,
    Whoami,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Versions => "versions",
            Endpoint::Whoami => "whoami",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::Versions => "/_matrix/client/versions",
            Endpoint::Whoami => "/_matrix/client/v3/account/whoami",
        }
    }
}

/// One connection's loop until `deadline`: latencies of the answered requests, and the
/// count of failed ones.
async fn hammer(
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    deadline: Instant,
) -> (Vec<f64>, usize) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    while Instant::now() < deadline {
        let started = Instant::now();
        let mut request = http.get(&url);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let ok = match request.send().await {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        } else {
            errors += 1;
        }
    }
    (latencies, errors)
}

pub async fn run(
    target: &Target,
    endpoint: Endpoint,
    connections: usize,
    seconds: u64,
) -> BenchResult<Vec<Measure>> {
    let token = match endpoint {
        Endpoint::Versions => None,
        Endpoint::Whoami => Some(
            register(&target.base, &format!("{}req", target.prefix))
                .await?
                .token,
        ),
    };
    let url = format!("{}{}", target.base, endpoint.path());
    // One client (so one connection) per simulated client, connected before the phase.
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let http = http_client()?;
        let mut request = http.get(&url);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let warm = request
            .send()
            .await
            .map_err(|e| format!("{url}: no answer: {e}"))?;
        if !warm.status().is_success() {
            return Err(format!("{url}: {}", warm.status()));
        }
        let _ = warm.bytes().await;
        clients.push(http);
    }

    let phase = Phase::start(target.pid);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|http| tokio::spawn(hammer(http, url.clone(), token.clone(), deadline)))
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task
            .await
            .map_err(|e| format!("a connection stopped: {e}"))?;
        latencies.extend(l);
        errors += e;
    }
    let measure = phase.finish(latencies.len(), errors, latencies);
    let rate = measure.ops as f64 / measure.wall_s;
    Ok(vec![measure
        .named(
            "requests",
            endpoint.name(),
            json!({"connections": connections, "seconds": seconds}),
        )
        .with_rate(rate, "requests/s")])
}
