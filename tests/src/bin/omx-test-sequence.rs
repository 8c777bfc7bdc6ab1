//! Output: `omx-test-sequence N MILLIS` writes 1..=N to stdout, one line
//! each, sleeping MILLIS between lines.

use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let pause =
        std::time::Duration::from_millis(args.next().and_then(|a| a.parse().ok()).unwrap_or(10));
    let mut out = std::io::stdout().lock();
    for i in 1..=n {
        writeln!(out, "{i}").expect("stdout");
        out.flush().expect("stdout");
        std::thread::sleep(pause);
    }
}
