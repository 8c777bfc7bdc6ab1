//! What running under mosrun costs a process that stays home: a CPU-bound
//! and a syscall-heavy workload, each run natively and under `mosrun`
//! alternately inside one lab node; prints median wall times and ratios.
//! Needs root.
//!
//! `cargo build --release -p omx-tools -p omx-bench && sudo target/release/supervision`

use std::time::Instant;

use clap::Parser;
use omx_bench::{median, ratio};
use omx_tests::Lab;

#[derive(Parser)]
struct Args {
    /// Runs of each workload, natively and under mosrun.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Millions of multiply-adds of the CPU-bound workload.
    #[arg(long, default_value_t = 12_000)]
    cpu: u64,
    /// System calls of the syscall-heavy workload.
    #[arg(long, default_value_t = 10_000_000)]
    syscalls: u64,
}

fn main() {
    let args = Args::parse();
    let (omx, helper) = omx_bench::lab_binaries();
    let (omx, helper) = (omx.as_str(), helper.as_str());
    let lab = Lab::up("bsup", 203, 1, &[]);

    println!(
        "{:<9} | {:>10} {:>10} | {:>7} | {:>6}",
        "workload", "native s", "mosrun s", "x", "target"
    );
    for (kind, amount, target) in [
        ("cpu", args.cpu, "1.02"),
        ("syscalls", args.syscalls, "1.10"),
    ] {
        let amount = amount.to_string();
        let native_command = [helper, "work", kind, &amount];
        let mosrun_command = [omx, "mosrun", helper, "work", kind, &amount];
        let (mut native, mut supervised) = (Vec::new(), Vec::new());
        // Alternate, so drifts of the machine touch both alike.
        for _ in 0..args.runs {
            native.push(timed(&lab, &native_command));
            supervised.push(timed(&lab, &mosrun_command));
        }
        let (native, supervised) = (median(&mut native), median(&mut supervised));
        println!(
            "{:<9} | {:>10.3} {:>10.3} | {:>7} | {:>6}",
            kind,
            native,
            supervised,
            ratio(supervised, Some(native)),
            target
        );
    }
    println!(
        "\nmedian wall time of {} runs inside a lab node, including starting the program\n\
         (and, under mosrun, registering it with the daemon).",
        args.runs
    );
}

/// Runs `command` in node 1 and returns its wall time in seconds.
fn timed(lab: &Lab, command: &[&str]) -> f64 {
    let started = Instant::now();
    let output = lab.exec(1, command);
    let took = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        omx_tests::stderr(&output)
    );
    took
}
