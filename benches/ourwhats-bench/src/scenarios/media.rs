//! `media`: one user uploads N files of S MiB (`POST /_matrix/media/v3/upload`) and
//! downloads each (`GET /_matrix/client/v1/media/download/...`, authenticated); every
//! download is checked byte for byte against what was uploaded.

use std::time::Instant;

use bytes::Bytes;
use serde_json::{json, Value};

use super::Target;
use crate::client::{media_url, register, BenchResult};
use crate::noise;
use crate::report::{Measure, Phase};
use crate::stats::median;

/// MiB/s of each transfer, median.
fn median_rate(size_mib: f64, latencies_ms: &[f64]) -> f64 {
    let rates: Vec<f64> = latencies_ms
        .iter()
        .map(|ms| size_mib / (ms / 1000.0))
        .collect();
    median(&rates).unwrap_or(0.0)
}

pub async fn run(target: &Target, size_mib: f64, count: usize) -> BenchResult<Vec<Measure>> {
    let user = register(&target.base, &format!("{}media", target.prefix)).await?;
    let data = Bytes::from(noise::bytes(
        0x9E37_79B9_7F4A_7C15,
        (size_mib * 1024.0 * 1024.0) as usize,
    ));
    let params = json!({"size_mib": size_mib, "count": count});

    let phase = Phase::start(target.pid);
    let mut uris = Vec::with_capacity(count);
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let started = Instant::now();
        let response = user
            .http
            .post(format!(
                "{}/_matrix/media/v3/upload?filename=bench{n}.bin",
                target.base
            ))
            .bearer_auth(&user.token)
            .header("content-type", "application/octet-stream")
            .body(data.clone())
            .send()
            .await
            .map_err(|e| format!("upload: no answer: {e}"))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let uri = answer["content_uri"]
            .as_str()
            .filter(|_| status.is_success())
            .ok_or_else(|| format!("upload: {status} {answer}"))?;
        uris.push(uri.to_owned());
    }
    let rate = median_rate(size_mib, &latencies);
    let upload = phase
        .finish(count, 0, latencies)
        .named("media", "upload", params.clone())
        .with_rate(rate, "MiB/s");

    let phase = Phase::start(target.pid);
    let mut latencies = Vec::with_capacity(count);
    for uri in &uris {
        let url = media_url(&target.base, "download", uri)?;
        let started = Instant::now();
        let response = user
            .http
            .get(url)
            .bearer_auth(&user.token)
            .send()
            .await
            .map_err(|e| format!("download: no answer: {e}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("download cut short: {e}"))?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        if !status.is_success() {
            return Err(format!("download {uri}: {status}"));
        }
        if body != data {
            return Err(format!("download of {uri} differs from the upload"));
        }
    }
    let rate = median_rate(size_mib, &latencies);
    let download = phase
        .finish(count, 0, latencies)
        .named("media", "download", params)
        .with_rate(rate, "MiB/s");
    Ok(vec![upload, download])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_median_of_each_transfer() {
        assert_eq!(median_rate(10.0, &[1000.0, 500.0, 2000.0]), 10.0);
    }
}
