//! Calibrating a node's speed against a fixed reference loop.
//!
//! openMosix expressed speed relative to a 1 GHz Pentium III (= 10000). We
//! time a fixed chain of dependent integer operations (a 64-bit LCG step
//! and an xor-shift: about 5 cycles per iteration on any out-of-order x86,
//! since each iteration needs the previous result) and scale so that a
//! machine doing [`REFERENCE_ITERATIONS_PER_SECOND`] scores 10000. The
//! reference rate is that of a 1 GHz core at 5 cycles per iteration; it is
//! an estimate of the old scale, and what matters for balancing is that
//! every node measures with the same loop.

use std::hint::black_box;
use std::time::{Duration, Instant};

use super::REFERENCE_SPEED;

/// Iterations per second of the loop on the reference machine.
pub const REFERENCE_ITERATIONS_PER_SECOND: f64 = 2.0e8;

const BATCH: u64 = 1 << 16;

fn reference_batch(mut x: u64) -> u64 {
    for _ in 0..BATCH {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x ^= x >> 29;
    }
    x
}

/// Runs the reference loop for about `duration` of wall time and returns
/// the speed of one CPU in openMosix units. Wall time, not CPU time: a CPU
/// quota or a busy machine shows as a slower node, which is what it is.
pub fn calibrate(duration: Duration) -> u32 {
    let start = Instant::now();
    let mut x = 1u64;
    let mut iterations = 0u64;
    while start.elapsed() < duration {
        x = reference_batch(black_box(x));
        iterations += BATCH;
    }
    black_box(x);
    let rate = iterations as f64 / start.elapsed().as_secs_f64();
    ((rate / REFERENCE_ITERATIONS_PER_SECOND) * f64::from(REFERENCE_SPEED))
        .round()
        .clamp(1.0, f64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_gives_a_plausible_speed() {
        let speed = calibrate(Duration::from_millis(50));
        // Anything from a very slow emulator to a very fast core.
        assert!((100..1_000_000).contains(&speed), "speed {speed}");
    }
}
