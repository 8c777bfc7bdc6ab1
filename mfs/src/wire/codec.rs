//! Turning messages into bytes and back, validating everything received.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

/// A received frame is not a valid message of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind} message ({len} bytes): {reason}")]
pub struct DecodeError {
    pub kind: &'static str,
    pub len: usize,
    pub reason: String,
}

/// Serialises a message (the archive, then its length).
pub fn encode<T>(message: &T) -> AlignedVec
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    encode_in(message, AlignedVec::new())
}

/// [`encode`] into `buffer` (emptied first), so a sender of large
/// messages reuses one buffer instead of growing a fresh one each time.
pub fn encode_in<T>(message: &T, mut buffer: AlignedVec) -> AlignedVec
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    buffer.clear();
    let mut bytes = rkyv::api::high::to_bytes_in::<_, rancor::Error>(message, buffer)
        .expect("serialising to memory cannot fail");
    let len = bytes.len() as u32;
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

/// Gives back a buffer of [`encode_in`] or [`decode_in`] to keep for the
/// next message, unless a large message left it larger than a 1 MiB read
/// or write of MFS needs.
pub fn keep_buffer<const A: usize>(buffer: &mut AlignedVec<A>) {
    if buffer.capacity() > KEEP_BUFFER {
        *buffer = AlignedVec::new();
    }
}

/// Every message ends with the length of its archive: rkyv finds an
/// archive's root at its end, so a message cut short could otherwise read
/// as another, valid one.
const LENGTH_TRAILER: usize = 4;

/// Validates and deserialises a message of type `T`. The bytes need no
/// particular alignment: unaligned ones are copied into an aligned buffer
/// first.
pub fn decode<T>(bytes: &[u8]) -> Result<T, DecodeError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    decode_in(bytes, &mut AlignedVec::new())
}

/// The alignment an archive needs to be read where it lies.
const ALIGNMENT: usize = 16;

/// [`decode`], reading the archive where it lies if it is aligned, else
/// copying it into `aligned`, a buffer kept between calls (so a stream of
/// large messages does not allocate, and fault in, a fresh one for each).
pub fn decode_in<T>(bytes: &[u8], aligned: &mut AlignedVec<16>) -> Result<T, DecodeError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let refuse = |reason: String| DecodeError {
        kind: short_type_name::<T>(),
        len: bytes.len(),
        reason,
    };
    let Some(archive_len) = bytes.len().checked_sub(LENGTH_TRAILER) else {
        return Err(refuse("shorter than its length trailer".into()));
    };
    let (archive, trailer) = bytes.split_at(archive_len);
    let stated = u32::from_le_bytes(trailer.try_into().expect("4 bytes")) as usize;
    if stated != archive_len {
        return Err(refuse(format!(
            "says it has {stated} bytes but has {archive_len}: truncated or not a message"
        )));
    }
    let in_place = (archive.as_ptr() as usize).is_multiple_of(ALIGNMENT);
    let archive = if in_place {
        archive
    } else {
        aligned.clear();
        aligned.extend_from_slice(archive);
        &aligned[..]
    };
    let decoded = rkyv::from_bytes::<T, rancor::Error>(archive).map_err(|e| DecodeError {
        kind: short_type_name::<T>(),
        len: bytes.len(),
        reason: e.to_string(),
    });
    keep_buffer(aligned);
    decoded
}

/// The most an [`encode_in`] or [`decode_in`] buffer keeps between
/// messages.
const KEEP_BUFFER: usize = 2 << 20;

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::*;

    /// A message decodes the same where it lies aligned (read in place)
    /// and at every misalignment (copied first), and a buffer kept between
    /// messages does not carry one into the next.
    #[test]
    fn messages_decode_the_same_wherever_they_lie() {
        let message = sample_packet();
        let encoded = encode(&message);
        let mut kept = AlignedVec::new();
        for shift in 0..ALIGNMENT {
            let mut placed = AlignedVec::<16>::new();
            placed.extend_from_slice(&vec![0xEE; shift]);
            placed.extend_from_slice(&encoded);
            let decoded: PeerMessage = decode_in(&placed[shift..], &mut kept).unwrap();
            assert_eq!(decoded, message, "shifted by {shift}");
        }
        let other = PeerMessage::Gossip(GossipPacket { entries: vec![] });
        let decoded: PeerMessage = decode_in(&encode(&other), &mut kept).unwrap();
        assert_eq!(decoded, other);
    }

    fn sample_packet() -> PeerMessage {
        PeerMessage::Gossip(GossipPacket {
            entries: vec![GossipEntry {
                node: 3,
                age_ms: 0,
                load: LoadReport {
                    load: 150,
                    speed: 27000,
                    cpus: 2,
                    runnable_milli: 1500,
                    util_permille: 700,
                    mem_total: 1 << 30,
                    mem_free: 1 << 29,
                    mem_raw_free: 1 << 28,
                    cpu_pressure_permille: Some(12),
                    mem_pressure_permille: None,
                    accepts_guests: true,
                    guests_stay: false,
                },
            }],
        })
    }

    #[test]
    fn messages_round_trip() {
        let message = sample_packet();
        let bytes = encode(&message);
        assert_eq!(decode::<PeerMessage>(&bytes).unwrap(), message);

        let request = ControlRequest::SetMap {
            text: "1 10.0.0.1 4\n".into(),
            origin: "m".into(),
        };
        assert_eq!(
            decode::<ControlRequest>(&encode(&request)).unwrap(),
            request
        );
    }

    #[test]
    fn decodes_from_unaligned_bytes() {
        let bytes = encode(&sample_packet());
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(
            decode::<PeerMessage>(&shifted[1..]).unwrap(),
            sample_packet()
        );
    }

    #[test]
    fn refuses_garbage_and_truncated_messages() {
        assert!(decode::<PeerMessage>(&[]).is_err());
        assert!(decode::<PeerMessage>(&[0xff; 64]).is_err());
        let bytes = encode(&sample_packet());
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                decode::<PeerMessage>(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let e = decode::<Hello>(&[1, 2, 3]).unwrap_err();
        assert_eq!(e.kind, "Hello");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode::<PeerMessage>(&bytes);
            let _ = decode::<ControlRequest>(&bytes);
            let _ = decode::<HelloReply>(&bytes);
        }
    }
}
