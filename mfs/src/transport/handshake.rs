//! The Noise handshake over an async stream (the daemons' side).
//!
//! Pattern `NNpsk0` with the cluster key as the pre-shared key: the first
//! message is already encrypted and authenticated under the key, so a peer
//! without it is refused before we send a single byte. Each side's payload
//! carries its protocol version and node id. The messages themselves are
//! built and checked in [`super::noise`].

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::noise::{self, Response};
use super::{Identity, SecureChannel, TransportError};
use crate::NodeId;

/// A peer that has not finished the handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
        let (initiator, first) = noise::initiate(identity, expected);
        write_message(&mut stream, &first).await?;
        // A responder without our key closes without answering.
        let reply = read_message(&mut stream).await.map_err(|e| match e {
            TransportError::Truncated => TransportError::BadHandshake,
            other => other,
        })?;
        let (sealer, opener) = initiator.finish(&reply)?;
        Ok(SecureChannel::new(stream, sealer, opener))
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
        let first = read_message(&mut stream).await?;
        let Response { reply, outcome } = noise::respond(identity, &first, admit)?;
        write_message(&mut stream, &reply).await?;
        let (node, sealer, opener) = outcome?;
        Ok((node, SecureChannel::new(stream, sealer, opener)))
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
