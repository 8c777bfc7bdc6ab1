//! Frames over a local stream, in the clear: the daemon's control socket.
//!
//! Only for a Unix socket on the same machine, where the kernel tells the
//! daemon who is calling; never across the network.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::encode_frame;
use super::{DecodeError, FrameDecoder, FrameError, decode, encode};

#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("the other side closed the connection in the middle of a message")]
    Truncated,
}

/// A stream carrying length-prefixed messages.
pub struct PlainFramed<S> {
    stream: S,
    decoder: FrameDecoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PlainFramed<S> {
    pub fn new(stream: S) -> PlainFramed<S> {
        PlainFramed {
            stream,
            decoder: FrameDecoder::new(),
        }
    }

    /// A stream on which the other side may send frames of at most
    /// `max_len` bytes.
    pub fn with_limit(stream: S, max_len: usize) -> PlainFramed<S> {
        PlainFramed {
            stream,
            decoder: FrameDecoder::with_limit(max_len),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub async fn send<T>(&mut self, message: &T) -> Result<(), PlainError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        self.stream
            .write_all(&encode_frame(&encode(message)))
            .await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next message, or `Ok(None)` if the other side closed cleanly.
    pub async fn recv<T>(&mut self) -> Result<Option<T>, PlainError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(decode(&frame)?));
            }
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return if self.decoder.pending_len() == 0 {
                    Ok(None)
                } else {
                    Err(PlainError::Truncated)
                };
            }
            self.decoder.push(&buf[..n]);
        }
    }
}

/// Frames over a blocking local stream (keepers talking to their daemon).
pub struct BlockingFramed<S> {
    stream: S,
    decoder: FrameDecoder,
}

impl<S: std::io::Read + std::io::Write> BlockingFramed<S> {
    pub fn new(stream: S) -> BlockingFramed<S> {
        BlockingFramed {
            stream,
            decoder: FrameDecoder::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn send<T>(&mut self, message: &T) -> Result<(), PlainError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        self.stream.write_all(&encode_frame(&encode(message)))?;
        self.stream.flush()?;
        Ok(())
    }

    /// Takes in bytes read from the stream by other means (e.g. recvmsg).
    pub fn push(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
    }

    /// A message already received, if a whole one is buffered.
    pub fn buffered<T>(&mut self) -> Result<Option<T>, PlainError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        match self.decoder.next_frame()? {
            Some(frame) => Ok(Some(decode(&frame)?)),
            None => Ok(None),
        }
    }

    /// The next message, reading as needed; `Ok(None)` at a clean end.
    pub fn recv<T>(&mut self) -> Result<Option<T>, PlainError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(message) = self.buffered()? {
                return Ok(Some(message));
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return if self.decoder.pending_len() == 0 {
                    Ok(None)
                } else {
                    Err(PlainError::Truncated)
                };
            }
            self.decoder.push(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ControlReply, ControlRequest};

    #[tokio::test]
    async fn request_and_reply_cross_a_stream() {
        let (a, b) = tokio::io::duplex(64);
        let (mut client, mut server) = (PlainFramed::new(a), PlainFramed::new(b));
        client.send(&ControlRequest::GetMap).await.unwrap();
        assert_eq!(
            server.recv::<ControlRequest>().await.unwrap(),
            Some(ControlRequest::GetMap)
        );
        let reply = ControlReply::Map {
            text: "1 10.0.0.1 2\n".repeat(100),
        };
        let (sent, received) = tokio::join!(server.send(&reply), client.recv::<ControlReply>());
        sent.unwrap();
        assert_eq!(received.unwrap(), Some(reply));
        drop(server);
        assert!(client.recv::<ControlReply>().await.unwrap().is_none());
    }
}
