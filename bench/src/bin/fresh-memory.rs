//! What fresh memory costs on this machine, the cost the new memory of a
//! migrated process pays and a reused buffer does not: faulting in an
//! area just allocated, again at once after freeing it, and again after
//! a pause. On a virtual machine, guest memory the host has not backed yet
//! (never used, or handed back by the balloon's free page reporting)
//! faults in the host as well as in the guest at its first touch. The
//! kernel hands out recently freed pages first, so the area must be
//! larger than what this machine used lately to show it: with 12 GiB,
//! the first touch ran at 394 MiB/s and the second at 1375.
//!
//! `cargo run --release -p omx-bench --bin fresh-memory [-- --mib 8192 --pause-s 6]`

use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Size of the area filled each time.
    #[arg(long, default_value_t = 8192)]
    mib: usize,
    /// How long the area stays freed before the last fills.
    #[arg(long, default_value_t = 6)]
    pause_s: u64,
}

/// virtio device id of a memory balloon, and its feature bit for free
/// page reporting (VIRTIO_BALLOON_F_REPORTING).
const BALLOON_DEVICE: &str = "0x0005";
const REPORTING_FEATURE_BIT: usize = 5;

const PAGE: usize = 4096;

/// Seconds to allocate `bytes` and write one byte of each of its pages
/// (the page faults, not the copying: that is what a host's faults add
/// to), then free them.
fn fill(bytes: usize) -> f64 {
    let started = Instant::now();
    let mut area: Vec<u8> = Vec::with_capacity(bytes);
    let pages = area.spare_capacity_mut();
    for page in (0..bytes).step_by(PAGE) {
        pages[page].write(1);
    }
    std::hint::black_box(pages.as_ptr());
    let took = started.elapsed().as_secs_f64();
    drop(area);
    took
}

/// Whether a balloon device reports free pages to the host, as its
/// negotiated features say (`None`: no balloon device seen).
fn free_page_reporting() -> Option<bool> {
    let devices = std::fs::read_dir("/sys/bus/virtio/devices").ok()?;
    devices.flatten().find_map(|device| {
        let id = std::fs::read_to_string(device.path().join("device")).ok()?;
        if id.trim() != BALLOON_DEVICE {
            return None;
        }
        let features = std::fs::read_to_string(device.path().join("features")).ok()?;
        Some(features.as_bytes().get(REPORTING_FEATURE_BIT) == Some(&b'1'))
    })
}

fn main() {
    let args = Args::parse();
    let bytes = args.mib << 20;
    let reporting = match free_page_reporting() {
        Some(true) => {
            let order = std::fs::read_to_string(
                "/sys/module/page_reporting/parameters/page_reporting_order",
            )
            .map(|o| format!(", blocks of order {}", o.trim()))
            .unwrap_or_default();
            format!("on{order}")
        }
        Some(false) => "off".to_string(),
        None => "no balloon device".to_string(),
    };
    println!("free page reporting to the host: {reporting}");
    let first = fill(bytes);
    let again = fill(bytes);
    std::thread::sleep(Duration::from_secs(args.pause_s));
    let after_pause = fill(bytes);
    let again_after_pause = fill(bytes);
    let rate = |s: f64| args.mib as f64 / s;
    println!(
        "\n{:<40} {:>9} {:>11} {:>14}",
        "faulting in fresh memory", "seconds", "MiB/s", "x reused"
    );
    for (what, took) in [
        ("first", first),
        ("at once after freeing it", again),
        (
            &format!("after {} s freed", args.pause_s) as &str,
            after_pause,
        ),
        ("at once after that", again_after_pause),
    ] {
        println!(
            "{what:<40} {took:>9.3} {:>11.0} {:>14.2}",
            rate(took),
            took / again
        );
    }
}
