//! The protocol itself, without I/O: the Noise handshake's two messages
//! and the sealing and opening of frames. The async channel (daemons) and
//! the blocking channel (keepers) are thin loops around this.

use std::sync::Arc;

use snow::{HandshakeState, StatelessTransportState};

use rkyv::api::high::{HighDeserializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::{Identity, TransportError};
use crate::NodeId;
use crate::wire::{
    FrameDecoder, Hello, HelloReply, MAX_FRAME_LEN, PROTOCOL_VERSION, decode, decode_in,
    decode_with_payload_in, encode,
};

/// The Noise protocol name: pattern, DH, cipher, hash.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Binds the handshake to this use, so keys never validate another protocol.
const PROLOGUE: &[u8] = b"omx node-to-node transport";
/// Largest Noise message (the Noise specification's limit).
pub const NOISE_MAX_MESSAGE: usize = 65535;
pub const TAG_LEN: usize = 16;
const MAX_PLAINTEXT: usize = NOISE_MAX_MESSAGE - TAG_LEN;
/// A frame's length, before its body.
const FRAME_HEADER: usize = 4;

fn builder(identity: &Identity) -> snow::Builder<'_> {
    snow::Builder::new(NOISE_PARAMS.parse().expect("valid Noise parameters"))
        .prologue(PROLOGUE)
        .expect("prologue is set once")
        .psk(0, identity.key.as_bytes())
        .expect("psk location 0 exists in NNpsk0")
}

/// The connecting side between its first message and the answer.
pub struct Initiator {
    handshake: HandshakeState,
    expected: NodeId,
}

/// Starts a handshake with `expected`: returns the first message to send.
pub fn initiate(identity: &Identity, expected: NodeId) -> (Initiator, Vec<u8>) {
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
    message.truncate(len);
    (
        Initiator {
            handshake,
            expected,
        },
        message,
    )
}

impl Initiator {
    /// Reads the answer; on success the channel's keys.
    pub fn finish(mut self, reply: &[u8]) -> Result<(Sealer, Opener), TransportError> {
        let mut payload = vec![0u8; NOISE_MAX_MESSAGE];
        let len = self
            .handshake
            .read_message(reply, &mut payload)
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
            HelloReply::Welcome { node, .. } if node != self.expected.get() => {
                return Err(TransportError::WrongNode {
                    expected: self.expected,
                    found: node,
                });
            }
            HelloReply::Welcome { .. } => {}
        }
        let transport = self
            .handshake
            .into_stateless_transport_mode()
            .expect("handshake is finished after two messages");
        Ok(split(transport))
    }
}

/// The accepting side's answer to a first message.
pub struct Response {
    /// The message to send back.
    pub reply: Vec<u8>,
    /// The peer and the channel's keys, or why the peer was refused.
    pub outcome: Result<(NodeId, Sealer, Opener), TransportError>,
}

/// Answers a first message. `Err` means nothing may be sent back (the peer
/// does not hold the key, or its hello is malformed).
pub fn respond(
    identity: &Identity,
    first: &[u8],
    admit: impl FnOnce(NodeId) -> Result<(), String>,
) -> Result<Response, TransportError> {
    let mut handshake = builder(identity)
        .build_responder()
        .expect("responder builds");
    let mut payload = vec![0u8; NOISE_MAX_MESSAGE];
    let len = handshake
        .read_message(first, &mut payload)
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
    message.truncate(len);
    let outcome = verdict.map(|node| {
        let transport = handshake
            .into_stateless_transport_mode()
            .expect("handshake is finished after two messages");
        let (sealer, opener) = split(transport);
        (node, sealer, opener)
    });
    Ok(Response {
        reply: message,
        outcome,
    })
}

fn split(transport: StatelessTransportState) -> (Sealer, Opener) {
    let transport = Arc::new(transport);
    (
        Sealer {
            transport: transport.clone(),
            nonce: 0,
        },
        Opener {
            transport,
            nonce: 0,
            decoder: FrameDecoder::new(),
            plaintext: Vec::new(),
            aligned: AlignedVec::new(),
        },
    )
}

/// Encrypts the outgoing byte stream.
pub struct Sealer {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Sealer {
    /// Seals `plaintext` as Noise messages, each with its 2-byte length,
    /// into the start of `out`; returns them. `out` is a scratch buffer
    /// kept between calls: it only grows, so its bytes are not zeroed again
    /// for every message (a 1 MiB run would be).
    pub fn seal<'a>(&mut self, plaintext: &[u8], out: &'a mut Vec<u8>) -> &'a [u8] {
        self.seal_in_pieces(plaintext, MAX_PLAINTEXT, out)
    }

    /// Seals a frame, `body` after its 4-byte length, without copying the
    /// body into a frame first: only the first message's share of it is
    /// copied, next to the length.
    pub fn seal_frame<'a>(&mut self, body: &[u8], out: &'a mut Vec<u8>) -> &'a [u8] {
        self.seal_frame_parts(&[body], out)
    }

    /// [`seal_frame`](Self::seal_frame) of a body made of `parts`, one
    /// after the other, sealed where each lies: a message and a payload
    /// from another buffer go out without being joined first.
    pub fn seal_frame_parts<'a>(&mut self, parts: &[&[u8]], out: &'a mut Vec<u8>) -> &'a [u8] {
        let body_len: usize = parts.iter().map(|part| part.len()).sum();
        assert!(body_len <= MAX_FRAME_LEN, "frame body over the maximum");
        // The first message: the length, and as much of the body as fits.
        let first = body_len.min(MAX_PLAINTEXT - FRAME_HEADER);
        let mut head = Vec::with_capacity(FRAME_HEADER + first);
        head.extend_from_slice(&(body_len as u32).to_be_bytes());
        let mut rest = Vec::with_capacity(parts.len());
        for part in parts {
            let room = FRAME_HEADER + first - head.len();
            let (in_head, after) = part.split_at(part.len().min(room));
            head.extend_from_slice(in_head);
            if !after.is_empty() {
                rest.push(after);
            }
        }
        let rest_len: usize = rest.iter().map(|part| part.len()).sum();
        let chunks = std::iter::once(&head[..])
            .chain(rest.iter().flat_map(|part| part.chunks(MAX_PLAINTEXT)));
        self.seal_chunks(chunks, head.len() + rest_len, out)
    }

    /// Seals `chunks` (of `total` bytes in all) one message each, into the
    /// start of `out`, which grows to fit but is never zeroed again.
    fn seal_chunks<'a, 'b>(
        &mut self,
        chunks: impl Iterator<Item = &'b [u8]> + Clone,
        total: usize,
        out: &'a mut Vec<u8>,
    ) -> &'a [u8] {
        let sealed_len = total + chunks.clone().count() * (2 + TAG_LEN);
        if out.len() < sealed_len {
            out.resize(sealed_len, 0);
        }
        let mut at = 0;
        for chunk in chunks {
            at += self.seal_one(chunk, &mut out[at..]);
        }
        &out[..at]
    }

    /// Seals one message of at most [`MAX_PLAINTEXT`] bytes, with its
    /// length, at the start of `out`; returns its size.
    fn seal_one(&mut self, chunk: &[u8], out: &mut [u8]) -> usize {
        let len = self
            .transport
            .write_message(self.nonce, chunk, &mut out[2..2 + chunk.len() + TAG_LEN])
            .expect("chunk and tag fit in one Noise message");
        self.nonce += 1;
        out[..2].copy_from_slice(&(len as u16).to_be_bytes());
        2 + len
    }

    /// [`seal`](Self::seal), with at most `piece` bytes in each message.
    pub fn seal_in_pieces<'a>(
        &mut self,
        plaintext: &[u8],
        piece: usize,
        out: &'a mut Vec<u8>,
    ) -> &'a [u8] {
        let piece = piece.clamp(1, MAX_PLAINTEXT);
        self.seal_chunks(plaintext.chunks(piece), plaintext.len(), out)
    }
}

/// Decrypts the incoming stream and cuts it into frames.
pub struct Opener {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    decoder: FrameDecoder,
    plaintext: Vec<u8>,
    /// Where messages are decoded, kept between them.
    aligned: AlignedVec<16>,
}

impl Opener {
    /// Takes in one Noise message (without its length).
    pub fn open(&mut self, ciphertext: &[u8]) -> Result<(), TransportError> {
        if ciphertext.len() < TAG_LEN {
            return Err(TransportError::Corrupt);
        }
        // Straight into the frame decoder's buffer: a copy less per byte.
        let (transport, nonce) = (&self.transport, self.nonce);
        self.decoder.push_with(ciphertext.len(), |room| {
            transport
                .read_message(nonce, ciphertext, room)
                .map_err(|_| TransportError::Corrupt)
        })?;
        self.nonce += 1;
        Ok(())
    }

    /// The next whole message received, decoded where it lies.
    pub fn next_message<T>(&mut self) -> Result<Option<T>, TransportError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        let aligned = &mut self.aligned;
        match self
            .decoder
            .next_frame_with(|body| decode_in::<T>(body, aligned))?
        {
            Some(decoded) => Ok(Some(decoded?)),
            None => Ok(None),
        }
    }

    /// The next whole message received and its payload (empty if it has
    /// none), both handed to `take` where they lie.
    pub fn next_message_with_payload<T, R>(
        &mut self,
        take: impl FnOnce(T, &[u8]) -> R,
    ) -> Result<Option<R>, TransportError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        let aligned = &mut self.aligned;
        match self
            .decoder
            .next_frame_with(|body| decode_with_payload_in::<T, R>(body, aligned, take))?
        {
            Some(taken) => Ok(Some(taken?)),
            None => Ok(None),
        }
    }

    /// Decrypts one Noise message and hands its plaintext to the caller
    /// instead of the frame decoder.
    pub fn open_raw(&mut self, ciphertext: &[u8]) -> Result<&[u8], TransportError> {
        if ciphertext.len() < TAG_LEN {
            return Err(TransportError::Corrupt);
        }
        if self.plaintext.is_empty() {
            self.plaintext = vec![0u8; NOISE_MAX_MESSAGE];
        }
        let len = self
            .transport
            .read_message(self.nonce, ciphertext, &mut self.plaintext)
            .map_err(|_| TransportError::Corrupt)?;
        self.nonce += 1;
        Ok(&self.plaintext[..len])
    }

    /// Takes up to `max` bytes already decrypted but not yet part of a
    /// returned frame (the start of raw bytes that follow a message).
    pub fn take_pending(&mut self, max: usize) -> Vec<u8> {
        self.decoder.take(max)
    }

    /// Gives back decrypted bytes that belong to what follows raw bytes.
    pub fn push_back(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
    }

    /// Bytes received but not yet a whole frame.
    pub fn pending_len(&self) -> usize {
        self.decoder.pending_len()
    }

    pub fn limit_frames(&mut self, max_len: usize) {
        self.decoder.set_limit(max_len);
    }

    pub fn has_complete_frame(&self) -> bool {
        self.decoder.has_complete_frame()
    }
}
