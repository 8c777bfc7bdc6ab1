//! Memory that sits still: `omx-test-hold MIB SECONDS` fills MIB MiB with a
//! pattern, prints "ready", sleeps SECONDS, then verifies the pattern and
//! prints "verified MIB MiB" (or the first wrong word, exit 1). A process
//! that uses memory but no CPU, for the placement engine's memory tests.

use std::io::Write;
use std::time::Duration;

fn pattern(index: usize) -> u64 {
    (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let memory: Vec<u64> = (0..mib * 1024 * 1024 / 8).map(pattern).collect();
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    std::thread::sleep(Duration::from_secs(seconds));
    match memory
        .iter()
        .enumerate()
        .position(|(i, w)| *w != pattern(i))
    {
        None => println!("verified {mib} MiB"),
        Some(i) => {
            println!("word {i} is wrong");
            std::process::exit(1);
        }
    }
}
