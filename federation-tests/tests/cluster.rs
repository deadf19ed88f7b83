//! The harness starts independent servers, each serving its own key over TLS with a
//! certificate from the test CA, reachable without SNI (they are named by IP).

use federation_tests::Cluster;
use serde_json::Value;

#[tokio::test]
async fn three_servers_each_serve_their_own_key_under_the_test_ca() {
    let cluster = Cluster::start(3).await.unwrap();
    let ca = std::fs::read(&cluster.ca.cert_path).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let mut keys = Vec::new();
    for instance in &cluster.instances {
        let url = format!("https://{}/_matrix/key/v2/server", instance.name());
        let doc: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(doc["server_name"], instance.name());
        keys.push(doc["verify_keys"].to_string());
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "every server has its own key");
    cluster.shutdown().await;
}
