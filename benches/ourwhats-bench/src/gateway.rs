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
    /// Starts the gateway on an ephemeral loopback port.
    pub async fn start() -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("push gateway: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("push gateway: {e}"))?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let tls = acceptor()?;
        tokio::spawn(async move {
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
