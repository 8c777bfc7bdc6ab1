//! Signals: `omx-test-signals K SECONDS` counts SIGUSR1s with a handler
//! while computing; prints "received K" and exits 0 once K arrived, or
//! exits 1 after SECONDS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static RECEIVED: AtomicU64 = AtomicU64::new(0);

extern "C" fn count(_: libc::c_int) {
    RECEIVED.fetch_add(1, Ordering::SeqCst);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let wanted: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let limit = Duration::from_secs(args.next().and_then(|a| a.parse().ok()).unwrap_or(60));
    let handler = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(count),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only increments an atomic, which is
    // async-signal-safe.
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGUSR1, &handler) }
        .expect("sigaction");
    println!("ready");
    let start = Instant::now();
    let mut x = 1u64;
    while RECEIVED.load(Ordering::SeqCst) < wanted {
        for _ in 0..100_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        if start.elapsed() > limit {
            println!(
                "received only {} of {wanted}",
                RECEIVED.load(Ordering::SeqCst)
            );
            std::process::exit(1);
        }
    }
    println!("received {} ({})", RECEIVED.load(Ordering::SeqCst), x % 2);
}
