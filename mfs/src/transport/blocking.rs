//! The channel over a blocking stream, for single-threaded keeper
//! processes that wait on several descriptors with poll(2).

use std::io::{Read, Write};

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use super::noise::{self, Opener, Response, Sealer, TAG_LEN};
use super::{Identity, TransportError};
use crate::NodeId;
use crate::wire::frame::Buffer;
use crate::wire::{encode_in, keep_buffer};

/// An encrypted channel over a blocking stream.
pub struct BlockingChannel<S> {
    stream: S,
    sealer: Sealer,
    opener: Opener,
    inbox: Inbox,
    /// Scratch for encoding and sealing, kept between messages.
    encoded: AlignedVec,
    out: Vec<u8>,
}

/// Ciphertext read from the stream and not yet opened. Raw streams are
/// read in large pieces (a system call per 64 KiB Noise message, and one
/// for its length, cost a receiver of 1 MiB page runs a tenth of its
/// time), but never past what the caller is known to be owed, so the
/// stream's next messages stay in the socket for poll(2) to see.
#[derive(Default)]
struct Inbox {
    buffer: Buffer,
}

/// The most plaintext in one Noise message of a raw stream: 15 pages.
pub const STREAM_PIECE: usize = 15 * 4096;

/// The most an [`Inbox`] reads at once.
const INBOX_BYTES: usize = 256 * 1024;

impl Inbox {
    fn buffered(&self) -> usize {
        self.buffer.as_slice().len()
    }

    /// Makes `need` bytes buffered, reading up to `owed` in the same calls
    /// when at least that many are known to follow. `Ok(false)` if the
    /// stream ended cleanly before any of them.
    fn fill<R: Read>(
        &mut self,
        stream: &mut R,
        need: usize,
        owed: usize,
    ) -> Result<bool, TransportError> {
        let target = need.max(owed.min(INBOX_BYTES));
        while self.buffered() < need {
            let read = self
                .buffer
                .extend_with(target - self.buffered(), |room| stream.read(room));
            match read {
                Ok(0) if self.buffered() == 0 => return Ok(false),
                Ok(0) => return Err(TransportError::Truncated),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Reads the next whole Noise message and returns its length, or
    /// `None` if the stream ended cleanly before it; its ciphertext is then
    /// [`message`](Self::message) until [`consume`](Self::consume). At
    /// least `owed` bytes are known to follow as part of what is being read.
    fn next_message<R: Read>(
        &mut self,
        stream: &mut R,
        owed: usize,
    ) -> Result<Option<usize>, TransportError> {
        if !self.fill(stream, 2, owed)? {
            return Ok(None);
        }
        let bytes = self.buffer.as_slice();
        let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
        if !self.fill(stream, 2 + len, owed)? {
            return Err(TransportError::Truncated);
        }
        Ok(Some(len))
    }

    /// The ciphertext of the message [`next_message`](Self::next_message)
    /// read, `len` bytes long.
    fn message(&self, len: usize) -> &[u8] {
        &self.buffer.as_slice()[2..2 + len]
    }

    /// Done with that message.
    fn consume(&mut self, len: usize) {
        self.buffer.consume(2 + len);
    }
}

/// The fewest bytes the peer still sends for `plaintext` bytes of a raw
/// stream: at least one more message, with its length and tag.
fn owed_for(plaintext: usize) -> usize {
    plaintext.saturating_add(2 + TAG_LEN)
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
            inbox: Inbox::default(),
            encoded: AlignedVec::new(),
            out: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream back, to start another channel on it (both sides agree
    /// to); fails if received bytes are pending.
    pub fn into_inner(self) -> Result<S, TransportError> {
        if self.opener.pending_len() != 0 || self.inbox.buffered() != 0 {
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
        self.opener.has_complete_frame() || self.inbox.buffered() != 0
    }

    pub fn send<T>(&mut self, message: &T) -> Result<(), TransportError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        self.encoded = encode_in(message, std::mem::take(&mut self.encoded));
        let sealed = self.sealer.seal_frame(&self.encoded, &mut self.out);
        keep_buffer(&mut self.encoded);
        self.stream.write_all(sealed)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Sends `bytes` raw, as part of the stream, without a frame: the
    /// receiver knows from the previous message how many follow and takes
    /// them with [`recv_stream`](Self::recv_stream), a message at a time.
    /// Each message holds whole pages ([`STREAM_PIECE`]), so a receiver of
    /// memory pages can place each one as it is opened.
    pub fn send_stream(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        let sealed = self
            .sealer
            .seal_in_pieces(bytes, STREAM_PIECE, &mut self.out);
        self.stream.write_all(sealed)?;
        Ok(())
    }

    /// Receives `len` raw bytes sent with [`send_stream`](Self::send_stream),
    /// handing them to `sink` piece by piece as they are decrypted.
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
            let message = self
                .inbox
                .next_message(&mut self.stream, owed_for((len - done) as usize))?
                .ok_or(TransportError::Truncated)?;
            let plaintext = self.opener.open_raw(self.inbox.message(message))?;
            self.inbox.consume(message);
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

    /// The next message; `Ok(None)` when the peer closed cleanly.
    pub fn recv<T>(&mut self) -> Result<Option<T>, TransportError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        loop {
            if let Some(message) = self.opener.next_message()? {
                return Ok(Some(message));
            }
            let message = match self.inbox.next_message(&mut self.stream, 0)? {
                Some(message) => message,
                // A close inside a frame is a truncation, not a clean end.
                None if self.opener.pending_len() != 0 => return Err(TransportError::Truncated),
                None => return Ok(None),
            };
            self.opener.open(self.inbox.message(message))?;
            self.inbox.consume(message);
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

    /// Raw streams of every awkward length arrive whole and in order
    /// between messages, and reading one never takes bytes of the message
    /// after it out of the socket (where poll(2) must still see them).
    #[test]
    fn raw_streams_arrive_whole_and_leave_the_next_message_in_the_socket() {
        let key = ClusterKey::generate().unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let lengths = [
            0usize,
            1,
            4095,
            STREAM_PIECE,
            STREAM_PIECE + 1,
            1 << 20,
            (1 << 20) + 5,
        ];
        let stream_of = |len: usize| -> Vec<u8> { (0..len).map(|i| (i * 7 + len) as u8).collect() };
        let sender_key = key.clone();
        let sender = std::thread::spawn(move || {
            let me = Identity {
                node: NodeId::new(1).unwrap(),
                key: sender_key,
            };
            let mut channel = connect(a, &me, NodeId::new(2).unwrap()).unwrap();
            for len in lengths {
                channel.send(&(len as u64)).unwrap();
                channel.send_stream(&stream_of(len)).unwrap();
                channel.send(&format!("after {len}")).unwrap();
            }
        });
        let me = Identity {
            node: NodeId::new(2).unwrap(),
            key,
        };
        let (_, mut channel) = accept(b, &me, |_| Ok(())).unwrap();
        for len in lengths {
            let announced: u64 = channel.recv().unwrap().unwrap();
            let mut received = Vec::new();
            channel
                .recv_stream(announced, |offset, bytes| -> Result<(), TransportError> {
                    assert_eq!(offset as usize, received.len(), "pieces come in order");
                    received.extend_from_slice(bytes);
                    Ok(())
                })
                .unwrap();
            assert!(
                received == stream_of(len),
                "the {len}-byte stream arrived changed"
            );
            assert!(
                !channel.has_buffered_message(),
                "reading the {len}-byte stream read past it"
            );
            assert_eq!(
                channel.recv::<String>().unwrap().unwrap(),
                format!("after {len}")
            );
        }
        sender.join().unwrap();
        assert_eq!(channel.recv::<String>().unwrap(), None);
    }
}
