//! A CPU loop: `omx-test-cpu ITERATIONS` prints a checksum of a long chain
//! of integer operations (the same on every node, migrated or not).

fn main() {
    let iterations: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000_000);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut sum: u64 = 0;
    for i in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum = sum.wrapping_add(x ^ i);
    }
    println!("checksum {sum:016x} after {iterations} iterations");
}
