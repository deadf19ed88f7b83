//! A push gateway for the `send --pushers` scenario: a minimal HTTP/1.1 server on loopback
//! that answers every `POST /_matrix/push/v1/notify` with `{"rejected": []}` and counts the
//! notifications it was sent. Keep-alive, so a homeserver's pooled connections are reused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

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
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&counter)));
            }
        });
        Ok(Self {
            url: format!("http://{addr}/_matrix/push/v1/notify"),
            received,
        })
    }

    /// Notifications received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Answers the requests of one connection until it closes.
async fn serve(stream: TcpStream, received: Arc<AtomicU64>) {
    let _ = stream.set_nodelay(true);
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
        if stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
