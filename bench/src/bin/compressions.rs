//! The seed's example, measured: a dozen compressions started on one node
//! of a lab of 12 nodes with 1/6 of a CPU each. Prints the makespan with
//! omx spreading them against one compression alone on one such node (the
//! physical limit: the target is at most 1.25x) and against all twelve
//! left at home without migration (what a user gets without omx, about
//! 12x). It runs `omx demo` and reads its report. Needs root (a lab).
//!
//! `cargo build --release -p omx-tools -p omx-bench && sudo target/release/compressions`

use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// Nodes, and compressions (one per node).
    #[arg(long, default_value_t = 12)]
    nodes: usize,
    /// How long one compression alone takes on one node, seconds.
    #[arg(long, default_value_t = 30.0)]
    job_seconds: f64,
    /// Skip the all-at-home run (about nodes x job-seconds).
    #[arg(long)]
    no_baseline: bool,
}

fn main() {
    let args = Args::parse();
    let (omx, _) = omx_bench::lab_binaries();
    let nodes = args.nodes.to_string();
    let seconds = args.job_seconds.to_string();
    let mut command = vec![
        "demo",
        "--nodes",
        &nodes,
        "--job-seconds",
        &seconds,
        "--json",
        "--lab-name",
        "bzip",
        "--subnet",
        "10.78.21.0",
    ];
    if args.no_baseline {
        command.push("--no-baseline");
    }
    println!("running: {omx} {}", command.join(" "));
    let output = std::process::Command::new(&omx)
        .args(&command)
        .output()
        .expect("cannot run omx demo");
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        eprintln!("{text}\n{}", String::from_utf8_lossy(&output.stderr));
        panic!("omx demo failed: {}", output.status);
    }
    let report: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("omx demo --json prints its report");
    let get = |k: &str| report[k].as_f64();
    let alone = get("alone_s").expect("alone_s");
    let spread = get("spread_s").expect("spread_s");
    let home = get("at_home_s");
    println!(
        "\n{} compressions of {} MiB on {} nodes, each 1/{} of this machine's CPUs ({} moves)",
        report["jobs"],
        report["input_bytes"].as_u64().unwrap_or(0) >> 20,
        report["nodes"],
        report["nodes"],
        report["moves"]
    );
    println!("{:<44} {:>9} {:>12}", "", "seconds", "x one alone");
    println!(
        "{:<44} {:>9.1} {:>12}",
        "one compression alone on one node", alone, "1.00"
    );
    println!(
        "{:<44} {:>9.1} {:>12}",
        "all started on node 1, spread by omx",
        spread,
        omx_bench::ratio(spread, Some(alone))
    );
    match home {
        Some(h) => {
            println!(
                "{:<44} {:>9.1} {:>12}",
                "all on node 1 without migration",
                h,
                omx_bench::ratio(h, Some(alone))
            );
            println!(
                "omx makespan is {} of no migration's",
                omx_bench::ratio(spread, Some(h))
            );
        }
        None => println!(
            "{:<44} {:>9} {:>12}",
            "all on node 1 without migration", "-", "-"
        ),
    }
    let target = 1.25;
    println!(
        "target: makespan at most {target}x one alone: {}",
        if spread / alone <= target {
            "met"
        } else {
            "NOT met"
        }
    );
}
