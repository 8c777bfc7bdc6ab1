//! `omx demo`: the main demonstration.
//!
//! Brings up a lab, waits until every node sees every other one, shows each
//! node's view, loads one node with CPU work and shows the others learn of
//! it, then tears the lab down.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use omx_mfs::wire::{ClusterView, NodeState};

use crate::lab::{self, LabState, NameArg, UpArgs};
use crate::status;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Leave the lab up at the end.
    #[arg(long)]
    pub keep: bool,
}

const LAB: &str = "demo";

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.nodes < 2 {
        bail!("--nodes {}: the demo needs at least 2 nodes", args.nodes);
    }
    let up = UpArgs {
        nodes: args.nodes,
        cpus: Vec::new(),
        mem: Vec::new(),
        speed: Vec::new(),
        name: NameArg { name: LAB.into() },
        subnet: "10.78.0.0".parse().expect("an address"),
        port: omx_mfs::config::DEFAULT_PORT,
        gossip_ms: 1000,
        window: 16,
    };
    println!(
        "== bringing up a lab of {} nodes on this machine",
        args.nodes
    );
    let lab = lab::up(&up)?;
    let result = show(&lab);
    if args.keep {
        println!(
            "\n== the lab stays up: `omx lab status --name {LAB}`, `omx lab down --name {LAB}`"
        );
    } else {
        println!("\n== tearing the lab down");
        lab::run(lab::LabCommand::Down(NameArg { name: LAB.into() }))?;
    }
    result.map(|()| ExitCode::SUCCESS)
}

fn show(lab: &LabState) -> anyhow::Result<()> {
    let started = Instant::now();
    let n = lab.nodes.len();
    loop {
        let views = views(lab)?;
        let complete = views.iter().all(|v| {
            v.nodes
                .iter()
                .all(|node| matches!(node.state, NodeState::Local | NodeState::Up))
        });
        if complete {
            println!(
                "== all {n} nodes see all {} others up, {:.1} s after the daemons answered",
                n - 1,
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "after 60 s some nodes still do not see each other: see `omx lab status --name {LAB}`"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for view in views(lab)? {
        println!();
        print!("{}", status::render(&view));
    }

    let busy = lab.nodes[1].plan.id;
    let watcher = lab.nodes[0].plan.id;
    println!(
        "\n== loading node {busy} with two CPU-bound processes; node {watcher} watches its load"
    );
    let exe = std::env::current_exe()?;
    let mut burners = Vec::new();
    for _ in 0..2 {
        burners.push(
            Command::new(&exe)
                .args([
                    "lab",
                    "exec",
                    "--name",
                    LAB,
                    &busy.to_string(),
                    "--",
                    "sh",
                    "-c",
                    "while :; do :; done",
                ])
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start a CPU burner")?,
        );
    }
    let load_seen = |lab: &LabState| -> anyhow::Result<u32> {
        let view = status::fetch(&lab.node(watcher)?.config())?;
        Ok(view
            .nodes
            .iter()
            .find(|n| n.node == busy)
            .and_then(|n| n.load.map(|l| l.load))
            .unwrap_or(0))
    };
    let before = load_seen(lab)?;
    for second in 1..=8 {
        std::thread::sleep(Duration::from_secs(1));
        println!(
            "  t={second}s  node {watcher} sees node {busy} at load {}",
            load_seen(lab)?
        );
    }
    for mut burner in burners {
        let _ = burner.kill();
        let _ = burner.wait();
    }
    println!(
        "\n== node {busy}'s load as seen from node {watcher}: {before} before, {} after",
        load_seen(lab)?
    );
    Ok(())
}

fn views(lab: &LabState) -> anyhow::Result<Vec<ClusterView>> {
    lab.nodes
        .iter()
        .map(|n| status::fetch(&n.config()))
        .collect()
}
