//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! The decoder is incremental (bytes arrive in arbitrary pieces) and refuses
//! a length above [`MAX_FRAME_LEN`] before buffering any of it, so a peer
//! cannot make a node allocate more than one maximum frame.

pub(crate) use bytes_buffer::Buffer;

/// The largest frame body a node accepts.
pub const MAX_FRAME_LEN: usize = 16 << 20;
const HEADER_LEN: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// Prepends the length header to `body`.
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    assert!(body.len() <= MAX_FRAME_LEN, "frame body over the maximum");
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a byte stream into frame bodies.
pub struct FrameDecoder {
    buffer: Buffer,
    max_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::with_limit(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// A decoder refusing frames over `max_len` (at most [`MAX_FRAME_LEN`]):
    /// a stream that only ever carries small messages says so, and a peer
    /// cannot make it buffer more.
    pub fn with_limit(max_len: usize) -> FrameDecoder {
        FrameDecoder {
            buffer: Buffer::default(),
            max_len: max_len.min(MAX_FRAME_LEN),
        }
    }

    pub fn set_limit(&mut self, max_len: usize) {
        self.max_len = max_len.min(MAX_FRAME_LEN);
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend(bytes);
    }

    /// Adds up to `max` bytes that `fill` writes in place (a decryption
    /// straight into the buffer) and says the number of.
    pub fn push_with<E>(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        self.buffer.extend_with(max, fill)
    }

    /// The next complete frame body, `Ok(None)` if more bytes are needed, or
    /// an error if the stream announces an oversized frame (the stream is
    /// then unusable: close it).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        self.next_frame_with(|body| body.to_vec())
    }

    /// [`next_frame`](Self::next_frame), handing the body to `read` where
    /// it lies instead of copying it out.
    pub fn next_frame_with<R>(
        &mut self,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, FrameError> {
        let pending = self.buffer.as_slice();
        if pending.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes(pending[..HEADER_LEN].try_into().expect("4 bytes")) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        if pending.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let read = read(&pending[HEADER_LEN..HEADER_LEN + len]);
        self.buffer.consume(HEADER_LEN + len);
        Ok(Some(read))
    }

    /// Whether a whole frame is buffered (or an oversized one announced,
    /// which [`next_frame`](Self::next_frame) reports).
    pub fn has_complete_frame(&self) -> bool {
        let pending = self.buffer.as_slice();
        if pending.len() < HEADER_LEN {
            return false;
        }
        let len = u32::from_be_bytes(pending[..HEADER_LEN].try_into().expect("4 bytes")) as usize;
        len > self.max_len || pending.len() >= HEADER_LEN + len
    }

    /// Removes and returns up to `max` buffered bytes, frame or not (for a
    /// stream that carries raw bytes between frames).
    pub fn take(&mut self, max: usize) -> Vec<u8> {
        let pending = self.buffer.as_slice();
        let n = pending.len().min(max);
        let taken = pending[..n].to_vec();
        self.buffer.consume(n);
        taken
    }

    /// Bytes received but not yet returned as a frame.
    pub fn pending_len(&self) -> usize {
        self.buffer.as_slice().len()
    }
}

/// A byte queue that is appended at the back and consumed at the front
/// without moving the remainder on every frame.
/// A byte queue: appended at the back (copied, or written in place),
/// consumed at the front, compacted only when room runs out.
mod bytes_buffer {
    /// What a drained buffer keeps: enough for MFS's 1 MiB reads and
    /// writes and their headers, which would otherwise grow it anew (and
    /// fault in fresh memory) for every one.
    const KEEP_CAPACITY: usize = 2 << 20;

    /// Where buffered bytes begin when the buffer is empty or compacted.
    /// A frame that starts there has its 4-byte length at 12 and its body
    /// at 16: aligned as decoding needs it (the allocation is), so it is
    /// decoded where it lies instead of being copied first.
    const LEAD: usize = 12;

    /// `bytes[start..end]` are the buffered bytes. The rest of `bytes` is
    /// room, kept initialised so that it can be written in place.
    #[derive(Default)]
    pub struct Buffer {
        bytes: Vec<u8>,
        start: usize,
        end: usize,
    }

    impl Buffer {
        pub fn extend(&mut self, more: &[u8]) {
            self.make_room(more.len());
            self.bytes[self.end..self.end + more.len()].copy_from_slice(more);
            self.end += more.len();
        }

        /// Lets `fill` write up to `max` bytes at the end in place; it
        /// returns how many it wrote.
        pub fn extend_with<E>(
            &mut self,
            max: usize,
            fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
        ) -> Result<usize, E> {
            self.make_room(max);
            let written = fill(&mut self.bytes[self.end..self.end + max])?.min(max);
            self.end += written;
            Ok(written)
        }

        fn make_room(&mut self, more: usize) {
            if self.bytes.len() - self.end >= more {
                return;
            }
            if self.start != LEAD {
                let pending = self.end - self.start;
                if self.bytes.len() < LEAD + pending {
                    self.bytes.resize(LEAD + pending, 0);
                }
                self.bytes.copy_within(self.start..self.end, LEAD);
                self.start = LEAD;
                self.end = LEAD + pending;
            }
            if self.bytes.len() - self.end < more {
                self.bytes.resize(self.end + more, 0);
            }
        }

        pub fn as_slice(&self) -> &[u8] {
            &self.bytes[self.start..self.end]
        }

        pub fn consume(&mut self, n: usize) {
            self.start += n;
            if self.start == self.end {
                self.start = LEAD;
                self.end = LEAD;
                // Do not keep a large frame's memory for the connection's life.
                if self.bytes.len() > KEEP_CAPACITY {
                    self.bytes.truncate(KEEP_CAPACITY);
                    self.bytes.shrink_to(KEEP_CAPACITY);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split_of_the_stream() {
        let bodies: Vec<Vec<u8>> = vec![
            b"one".to_vec(),
            Vec::new(),
            vec![7u8; 70_000],
            b"x".to_vec(),
        ];
        let stream: Vec<u8> = bodies.iter().flat_map(|b| encode_frame(b)).collect();
        for piece in [1, 3, 4, 5, 1000, stream.len()] {
            let mut decoder = FrameDecoder::new();
            let mut out = Vec::new();
            for chunk in stream.chunks(piece) {
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    out.push(frame);
                }
            }
            assert_eq!(out, bodies, "piece size {piece}");
            assert_eq!(decoder.pending_len(), 0);
        }
    }

    #[test]
    fn refuses_an_oversized_length_before_buffering_it() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn a_decoder_with_a_limit_refuses_larger_frames() {
        let mut decoder = FrameDecoder::with_limit(10);
        decoder.push(&encode_frame(&[1; 10]));
        assert_eq!(decoder.next_frame(), Ok(Some(vec![1; 10])));
        decoder.push(&encode_frame(&[1; 11]));
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
    }

    #[test]
    fn a_truncated_frame_is_never_returned() {
        let mut decoder = FrameDecoder::new();
        let frame = encode_frame(b"hello");
        decoder.push(&frame[..frame.len() - 1]);
        assert_eq!(decoder.next_frame(), Ok(None));
    }
}
