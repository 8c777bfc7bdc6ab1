//! Accepting connections from other nodes.
//!
//! Each connection gets its own task: handshake (bounded in time and in the
//! number running at once), admission against the current map, then a loop
//! that hands every valid message to the daemon. Whatever goes wrong on one
//! connection is logged with the peer's address and ends that connection
//! only.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, warn};

use super::{Identity, accept};
use crate::NodeId;
use crate::cluster_map::ClusterMap;
use crate::wire::PeerMessage;

/// Handshakes allowed to run at once; more connections wait their turn.
const MAX_CONCURRENT_HANDSHAKES: usize = 64;

/// A message from an authenticated peer.
#[derive(Debug)]
pub struct Inbound {
    pub from: NodeId,
    pub message: PeerMessage,
}

/// What the listener needs to decide who may connect.
pub struct ListenerSettings {
    pub identity: Identity,
    pub map: watch::Receiver<Arc<ClusterMap>>,
    /// Refuse a node whose source address differs from its map address.
    pub check_peer_address: bool,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
}

/// Accepts connections until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    settings: Arc<ListenerSettings>,
    inbound: mpsc::Sender<Inbound>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let settings = settings.clone();
        let inbound = inbound.clone();
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, settings, inbound, handshakes).await;
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    settings: Arc<ListenerSettings>,
    inbound: mpsc::Sender<Inbound>,
    handshakes: Arc<Semaphore>,
) {
    let _ = stream.set_nodelay(true);
    let permit = handshakes
        .acquire_owned()
        .await
        .expect("semaphore is never closed");
    let map = settings.map.borrow().clone();
    let accepted = accept(stream, &settings.identity, |node| {
        admit(&map, node, peer.ip(), settings.check_peer_address)
    })
    .await;
    drop(permit);
    let (node, mut channel) = match accepted {
        Ok(accepted) => accepted,
        Err(e) => {
            warn!("refused connection from {peer}: {e}");
            return;
        }
    };
    debug!("node {node} connected from {peer}");
    loop {
        match tokio::time::timeout(settings.idle_timeout, channel.recv::<PeerMessage>()).await {
            Err(_) => {
                debug!("closing idle connection from node {node} ({peer})");
                return;
            }
            Ok(Ok(None)) => {
                debug!("node {node} ({peer}) closed its connection");
                return;
            }
            Ok(Ok(Some(message))) => {
                if inbound
                    .send(Inbound {
                        from: node,
                        message,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Err(e)) => {
                warn!("dropping connection from node {node} ({peer}): {e}");
                return;
            }
        }
    }
}

/// Whether `node`, connecting from `source`, may talk to this node.
pub fn admit(
    map: &ClusterMap,
    node: NodeId,
    source: IpAddr,
    check_address: bool,
) -> Result<(), String> {
    let Some(address) = map.address(node) else {
        return Err(format!("node {node} is not in this node's cluster map"));
    };
    if check_address && address != source.to_canonical() {
        return Err(format!(
            "node {node} connected from {source}, but the cluster map gives its address as {address}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_map_nodes_from_their_address() {
        let map = ClusterMap::parse("1 10.0.0.1 3\n", "m").unwrap();
        let n2 = NodeId::new(2).unwrap();
        assert!(admit(&map, n2, "10.0.0.2".parse().unwrap(), true).is_ok());
        assert!(admit(&map, n2, "::ffff:10.0.0.2".parse().unwrap(), true).is_ok());
        let e = admit(&map, n2, "10.0.0.3".parse().unwrap(), true).unwrap_err();
        assert!(e.contains("map gives its address as 10.0.0.2"), "{e}");
        assert!(admit(&map, n2, "10.0.0.3".parse().unwrap(), false).is_ok());
        let e = admit(
            &map,
            NodeId::new(9).unwrap(),
            "10.0.0.9".parse().unwrap(),
            false,
        )
        .unwrap_err();
        assert!(e.contains("not in this node's cluster map"), "{e}");
    }
}
