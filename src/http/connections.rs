//! Serving the client listener: a cap on open connections, and timeouts for clients that
//! send slowly or hold a connection idle.
//!
//! - **Connection cap.** Past [`ConnectionLimits::max_connections`] open connections, a new
//!   one is answered `503` with a Matrix error and closed, so the server keeps the file
//!   descriptors its database and federation need instead of failing `accept` in a loop.
//! - **Head timeout.** A request's line and headers must arrive within
//!   [`ConnectionLimits::header_timeout`] of their first byte (slow-header clients).
//! - **Keep-alive timeout.** A connection with no request in progress and no new one
//!   starting is closed after [`ConnectionLimits::keep_alive_timeout`].
//! - Body idle timeouts are a layer of the router (`RequestBodyTimeoutLayer`, see
//!   [`super::client_router`]): they apply while a handler reads the body.
//!
//! Each connection has an [`Activity`] record: its IO wrapper notes when the first byte of
//! a new request head arrives, its service wrapper counts requests in progress (a request
//! ends when its response body is dropped, i.e. written out or abandoned), and a watchdog
//! sleeps until the next deadline. A connection is only ever closed by the watchdog while
//! no request is in progress, so no answer is cut off.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// Refusals (503 to a connection over the cap) being written at once at most; past it a
/// connection over the cap is closed without an answer.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refusal may take to write.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often running out of descriptors in `accept` is logged at most.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the listener enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time from a request head's first byte to its end.
    pub header_timeout: Duration,
    /// Time a connection may sit with no request.
    pub keep_alive_timeout: Duration,
}

/// The answer to a connection over the cap: 503 with a Matrix error, then close.
static REFUSAL: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body = r#"{"errcode":"M_UNKNOWN","error":"The server has too many open connections; try again shortly"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Serves `router` on `listener` until `shutdown` turns true, then lets open requests
/// finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    // Head and idle timeouts are the watchdog's (hyper's own header timer would also
    // close idle kept-alive connections, with the same duration).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    let builder = Arc::new(builder);
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(&e, &mut last_accept_error, open.load(Ordering::Relaxed)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= limits.max_connections {
            refuse(stream, &refusing);
            continue;
        }
        if let Err(e) = stream.set_nodelay(true) {
            // Without TCP_NODELAY, a response written in two parts (headers, then a
            // streamed body) waits ~40 ms for the client's delayed ACK on a kept-alive
            // connection (Nagle's algorithm).
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let guard = OpenConnection::new(&open);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(TrackedIo {
            inner: stream,
            activity: Arc::clone(&activity),
        });
        let service = request_service(router.clone(), peer, Arc::clone(&activity));
        let builder = Arc::clone(&builder);
        let connection = graceful.watch(
            builder
                .serve_connection(io, hyper_util::service::TowerToHyperService::new(service))
                .into_owned(),
        );
        tokio::spawn(async move {
            let _open = guard;
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
                () = activity.expired(limits) => {
                    tracing::debug!(%peer, "closing a slow or idle connection");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("client connections did not finish within the grace period");
    }
}

/// Logs running out of descriptors at most every [`ACCEPT_ERROR_LOG_INTERVAL`] and backs
/// off a little so the loop does not spin; other accept errors (a client that went away
/// before being accepted) are routine.
async fn accept_failed(error: &io::Error, last_logged: &mut Option<Instant>, open: usize) {
    let out_of_descriptors = matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if !out_of_descriptors {
        tracing::debug!(%error, "accept failed");
        return;
    }
    if last_logged.is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_LOG_INTERVAL) {
        tracing::error!(%error, open_connections = open, "cannot accept connections: out of file descriptors (lower client.max_connections or raise the limit)");
        *last_logged = Some(Instant::now());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Answers a connection over the cap with 503 and closes it.
fn refuse(mut stream: TcpStream, refusing: &Arc<AtomicUsize>) {
    if refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSALS_IN_FLIGHT {
        refusing.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let refusing = Arc::clone(refusing);
    tokio::spawn(async move {
        let write = async {
            stream.write_all(&REFUSAL).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
        refusing.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Counts an open connection for as long as it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(open))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The router for one connection: its peer address for the handlers (`ConnectInfo`), and
/// each request counted in progress until its response body is dropped.
fn request_service(
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
) -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |request: Request<hyper::body::Incoming>| {
        let in_progress = InProgress::start(&activity);
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = router.clone().oneshot(request);
        async move {
            let response = response.await?;
            Ok(response.map(|body| {
                // The request ends when its body is dropped: written out, or abandoned
                // with the connection.
                Body::new(body.map_frame(move |frame| {
                    let _ = &in_progress;
                    frame
                }))
            }))
        }
    })
}

/// What a connection is doing, for its watchdog.
struct Activity {
    /// When the connection was accepted: the other times count from it, in ms (tokio's
    /// clock, which tests can pause).
    start: tokio::time::Instant,
    /// Requests in progress.
    in_progress: AtomicUsize,
    /// When the connection last had no request in progress.
    idle_since_ms: AtomicU64,
    /// When the first byte of the next request head arrived, plus one (0: none yet).
    head_started_ms: AtomicU64,
    /// Wakes the watchdog when the deadline may have moved.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            in_progress: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived: the first while the connection is idle starts a request head.
    fn bytes_read(&self) {
        if self.in_progress.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Acquire) == 0
        {
            self.head_started_ms
                .store(self.now_ms() + 1, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// When the connection must close if nothing changes (`None` while a request is in
    /// progress).
    fn deadline(&self, limits: ConnectionLimits) -> Option<tokio::time::Instant> {
        if self.in_progress.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_started_ms.load(Ordering::Acquire);
        let (from_ms, allowed) = if head > 0 {
            (head - 1, limits.header_timeout)
        } else {
            (
                self.idle_since_ms.load(Ordering::Acquire),
                limits.keep_alive_timeout,
            )
        };
        Some(self.start + Duration::from_millis(from_ms) + allowed)
    }

    /// Returns once the connection has been idle, or sending a head, for too long.
    async fn expired(&self, limits: ConnectionLimits) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.deadline(limits) {
                None => changed.await,
                Some(deadline) if deadline <= tokio::time::Instant::now() => return,
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = changed => {}
                    }
                }
            }
        }
    }
}

/// A request in progress, from its service call to its response body's drop.
struct InProgress(Arc<Activity>);

impl InProgress {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_progress.fetch_add(1, Ordering::AcqRel);
        activity.head_started_ms.store(0, Ordering::Release);
        Self(Arc::clone(activity))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since_ms
            .store(activity.now_ms(), Ordering::Release);
        if activity.in_progress.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.changed.notify_one();
        }
    }
}

/// The connection's socket, noting when request bytes arrive.
struct TrackedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_http_answer_with_a_matrix_body() {
        let text = std::str::from_utf8(&REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["errcode"], "M_UNKNOWN");
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_state() {
        let limits = ConnectionLimits {
            max_connections: 1,
            header_timeout: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(60),
        };
        let activity = Arc::new(Activity::new());
        let idle = activity.deadline(limits).unwrap();
        assert_eq!(idle - activity.start, Duration::from_secs(60));
        activity.bytes_read();
        let head = activity.deadline(limits).unwrap();
        assert!(head - activity.start <= Duration::from_secs(6));
        let request = InProgress::start(&activity);
        assert_eq!(activity.deadline(limits), None, "never during a request");
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(request);
        let after = activity.deadline(limits).unwrap();
        assert!(after - activity.start >= Duration::from_secs(160));
        // Expires at the keep-alive deadline, not before.
        let expired = tokio::time::timeout(Duration::from_secs(59), activity.expired(limits)).await;
        assert!(expired.is_err());
        tokio::time::timeout(Duration::from_secs(2), activity.expired(limits))
            .await
            .expect("expired after the keep-alive timeout");
    }
}
