//! The media repository over HTTP: uploads, downloads, thumbnails, limits, safety headers.
//! Spec: client-server API, "Content repository".

use crate::common;

use std::io::{Cursor, Write};

use common::{assert_error, urlencode, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Client<'a> {
    s: &'a TestServer,
    token: String,
}

impl Client<'_> {
    async fn upload(
        &self,
        bytes: Vec<u8>,
        content_type: &str,
        filename: Option<&str>,
    ) -> reqwest::Response {
        let mut url = format!("{}/_matrix/media/v3/upload", self.s.base);
        if let Some(name) = filename {
            url = format!("{url}?filename={}", urlencode(name));
        }
        self.s
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await
            .unwrap()
    }

    async fn upload_ok(
        &self,
        bytes: Vec<u8>,
        content_type: &str,
        filename: Option<&str>,
    ) -> String {
        let response = self.upload(bytes, content_type, filename).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["content_uri"].as_str().unwrap().to_owned()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.s
            .http
            .get(format!("{}{path}", self.s.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }
}

fn path_of(mxc: &str) -> String {
    mxc.strip_prefix("mxc://").unwrap().to_owned()
}

async fn client<'a>(s: &'a TestServer, name: &str) -> Client<'a> {
    let (_, token, _) = s.register(name, "pw").await;
    Client { s, token }
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 7, 255])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 99])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

fn blob_files(s: &TestServer) -> usize {
    walk(&s.dir.path().join("media/blobs")) + walk(&s.dir.path().join("media/tmp"))
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { walk(&p) } else { 1 })
            .sum()
    })
}

#[tokio::test]
async fn upload_then_download_byte_identical_with_safe_headers() {
    let s = TestServer::start().await;
    let c = client(&s, "ann").await;
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mxc = c
        .upload_ok(bytes.clone(), "application/zip", Some("archive.zip"))
        .await;
    assert!(mxc.starts_with("mxc://localhost/"), "{mxc}");

    let response = c
        .get(&format!(
            "/_matrix/client/v1/media/download/{}",
            path_of(&mxc)
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/zip");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"archive.zip\""
    );
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("sandbox;"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cross-origin-resource-policy"], "cross-origin");
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // The file name in the path wins; a PNG is served inline.
    let png_mxc = c.upload_ok(png(10, 10), "image/png", Some("dot.png")).await;
    let response = c
        .get(&format!(
            "/_matrix/client/v1/media/download/{}/Été.png",
            path_of(&png_mxc)
        ))
        .await;
    assert_eq!(
        response.headers()["content-disposition"],
        "inline; filename*=utf-8''%C3%89t%C3%A9.png"
    );

    // Same bytes are stored once.
    let before = blob_files(&s);
    c.upload_ok(bytes.clone(), "application/zip", None).await;
    assert_eq!(blob_files(&s), before);
    s.stop().await;
}

#[tokio::test]
async fn media_needs_a_token_and_unknown_media_is_404() {
    let s = TestServer::start().await;
    let c = client(&s, "ben").await;
    let mxc = c.upload_ok(b"hello".to_vec(), "text/plain", None).await;
    let (status, body) = s
        .get(
            &format!("/_matrix/client/v1/media/download/{}", path_of(&mxc)),
            None,
        )
        .await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (status, body) = s.post("/_matrix/media/v3/upload", None, json!({})).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");

    for path in [
        "/_matrix/client/v1/media/download/localhost/doesNotExist",
        "/_matrix/client/v1/media/download/localhost/bad.id",
        "/_matrix/client/v1/media/download/elsewhere.invalid/abc?allow_remote=false",
        "/_matrix/client/v1/media/thumbnail/localhost/doesNotExist?width=32&height=32",
    ] {
        let response = c.get(path).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_error(status, &body, 404, "M_NOT_FOUND");
    }
    // A server that cannot be reached (`.invalid` never resolves): 502, not a hang.
    let response = c
        .get("/_matrix/client/v1/media/download/elsewhere.invalid/abc")
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(status, &body, 502, "M_UNKNOWN");
    let response = c.get("/_matrix/client/v1/media/config").await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["m.upload.size"], 50 << 20);
    s.stop().await;
}

#[tokio::test]
async fn oversized_uploads_get_413_and_leave_nothing_behind() {
    let s = TestServer::start_with(|c| c.media.max_upload_size = 10_000).await;
    let c = client(&s, "cat").await;
    // Declared too large: refused before the body is read.
    let response = c
        .upload(vec![1u8; 10_001], "application/octet-stream", None)
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(status, &body, 413, "M_TOO_LARGE");
    // No length declared (chunked): refused while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![2u8; 4000])).collect();
    let response = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&c.token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(status, &body, 413, "M_TOO_LARGE");
    assert_eq!(blob_files(&s), 0, "no file may be left behind");
    // Exactly at the limit is fine.
    c.upload_ok(vec![3u8; 10_000], "application/octet-stream", None)
        .await;
    s.stop().await;
}

#[tokio::test]
async fn an_upload_cut_off_midway_leaves_no_file() {
    let s = TestServer::start().await;
    let c = client(&s, "dan").await;
    let addr = s.running().client_addr;
    {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n",
            c.token
        )
        .unwrap();
        stream.write_all(&[9u8; 50_000]).unwrap();
        stream.flush().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    } // dropped: the connection closes mid-body
    for _ in 0..200 {
        if blob_files(&s) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(blob_files(&s), 0);
    s.stop().await;
}

/// Fetches a thumbnail; answers its headers, bytes and decoded dimensions.
async fn thumbnail_of(
    c: &Client<'_>,
    mxc: &str,
    query: String,
) -> (reqwest::header::HeaderMap, Vec<u8>, (u32, u32)) {
    let path = format!(
        "/_matrix/client/v1/media/thumbnail/{}?{query}",
        path_of(mxc)
    );
    let response = c.get(&path).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap().to_vec();
    let img = image::load_from_memory(&bytes).unwrap();
    (headers, bytes, (img.width(), img.height()))
}

/// Every size asked for was a file of its own, forever: past the few stored per image, the
/// nearest stored thumbnail is served (covering the box when one does), and no more
/// files are written.
#[tokio::test]
async fn asking_for_ever_more_thumbnail_sizes_writes_no_more_files() {
    let s = TestServer::start().await;
    let c = client(&s, "eve").await;
    let mxc = c
        .upload_ok(png(600, 600), "image/png", Some("big.png"))
        .await;
    let before = blob_files(&s);
    for i in 0..40u32 {
        let (_, _, dims) =
            thumbnail_of(&c, &mxc, format!("width={}&height=57&method=crop", 100 + i)).await;
        assert!(dims.0 >= 1 && dims.1 >= 1);
    }
    let written = blob_files(&s) - before;
    assert!(written <= 32, "{written} thumbnail files for one image");
    // Past the cap, a box no stored thumbnail covers gets the largest one.
    let (_, _, dims) = thumbnail_of(&c, &mxc, "width=500&height=500&method=crop".into()).await;
    assert_eq!(dims, (131, 57));
    assert!(blob_files(&s) - before <= 32);
    s.stop().await;
}

#[tokio::test]
async fn thumbnails_follow_the_size_rules_and_are_cached() {
    let s = TestServer::start().await;
    let c = client(&s, "eve").await;
    let mxc = c
        .upload_ok(jpeg(1200, 900), "image/jpeg", Some("photo.jpg"))
        .await;
    let thumb = |q: &str| thumbnail_of(&c, &mxc, q.to_owned());
    let (headers, first, dims) = thumb("width=256&height=256&method=scale").await;
    assert_eq!(dims, (320, 240));
    assert_eq!(headers["content-type"], "image/jpeg");
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("inline"));
    let (_, again, _) = thumb("width=256&height=256&method=scale").await;
    assert_eq!(first, again, "served from cache");

    let (_, _, dims) = thumb("width=96&height=96&method=crop").await;
    assert_eq!(dims, (96, 96));
    let (_, _, dims) = thumb("width=300&height=100&method=crop").await;
    assert_eq!(dims, (300, 100));
    let (_, _, dims) = thumb("width=1000&height=1000&method=scale").await;
    assert_eq!(dims, (1000, 750));
    // Asking for more than the original gives the original, never an upscale.
    let (_, bytes, dims) = thumb("width=2000&height=2000&method=scale").await;
    assert_eq!(dims, (1200, 900));
    assert_eq!(bytes, jpeg(1200, 900));

    // Method defaults to scale; bad parameters are 400.
    let (_, _, dims) = thumb("width=640&height=480").await;
    assert_eq!(dims, (640, 480));
    for q in [
        "width=0&height=10",
        "width=10",
        "width=10&height=10&method=stretch",
        "width=-1&height=10",
    ] {
        let response = c
            .get(&format!(
                "/_matrix/client/v1/media/thumbnail/{}?{q}",
                path_of(&mxc)
            ))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{q}");
    }
    s.stop().await;
}

/// A kept-alive client asking for a cached thumbnail or a small file again gets it at
/// once: the server writes headers and a streamed body separately, which without
/// TCP_NODELAY waits for the client's delayed ACK (~40 ms on Linux) every time.
#[tokio::test]
async fn small_media_on_a_kept_alive_connection_is_not_held_back() {
    let s = TestServer::start().await;
    let c = client(&s, "nagle").await;
    let photo = c.upload_ok(jpeg(800, 600), "image/jpeg", None).await;
    let note = c
        .upload_ok(b"a short note".to_vec(), "text/plain", None)
        .await;
    let thumbnail = format!(
        "/_matrix/client/v1/media/thumbnail/{}?width=96&height=96&method=crop",
        path_of(&photo)
    );
    let download = format!("/_matrix/client/v1/media/download/{}", path_of(&note));
    for path in [thumbnail, download] {
        let mut times = Vec::new();
        for _ in 0..7 {
            let started = std::time::Instant::now();
            let response = c.get(&path).await;
            assert_eq!(response.status(), StatusCode::OK);
            response.bytes().await.unwrap();
            times.push(started.elapsed());
        }
        // The delay hits every request: the third fastest shows it, while the machine's
        // load (other tests) may slow any few of them.
        times.sort();
        assert!(
            times[2] < std::time::Duration::from_millis(30),
            "{path}: third fastest {:?} ({times:?})",
            times[2]
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn png_thumbnails_keep_png_and_non_images_are_refused() {
    let s = TestServer::start().await;
    let c = client(&s, "fox").await;
    let mxc = c.upload_ok(png(500, 500), "image/png", None).await;
    let response = c
        .get(&format!(
            "/_matrix/client/v1/media/thumbnail/{}?width=32&height=32&method=crop",
            path_of(&mxc)
        ))
        .await;
    assert_eq!(response.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));

    let zip = c
        .upload_ok(b"PK\x03\x04not an image".to_vec(), "application/zip", None)
        .await;
    let response = c
        .get(&format!(
            "/_matrix/client/v1/media/thumbnail/{}?width=32&height=32",
            path_of(&zip)
        ))
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(status, &body, 400, "M_UNKNOWN");
    s.stop().await;
}

/// A PNG whose header claims 100000×100000 pixels: decoding it would need 40 GB.
fn png_bomb_header() -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // Decoders read the header up to the first image data chunk: give them one.
    let mut idat = b"IDAT".to_vec();
    idat.extend_from_slice(&[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    out.extend_from_slice(&8u32.to_be_bytes());
    out.extend_from_slice(&idat);
    out.extend_from_slice(&crc32(&idat).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(b"IEND");
    out.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    out
}

#[tokio::test]
async fn a_decompression_bomb_is_refused() {
    let s = TestServer::start().await;
    let c = client(&s, "gil").await;
    let mxc = c.upload_ok(png_bomb_header(), "image/png", None).await;
    let response = c
        .get(&format!(
            "/_matrix/client/v1/media/thumbnail/{}?width=32&height=32",
            path_of(&mxc)
        ))
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(status, &body, 413, "M_TOO_LARGE");
    // The bytes themselves are still downloadable.
    assert_eq!(
        c.get(&format!(
            "/_matrix/client/v1/media/download/{}",
            path_of(&mxc)
        ))
        .await
        .status(),
        StatusCode::OK
    );
    s.stop().await;
}

#[tokio::test]
async fn async_upload_create_then_put() {
    let s = TestServer::start().await;
    let c = client(&s, "hana").await;
    let other = client(&s, "ivo").await;
    let response = s
        .http
        .post(format!("{}/_matrix/media/v1/create", s.base))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    let created: Value = response.json().await.unwrap();
    let mxc = created["content_uri"].as_str().unwrap().to_owned();
    let expires = created["unused_expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(expires > now + 3_600_000);
    let media_path = path_of(&mxc);

    // Not uploaded yet: a short wait times out with 504.
    let response = c
        .get(&format!(
            "/_matrix/client/v1/media/download/{media_path}?timeout_ms=100"
        ))
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(status, &body, 504, "M_NOT_YET_UPLOADED");

    // A longer wait is answered as soon as the upload lands.
    let waiting_path = format!("/_matrix/client/v1/media/download/{media_path}?timeout_ms=10000");
    let waiting = c.get(&waiting_path);
    let put = |client: &Client<'_>, bytes: &'static [u8]| {
        s.http
            .request(
                Method::PUT,
                format!(
                    "{}/_matrix/media/v3/upload/{media_path}?filename=late.txt",
                    s.base
                ),
            )
            .bearer_auth(&client.token)
            .header("content-type", "text/plain")
            .body(bytes)
            .send()
    };
    let other_put = put(&other, b"not yours").await.unwrap();
    let status = other_put.status();
    let body: Value = other_put.json().await.unwrap();
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (downloaded, uploaded) = tokio::join!(waiting, async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        put(&c, b"arrived late").await.unwrap()
    });
    assert_eq!(uploaded.status(), StatusCode::OK);
    assert_eq!(downloaded.status(), StatusCode::OK);
    assert_eq!(
        downloaded.headers()["content-disposition"],
        "inline; filename=\"late.txt\""
    );
    assert_eq!(downloaded.bytes().await.unwrap().as_ref(), b"arrived late");

    let again = put(&c, b"twice").await.unwrap();
    let status = again.status();
    let body: Value = again.json().await.unwrap();
    assert_error(status, &body, 409, "M_CANNOT_OVERWRITE_MEDIA");
    let unknown = s
        .http
        .request(
            Method::PUT,
            format!("{}/_matrix/media/v3/upload/localhost/neverCreated", s.base),
        )
        .bearer_auth(&c.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn legacy_endpoints_are_frozen_unless_enabled() {
    let s = TestServer::start().await;
    let c = client(&s, "jo").await;
    let mxc = c.upload_ok(b"old style".to_vec(), "text/plain", None).await;
    let (status, body) = s
        .get(
            &format!("/_matrix/media/v3/download/{}", path_of(&mxc)),
            None,
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    s.stop().await;

    let s = TestServer::start_with(|c| c.media.legacy_unauthenticated = true).await;
    let c = client(&s, "jo").await;
    let mxc = c.upload_ok(b"old style".to_vec(), "text/plain", None).await;
    let response = s
        .http
        .get(format!(
            "{}/_matrix/media/v3/download/{}",
            s.base,
            path_of(&mxc)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"old style");
    s.stop().await;
}

#[tokio::test]
async fn media_survives_a_restart() {
    let mut s = TestServer::start().await;
    let (_, token, _) = s.register("kai", "pw").await;
    let bytes = jpeg(64, 48);
    let response = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&token)
        .header("content-type", "image/jpeg")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let mxc = response.json::<Value>().await.unwrap()["content_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    s.restart().await;
    let response = s
        .http
        .get(format!(
            "{}/_matrix/client/v1/media/download/{}",
            s.base,
            path_of(&mxc)
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    s.stop().await;
}

/// Attachments as a chat shows them: an image, a file and a video sent into a room as
/// `m.image`, `m.file` and `m.video` events; another member reads the events, fetches a
/// thumbnail of the image and downloads the file and the video. The room's avatar (`m.room.avatar`) points at uploaded media too.
#[tokio::test]
async fn attachments_travel_through_room_events() {
    let s = TestServer::start().await;
    let alice = client(&s, "alice").await;
    let bob = client(&s, "bob").await;
    let v3 = "/_matrix/client/v3";
    let (_, created) = s
        .post(
            &format!("{v3}/createRoom"),
            Some(&alice.token),
            json!({"preset": "public_chat"}),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (status, _) = s
        .post(&format!("{v3}/join/{room}"), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let image = alice
        .upload_ok(png(640, 480), "image/png", Some("cat.png"))
        .await;
    let file = alice
        .upload_ok(
            b"quarterly numbers".to_vec(),
            "text/plain",
            Some("report.txt"),
        )
        .await;
    let video = alice
        .upload_ok(b"not really an mp4".to_vec(), "video/mp4", Some("clip.mp4"))
        .await;
    for (txn, content) in [
        (
            "vid",
            json!({"msgtype": "m.video", "body": "clip.mp4", "url": video,
                   "info": {"mimetype": "video/mp4"}}),
        ),
        (
            "img",
            json!({"msgtype": "m.image", "body": "cat.png", "url": image,
                       "info": {"mimetype": "image/png", "w": 640, "h": 480}}),
        ),
        (
            "file",
            json!({"msgtype": "m.file", "body": "report.txt", "url": file,
                        "info": {"mimetype": "text/plain"}}),
        ),
    ] {
        let (status, body) = s
            .call(
                Method::PUT,
                &format!("{v3}/rooms/{room}/send/m.room.message/{txn}"),
                Some(&alice.token),
                Some(content),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = s
        .call(
            Method::PUT,
            &format!("{v3}/rooms/{room}/state/m.room.avatar/"),
            Some(&alice.token),
            Some(json!({"url": image})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Bob finds the attachments by their url and fetches them.
    let (_, page) = s
        .get(
            &format!(
                "{v3}/rooms/{room}/messages?dir=b&filter={}",
                urlencode(r#"{"contains_url":true,"types":["m.room.message"]}"#)
            ),
            Some(&bob.token),
        )
        .await;
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 3, "{page}");
    let file_url = chunk[0]["content"]["url"].as_str().unwrap();
    let image_url = chunk[1]["content"]["url"].as_str().unwrap();
    assert_eq!(chunk[2]["content"]["msgtype"], "m.video");
    let clip = bob
        .get(&format!(
            "/_matrix/client/v1/media/download/{}",
            path_of(chunk[2]["content"]["url"].as_str().unwrap())
        ))
        .await;
    assert_eq!(clip.status(), StatusCode::OK);
    assert_eq!(clip.headers()["content-type"], "video/mp4");
    assert_eq!(clip.bytes().await.unwrap().as_ref(), b"not really an mp4");
    let download = bob
        .get(&format!(
            "/_matrix/client/v1/media/download/{}",
            path_of(file_url)
        ))
        .await;
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(
        download.bytes().await.unwrap().as_ref(),
        b"quarterly numbers"
    );
    let thumbnail = bob
        .get(&format!(
            "/_matrix/client/v1/media/thumbnail/{}?width=96&height=96&method=crop",
            path_of(image_url)
        ))
        .await;
    assert_eq!(thumbnail.status(), StatusCode::OK);
    assert_eq!(thumbnail.headers()["content-type"], "image/png");
    let (_, avatar) = s
        .get(
            &format!("{v3}/rooms/{room}/state/m.room.avatar/"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(avatar["url"], image.as_str());
    s.stop().await;
}

/// A profile picture: uploaded, set as `avatar_url`, carried into member events, and
/// fetched as a thumbnail by another user.
#[tokio::test]
async fn avatars_are_uploaded_set_and_shown() {
    let s = TestServer::start().await;
    let alice = client(&s, "alice").await;
    let bob = client(&s, "bob").await;
    let v3 = "/_matrix/client/v3";
    let (_, created) = s
        .post(
            &format!("{v3}/createRoom"),
            Some(&alice.token),
            json!({"preset": "public_chat"}),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    s.post(&format!("{v3}/join/{room}"), Some(&bob.token), json!({}))
        .await;

    let avatar = alice
        .upload_ok(jpeg(400, 400), "image/jpeg", Some("me.jpg"))
        .await;
    let (status, body) = s
        .call(
            Method::PUT,
            &format!("{v3}/profile/@alice:localhost/avatar_url"),
            Some(&alice.token),
            Some(json!({"avatar_url": avatar})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, profile) = s.get(&format!("{v3}/profile/@alice:localhost"), None).await;
    assert_eq!(profile["avatar_url"], avatar.as_str());

    // Bob sees the avatar on alice's member event and fetches a thumbnail of it.
    let (_, members) = s
        .get(
            &format!("{v3}/rooms/{room}/joined_members"),
            Some(&bob.token),
        )
        .await;
    let url = members["joined"]["@alice:localhost"]["avatar_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(url, avatar);
    let thumbnail = bob
        .get(&format!(
            "/_matrix/client/v1/media/thumbnail/{}?width=32&height=32&method=crop",
            path_of(&url)
        ))
        .await;
    assert_eq!(thumbnail.status(), StatusCode::OK);
    assert_eq!(thumbnail.headers()["content-type"], "image/jpeg");
    s.stop().await;
}
