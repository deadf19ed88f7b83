//! The harness starts independent servers, each serving its own key over TLS.

use federation_tests::Cluster;
use serde_json::Value;

#[tokio::test]
async fn three_servers_each_serve_their_own_key() {
    let cluster = Cluster::start(3).await.unwrap();
    let mut keys = Vec::new();
    for (i, instance) in cluster.instances.iter().enumerate() {
        let addr = instance.server.federation_addr.unwrap();
        let pem = std::fs::read(instance.dir.path().join("tls/self-signed.crt")).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .resolve(&format!("hs{}.test", i + 1), addr)
            .build()
            .unwrap();
        let url = format!(
            "https://hs{}.test:{}/_matrix/key/v2/server",
            i + 1,
            addr.port()
        );
        let doc: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(doc["server_name"], format!("hs{}.test", i + 1));
        keys.push(doc["verify_keys"].to_string());
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "every server has its own key");
    cluster.shutdown().await;
}
