//! Input and output: copies stdin to stdout, line by line as it comes.

use std::io::{BufRead, Write};

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut lines = 0u64;
    for line in stdin.lock().lines() {
        writeln!(out, "{}", line.expect("stdin")).expect("stdout");
        out.flush().expect("stdout");
        lines += 1;
    }
    eprintln!("echoed {lines} lines");
}
