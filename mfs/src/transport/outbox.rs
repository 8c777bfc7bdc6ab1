//! Sending messages to other nodes without waiting for them.
//!
//! Each peer we talk to has a small task owning its connection and a bounded
//! queue; a slow or dead peer fills only its own queue (further messages to
//! it are dropped) and never delays messages to anyone else. The set of
//! links is an LRU of bounded size, so a node of a large cluster keeps
//! connections only to the peers it talked to recently.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{Identity, SecureWriter, TransportError, connect};
use crate::NodeId;
use crate::cluster_map::ClusterMap;
use crate::wire::PeerMessage;

const QUEUE_PER_PEER: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer that does not take a message in this time is given up on.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// A link with nothing to send for this long closes its connection.
const LINK_IDLE: Duration = Duration::from_secs(60);

/// Outgoing links to other nodes.
#[derive(Clone)]
pub struct Outbox {
    links: Arc<Mutex<LruCache<NodeId, mpsc::Sender<PeerMessage>>>>,
    identity: Identity,
    map: watch::Receiver<Arc<ClusterMap>>,
    port: u16,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the queue to node {0} is full: it is not keeping up")]
    QueueFull(NodeId),
}

impl Outbox {
    pub fn new(
        identity: Identity,
        map: watch::Receiver<Arc<ClusterMap>>,
        port: u16,
        max_links: usize,
    ) -> Outbox {
        Outbox {
            links: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(max_links.max(1)).expect("at least one link"),
            ))),
            identity,
            map,
            port,
        }
    }

    /// Queues `message` for `to` and returns at once.
    pub fn send(&self, to: NodeId, message: PeerMessage) -> Result<(), SendError> {
        let mut links = self.links.lock().expect("outbox lock");
        let sender = match links.get(&to) {
            Some(sender) if !sender.is_closed() => sender.clone(),
            _ => {
                let (sender, receiver) = mpsc::channel(QUEUE_PER_PEER);
                tokio::spawn(run_link(
                    to,
                    receiver,
                    self.identity.clone(),
                    self.map.clone(),
                    self.port,
                ));
                // Evicting the least recent link drops its sender, which ends
                // that link's task and closes its connection.
                links.put(to, sender.clone());
                sender
            }
        };
        sender.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_) => {
                SendError::QueueFull(to)
            }
        })
    }
}

/// The sending half of a link's connection; the receiving half is read by
/// a task that ends with it.
struct Connection {
    writer: SecureWriter<tokio::io::WriteHalf<TcpStream>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Dropping only the writer would leave the socket open until the
        // peer times out: end the reader too, which closes it.
        self.reader.abort();
    }
}

/// Owns the connection to one peer.
async fn run_link(
    to: NodeId,
    mut queue: mpsc::Receiver<PeerMessage>,
    identity: Identity,
    map: watch::Receiver<Arc<ClusterMap>>,
    port: u16,
) {
    let mut writer: Option<Connection> = None;
    let mut last_failure: Option<String> = None;
    while let Ok(Some(message)) = tokio::time::timeout(LINK_IDLE, queue.recv()).await {
        let Some(address) = map.borrow().address(to) else {
            debug!("not sending to node {to}: it left the cluster map");
            return;
        };
        // A connection that went stale fails on the first write: retry once
        // on a fresh one before giving up on this message.
        for attempt in 0..2 {
            if writer.is_none() {
                match open(&identity, to, address, port).await {
                    Ok(w) => writer = Some(w),
                    Err(e) => {
                        let failure = e.to_string();
                        if last_failure.as_deref() != Some(failure.as_str()) {
                            warn!("cannot reach node {to} at {address}:{port}: {failure}");
                            last_failure = Some(failure);
                        }
                        break;
                    }
                }
            }
            let connection = writer.as_mut().expect("connected above");
            let sent = tokio::time::timeout(SEND_TIMEOUT, connection.writer.send(&message))
                .await
                .unwrap_or(Err(TransportError::Timeout(SEND_TIMEOUT)));
            match sent {
                Ok(()) => {
                    if last_failure.take().is_some() {
                        info!("node {to} at {address}:{port} is reachable again");
                    }
                    break;
                }
                Err(e) => {
                    debug!("link to node {to} failed (attempt {attempt}): {e}");
                    writer = None;
                }
            }
        }
    }
}

async fn open(
    identity: &Identity,
    to: NodeId,
    address: std::net::IpAddr,
    port: u16,
) -> Result<Connection, TransportError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((address, port)))
        .await
        .map_err(|_| TransportError::Timeout(CONNECT_TIMEOUT))??;
    let _ = stream.set_nodelay(true);
    let channel = connect(stream, identity, to).await?;
    let (mut reader, writer) = channel.split();
    // Peers do not answer on this connection yet; read it only to notice
    // when they close it.
    let reader =
        tokio::spawn(async move { while let Ok(Some(_)) = reader.recv::<PeerMessage>().await {} });
    Ok(Connection { writer, reader })
}
