//! Media of another server: fetched over federation (`/_matrix/federation/v1/media/…`,
//! multipart), kept, served to our clients with a thumbnail made here.

use federation_tests::{enc, Cluster, User};

/// A `width` x `height` PNG with a gradient.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn upload(user: &User, bytes: Vec<u8>, content_type: &str, name: &str) -> String {
    let response = user
        .http
        .post(format!(
            "{}/_matrix/media/v3/upload?filename={}",
            user.base,
            enc(name)
        ))
        .bearer_auth(&user.token)
        .header("Content-Type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["content_uri"].as_str().unwrap().to_owned()
}

async fn get(user: &User, path: &str) -> (u16, String, Vec<u8>) {
    let response = user
        .http
        .get(format!("{}{path}", user.base))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

#[tokio::test]
async fn remote_media_is_fetched_kept_and_thumbnailed_here() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let alice = User::register(&cluster.instances[0], "alice")
        .await
        .unwrap();
    let bob = User::register(&cluster.instances[1], "bob").await.unwrap();
    let image = png(640, 480);
    let mxc = upload(&bob, image.clone(), "image/png", "gradient.png").await;
    let (server, media_id) = mxc.trim_start_matches("mxc://").split_once('/').unwrap();
    let (server, media_id) = (server.to_owned(), media_id.to_owned());
    let document = upload(
        &bob,
        b"plain words\r\n--and dashes\r\n".to_vec(),
        "text/plain",
        "notes.txt",
    )
    .await;

    // Not fetched yet, and the client says not to.
    let (status, _, _) = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/{server}/{media_id}?allow_remote=false"),
    )
    .await;
    assert_eq!(status, 404);

    let (status, content_type, bytes) = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/{server}/{media_id}"),
    )
    .await;
    assert_eq!((status, content_type.as_str()), (200, "image/png"));
    assert_eq!(bytes, image, "the same bytes");
    let (_, id) = document
        .trim_start_matches("mxc://")
        .split_once('/')
        .unwrap();
    let (status, content_type, bytes) = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/{server}/{id}"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(bytes, b"plain words\r\n--and dashes\r\n");

    // A thumbnail, made here.
    let (status, content_type, thumb) = get(
        &alice,
        &format!("/_matrix/client/v1/media/thumbnail/{server}/{media_id}?width=64&height=64&method=scale"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&thumb));
    assert!(content_type.starts_with("image/"), "{content_type}");
    let decoded = image::load_from_memory(&thumb).unwrap();
    assert!(
        decoded.width() <= 320 && decoded.width() < 640,
        "{}",
        decoded.width()
    );

    // Unknown media of that server: its 404.
    let (status, _, _) = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/{server}/doesnotexist"),
    )
    .await;
    assert_eq!(status, 404);

    // Kept: served while its server is down.
    cluster.instances[1].stop().await;
    let (status, _, bytes) = get(
        &alice,
        &format!("/_matrix/client/v1/media/download/{server}/{media_id}"),
    )
    .await;
    assert_eq!((status, bytes == image), (200, true));
    cluster.shutdown().await;
}

/// Several clients asking for the same remote media at once, and a client showing
/// several pictures of one server at once, get them all: none is refused for want of a
/// download slot (each request fetched on its own before, so copies of one fetch took the
/// server's four slots and the rest got 429; that one run serves every caller is shown by
/// `single_flight`'s own tests, as this one cannot count the other server's answers).
#[tokio::test]
async fn remote_media_asked_at_once_is_fetched_once_and_served_to_all() {
    let cluster = Cluster::start(2).await.unwrap();
    let alice = User::register(&cluster.instances[0], "alice")
        .await
        .unwrap();
    let bob = User::register(&cluster.instances[1], "bob").await.unwrap();
    let mut pictures = Vec::new();
    for n in 0..3u32 {
        let image = png(1200 + n, 900);
        let mxc = upload(&bob, image.clone(), "image/png", "picture.png").await;
        pictures.push((mxc.trim_start_matches("mxc://").to_owned(), image));
    }
    // The first picture eight times, the others twice, all at once.
    let asks: Vec<usize> = (0..8).map(|_| 0).chain([1, 2, 1, 2]).collect();
    let mut asking = tokio::task::JoinSet::new();
    for n in asks {
        let (alice, path) = (
            alice.clone(),
            format!("/_matrix/client/v1/media/download/{}", pictures[n].0),
        );
        asking.spawn(async move { (n, get(&alice, &path).await) });
    }
    while let Some(answer) = asking.join_next().await {
        let (n, (status, content_type, bytes)) = answer.unwrap();
        assert_eq!(
            (status, content_type.as_str()),
            (200, "image/png"),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(bytes == pictures[n].1, "picture {n}: the same bytes");
    }
    cluster.shutdown().await;
}
