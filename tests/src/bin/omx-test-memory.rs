//! Memory: `omx-test-memory MIB ROUNDS` fills MIB MiB with a pattern, then
//! for each round verifies every word and rewrites it with the next
//! round's pattern. Prints "verified" and exits 0, or reports the first
//! wrong word and exits 1.

fn pattern(index: usize, round: u64) -> u64 {
    (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ round.wrapping_mul(0xda94_2042_e4dd_58b5)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let rounds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let words = mib * 1024 * 1024 / 8;
    let mut memory: Vec<u64> = (0..words).map(|i| pattern(i, 0)).collect();
    for round in 0..rounds {
        for (i, word) in memory.iter_mut().enumerate() {
            if *word != pattern(i, round) {
                println!(
                    "round {round}: word {i} is {word:#x}, expected {:#x}",
                    pattern(i, round)
                );
                std::process::exit(1);
            }
            *word = pattern(i, round + 1);
        }
    }
    let check = memory.iter().fold(0u64, |a, w| a.wrapping_add(*w));
    println!("verified {mib} MiB over {rounds} rounds, sum {check:016x}");
}
