//! A push gateway for the `send --pushers` scenario: a minimal HTTPS (HTTP/1.1) server on
//! loopback that answers every `POST /_matrix/push/v1/notify` with `{"rejected": []}` and
//! counts the notifications it was sent. Keep-alive, so a homeserver's pooled connections
//! are reused. Its certificate is `gateway-tls/gateway.crt` (for 127.0.0.1, signed by
//! `gateway-tls/ca.crt`, which the server under test must trust: see the README there).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

const CERT: &[u8] = include_bytes!("../gateway-tls/gateway.crt");
const KEY: &[u8] = include_bytes!("../gateway-tls/gateway.key");

fn acceptor() -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(CERT)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("gateway certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(KEY).map_err(|e| format!("gateway key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("gateway TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("gateway TLS: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The largest request body read (a notification is a few hundred bytes).
const MAX_BODY: usize = 1 << 20;

/// A running gateway: its notify URL and how many notifications came.
pub struct Gateway {
    pub url: String,
    received: Arc<AtomicU64>,
}

impl Gateway {
    /// Starts the gateway on an ephemeral loopback port. It stands for a remote service
    /// (a phone vendor's push relay), so on this machine it runs on a thread of its own at
    /// the lowest CPU priority: its work is not taken from the senders or the server.
    pub async fn start() -> Result<Self, String> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("push gateway: {e}"))?;
        let addr = std_listener
            .local_addr()
            .map_err(|e| format!("push gateway: {e}"))?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let tls = acceptor()?;
        std::thread::Builder::new()
            .name("push-gateway".into())
            .spawn(move || {
                // SAFETY: both calls only read their arguments; 0 names this thread. It
                // runs only on CPU the server and the senders leave idle (SCHED_IDLE),
                // else at the highest niceness.
                #[cfg(target_os = "linux")]
                unsafe {
                    let param = libc::sched_param { sched_priority: 0 };
                    if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                    }
                }
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    eprintln!("push gateway: cannot start its runtime");
                    return;
                };
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        eprintln!("push gateway: cannot listen");
                        return;
                    };
                    while let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        let (tls, counter) = (tls.clone(), Arc::clone(&counter));
                        tokio::spawn(async move {
                            if let Ok(stream) = tls.accept(stream).await {
                                serve(stream, counter).await;
                            }
                        });
                    }
                });
            })
            .map_err(|e| format!("push gateway: {e}"))?;
        Ok(Self {
            url: format!("https://{addr}/_matrix/push/v1/notify"),
            received,
        })
    }

    /// Notifications received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Answers the requests of one connection until it closes.
async fn serve(stream: impl AsyncRead + AsyncWrite + Unpin, received: Arc<AtomicU64>) {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    loop {
        // Request line and headers; only Content-Length matters.
        let mut length = 0usize;
        let mut first = true;
        loop {
            line.clear();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                if first {
                    continue;
                }
                break;
            }
            first = false;
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        if length > MAX_BODY {
            return;
        }
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        received.fetch_add(1, Ordering::Relaxed);
        // One write: head and body in two small writes would wait for a delayed ACK.
        let answer = "{\"rejected\":[]}";
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        let stream = stream.get_mut();
        if stream.write_all(response.as_bytes()).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}
