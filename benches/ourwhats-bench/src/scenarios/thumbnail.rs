//! `thumbnail`: a W×H JPEG photo is uploaded, then a 256×256 `scale` thumbnail asked for:
//! the first request (a server that makes thumbnails on demand makes it then) and N more
//! (served from its thumbnail store). Each answer must decode as an image smaller than the
//! photo. Synapse makes its configured thumbnail sizes during the upload instead, so the
//! upload is timed too.
//!
//! Spec: client-server API, "GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}".

use std::time::Instant;

use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, GenericImageView};
use reqwest::Method;
use serde_json::json;

use super::Target;
use crate::client::{media_url, register, BenchResult, User};
use crate::noise;
use crate::report::{Measure, Phase};

/// A photo-like JPEG (quality 90): two gradients and noise, so it neither compresses to
/// nothing nor decodes trivially.
fn photo(width: u32, height: u32) -> BenchResult<Bytes> {
    let noise = noise::bytes(0x2545_F491_4F6C_DD1D, width as usize * height as usize);
    let mut pixels = Vec::with_capacity(noise.len() * 3);
    let coordinates = (0..height).flat_map(|y| (0..width).map(move |x| (x, y)));
    for ((x, y), n) in coordinates.zip(noise) {
        pixels.push((x * 255 / width.max(1)) as u8);
        pixels.push((y * 255 / height.max(1)) as u8);
        pixels.push(96 + n % 64);
    }
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .encode(&pixels, width, height, ExtendedColorType::Rgb8)
        .map_err(|e| format!("cannot encode the photo: {e}"))?;
    Ok(Bytes::from(out))
}

/// One thumbnail request; answers its latency after checking the image.
async fn thumbnail(user: &User, url: &str, photo: (u32, u32)) -> BenchResult<f64> {
    let started = Instant::now();
    let response = user
        .http
        .request(Method::GET, url)
        .bearer_auth(&user.token)
        .send()
        .await
        .map_err(|e| format!("thumbnail: no answer: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("thumbnail cut short: {e}"))?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        return Err(format!(
            "thumbnail: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let (w, h) = image::load_from_memory(&body)
        .map_err(|e| format!("the thumbnail is not an image: {e}"))?
        .dimensions();
    if w >= photo.0 || h >= photo.1 {
        return Err(format!(
            "a {w}×{h} thumbnail of a {}×{} photo",
            photo.0, photo.1
        ));
    }
    Ok(elapsed)
}

pub async fn run(
    target: &Target,
    width: u32,
    height: u32,
    cached: usize,
) -> BenchResult<Vec<Measure>> {
    let user = register(&target.base, &format!("{}thumb", target.prefix)).await?;
    let jpeg = photo(width, height)?;
    let params = json!({"width": width, "height": height, "kib": jpeg.len() / 1024});

    let phase = Phase::start(target.pid);
    let started = Instant::now();
    let response = user
        .http
        .post(format!(
            "{}/_matrix/media/v3/upload?filename=photo.jpg",
            target.base
        ))
        .bearer_auth(&user.token)
        .header("content-type", "image/jpeg")
        .body(jpeg)
        .send()
        .await
        .map_err(|e| format!("upload: no answer: {e}"))?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    let upload = phase
        .finish(1, 0, vec![started.elapsed().as_secs_f64() * 1000.0])
        .named("thumbnail", "upload", params.clone());
    let uri = answer["content_uri"]
        .as_str()
        .filter(|_| status.is_success())
        .ok_or_else(|| format!("upload: {status} {answer}"))?;
    let url = format!(
        "{}?width=256&height=256&method=scale",
        media_url(&target.base, "thumbnail", uri)?
    );

    let phase = Phase::start(target.pid);
    let first_ms = thumbnail(&user, &url, (width, height)).await?;
    let first = phase
        .finish(1, 0, vec![first_ms])
        .named("thumbnail", "first", params.clone());

    let phase = Phase::start(target.pid);
    let mut latencies = Vec::with_capacity(cached);
    for _ in 0..cached {
        latencies.push(thumbnail(&user, &url, (width, height)).await?);
    }
    let again = phase
        .finish(cached, 0, latencies)
        .named("thumbnail", "cached", params);
    Ok(vec![upload, first, again])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_photo_is_a_jpeg_of_the_size_asked() {
        let jpeg = photo(64, 48).expect("encodes");
        let decoded = image::load_from_memory(&jpeg).expect("decodes");
        assert_eq!(decoded.dimensions(), (64, 48));
    }
}
