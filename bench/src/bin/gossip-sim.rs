//! Gossip at cluster scale: the daemon's own gossip code in the
//! discrete-event simulator, against the closed-form predictions.
//!
//! `cargo run --release -p omx-bench --bin gossip-sim [-- --nodes 1000,10000 --window 16]`

use std::time::Instant;

use clap::Parser;
use omx_bench::{figure, ratio};
use omx_dfsa::sim::gossip::{GossipSimConfig, run};
use omx_mfs::wire::{GossipEntry, GossipPacket, LoadReport, PeerMessage, encode};

#[derive(Parser)]
struct Args {
    /// Cluster sizes to simulate.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 10000])]
    nodes: Vec<usize>,
    /// Gossip window sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [16])]
    window: Vec<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() {
    let args = Args::parse();
    println!("gossip simulation: every step each node sends its own entry and its window of w");
    println!("freshest entries to one random node; ages in steps (1 step = 1 gossip interval).");
    println!(
        "'formula' = closed forms of Amar, Barak, Drezner & Peer (gossimon); ratio = simulated / formula.\n"
    );
    println!(
        "{:>6} {:>4} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6} | {:>7} | {:>9} {:>10} | {:>6}",
        "nodes",
        "w",
        "avg age",
        "formula",
        "ratio",
        "max age",
        "formula",
        "ratio",
        "worst",
        "msgs/n/s",
        "bytes/n/s",
        "wall s"
    );
    for &window in &args.window {
        let message_bytes = packet_bytes(window + 1);
        for &nodes in &args.nodes {
            let config = GossipSimConfig::steady_state(nodes, window, args.seed);
            let started = Instant::now();
            let report = run(&config);
            let wall = started.elapsed().as_secs_f64();
            println!(
                "{:>6} {:>4} | {:>8.1} {:>8} {:>6} | {:>8.1} {:>8} {:>6} | {:>7.0} | {:>9.2} {:>10.0} | {:>6.1}",
                nodes,
                window,
                report.average_age,
                figure(report.formula_average_age),
                ratio(report.average_age, report.formula_average_age),
                report.mean_max_age,
                figure(report.formula_max_age),
                ratio(report.mean_max_age, report.formula_max_age),
                report.worst_age,
                report.messages_per_node_per_second,
                report.messages_per_node_per_second * message_bytes as f64,
                wall
            );
        }
    }
    println!(
        "\nmax age = mean over nodes and samples of a node's oldest entry; worst = oldest entry seen anywhere."
    );
    println!(
        "bytes/n/s = messages per node per second x the encoded size of one message ({} bytes for w=16),",
        packet_bytes(17)
    );
    println!("before encryption and framing (+16 bytes tag and 6 bytes of lengths per message).");
}

/// Encoded size of a gossip message carrying `entries` entries.
fn packet_bytes(entries: usize) -> usize {
    let packet = PeerMessage::Gossip(GossipPacket {
        entries: (0..entries)
            .map(|i| GossipEntry {
                node: i as u16 + 1,
                age_ms: 1000,
                load: LoadReport::default(),
            })
            .collect(),
    });
    encode(&packet).len()
}
