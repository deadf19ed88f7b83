//! A harness that runs several real ourwhats homeservers in one process, each with its own
//! temp data folder, RocksDB, signing key and TLS federation listener on loopback.
//!
//! The federation issue fills this up with multi-server stories; for now it starts the
//! servers and hands out their addresses.

use ourwhats::{Config, RunningServer, Server};

/// One homeserver of a cluster.
pub struct Instance {
    /// The running server.
    pub server: RunningServer,
    /// Its data folder (deleted when the instance is dropped).
    pub dir: tempfile::TempDir,
}

/// Several homeservers started together.
pub struct Cluster {
    /// The instances, in start order.
    pub instances: Vec<Instance>,
}

impl Cluster {
    /// Starts `n` servers named `hs1.test`, `hs2.test`, …, each with its listeners on
    /// loopback port 0 and rate limits off.
    pub async fn start(n: usize) -> Result<Self, String> {
        let mut instances = Vec::with_capacity(n);
        for i in 1..=n {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let mut config = Config::embedded_default();
            config.server_name = ourwhats::core::ServerName::parse(&format!("hs{i}.test"))
                .map_err(|e| e.to_string())?;
            config.data_dir = dir.path().to_path_buf();
            config.client.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
            config.federation.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
            config.rate_limits.enabled = false;
            let server = Server::start(config).await?;
            instances.push(Instance { server, dir });
        }
        Ok(Self { instances })
    }

    /// Stops every server.
    pub async fn shutdown(self) {
        for instance in self.instances {
            instance.server.shutdown().await;
        }
    }
}
