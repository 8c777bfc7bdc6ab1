//! The round trip of a forwarded system call: `getppid` and a one-byte
//! `write` to a pipe made at home, timed one by one inside a process
//! running on node 2 of a lab, against the same calls natively at home.
//! Prints medians, 99th percentiles and their ratios. Needs root.
//!
//! `cargo build --release -p omx-tools -p omx-bench && sudo target/release/forwarded-calls`

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use clap::Parser;
use omx_bench::ratio;
use omx_tests::Lab;

#[derive(Parser)]
struct Args {
    /// Calls of each kind timed per round.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
}

/// Median and 99th percentile of one kind of call, in microseconds.
#[derive(Clone, Copy)]
struct Timing {
    median: f64,
    p99: f64,
}

struct Timer {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Timer {
    fn start(lab: &Lab, command: &[&str]) -> Timer {
        let mut child = lab.spawn(1, command, Stdio::piped(), Stdio::piped());
        let input = child.stdin.take().expect("piped");
        let mut output = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        output.read_line(&mut line).expect("timer output");
        assert_eq!(line.trim(), "ready", "the timer did not start");
        Timer {
            child,
            input,
            output,
        }
    }

    /// One round: (getppid, write).
    fn round(&mut self) -> (Timing, Timing) {
        writeln!(self.input, "go").expect("timer input");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("timer output");
        let words: Vec<&str> = line.split_whitespace().collect();
        let us = |i: usize| -> f64 {
            words
                .get(i)
                .and_then(|w| w.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unexpected timer output {line:?}"))
                / 1000.0
        };
        (
            Timing {
                median: us(1),
                p99: us(2),
            },
            Timing {
                median: us(4),
                p99: us(5),
            },
        )
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let args = Args::parse();
    let (omx, helper) = omx_bench::lab_binaries();
    let (omx, helper) = (omx.as_str(), helper.as_str());
    let calls = args.calls.to_string();
    let lab = Lab::up("bcalls", 202, 2, &[]);
    omx_tests::wait_for(std::time::Duration::from_secs(30), "nodes up", || {
        lab.all_see_all("up")
    });

    let mut native = Timer::start(&lab, &[helper, "calls", &calls]);
    native.round();
    let (native_getppid, native_write) = native.round();
    drop(native);

    let (spun_getppid, spun_write) = remote_round(&lab, omx, helper, &calls);
    // The same without busy-waiting: every node's config says so.
    for node in 1..=2 {
        let path = lab.dir().join(format!("node-{node}")).join("omx.toml");
        let config = std::fs::read_to_string(&path).expect("node config");
        let config = config.replacen(
            &format!("node = {node}\n"),
            &format!("node = {node}\nforward_spin_us = 0\n"),
            1,
        );
        std::fs::write(&path, config).expect("node config");
        lab.stop(node, false);
        lab.start(node);
    }
    omx_tests::wait_for(std::time::Duration::from_secs(30), "nodes up", || {
        lab.all_see_all("up")
    });
    let (slept_getppid, slept_write) = remote_round(&lab, omx, helper, &calls);

    println!(
        "{:<8} | {:>10} {:>10} | {:>10} {:>10} {:>7} | {:>10} {:>10} {:>7}",
        "call", "native p50", "p99", "remote p50", "p99", "x p50", "no-spin p50", "p99", "x p50"
    );
    for (name, native, spun, slept) in [
        ("getppid", native_getppid, spun_getppid, slept_getppid),
        ("write", native_write, spun_write, slept_write),
    ] {
        println!(
            "{:<8} | {:>10.2} {:>10.2} | {:>10.1} {:>10.1} {:>7} | {:>10.1} {:>10.1} {:>7}",
            name,
            native.median,
            native.p99,
            spun.median,
            spun.p99,
            ratio(spun.median, Some(native.median)),
            slept.median,
            slept.p99,
            ratio(slept.median, Some(native.median)),
        );
    }
    println!(
        "\nmicroseconds per call, {} calls each; native = the same program at home without omx,\n\
         remote = running on node 2, the call forwarded to its deputy on node 1 (keepers busy-wait up to\n\
         forward_spin_us, default {} us, for the next message); no-spin = the same with forward_spin_us = 0.\n\
         target: remote p50 < 100 us.",
        args.calls,
        omx_mfs::config::DEFAULT_FORWARD_SPIN_US
    );
}

/// Starts the timer under mosrun on node 1, moves it to node 2 and times
/// a round of calls there.
fn remote_round(lab: &Lab, omx: &str, helper: &str, calls: &str) -> (Timing, Timing) {
    let mut migrated = Timer::start(lab, &[omx, "mosrun", helper, "calls", calls]);
    let pid = migrated.child.id();
    let moved = lab.migrate(1, pid, "2");
    assert!(moved.is_ok(), "moving the timer failed: {moved:?}");
    migrated.round();
    let timings = migrated.round();
    let location = lab.where_is(1, pid);
    assert_eq!(
        location["node"].as_u64(),
        Some(2),
        "the timer came home during the measurement: {location}"
    );
    timings
}
