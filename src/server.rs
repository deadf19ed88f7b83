//! Starting and stopping a homeserver in-process: the binary, the tests, the benchmarks
//! and the federation harness all go through [`Server::start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::fd_limit;
use crate::http;
use crate::services::health::ListenerState;
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
    /// Background workers that stop when told (push delivery, memory release, the
    /// federation sender): joined at shutdown, so nothing of this server holds the
    /// database after it.
    workers: Vec<JoinHandle<()>>,
}

/// How long in-flight requests get to finish at shutdown.
const GRACE: Duration = Duration::from_secs(10);

/// Raises the file descriptor limit and derives the client listener's limits: the
/// configured connection cap, or what the descriptors leave after the database (see
/// [`crate::fd_limit`]). A configured cap beyond that budget is kept, with a warning.
fn connection_limits(config: &Config) -> http::connections::ConnectionLimits {
    let database_files = config.storage.max_open_files;
    let budget = match fd_limit::raise() {
        Some(limits) => {
            tracing::info!(
                soft_before = limits.soft_before,
                soft = limits.soft,
                hard = limits.hard,
                "file descriptor limit"
            );
            fd_limit::connection_budget(limits.soft, database_files)
        }
        None => {
            tracing::warn!("cannot read the file descriptor limit");
            fd_limit::connection_budget(1024, database_files)
        }
    };
    let configured = config.client.max_connections;
    let max_connections = if configured == 0 {
        budget
    } else {
        if configured > budget {
            tracing::warn!(
                configured,
                budget,
                "client.max_connections is above what the file descriptor limit leaves: \
                 clients may exhaust descriptors the database needs"
            );
        }
        configured
    };
    http::connections::ConnectionLimits {
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        header_timeout: config.client.header_timeout,
        keep_alive_timeout: config.client.keep_alive_timeout,
    }
}

/// How long a start waits for the data folder's lock, and how often it tries.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Opens the services. The data folder's lock is released when the last handle of a
/// previous open drops, which in this process can trail a server's shutdown by a moment
/// (a background worker finishing its pass: a restart in tests, an embedder); the wait
/// is asynchronous so that worker can finish. Another process holding the lock is told
/// after the wait.
async fn open_services(config: Config) -> Result<Arc<Services>, String> {
    let mut waited = std::time::Duration::ZERO;
    loop {
        match Services::open(config.clone()) {
            Err(e) if e.contains(crate::storage::LOCKED) && waited < LOCK_WAIT => {
                tokio::time::sleep(LOCK_RETRY).await;
                waited += LOCK_RETRY;
            }
            other => return other,
        }
    }
}

impl Server {
    /// Opens the data folder, binds the listeners and starts serving.
    pub async fn start(config: Config) -> Result<RunningServer, String> {
        // Our TLS stacks use ring; installing it twice (several servers in one test
        // process) is harmless, so the error is ignored.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let client_listen = config.client.listen;
        let federation = config.federation.clone();
        let limits = connection_limits(&config);
        // The ports first: a start that cannot have them fails before it opens the data
        // folder or starts any worker (nothing to undo; a restart may simply try again).
        // Connections that come meanwhile wait in the backlog until serving begins.
        let listener = TcpListener::bind(client_listen)
            .await
            .map_err(|e| format!("cannot listen on {client_listen} (client.listen): {e}"))?;
        let federation_listener = if federation.enabled {
            let std_listener = std::net::TcpListener::bind(federation.listen).map_err(|e| {
                format!(
                    "cannot listen on {} (federation.listen): {e}",
                    federation.listen
                )
            })?;
            std_listener
                .set_nonblocking(true)
                .map_err(|e| e.to_string())?;
            Some(std_listener)
        } else {
            None
        };
        let services = open_services(config).await?;

        let client_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (shutdown, stopped) = watch::channel(false);
        let app = http::client_router(Arc::clone(&services));
        let rooms_store = services.rooms.shared_store();
        let mut workers = Vec::new();
        workers.push(tokio::spawn(crate::services::memory::release_when_idle(
            Arc::clone(&services.db),
            vec![Box::new(move || rooms_store.release_cache())],
            stopped.clone(),
        )));
        workers.extend(
            services
                .federation
                .start(services.rooms.shared_store(), stopped.clone()),
        );
        workers.push(tokio::spawn(
            crate::services::federation::device_list_resync::run(
                Arc::clone(&services.remote_device_lists),
                Arc::clone(&services.federation.client),
                stopped.clone(),
            ),
        ));
        {
            let services = Arc::clone(&services);
            workers.push(tokio::spawn(async move {
                if let Err(e) = services.accounts.announce_unsent_device_changes().await {
                    tracing::warn!(error = %e.message, "unsent device-list changes were not looked for");
                }
                services.finish_leaving_rooms_of_deactivated().await;
            }));
        }
        workers.extend(crate::services::partial_resync::PartialResyncs::start(
            Arc::clone(&services),
            stopped.clone(),
        ));
        // Push gateways are user-given URLs: the federation address guard applies.
        let guard = crate::services::federation::ip_guard::IpGuard::new(
            federation.ip_range_allowlist.clone(),
        );
        let gateways = crate::services::push::delivery::gateway_client(
            crate::services::federation::discovery::GuardedResolver::plain(guard.clone())?,
            federation.trusted_ca.as_deref(),
        )?;
        workers.push(services.push.start_delivery(
            Arc::clone(&services) as Arc<dyn crate::services::push::delivery::PushLookups>,
            gateways,
            Arc::new(move |ip| guard.permits(ip)),
            stopped.clone(),
        ));
        let client_services = Arc::clone(&services);
        services.listeners.set_client(ListenerState::Up);
        let client_task = tokio::spawn(async move {
            http::connections::serve(listener, app, limits, stopped, GRACE).await;
            client_services.listeners.set_client(ListenerState::Down);
        });
        tracing::info!(address = %client_addr, max_connections = limits.max_connections, "client API listening");

        let mut federation_addr = None;
        let mut federation_parts = None;
        if let Some(std_listener) = federation_listener {
            let files = crate::tls::load_or_generate(&services.config)?;
            let tls =
                axum_server::tls_rustls::RustlsConfig::from_pem(files.cert_pem, files.key_pem)
                    .await
                    .map_err(|e| format!("invalid federation TLS certificate or key: {e}"))?;
            let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
            let handle = axum_server::Handle::new();
            let mut server = axum_server::from_tcp_rustls(std_listener, tls)
                .map_err(|e| e.to_string())?
                .handle(handle.clone());
            // Other servers get the head timeout too (hyper's timer: it also closes a
            // kept-alive connection idle that long).
            server
                .http_builder()
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let app = http::federation_router(Arc::clone(&services));
            let federation_services = Arc::clone(&services);
            services.listeners.set_federation(ListenerState::Up);
            let task = tokio::spawn(async move {
                if let Err(e) = server
                    .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                    .await
                {
                    tracing::error!(error = %e, "federation listener failed");
                }
                federation_services
                    .listeners
                    .set_federation(ListenerState::Down);
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
            workers,
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
        if tokio::time::timeout(GRACE * 2, self.client_task)
            .await
            .is_err()
        {
            tracing::warn!("client listener did not stop within the grace period");
        }
        for worker in self.workers {
            if tokio::time::timeout(GRACE, worker).await.is_err() {
                tracing::warn!("a background worker did not stop within the grace period");
            }
        }
        self.services.rooms.shutdown().await;
        if let Err(e) = self.services.db.flush() {
            tracing::warn!(error = %e, "flush at shutdown failed");
        }
        tracing::info!("stopped");
    }
}
