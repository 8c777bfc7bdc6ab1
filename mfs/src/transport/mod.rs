//! Authenticated, encrypted connections between nodes.
//!
//! Every TCP connection between two omx daemons starts with a Noise
//! handshake (`NNpsk0`, keyed by the cluster key): a peer that does not hold
//! the key fails the first message, is refused and learns nothing, not even
//! our protocol version. Inside the channel, [`crate::wire`] frames carry
//! validated messages. A malformed, truncated or oversized frame ends that
//! connection only.

pub mod blocking;
mod channel;
mod handshake;
pub mod listener;
pub mod noise;
pub mod outbox;
mod shared_sender;

pub use channel::{SecureChannel, SecureReader, SecureWriter};
pub use handshake::{HANDSHAKE_TIMEOUT, accept, connect};
pub use noise::NOISE_PARAMS;
pub use shared_sender::SharedSender;

use crate::NodeId;
use crate::cluster_key::ClusterKey;
use crate::wire::{DecodeError, FrameError};

/// Who this node is on the wire.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node: NodeId,
    pub key: ClusterKey,
}

/// Why a connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("handshake failed: the peer does not hold this cluster's key, or is not an omx daemon")]
    BadHandshake,
    #[error(
        "peer speaks protocol version {theirs}, this node speaks {ours}: upgrade the older one"
    )]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("peer refused the connection: {reason}")]
    RefusedByPeer { reason: String },
    #[error("refused peer: {reason}")]
    PeerNotAllowed { reason: String },
    #[error("expected node {expected} but reached node {found}: check the cluster map")]
    WrongNode { expected: NodeId, found: u16 },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("encrypted message failed authentication (corrupted or forged)")]
    Corrupt,
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("connection closed in the middle of a message")]
    Truncated,
}
