//! Arbitrary bytes from a peer: split into frames (in pieces of varying
//! size) and each frame decoded as every message kind a node accepts. Must
//! never panic, never allocate beyond one maximum frame, and must return
//! each frame's bytes exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omx_mfs::wire::{ControlReply, ControlRequest, FrameDecoder, Hello, HelloReply, PeerMessage, decode};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else { return };
    let piece = usize::from(piece).max(1);
    let mut decoder = FrameDecoder::new();
    for chunk in stream.chunks(piece) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let _ = decode::<PeerMessage>(&frame);
                    let _ = decode::<Hello>(&frame);
                    let _ = decode::<HelloReply>(&frame);
                    let _ = decode::<ControlRequest>(&frame);
                    let _ = decode::<ControlReply>(&frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert!(decoder.pending_len() <= stream.len());
});
