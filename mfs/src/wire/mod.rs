//! The wire format: every message two omx processes exchange is defined
//! here, and nowhere else.
//!
//! A message is an rkyv archive, validated (bytecheck) before anything reads
//! it, carried in a length-prefixed frame. Frames travel either inside an
//! encrypted channel between nodes ([`crate::transport`]) or in the clear
//! over a node's local control socket.

pub mod codec;
pub mod frame;
pub mod fs;
pub mod image;
pub mod link;
pub mod messages;
pub mod plain;

pub use codec::{
    DecodeError, decode, decode_in, decode_with_payload_in, encode, encode_in,
    encode_payload_head_in, keep_buffer,
};
pub use frame::{FrameDecoder, FrameError, MAX_FRAME_LEN};
pub use messages::*;

/// The protocol version spoken in the handshake. Peers with another version
/// are refused with a message naming both versions. 2: MFS attribute
/// grants (`FsResult::Granted`, `FsAnswer::AttrsChanged`,
/// `FsOp::AttrsDropped`). 3: MFS look-ahead (`FsOp::LookAhead`,
/// `FsResult::LookedAhead`). 4: a look-ahead's entries carry their
/// extended attributes `ls -l` reads (`AheadXattr`).
pub const PROTOCOL_VERSION: u16 = 4;
