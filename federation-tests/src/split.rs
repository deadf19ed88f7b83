//! A TCP proxy in front of a server's federation listener that can cut the network and
//! heal it: the server is named by the proxy's port, so every other server reaches it
//! through the proxy (TLS passes through untouched). While split, connections are refused
//! and those open are closed; a partial split refuses and closes only the connections
//! from some source addresses (servers whose outbound connections come from their own
//! loopback address, `federation.outbound_address`). It counts the bytes it passes on.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Who may not reach the server: everybody, or the connections from these addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Blocked {
    all: bool,
    sources: BTreeSet<IpAddr>,
}

impl Blocked {
    fn blocks(&self, source: IpAddr) -> bool {
        self.all || self.sources.contains(&source)
    }
}

/// The proxy of one server.
pub struct SplitProxy {
    /// The port other servers connect to (the server's name).
    pub port: u16,
    bytes: Arc<AtomicU64>,
    split: watch::Sender<Blocked>,
    task: tokio::task::JoinHandle<()>,
}

/// A proxy's listening socket, bound before the servers start: its port names a server,
/// and a port only found free could be taken (by another test's outgoing connection)
/// before the proxy binds it.
pub struct ProxyPort(TcpListener);

impl ProxyPort {
    /// A loopback port of its own.
    pub async fn bind() -> Result<Self, String> {
        TcpListener::bind(("127.0.0.1", 0))
            .await
            .map(Self)
            .map_err(|e| format!("a proxy port: {e}"))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0.local_addr().map_or(0, |a| a.port())
    }
}

impl SplitProxy {
    /// Listens on `port`, forwarding to `target` on loopback.
    pub async fn start(port: ProxyPort, target: u16) -> Result<Self, String> {
        let listener = port.0;
        let port = listener
            .local_addr()
            .map_err(|e| format!("a proxy port: {e}"))?
            .port();
        let (split, watching) = watch::channel(Blocked::default());
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&bytes);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let source = peer.ip();
                if watching.borrow().blocks(source) {
                    continue; // dropped: refused while split
                }
                let mut cut = watching.clone();
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut in_read, mut in_write) = inbound.split();
                    let (mut out_read, mut out_write) = outbound.split();
                    let both_ways = async {
                        tokio::join!(
                            pipe(&mut in_read, &mut out_write, &counted),
                            pipe(&mut out_read, &mut in_write, &counted)
                        )
                    };
                    tokio::select! {
                        _ = both_ways => {}
                        _ = cut.wait_for(|blocked| blocked.blocks(source)) => {}
                    }
                });
            }
        });
        Ok(Self {
            port,
            bytes,
            split,
            task,
        })
    }

    /// The bytes passed on so far, both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Cuts (`true`) or heals (`false`) the network to the server, for everybody.
    pub fn set_split(&self, split: bool) {
        let _ = self.split.send(Blocked {
            all: split,
            sources: BTreeSet::new(),
        });
    }

    /// Cuts the network to the server for connections from `sources` only (none: healed).
    pub fn block_sources(&self, sources: impl IntoIterator<Item = IpAddr>) {
        let _ = self.split.send(Blocked {
            all: false,
            sources: sources.into_iter().collect(),
        });
    }
}

/// Copies `from` to `to` until either ends, counting the bytes.
async fn pipe(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    counted: &AtomicU64,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
                counted.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for SplitProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
