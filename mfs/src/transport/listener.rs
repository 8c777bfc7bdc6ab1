//! Accepting connections from other nodes.
//!
//! Each connection gets its own task: handshake (bounded in time and in the
//! number running at once), admission against the current map, then a loop
//! that hands every valid message to the daemon. Whatever goes wrong on one
//! connection is logged with the peer's address and ends that connection
//! only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{debug, warn};

use super::{Identity, SecureChannel, accept};
use crate::NodeId;
use crate::cluster_map::ClusterMap;
use crate::wire::PeerMessage;
use crate::wire::link::LinkRequest;

/// Handshakes allowed to run at once; connections beyond are dropped.
const MAX_CONCURRENT_HANDSHAKES: usize = 64;
/// Inbound connections open at once, in any state.
const MAX_CONNECTIONS: usize = 1024;
/// Authenticated connections one node may hold open to us at once (each
/// process it sends here opens one while it is handed over).
const MAX_CONNECTIONS_PER_NODE: usize = 64;
/// Daemons exchange small messages: a larger frame is an attack or a bug.
pub const MAX_PEER_FRAME: usize = 1 << 20;

/// A message from an authenticated peer.
#[derive(Debug)]
pub struct Inbound {
    pub from: NodeId,
    pub message: PeerMessage,
}

/// A connection a peer wants handed to a keeper (`PeerMessage::OpenLink`).
pub struct IncomingLink {
    pub from: NodeId,
    pub peer: SocketAddr,
    pub request: LinkRequest,
    /// Answer with a `LinkReply` on it, then take the stream out.
    pub channel: SecureChannel<TcpStream>,
}

/// A connection a peer made for MFS requests (`PeerMessage::OpenFs`).
pub struct IncomingFs {
    pub from: NodeId,
    pub peer: SocketAddr,
    pub channel: SecureChannel<TcpStream>,
}

/// What a connection turned into.
enum Handover {
    Link(LinkRequest),
    Fs,
}

/// What the listener needs to decide who may connect.
pub struct ListenerSettings {
    pub identity: Identity,
    pub map: watch::Receiver<Arc<ClusterMap>>,
    /// Refuse a node whose source address differs from its map address.
    pub check_peer_address: bool,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Where connections asking for a keeper go.
    pub links: mpsc::Sender<IncomingLink>,
    /// Where MFS connections go.
    pub fs: mpsc::Sender<IncomingFs>,
}

/// Limits on what connecting peers may hold.
struct Limits {
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    per_node: Mutex<HashMap<NodeId, usize>>,
}

/// Accepts connections until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    settings: Arc<ListenerSettings>,
    inbound: mpsc::Sender<Inbound>,
) {
    let limits = Arc::new(Limits {
        connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        handshakes: Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES)),
        per_node: Mutex::new(HashMap::new()),
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Cheap refusals first, before any cryptography.
        let known_address = settings
            .map
            .borrow()
            .node_at(peer.ip().to_canonical())
            .is_some();
        if settings.check_peer_address && !known_address {
            warn!("refused connection from {peer}: that address is not a node of the cluster map");
            continue;
        }
        let Ok(connection) = limits.connections.clone().try_acquire_owned() else {
            warn!("refused connection from {peer}: {MAX_CONNECTIONS} connections are open already");
            continue;
        };
        let Ok(handshake) = limits.handshakes.clone().try_acquire_owned() else {
            warn!(
                "refused connection from {peer}: {MAX_CONCURRENT_HANDSHAKES} handshakes are under way already"
            );
            continue;
        };
        let settings = settings.clone();
        let inbound = inbound.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, &settings, &inbound, handshake, &limits).await;
            drop(connection);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    settings: &ListenerSettings,
    inbound: &mpsc::Sender<Inbound>,
    handshake: OwnedSemaphorePermit,
    limits: &Limits,
) {
    let _ = stream.set_nodelay(true);
    let map = settings.map.borrow().clone();
    let accepted = accept(stream, &settings.identity, |node| {
        admit(&map, node, peer.ip(), settings.check_peer_address)?;
        let mut per_node = limits.per_node.lock().expect("limits lock");
        let open = per_node.entry(node).or_insert(0);
        if *open >= MAX_CONNECTIONS_PER_NODE {
            return Err(format!("node {node} has {open} connections open already"));
        }
        *open += 1;
        Ok(())
    })
    .await;
    drop(handshake);
    let (node, mut channel) = match accepted {
        Ok(accepted) => accepted,
        Err(e) => {
            warn!("refused connection from {peer}: {e}");
            return;
        }
    };
    debug!("node {node} connected from {peer}");
    channel.limit_frames(MAX_PEER_FRAME);
    match receive_messages(node, peer, &mut channel, settings, inbound).await {
        Some(Handover::Link(request)) => {
            let link = IncomingLink {
                from: node,
                peer,
                request,
                channel,
            };
            if settings.links.send(link).await.is_err() {
                warn!("dropping a link request from node {node}: nobody takes links");
            }
        }
        Some(Handover::Fs) => {
            let fs = IncomingFs {
                from: node,
                peer,
                channel,
            };
            if settings.fs.send(fs).await.is_err() {
                warn!("dropping an MFS connection from node {node}: nobody serves MFS");
            }
        }
        None => {}
    }
    let mut per_node = limits.per_node.lock().expect("limits lock");
    if let Some(open) = per_node.get_mut(&node) {
        *open -= 1;
        if *open == 0 {
            per_node.remove(&node);
        }
    }
}

/// Hands an authenticated peer's messages to the daemon until the peer
/// closes, falls silent, misbehaves or leaves the map; or returns what a
/// peer wants this connection handed to (a keeper, or MFS).
async fn receive_messages(
    node: NodeId,
    peer: SocketAddr,
    channel: &mut SecureChannel<TcpStream>,
    settings: &ListenerSettings,
    inbound: &mpsc::Sender<Inbound>,
) -> Option<Handover> {
    loop {
        match tokio::time::timeout(settings.idle_timeout, channel.recv::<PeerMessage>()).await {
            Err(_) => {
                debug!("closing idle connection from node {node} ({peer})");
                return None;
            }
            Ok(Ok(None)) => {
                debug!("node {node} ({peer}) closed its connection");
                return None;
            }
            Ok(Ok(Some(PeerMessage::OpenLink(request)))) => return Some(Handover::Link(request)),
            Ok(Ok(Some(PeerMessage::OpenFs))) => return Some(Handover::Fs),
            Ok(Ok(Some(message))) => {
                if !settings.map.borrow().contains(node) {
                    warn!(
                        "closing the connection from node {node} ({peer}): it left the cluster map"
                    );
                    return None;
                }
                let inbound_message = Inbound {
                    from: node,
                    message,
                };
                if inbound.send(inbound_message).await.is_err() {
                    return None;
                }
            }
            Ok(Err(e)) => {
                warn!("dropping connection from node {node} ({peer}): {e}");
                return None;
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
