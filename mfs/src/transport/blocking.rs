//! The channel over a blocking stream, for single-threaded keeper
//! processes that wait on several descriptors with poll(2).

use std::io::{Read, Write};

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use super::noise::{self, NOISE_MAX_MESSAGE, Opener, Response, Sealer};
use super::{Identity, TransportError};
use crate::NodeId;
use crate::wire::frame::encode_frame;
use crate::wire::{decode, encode};

/// An encrypted channel over a blocking stream.
pub struct BlockingChannel<S> {
    stream: S,
    sealer: Sealer,
    opener: Opener,
    ciphertext: Vec<u8>,
    out: Vec<u8>,
}

/// Opens a channel to `expected` (the connecting side). Set the stream's
/// timeouts first: the handshake waits for the peer.
pub fn connect<S: Read + Write>(
    mut stream: S,
    identity: &Identity,
    expected: NodeId,
) -> Result<BlockingChannel<S>, TransportError> {
    let (initiator, first) = noise::initiate(identity, expected);
    write_message(&mut stream, &first)?;
    let reply = read_message(&mut stream).map_err(|e| match e {
        TransportError::Truncated => TransportError::BadHandshake,
        other => other,
    })?;
    let (sealer, opener) = initiator.finish(&reply)?;
    Ok(BlockingChannel::new(stream, sealer, opener))
}

/// Answers a connection (the accepting side).
pub fn accept<S: Read + Write>(
    mut stream: S,
    identity: &Identity,
    admit: impl FnOnce(NodeId) -> Result<(), String>,
) -> Result<(NodeId, BlockingChannel<S>), TransportError> {
    let first = read_message(&mut stream)?;
    let Response { reply, outcome } = noise::respond(identity, &first, admit)?;
    write_message(&mut stream, &reply)?;
    let (node, sealer, opener) = outcome?;
    Ok((node, BlockingChannel::new(stream, sealer, opener)))
}

impl<S: Read + Write> BlockingChannel<S> {
    fn new(stream: S, sealer: Sealer, opener: Opener) -> BlockingChannel<S> {
        BlockingChannel {
            stream,
            sealer,
            opener,
            ciphertext: Vec::new(),
            out: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream back, to start another channel on it (both sides agree
    /// to); fails if received bytes are pending.
    pub fn into_inner(self) -> Result<S, TransportError> {
        if self.opener.pending_len() != 0 {
            return Err(TransportError::Corrupt);
        }
        Ok(self.stream)
    }

    pub fn limit_frames(&mut self, max_len: usize) {
        self.opener.limit_frames(max_len);
    }

    /// Whether a whole message has been received already: then `recv`
    /// returns without reading (and poll on the stream would not say so).
    pub fn has_buffered_message(&self) -> bool {
        self.opener.has_complete_frame()
    }

    pub fn send<T>(&mut self, message: &T) -> Result<(), TransportError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let frame = encode_frame(&encode(message));
        self.out.clear();
        self.sealer.seal(&frame, &mut self.out);
        self.stream.write_all(&self.out)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Sends `bytes` raw, as part of the stream, without a frame: the
    /// receiver knows from the previous message how many follow and takes
    /// them with [`recv_stream`](Self::recv_stream).
    pub fn send_stream(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.out.clear();
        self.sealer.seal(bytes, &mut self.out);
        self.stream.write_all(&self.out)?;
        Ok(())
    }

    /// Receives `len` raw bytes sent with [`send_stream`](Self::send_stream),
    /// handing them to `sink` piece by piece as they are decrypted, with no
    /// copy in between.
    pub fn recv_stream<E: From<TransportError>>(
        &mut self,
        len: u64,
        mut sink: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut done = 0u64;
        let pending = self.opener.take_pending(len as usize);
        if !pending.is_empty() {
            sink(0, &pending)?;
            done = pending.len() as u64;
        }
        while done < len {
            let n = self.read_ciphertext()?.ok_or(TransportError::Truncated)?;
            let plaintext = self.opener.open_raw(&self.ciphertext[..n])?;
            let wanted = ((len - done) as usize).min(plaintext.len());
            let (ours, rest) = plaintext.split_at(wanted);
            // The tail of the last piece belongs to the next message.
            let rest = rest.to_vec();
            sink(done, ours)?;
            done += wanted as u64;
            if !rest.is_empty() {
                self.opener.push_back(&rest);
            }
        }
        Ok(())
    }

    /// Reads one Noise message into the ciphertext buffer; returns its
    /// length, or `None` if the peer closed cleanly between messages.
    fn read_ciphertext(&mut self) -> Result<Option<usize>, TransportError> {
        let mut len = [0u8; 2];
        match read_exact(&mut self.stream, &mut len) {
            Ok(()) => {}
            Err(TransportError::Truncated) if self.opener.pending_len() == 0 => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u16::from_be_bytes(len) as usize;
        if self.ciphertext.is_empty() {
            self.ciphertext = vec![0u8; NOISE_MAX_MESSAGE];
        }
        read_exact(&mut self.stream, &mut self.ciphertext[..len])?;
        Ok(Some(len))
    }

    /// The next message; `Ok(None)` when the peer closed cleanly.
    pub fn recv<T>(&mut self) -> Result<Option<T>, TransportError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        loop {
            if let Some(frame) = self.opener.next_frame()? {
                return Ok(Some(decode::<T>(&frame)?));
            }
            let Some(len) = self.read_ciphertext()? else {
                return Ok(None);
            };
            self.opener.open(&self.ciphertext[..len])?;
        }
    }
}

fn write_message<W: Write>(writer: &mut W, message: &[u8]) -> Result<(), TransportError> {
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    writer.write_all(&out)?;
    writer.flush()?;
    Ok(())
}

fn read_message<R: Read>(reader: &mut R) -> Result<Vec<u8>, TransportError> {
    let mut len = [0u8; 2];
    read_exact(reader, &mut len)?;
    let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
    read_exact(reader, &mut message)?;
    Ok(message)
}

fn read_exact<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<(), TransportError> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(TransportError::Truncated),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_key::ClusterKey;
    use crate::wire::{GossipEntry, GossipPacket, LoadReport, PeerMessage};

    #[test]
    fn blocking_and_async_ends_speak_the_same_protocol() {
        let key = ClusterKey::generate().unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let server_key = key.clone();
        let server = std::thread::spawn(move || {
            let me = Identity {
                node: NodeId::new(2).unwrap(),
                key: server_key,
            };
            let (peer, mut channel) = accept(b, &me, |_| Ok(())).unwrap();
            let message: PeerMessage = channel.recv().unwrap().unwrap();
            channel.send(&message).unwrap();
            (peer, channel.recv::<PeerMessage>().unwrap())
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            a.set_nonblocking(true).unwrap();
            let stream = tokio::net::UnixStream::from_std(a).unwrap();
            let me = Identity {
                node: NodeId::new(1).unwrap(),
                key,
            };
            let mut channel = super::super::connect(stream, &me, NodeId::new(2).unwrap())
                .await
                .unwrap();
            let message = PeerMessage::Gossip(GossipPacket {
                entries: vec![
                    GossipEntry {
                        node: 1,
                        age_ms: 5,
                        load: LoadReport::default()
                    };
                    5000
                ],
            });
            channel.send(&message).await.unwrap();
            assert_eq!(channel.recv::<PeerMessage>().await.unwrap(), Some(message));
        });
        let (peer, end) = server.join().unwrap();
        assert_eq!(peer.get(), 1);
        assert_eq!(end, None, "closing is seen as the end");
    }
}
