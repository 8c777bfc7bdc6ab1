//! The Noise handshake that opens every node-to-node connection.
//!
//! Pattern `NNpsk0` with the cluster key as the pre-shared key: the first
//! message is already encrypted and authenticated under the key, so a peer
//! without it is refused before we send a single byte. Each side's payload
//! carries its protocol version and node id.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Identity, SecureChannel, TransportError};
use crate::NodeId;
use crate::wire::{Hello, HelloReply, PROTOCOL_VERSION, decode, encode};

/// The Noise protocol name: pattern, DH, cipher, hash.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Binds the handshake to this use, so keys never validate another protocol.
const PROLOGUE: &[u8] = b"omx node-to-node transport";
/// A peer that has not finished the handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest Noise message (the Noise specification's limit).
pub(super) const NOISE_MAX_MESSAGE: usize = 65535;

fn builder(identity: &Identity) -> snow::Builder<'_> {
    snow::Builder::new(NOISE_PARAMS.parse().expect("valid Noise parameters"))
        .prologue(PROLOGUE)
        .expect("prologue is set once")
        .psk(0, identity.key.as_bytes())
        .expect("psk location 0 exists in NNpsk0")
}

/// Opens a channel to `expected` over `stream` (the connecting side).
pub async fn connect<S>(
    mut stream: S,
    identity: &Identity,
    expected: NodeId,
) -> Result<SecureChannel<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let mut handshake = builder(identity)
            .build_initiator()
            .expect("initiator builds");
        let hello = encode(&Hello {
            protocol: PROTOCOL_VERSION,
            node: identity.node.get(),
        });
        let mut message = vec![0u8; NOISE_MAX_MESSAGE];
        let len = handshake
            .write_message(&hello, &mut message)
            .expect("hello fits in one message");
        write_message(&mut stream, &message[..len]).await?;

        // A responder without our key closes without answering.
        let reply = read_message(&mut stream).await.map_err(|e| match e {
            TransportError::Truncated => TransportError::BadHandshake,
            other => other,
        })?;
        let mut payload = vec![0u8; NOISE_MAX_MESSAGE];
        let len = handshake
            .read_message(&reply, &mut payload)
            .map_err(|_| TransportError::BadHandshake)?;
        match decode::<HelloReply>(&payload[..len])? {
            HelloReply::Welcome { protocol, .. } | HelloReply::Refused { protocol, .. }
                if protocol != PROTOCOL_VERSION =>
            {
                return Err(TransportError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: protocol,
                });
            }
            HelloReply::Refused { reason, .. } => {
                return Err(TransportError::RefusedByPeer { reason });
            }
            HelloReply::Welcome { node, .. } if node != expected.get() => {
                return Err(TransportError::WrongNode {
                    expected,
                    found: node,
                });
            }
            HelloReply::Welcome { .. } => {}
        }
        let transport = handshake
            .into_stateless_transport_mode()
            .expect("handshake is finished after two messages");
        Ok(SecureChannel::new(stream, transport))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))?
}

/// Answers a connection (the accepting side). `admit` decides whether the
/// node named in the peer's hello may connect; its reason is sent back.
pub async fn accept<S>(
    mut stream: S,
    identity: &Identity,
    admit: impl FnOnce(NodeId) -> Result<(), String>,
) -> Result<(NodeId, SecureChannel<S>), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let mut handshake = builder(identity)
            .build_responder()
            .expect("responder builds");
        let first = read_message(&mut stream).await?;
        let mut payload = vec![0u8; NOISE_MAX_MESSAGE];
        // Without the key this fails, and the peer gets nothing back.
        let len = handshake
            .read_message(&first, &mut payload)
            .map_err(|_| TransportError::BadHandshake)?;
        let hello = decode::<Hello>(&payload[..len])?;

        let verdict = if hello.protocol != PROTOCOL_VERSION {
            Err(TransportError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: hello.protocol,
            })
        } else {
            match NodeId::new(hello.node) {
                None => Err(TransportError::PeerNotAllowed {
                    reason: "node id 0 is not a node".into(),
                }),
                Some(node) => admit(node)
                    .map(|()| node)
                    .map_err(|reason| TransportError::PeerNotAllowed { reason }),
            }
        };
        let reply = match &verdict {
            Ok(_) => HelloReply::Welcome {
                protocol: PROTOCOL_VERSION,
                node: identity.node.get(),
            },
            Err(e) => HelloReply::Refused {
                protocol: PROTOCOL_VERSION,
                reason: e.to_string(),
            },
        };
        let mut message = vec![0u8; NOISE_MAX_MESSAGE];
        let len = handshake
            .write_message(&encode(&reply), &mut message)
            .expect("reply fits in one message");
        write_message(&mut stream, &message[..len]).await?;
        let node = verdict?;
        let transport = handshake
            .into_stateless_transport_mode()
            .expect("handshake is finished after two messages");
        Ok((node, SecureChannel::new(stream, transport)))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))?
}

/// Writes one Noise message with its 2-byte length.
pub(super) async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &[u8],
) -> Result<(), TransportError> {
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one Noise message; `Truncated` if the stream ends inside it or
/// before it starts.
pub(super) async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Vec<u8>, TransportError> {
    let mut len = [0u8; 2];
    read_exact_or_truncated(reader, &mut len).await?;
    let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
    read_exact_or_truncated(reader, &mut message).await?;
    Ok(message)
}

async fn read_exact_or_truncated<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), TransportError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(TransportError::Truncated),
        Err(e) => Err(e.into()),
    }
}
