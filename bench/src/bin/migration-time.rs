//! Migration time against the physical limit: processes of 1, 64, 512 and
//! 2048 MiB resident are moved home -> 2 -> 3 -> home in a lab, and each
//! size is also pushed between nodes 1 and 2 over a plain TCP socket, into
//! a reused buffer (the network alone) and into fresh memory (what any
//! receiver of a process pays). Prints freeze and total times and their
//! ratios to those transfers. Needs root (it builds a lab).
//!
//! `cargo build --release -p omx-tools -p omx-bench && sudo target/release/migration-time`

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Stdio};

use clap::Parser;
use omx_bench::{median, ratio};
use omx_tests::Lab;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// Resident sizes to move, in MiB.
    #[arg(long, value_delimiter = ',', default_value = "1,64,512,2048")]
    sizes: Vec<u64>,
    /// Moves of each kind (and transfers) measured per size; the median
    /// is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Run the TCP transfers between the moves, round by round, instead
    /// of after them. This machine's speeds drift within minutes, but a
    /// transfer also leaves memory just freed on node 2, which makes the
    /// next move there cheaper (2048 MiB: 2.2 s instead of 3.8 s): read
    /// both figures.
    #[arg(long)]
    interleave: bool,
}

/// One move's figures, in milliseconds.
#[derive(Clone, Copy)]
struct Move {
    frozen: f64,
    total: f64,
    bytes: u64,
}

fn main() {
    let args = Args::parse();
    let (omx, helper) = omx_bench::lab_binaries();
    let (omx, helper) = (omx.as_str(), helper.as_str());
    let lab = Lab::up("bmig", 201, 3, &[]);
    omx_tests::wait_for(std::time::Duration::from_secs(30), "nodes up", || {
        lab.all_see_all("up")
    });

    println!(
        "{:>6} {:>7} | {:>8} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>6} {:>6}",
        "MiB",
        "moved",
        "out frz",
        "out tot",
        "across",
        "home frz",
        "home tot",
        "tcp",
        "tcp new",
        "x tcp",
        "x new"
    );
    for &mib in &args.sizes {
        let size = mib.to_string();
        let (mut holder, mut output) = start_holder(&lab, omx, helper, &size);
        let pid = holder.id();
        // One round trip first: the nodes' memory is touched once (a VM
        // backs its guest's memory lazily) and every keeper path is warm.
        move_to(&lab, pid, "2");
        move_to(&lab, pid, "home");
        let (mut out, mut across, mut back) = (Vec::new(), Vec::new(), Vec::new());
        let mut tcp = Vec::new();
        let mut fresh = Vec::new();
        let mut transfer = |round| {
            tcp.push(tcp_transfer(&lab, helper, mib, false, round));
            fresh.push(tcp_transfer(&lab, helper, mib, true, round));
        };
        for round in 0..args.rounds {
            out.push(move_to(&lab, pid, "2"));
            across.push(move_to(&lab, pid, "3"));
            back.push(move_to(&lab, pid, "home"));
            if args.interleave {
                transfer(round);
            }
        }
        verify(&lab, pid, &mut output, mib);
        let _ = holder.kill();
        let _ = holder.wait();
        if !args.interleave {
            for round in 0..args.rounds {
                transfer(round);
            }
        }

        let pick = |moves: &[Move], f: fn(&Move) -> f64| {
            median(&mut moves.iter().map(f).collect::<Vec<_>>())
        };
        let out_total = pick(&out, |m| m.total);
        let tcp = median(&mut tcp);
        let fresh = median(&mut fresh);
        println!(
            "{:>6} {:>6}M | {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>8.1} {:>8.1} | {:>6} {:>6}",
            mib,
            out[0].bytes >> 20,
            pick(&out, |m| m.frozen),
            out_total,
            pick(&across, |m| m.total),
            pick(&back, |m| m.frozen),
            pick(&back, |m| m.total),
            tcp,
            fresh,
            ratio(out_total, Some(tcp)),
            ratio(out_total, Some(fresh)),
        );
    }
    println!(
        "\ntimes in ms, medians of {} moves: out = home -> node 2, across = node 2 -> node 3 (total),\n\
         home = node 3 -> home; frz = the process is stopped, tot = from the request to running there.\n\
         tcp = the same bytes over a plain TCP socket from node 1 to node 2 into a reused buffer;\n\
         tcp new = into freshly allocated memory. x tcp, x new = out tot / tcp, out tot / tcp new.",
        args.rounds
    );
}

/// Starts a holder of `size` MiB under mosrun on node 1; returns it once
/// its memory is filled.
fn start_holder(lab: &Lab, omx: &str, helper: &str, size: &str) -> (Child, BufReader<ChildStdout>) {
    let mut holder = lab.spawn(
        1,
        &[omx, "mosrun", helper, "hold", size],
        Stdio::null(),
        Stdio::piped(),
    );
    let mut output = BufReader::new(holder.stdout.take().expect("piped"));
    let mut line = String::new();
    output.read_line(&mut line).expect("holder output");
    assert_eq!(line.trim(), "ready", "the holder did not start");
    (holder, output)
}

/// Moves `pid` (of node 1) and returns what the move cost.
fn move_to(lab: &Lab, pid: u32, to: &str) -> Move {
    let output = lab.omx(1, &["migrate", "--json", &pid.to_string(), to]);
    assert!(
        output.status.success(),
        "moving {pid} to {to} failed: {}",
        omx_tests::stderr(&output)
    );
    let moved: Value = serde_json::from_slice(&output.stdout).expect("migrate --json");
    let stats = &moved["stats"];
    let ms = |field: &str| stats[field].as_u64().expect("a move's figures") as f64 / 1000.0;
    Move {
        frozen: ms("frozen_us"),
        total: ms("total_us"),
        bytes: stats["bytes"].as_u64().expect("bytes moved"),
    }
}

/// Has the holder check every word of its memory after its travels.
fn verify(lab: &Lab, pid: u32, output: &mut BufReader<ChildStdout>, mib: u64) {
    let signalled = lab.exec(1, &["kill", "-USR1", &pid.to_string()]);
    assert!(signalled.status.success(), "cannot signal the holder");
    let mut line = String::new();
    output.read_line(&mut line).expect("holder output");
    assert_eq!(
        line.trim(),
        format!("verified {mib} MiB"),
        "the holder's memory changed on its travels"
    );
}

/// Pushes `mib` MiB from node 1 to node 2 over plain TCP; milliseconds.
fn tcp_transfer(lab: &Lab, helper: &str, mib: u64, fresh: bool, round: usize) -> f64 {
    let port = (7100 + round * 2 + usize::from(fresh)).to_string();
    let mut sink_args = vec![helper, "tcp-sink", &port];
    if fresh {
        sink_args.push("fresh");
    }
    let mut sink = lab.spawn(2, &sink_args, Stdio::null(), Stdio::null());
    let to = format!("{}:{port}", lab.address(2));
    let pushed = lab.exec(1, &[helper, "tcp-push", &to, &mib.to_string()]);
    assert!(
        pushed.status.success(),
        "tcp push failed: {}",
        omx_tests::stderr(&pushed)
    );
    let status = sink.wait().expect("sink");
    assert!(status.success(), "the tcp sink failed");
    let us: f64 = omx_tests::stdout(&pushed)
        .trim()
        .parse()
        .expect("tcp-push prints microseconds");
    us / 1000.0
}
