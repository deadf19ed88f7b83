//! `big-upload`: one file of S MiB streamed to `POST /_matrix/media/v3/upload` (the tool
//! never holds it whole), then streamed back and checked: upload MiB/s and the server's
//! memory while it receives the file.

use std::time::Instant;

use serde_json::json;

use super::Target;
use crate::client::{media_url, register, BenchResult};
use crate::noise::Noise;
use crate::report::{Measure, Phase};

const CHUNK: usize = 1 << 20;

/// FNV-1a over a stream of chunks.
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

pub async fn run(target: &Target, size_mib: f64) -> BenchResult<Vec<Measure>> {
    let user = register(&target.base, &format!("{}big", target.prefix)).await?;
    let len = (size_mib * 1024.0 * 1024.0) as usize;
    let seed = 0x5EED_F00D_B16B_0B5E;
    let expected = Noise::new(seed, len, CHUNK).fold(FNV_START, |h, c| fnv(h, &c));
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        Noise::new(seed, len, CHUNK).map(Ok::<_, std::io::Error>),
    ));

    let phase = Phase::start(target.pid);
    let started = Instant::now();
    let response = user
        .http
        .post(format!(
            "{}/_matrix/media/v3/upload?filename=big.bin",
            target.base
        ))
        .bearer_auth(&user.token)
        .header("content-type", "application/octet-stream")
        .header("content-length", len.to_string())
        .body(body)
        .send()
        .await
        .map_err(|e| format!("upload: no answer: {e}"))?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let measure = phase.finish(1, 0, vec![elapsed_ms]);
    let uri = answer["content_uri"]
        .as_str()
        .filter(|_| status.is_success())
        .ok_or_else(|| format!("upload: {status} {answer}"))?;

    // What the server stored must be what was sent.
    let mut download = user
        .http
        .get(media_url(&target.base, "download", uri)?)
        .bearer_auth(&user.token)
        .send()
        .await
        .map_err(|e| format!("download: no answer: {e}"))?;
    if !download.status().is_success() {
        return Err(format!("download {uri}: {}", download.status()));
    }
    let (mut got, mut hash) = (0usize, FNV_START);
    while let Some(chunk) = download
        .chunk()
        .await
        .map_err(|e| format!("download cut short: {e}"))?
    {
        got += chunk.len();
        hash = fnv(hash, &chunk);
    }
    if got != len || hash != expected {
        return Err(format!(
            "the download of {uri} ({got} bytes) differs from the upload ({len} bytes)"
        ));
    }
    Ok(vec![measure
        .named("big_upload", "upload", json!({"size_mib": size_mib}))
        .with_rate(size_mib / (elapsed_ms / 1000.0), "MiB/s")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_follows_the_bytes() {
        let a = Noise::new(7, 100, 64).fold(FNV_START, |h, c| fnv(h, &c));
        let b = fnv(FNV_START, &crate::noise::bytes(7, 100));
        let c = Noise::new(8, 100, 64).fold(FNV_START, |h, c| fnv(h, &c));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
