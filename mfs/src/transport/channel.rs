//! An established, encrypted channel carrying wire frames (async).
//!
//! The frame stream is cut into Noise transport messages of at most 64 KiB,
//! each sent with a 2-byte length ([`super::noise`] seals and opens them).
//! Each direction counts its own nonces, so the two halves of a channel can
//! be used by different tasks.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf,
    WriteHalf,
};

use super::TransportError;
use super::noise::{NOISE_MAX_MESSAGE, Opener, Sealer};
use crate::wire::codec::encode_payload_head_in;
use crate::wire::{encode_in, keep_buffer};

/// Both directions of an encrypted connection.
pub struct SecureChannel<S> {
    reader: SecureReader<ReadHalf<S>>,
    writer: SecureWriter<WriteHalf<S>>,
}

/// The receiving half of a [`SecureChannel`].
pub struct SecureReader<R> {
    /// Read in pieces of up to [`READ_AHEAD`]: a message is then opened
    /// where it lies in the buffer, where reading its length and its body
    /// took two system calls and a copy.
    stream: BufReader<R>,
    opener: Opener,
    ciphertext: Vec<u8>,
}

/// How much a [`SecureReader`] reads ahead: two Noise messages.
const READ_AHEAD: usize = 2 * NOISE_MAX_MESSAGE + 4;

/// The sending half of a [`SecureChannel`].
pub struct SecureWriter<W> {
    stream: W,
    sealer: Sealer,
    /// Scratch for encoding and sealing, kept between messages.
    encoded: AlignedVec,
    out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite> SecureChannel<S> {
    pub(super) fn new(stream: S, sealer: Sealer, opener: Opener) -> SecureChannel<S> {
        let (read, write) = tokio::io::split(stream);
        SecureChannel {
            reader: SecureReader {
                stream: BufReader::with_capacity(READ_AHEAD, read),
                opener,
                ciphertext: Vec::new(),
            },
            writer: SecureWriter {
                stream: write,
                sealer,
                encoded: AlignedVec::new(),
                out: Vec::new(),
            },
        }
    }

    pub fn split(self) -> (SecureReader<ReadHalf<S>>, SecureWriter<WriteHalf<S>>) {
        (self.reader, self.writer)
    }

    /// Refuse incoming frames over `max_len` bytes from now on.
    pub fn limit_frames(&mut self, max_len: usize) {
        self.reader.opener.limit_frames(max_len);
    }

    /// The underlying stream back, once both sides agree to stop using the
    /// channel (to hand the connection to another process, which starts a
    /// channel of its own on it). Fails if received bytes are pending.
    pub fn into_inner(self) -> Result<S, TransportError>
    where
        S: Unpin,
    {
        if self.reader.opener.pending_len() != 0 || !self.reader.stream.buffer().is_empty() {
            return Err(TransportError::Corrupt);
        }
        Ok(self.reader.stream.into_inner().unsplit(self.writer.stream))
    }

    pub async fn send<T>(&mut self, message: &T) -> Result<(), TransportError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        self.writer.send(message).await
    }

    pub async fn recv<T>(&mut self) -> Result<Option<T>, TransportError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        self.reader.recv().await
    }

    pub async fn recv_with_payload<T, U>(
        &mut self,
        take: impl FnOnce(T, &[u8]) -> U,
    ) -> Result<Option<U>, TransportError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        self.reader.recv_with_payload(take).await
    }
}

impl<W: AsyncWrite + Unpin> SecureWriter<W> {
    /// Encrypts and sends one message.
    pub async fn send<T>(&mut self, message: &T) -> Result<(), TransportError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        self.encoded = encode_in(message, std::mem::take(&mut self.encoded));
        let sealed = self.sealer.seal_frame(&self.encoded, &mut self.out);
        keep_buffer(&mut self.encoded);
        self.stream.write_all(sealed).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Encrypts and sends one message with `payload` after it
    /// ([`crate::wire::encode_payload_head_in`]), for the receiver's
    /// [`SecureReader::recv_with_payload`].
    pub async fn send_with_payload<T>(
        &mut self,
        message: &T,
        payload: &[u8],
    ) -> Result<(), TransportError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        // The payload is sealed where it lies, between the archive and
        // its trailer: it is never copied into the message.
        let (archive, trailer) =
            encode_payload_head_in(message, payload.len(), std::mem::take(&mut self.encoded));
        self.encoded = archive;
        let sealed = self
            .sealer
            .seal_frame_parts(&[&self.encoded, payload, &trailer], &mut self.out);
        keep_buffer(&mut self.encoded);
        self.stream.write_all(sealed).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Encrypts and sends bytes as they are: a frame, or for tests of the
    /// receiving side, anything at all.
    pub async fn send_raw_frame_bytes(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        let sealed = self.sealer.seal(bytes, &mut self.out);
        self.stream.write_all(sealed).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The sealer, for a [`super::SharedSender`] that goes on sending on
    /// this connection from threads of its own. This half of the stream
    /// is dropped; the connection stays open.
    pub fn into_sealer(self) -> Sealer {
        self.sealer
    }

    /// Closes the sending direction.
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.stream.shutdown().await?;
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> SecureReader<R> {
    /// The next message; `Ok(None)` when the peer closed cleanly between
    /// messages.
    pub async fn recv<T>(&mut self) -> Result<Option<T>, TransportError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        if !self.fill_frame().await? {
            return Ok(None);
        }
        self.opener.next_message()
    }

    /// The next message and its payload (empty if it has none, see
    /// [`SecureWriter::send_with_payload`]), handed to `take` where the
    /// payload lies; `Ok(None)` when the peer closed cleanly between
    /// messages.
    pub async fn recv_with_payload<T, U>(
        &mut self,
        take: impl FnOnce(T, &[u8]) -> U,
    ) -> Result<Option<U>, TransportError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        if !self.fill_frame().await? {
            return Ok(None);
        }
        self.opener.next_message_with_payload(take)
    }

    /// Reads until a whole frame is decrypted (or an oversized one
    /// announced, which the opener then reports); `false` when the peer
    /// closed cleanly between frames.
    async fn fill_frame(&mut self) -> Result<bool, TransportError> {
        loop {
            if self.opener.has_complete_frame() {
                return Ok(true);
            }
            let buffered = self.stream.fill_buf().await?;
            if buffered.len() >= 2 {
                let len = u16::from_be_bytes([buffered[0], buffered[1]]) as usize;
                if buffered.len() >= 2 + len {
                    self.opener.open(&buffered[2..2 + len])?;
                    self.stream.consume(2 + len);
                    continue;
                }
            }
            // A message split across reads: take the rest as it comes.
            let mut len = [0u8; 2];
            match self.stream.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return if self.opener.pending_len() == 0 {
                        Ok(false)
                    } else {
                        Err(TransportError::Truncated)
                    };
                }
                Err(e) => return Err(e.into()),
            }
            let len = u16::from_be_bytes(len) as usize;
            if self.ciphertext.is_empty() {
                self.ciphertext = vec![0u8; NOISE_MAX_MESSAGE];
            }
            let ciphertext = &mut self.ciphertext[..len];
            match self.stream.read_exact(ciphertext).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(TransportError::Truncated);
                }
                Err(e) => return Err(e.into()),
            }
            self.opener.open(ciphertext)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Identity, accept, connect};
    use super::*;
    use crate::NodeId;
    use crate::cluster_key::ClusterKey;
    use crate::wire::frame::encode_frame;
    use crate::wire::{GossipEntry, GossipPacket, LoadReport, PeerMessage};

    fn identity(node: u16, key: &ClusterKey) -> Identity {
        Identity {
            node: NodeId::new(node).unwrap(),
            key: key.clone(),
        }
    }

    fn big_packet(entries: usize) -> PeerMessage {
        PeerMessage::Gossip(GossipPacket {
            entries: (0..entries)
                .map(|i| GossipEntry {
                    node: (i % 65535) as u16 + 1,
                    age_ms: i as u32,
                    load: LoadReport {
                        load: i as u32,
                        ..LoadReport::default()
                    },
                })
                .collect(),
        })
    }

    async fn pair(
        client_key: &ClusterKey,
        server_key: &ClusterKey,
    ) -> (
        Result<SecureChannel<tokio::io::DuplexStream>, TransportError>,
        Result<(NodeId, SecureChannel<tokio::io::DuplexStream>), TransportError>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let client = identity(1, client_key);
        let server = identity(2, server_key);
        tokio::join!(
            connect(a, &client, NodeId::new(2).unwrap()),
            accept(b, &server, |_| Ok(()))
        )
    }

    #[tokio::test]
    async fn peers_with_the_key_exchange_messages_of_any_size() {
        let key = ClusterKey::generate().unwrap();
        let (client, server) = pair(&key, &key).await;
        let mut client = client.unwrap();
        let (peer, mut server) = server.unwrap();
        assert_eq!(peer.get(), 1);
        for entries in [0, 1, 3000, 100_000] {
            let message = big_packet(entries);
            let (sent, received) =
                tokio::join!(client.send(&message), server.recv::<PeerMessage>());
            sent.unwrap();
            assert_eq!(received.unwrap(), Some(message));
        }
        let reply = big_packet(2);
        server.send(&reply).await.unwrap();
        assert_eq!(client.recv::<PeerMessage>().await.unwrap(), Some(reply));
        drop(client);
        assert!(server.recv::<PeerMessage>().await.unwrap().is_none());
    }

    /// Bodies around the first Noise message's share of a frame (which is
    /// sealed next to the frame's length) and far past it arrive intact,
    /// whether the reader finds several messages at once or pieces of one.
    #[tokio::test]
    async fn frames_of_every_size_arrive_whole_in_large_and_tiny_reads() {
        let first_share = NOISE_MAX_MESSAGE - 16 - 4;
        let sizes = [
            0,
            1,
            first_share - 30,
            first_share - 1,
            first_share,
            first_share + 1,
            1 << 20,
            3 << 20,
        ];
        for pipe in [8 << 20, 100] {
            let key = ClusterKey::generate().unwrap();
            let (a, b) = tokio::io::duplex(pipe);
            let (one, two) = (identity(1, &key), identity(2, &key));
            let (client, server) = tokio::join!(
                connect(a, &one, NodeId::new(2).unwrap()),
                accept(b, &two, |_| Ok(()))
            );
            let (mut client, (_, mut server)) = (client.unwrap(), server.unwrap());
            let body_of = |len: usize| -> Vec<u8> { (0..len).map(|i| (i % 253) as u8).collect() };
            let sending = async {
                for len in sizes {
                    client.send(&body_of(len)).await.unwrap();
                }
            };
            let receiving = async {
                for len in sizes {
                    let received: Vec<u8> = server.recv().await.unwrap().unwrap();
                    assert!(
                        received == body_of(len),
                        "a {len}-byte body through a {pipe}-byte pipe"
                    );
                }
            };
            tokio::join!(sending, receiving);
        }
    }

    /// Messages with payloads (sealed in three parts: archive, payload,
    /// trailer) of every size around the first message's share arrive
    /// whole, between plain messages.
    #[tokio::test]
    async fn payloads_of_every_size_arrive_whole_after_their_messages() {
        let first_share = NOISE_MAX_MESSAGE - 16 - 4;
        let sizes = [
            1,
            first_share - 40,
            first_share - 20,
            first_share - 1,
            first_share,
            first_share + 1,
            2 * first_share,
            1 << 20,
        ];
        for pipe in [8 << 20, 100] {
            let key = ClusterKey::generate().unwrap();
            let (a, b) = tokio::io::duplex(pipe);
            let (one, two) = (identity(1, &key), identity(2, &key));
            let (client, server) = tokio::join!(
                connect(a, &one, NodeId::new(2).unwrap()),
                accept(b, &two, |_| Ok(()))
            );
            let (mut client, (_, mut server)) = (client.unwrap(), server.unwrap());
            let payload_of =
                |len: usize| -> Vec<u8> { (0..len).map(|i| (i % 251) as u8 ^ 0x5a).collect() };
            let sending = async {
                for (i, len) in sizes.into_iter().enumerate() {
                    let label = format!("message {i}");
                    client
                        .writer
                        .send_with_payload(&label, &payload_of(len))
                        .await
                        .unwrap();
                    client.send(&format!("plain {i}")).await.unwrap();
                }
            };
            let receiving = async {
                for (i, len) in sizes.into_iter().enumerate() {
                    let (label, payload) = server
                        .reader
                        .recv_with_payload(|label: String, payload| (label, payload.to_vec()))
                        .await
                        .unwrap()
                        .unwrap();
                    assert_eq!(label, format!("message {i}"));
                    assert!(
                        payload == payload_of(len),
                        "a {len}-byte payload through a {pipe}-byte pipe"
                    );
                    // A plain message reads as one with an empty payload too.
                    let plain = server
                        .reader
                        .recv_with_payload(|plain: String, payload| (plain, payload.len()))
                        .await
                        .unwrap()
                        .unwrap();
                    assert_eq!(plain, (format!("plain {i}"), 0));
                }
            };
            tokio::join!(sending, receiving);
        }
    }

    /// A reader that takes no payload refuses a message with one, rather
    /// than dropping the payload unseen.
    #[tokio::test]
    async fn a_payload_where_none_is_taken_is_refused() {
        let key = ClusterKey::generate().unwrap();
        let (a, b) = tokio::io::duplex(1 << 20);
        let (one, two) = (identity(1, &key), identity(2, &key));
        let (client, server) = tokio::join!(
            connect(a, &one, NodeId::new(2).unwrap()),
            accept(b, &two, |_| Ok(()))
        );
        let (mut client, (_, mut server)) = (client.unwrap(), server.unwrap());
        client
            .writer
            .send_with_payload(&"label".to_string(), b"payload")
            .await
            .unwrap();
        let refused = server.recv::<String>().await.unwrap_err();
        assert!(
            refused.to_string().contains("payload"),
            "the error names the payload: {refused}"
        );
    }

    #[tokio::test]
    async fn a_peer_without_the_key_is_refused_and_learns_nothing() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let server = identity(2, &ClusterKey::generate().unwrap());
        let intruder = identity(1, &ClusterKey::generate().unwrap());
        let (client, accepted) = tokio::join!(
            async {
                let (_, first) = super::super::noise::initiate(&intruder, NodeId::new(2).unwrap());
                super::super::handshake::write_message(&mut a, &first)
                    .await
                    .unwrap();
                let mut everything = Vec::new();
                a.read_to_end(&mut everything).await.unwrap();
                everything
            },
            async {
                let result = accept(b, &server, |_| Ok(())).await;
                result.map(|_| ())
            }
        );
        assert!(matches!(accepted, Err(TransportError::BadHandshake)));
        assert!(
            client.is_empty(),
            "the refused peer received {} bytes",
            client.len()
        );
    }

    #[tokio::test]
    async fn the_connecting_side_detects_a_server_with_another_key() {
        let (client, server) = pair(
            &ClusterKey::generate().unwrap(),
            &ClusterKey::generate().unwrap(),
        )
        .await;
        assert!(matches!(client, Err(TransportError::BadHandshake)));
        assert!(matches!(server, Err(TransportError::BadHandshake)));
    }

    #[tokio::test]
    async fn admission_refusal_reaches_the_connecting_side() {
        let key = ClusterKey::generate().unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let (nine, two) = (identity(9, &key), identity(2, &key));
        let (client, server) = tokio::join!(
            connect(a, &nine, NodeId::new(2).unwrap()),
            accept(b, &two, |n| Err(format!("node {n} is not in the map")))
        );
        match client {
            Err(TransportError::RefusedByPeer { reason }) => {
                assert!(reason.contains("node 9 is not in the map"), "{reason}")
            }
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
        assert!(matches!(server, Err(TransportError::PeerNotAllowed { .. })));
    }

    #[tokio::test]
    async fn garbage_inside_the_channel_ends_only_that_channel() {
        let key = ClusterKey::generate().unwrap();
        let (client, server) = pair(&key, &key).await;
        let (_, mut client_writer) = client.unwrap().split();
        let (_, mut server) = server.unwrap();
        // A well-encrypted frame whose body is not a valid message.
        client_writer
            .send_raw_frame_bytes(&encode_frame(&[0xAB; 40]))
            .await
            .unwrap();
        assert!(matches!(
            server.recv::<PeerMessage>().await,
            Err(TransportError::Decode(_))
        ));

        let (client, server) = pair(&key, &key).await;
        let (_, mut client_writer) = client.unwrap().split();
        let (_, mut server) = server.unwrap();
        client_writer
            .send_raw_frame_bytes(&(u32::MAX).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            server.recv::<PeerMessage>().await,
            Err(TransportError::Frame(_))
        ));
    }

    /// A stream that flips one bit of the byte written at position `flip_at`.
    struct BitFlipper<S> {
        inner: S,
        written: usize,
        flip_at: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for BitFlipper<S> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for BitFlipper<S> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut copy = buf.to_vec();
            let (start, flip_at) = (self.written, self.flip_at);
            if (start..start + copy.len()).contains(&flip_at) {
                copy[flip_at - start] ^= 0x01;
            }
            let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, &copy);
            if let std::task::Poll::Ready(Ok(n)) = polled {
                self.written += n;
            }
            polled
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn tampered_ciphertext_is_detected() {
        let key = ClusterKey::generate().unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let a = BitFlipper {
            inner: a,
            written: 0,
            flip_at: 300,
        };
        let (one, two) = (identity(1, &key), identity(2, &key));
        let (client, server) = tokio::join!(
            connect(a, &one, NodeId::new(2).unwrap()),
            accept(b, &two, |_| Ok(()))
        );
        let mut client = client.unwrap();
        let (_, mut server) = server.unwrap();
        let packet = big_packet(50);
        let (sent, received) = tokio::join!(client.send(&packet), server.recv::<PeerMessage>());
        sent.unwrap();
        assert!(
            matches!(received, Err(TransportError::Corrupt)),
            "{:?}",
            received.map(|_| ())
        );
    }
}
