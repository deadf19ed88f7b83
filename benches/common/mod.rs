//! Helpers the load generators share: a registered user over HTTP, medians, the
//! server's CPU time.
#![allow(dead_code)]

use serde_json::{json, Value};

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The server's user+system CPU time from `/proc/PID/stat`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server process");
    let after_name = &stat[stat.rfind(')').expect("stat has the name in parens") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| -> f64 {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .expect("utime and stime in /proc/PID/stat")
    };
    // Fields 14 and 15 of stat (utime, stime), in clock ticks of 1/100 s.
    (field(11) + field(12)) / 100.0
}

pub struct User {
    pub http: reqwest::Client,
    pub token: String,
    pub user_id: String,
}

/// POSTs a JSON body and reads the JSON answer (a load generator stops on a broken server).
async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    http.post(url)
        .json(body)
        .send()
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("a JSON answer")
}

/// Registers `name` through the dummy auth stage.
pub async fn register(base: &str, name: &str) -> User {
    let http = reqwest::Client::new();
    let url = format!("{base}/_matrix/client/v3/register");
    let mut body = json!({"username": name, "password": "bench-password"});
    let challenge = post_json(&http, &url, &body).await;
    body["auth"] = json!({"type": "m.login.dummy", "session": challenge["session"]});
    let done = post_json(&http, &url, &body).await;
    let field = |key: &str| {
        done[key]
            .as_str()
            .unwrap_or_else(|| panic!("registration answered no {key}: {done}"))
            .to_owned()
    };
    User {
        token: field("access_token"),
        user_id: field("user_id"),
        http,
    }
}

impl User {
    pub async fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{url}: {status} {body}");
        body
    }
}

/// The `p`-th percentile (0..=100) of the values.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// The resident set size of a process, in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("server process")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}
