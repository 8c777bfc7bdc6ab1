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

/// The two ends of a message followed by a payload of `payload_len`
/// bytes, outside the archive: the archive (into `buffer`, emptied
/// first) and the trailer that follows the payload. The receiver takes
/// the payload as it is ([`decode_with_payload_in`]). A sender seals the
/// three pieces where they lie, so a payload in a buffer of its own (a
/// write's data in the FUSE request, a read's in the owner's buffer) is
/// copied only by the sealing, where putting it inside the message would
/// copy it twice more (into the message's `Vec`, then the archive).
pub fn encode_payload_head_in<T>(
    message: &T,
    payload_len: usize,
    mut buffer: AlignedVec,
) -> (AlignedVec, [u8; PAYLOAD_TRAILER])
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    buffer.clear();
    let archive = rkyv::api::high::to_bytes_in::<_, rancor::Error>(message, buffer)
        .expect("serialising to memory cannot fail");
    let archive_len = archive.len() as u32;
    assert!(
        archive_len & PAYLOAD_FLAG == 0 && payload_len < PAYLOAD_FLAG as usize,
        "message over the largest frame"
    );
    let mut trailer = [0u8; PAYLOAD_TRAILER];
    trailer[..LENGTH_TRAILER].copy_from_slice(&(payload_len as u32).to_le_bytes());
    trailer[LENGTH_TRAILER..].copy_from_slice(&(archive_len | PAYLOAD_FLAG).to_le_bytes());
    (archive, trailer)
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

/// Set in the length trailer of a message followed by a payload; the
/// payload's length then comes just before it. No archive comes near 2 GiB
/// (frames are at most 16 MiB).
const PAYLOAD_FLAG: u32 = 1 << 31;

/// What follows a payload: its length, then the archive's (flagged).
pub const PAYLOAD_TRAILER: usize = 2 * LENGTH_TRAILER;

/// A received message cut into its archive and its payload (if it has one).
fn split_message(bytes: &[u8]) -> Result<(&[u8], Option<&[u8]>), String> {
    let Some(trailer_at) = bytes.len().checked_sub(LENGTH_TRAILER) else {
        return Err("shorter than its length trailer".into());
    };
    let stated = u32::from_le_bytes(bytes[trailer_at..].try_into().expect("4 bytes"));
    if stated & PAYLOAD_FLAG == 0 {
        let stated = stated as usize;
        return if stated == trailer_at {
            Ok((&bytes[..trailer_at], None))
        } else {
            Err(format!(
                "says it has {stated} bytes but has {trailer_at}: truncated or not a message"
            ))
        };
    }
    let Some(payload_len_at) = trailer_at.checked_sub(LENGTH_TRAILER) else {
        return Err("shorter than its payload's length".into());
    };
    let archive_len = (stated & !PAYLOAD_FLAG) as usize;
    let payload_len = u32::from_le_bytes(
        bytes[payload_len_at..trailer_at]
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    if archive_len.checked_add(payload_len) != Some(payload_len_at) {
        return Err(format!(
            "says it has {archive_len} bytes and a payload of {payload_len} but has \
             {payload_len_at} in all: truncated or not a message"
        ));
    }
    Ok((
        &bytes[..archive_len],
        Some(&bytes[archive_len..payload_len_at]),
    ))
}

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
    let (archive, payload) = split_message(bytes).map_err(|reason| DecodeError {
        kind: short_type_name::<T>(),
        len: bytes.len(),
        reason,
    })?;
    if payload.is_some() {
        return Err(DecodeError {
            kind: short_type_name::<T>(),
            len: bytes.len(),
            reason: "carries a payload, which this kind of message does not take".into(),
        });
    }
    decode_archive(archive, bytes.len(), aligned)
}

/// [`decode_in`] of a message that may have a payload
/// ([`encode_payload_head_in`]): the message and its payload, empty if it
/// has none. The payload is handed to `take` where it lies.
pub fn decode_with_payload_in<T, R>(
    bytes: &[u8],
    aligned: &mut AlignedVec<16>,
    take: impl FnOnce(T, &[u8]) -> R,
) -> Result<R, DecodeError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let (archive, payload) = split_message(bytes).map_err(|reason| DecodeError {
        kind: short_type_name::<T>(),
        len: bytes.len(),
        reason,
    })?;
    let message = decode_archive(archive, bytes.len(), aligned)?;
    Ok(take(message, payload.unwrap_or_default()))
}

fn decode_archive<T>(
    archive: &[u8],
    message_len: usize,
    aligned: &mut AlignedVec<16>,
) -> Result<T, DecodeError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
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
        len: message_len,
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

    /// A message and its payload in one buffer, as they go on the wire.
    fn encode_with_payload_in<T>(message: &T, payload: &[u8], buffer: AlignedVec) -> AlignedVec
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let (mut bytes, trailer) = encode_payload_head_in(message, payload.len(), buffer);
        bytes.extend_from_slice(payload);
        bytes.extend_from_slice(&trailer);
        bytes
    }

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

    /// A message with a payload decodes to the message and the payload
    /// wherever it lies; a message without one reads as an empty payload;
    /// a plain decode refuses a payload; and lengths that do not add up
    /// are refused, never read past.
    #[test]
    fn payloads_travel_after_their_message_and_bad_lengths_are_refused() {
        let message = sample_packet();
        let payload: Vec<u8> = (0..5000).map(|i| (i % 7) as u8).collect();
        let encoded = encode_with_payload_in(&message, &payload, AlignedVec::new());
        let mut kept = AlignedVec::new();
        for shift in [0, 3] {
            let mut placed = AlignedVec::<16>::new();
            placed.extend_from_slice(&vec![0xEE; shift]);
            placed.extend_from_slice(&encoded);
            let (decoded, got) =
                decode_with_payload_in(&placed[shift..], &mut kept, |m: PeerMessage, p| {
                    (m, p.to_vec())
                })
                .unwrap();
            assert_eq!(
                (decoded, got),
                (message.clone(), payload.clone()),
                "shifted by {shift}"
            );
        }
        let plain = encode(&message);
        let (decoded, got) =
            decode_with_payload_in(&plain, &mut kept, |m: PeerMessage, p| (m, p.len())).unwrap();
        assert_eq!((decoded, got), (message.clone(), 0));

        let e = decode::<PeerMessage>(&encoded).unwrap_err();
        assert!(e.reason.contains("payload"), "{e}");

        let take = |m: PeerMessage, p: &[u8]| (m, p.len());
        for cut in [1, 4, 8, payload.len() / 2, encoded.len() - 9] {
            assert!(
                decode_with_payload_in(&encoded[cut..], &mut kept, take).is_err(),
                "cut {cut} from the front"
            );
            assert!(
                decode_with_payload_in(&encoded[..encoded.len() - cut], &mut kept, take).is_err(),
                "cut {cut} from the end"
            );
        }
        let mut lying = encoded.to_vec();
        let at = lying.len() - PAYLOAD_TRAILER;
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = decode_with_payload_in(&lying, &mut kept, take).unwrap_err();
        assert!(e.reason.contains("payload of 4294967295"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode::<PeerMessage>(&bytes);
            let _ = decode::<ControlRequest>(&bytes);
            let _ = decode::<HelloReply>(&bytes);
            let _ = decode_with_payload_in(&bytes, &mut AlignedVec::new(), |m: PeerMessage, p| (m, p.len()));
        }
    }
}
