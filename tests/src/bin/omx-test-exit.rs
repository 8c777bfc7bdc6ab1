//! Ending: `omx-test-exit MODE SECONDS` computes for SECONDS, then ends by
//! MODE: a number (exit with that code), `abort` (SIGABRT) or `segv` (a
//! real memory fault, SIGSEGV).

use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "37".into());
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..100_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
    }
    std::hint::black_box(x);
    match mode.as_str() {
        "abort" => std::process::abort(),
        "segv" => {
            let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .unwrap()
                .unwrap() as usize;
            let memory = vec![0u8; page * 3];
            let aligned = (memory.as_ptr() as usize).next_multiple_of(page);
            // SAFETY: the page lies inside our own buffer; making it
            // read-only and then writing to it is the point: a real fault.
            unsafe {
                libc::mprotect(aligned as *mut libc::c_void, page, libc::PROT_READ);
                std::ptr::write_volatile(aligned as *mut u8, 1);
            }
            unreachable!("the write faults");
        }
        code => std::process::exit(code.parse().unwrap_or(1)),
    }
}
