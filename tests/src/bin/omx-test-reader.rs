//! A long-running reader: `omx-test-reader PATH PASSES` reads the file from
//! start to end PASSES times through one descriptor (seeking back between
//! passes), then prints the bytes read and a checksum of one pass. A job
//! whose I/O goes to where the file is, for the placement engine.

use std::io::{Read, Seek, SeekFrom};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: omx-test-reader PATH PASSES");
    let passes: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let mut file = std::fs::File::open(&path).unwrap_or_else(|e| {
        eprintln!("omx-test-reader: cannot open {path}: {e}");
        std::process::exit(1);
    });
    let mut buffer = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    let mut checksum: u64 = 0;
    for pass in 0..passes {
        file.seek(SeekFrom::Start(0)).expect("seek to the start");
        loop {
            let n = file.read(&mut buffer).unwrap_or_else(|e| {
                eprintln!("omx-test-reader: cannot read {path}: {e}");
                std::process::exit(1);
            });
            if n == 0 {
                break;
            }
            total += n as u64;
            if pass == 0 {
                checksum = buffer[..n]
                    .iter()
                    .fold(checksum, |a, b| a.rotate_left(5) ^ u64::from(*b));
            }
        }
    }
    println!("read {total} bytes, checksum {checksum:016x}");
}
