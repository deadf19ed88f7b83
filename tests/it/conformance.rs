//! Keeps `spec/endpoints.tsv` (and so docs/conformance.md) true: every endpoint marked
//! `works` is routed, every one marked `unrecognized` answers 404 `M_UNRECOGNIZED`.

use crate::common;

use common::TestServer;
use reqwest::Method;

#[tokio::test]
async fn endpoint_table_matches_the_server() {
    let table = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/spec/endpoints.tsv"))
        .unwrap();
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/conformance.md"))
        .unwrap();
    let s = TestServer::start().await;
    let fed = s.running().federation_addr.unwrap();
    let pem = std::fs::read(s.dir.path().join("tls/self-signed.crt")).unwrap();
    let tls = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .resolve("localhost", fed)
        .build()
        .unwrap();
    let mut rows = 0;
    for line in table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 4, "bad row: {line}");
        let (method, path, status) = (cols[0], cols[1], cols[2]);
        let mut concrete = path
            .replace("{deviceId}", "SOMEDEVICE")
            .replace("{serverName}", "localhost")
            .replace("{mediaId}", "someMedia")
            .replace("{fileName}", "name.txt");
        // Any other parameter ({roomId}, {eventId}, {txnId}, …) gets a placeholder.
        while let (Some(open), Some(close)) = (concrete.find('{'), concrete.find('}')) {
            concrete.replace_range(open..=close, "x");
        }
        let federation =
            path.starts_with("/_matrix/key") || path.starts_with("/_matrix/federation");
        let url = if federation {
            format!("https://localhost:{}{concrete}", fed.port())
        } else {
            format!("{}{concrete}", s.base)
        };
        let client = if federation { &tls } else { &s.http };
        let response = client
            .request(Method::from_bytes(method.as_bytes()).unwrap(), url)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let unrecognized = body["errcode"] == "M_UNRECOGNIZED" && (code == 404 || code == 405);
        match status {
            "works" => assert!(
                !unrecognized,
                "{method} {path} is marked works but is not routed"
            ),
            "unrecognized" => assert!(
                unrecognized,
                "{method} {path} is marked unrecognized but answered {code} {body}"
            ),
            other => panic!("unknown status {other} in {line}"),
        }
        if status == "works" {
            let short = path
                .trim_start_matches("/_matrix/client/v3")
                .trim_start_matches("/_matrix/client");
            assert!(
                docs.contains(short) || docs.contains(path),
                "docs/conformance.md does not mention {path}"
            );
        }
        rows += 1;
    }
    assert!(rows > 20);
    s.stop().await;
}
