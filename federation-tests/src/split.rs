//! A TCP proxy in front of a server's federation listener that can cut the network and
//! heal it: the server is named by the proxy's port, so every other server reaches it
//! through the proxy (TLS passes through untouched). While split, connections are refused
//! and those open are closed; a partial split refuses and closes only the connections
//! from some source addresses (servers whose outbound connections come from their own
//! loopback address, `federation.outbound_address`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use tokio::io::copy_bidirectional;
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
    split: watch::Sender<Blocked>,
    task: tokio::task::JoinHandle<()>,
}

impl SplitProxy {
    /// Listens on `port`, forwarding to `target` on loopback.
    pub async fn start(port: u16, target: u16) -> Result<Self, String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("proxy on {port}: {e}"))?;
        let (split, watching) = watch::channel(Blocked::default());
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
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|blocked| blocked.blocks(source)) => {}
                    }
                });
            }
        });
        Ok(Self { port, split, task })
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

impl Drop for SplitProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
