//! Starting and stopping a homeserver in-process: the binary, the tests, the benchmarks
//! and the federation harness all go through [`Server::start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http;
use crate::services::Services;

/// Entry point for running a homeserver.
pub struct Server;

/// A started homeserver: its bound addresses and the handle to stop it.
pub struct RunningServer {
    /// Where the client-server API listens (port 0 in the config picks a free port).
    pub client_addr: SocketAddr,
    /// Where the federation API listens, if enabled.
    pub federation_addr: Option<SocketAddr>,
    /// The running services (tests may call them directly).
    pub services: Arc<Services>,
    shutdown: watch::Sender<bool>,
    client_task: JoinHandle<()>,
    federation: Option<(axum_server::Handle<SocketAddr>, JoinHandle<()>)>,
}

/// How long in-flight requests get to finish at shutdown.
const GRACE: Duration = Duration::from_secs(10);

impl Server {
    /// Opens the data folder, binds the listeners and starts serving.
    pub async fn start(config: Config) -> Result<RunningServer, String> {
        // Our TLS stacks use ring; installing it twice (several servers in one test
        // process) is harmless, so the error is ignored.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let client_listen = config.client.listen;
        let federation = config.federation.clone();
        let services = Services::open(config)?;

        let listener = TcpListener::bind(client_listen)
            .await
            .map_err(|e| format!("cannot listen on {client_listen} (client.listen): {e}"))?;
        let client_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (shutdown, mut stopped) = watch::channel(false);
        let app = http::client_router(Arc::clone(&services));
        // Without TCP_NODELAY, a response written in two parts (headers, then a streamed
        // body such as a thumbnail) waits ~40 ms for the client's delayed ACK on a
        // kept-alive connection (Nagle's algorithm).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let client_task = tokio::spawn(async move {
            let serve = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "client listener failed");
            }
        });
        tracing::info!(address = %client_addr, "client API listening");

        let mut federation_addr = None;
        let mut federation_parts = None;
        if federation.enabled {
            let files = crate::tls::load_or_generate(&services.config)?;
            let tls =
                axum_server::tls_rustls::RustlsConfig::from_pem(files.cert_pem, files.key_pem)
                    .await
                    .map_err(|e| format!("invalid federation TLS certificate or key: {e}"))?;
            let std_listener = std::net::TcpListener::bind(federation.listen).map_err(|e| {
                format!(
                    "cannot listen on {} (federation.listen): {e}",
                    federation.listen
                )
            })?;
            std_listener
                .set_nonblocking(true)
                .map_err(|e| e.to_string())?;
            let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
            let handle = axum_server::Handle::new();
            let server = axum_server::from_tcp_rustls(std_listener, tls)
                .map_err(|e| e.to_string())?
                .handle(handle.clone());
            let app = http::federation_router(Arc::clone(&services));
            let task = tokio::spawn(async move {
                if let Err(e) = server
                    .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                    .await
                {
                    tracing::error!(error = %e, "federation listener failed");
                }
            });
            tracing::info!(address = %addr, "federation API listening (TLS)");
            federation_addr = Some(addr);
            federation_parts = Some((handle, task));
        }

        Ok(RunningServer {
            client_addr,
            federation_addr,
            services,
            shutdown,
            client_task,
            federation: federation_parts,
        })
    }
}

impl RunningServer {
    /// The client API's base URL, e.g. `http://127.0.0.1:8008`.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    /// The federation API's base URL, if enabled.
    pub fn federation_url(&self) -> Option<String> {
        self.federation_addr.map(|a| format!("https://{a}"))
    }

    /// Stops accepting connections, lets in-flight requests finish, flushes the database.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some((handle, task)) = self.federation {
            handle.graceful_shutdown(Some(GRACE));
            let _ = task.await;
        }
        if tokio::time::timeout(GRACE, self.client_task).await.is_err() {
            tracing::warn!("client listener did not stop within the grace period");
        }
        self.services.rooms.shutdown().await;
        if let Err(e) = self.services.db.flush() {
            tracing::warn!(error = %e, "flush at shutdown failed");
        }
        tracing::info!("stopped");
    }
}
