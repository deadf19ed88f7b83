//! A TCP proxy in front of a server's federation listener that can cut the network and
//! heal it: the server is named by the proxy's port, so every other server reaches it
//! through the proxy (TLS passes through untouched). While split, connections are refused
//! and those open are closed.

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy of one server.
pub struct SplitProxy {
    /// The port other servers connect to (the server's name).
    pub port: u16,
    split: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SplitProxy {
    /// Listens on `port`, forwarding to `target` on loopback.
    pub async fn start(port: u16, target: u16) -> Result<Self, String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("proxy on {port}: {e}"))?;
        let (split, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *watching.borrow() {
                    continue; // dropped: refused while split
                }
                let mut cut = watching.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|split| *split) => {}
                    }
                });
            }
        });
        Ok(Self { port, split, task })
    }

    /// Cuts (`true`) or heals (`false`) the network to the server.
    pub fn set_split(&self, split: bool) {
        let _ = self.split.send(split);
    }
}

impl Drop for SplitProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
