//! `omx demo`: the main demonstration.
//!
//! Brings up a lab, waits until every node sees every other one, shows each
//! node's view, loads one node with CPU work and shows the others learn of
//! it; then starts CPU-bound jobs on node 1, once all at home and once sent
//! to the other nodes with mosrun, shows where they run and what they
//! compute, and tears the lab down.

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
    /// Millions of loop steps of each job (a few seconds on a lab node).
    #[arg(long, default_value_t = 1000, hide = true)]
    pub job_rounds: u64,
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
        metrics_port: lab::DEFAULT_LAB_METRICS_PORT,
        gossip_ms: 1000,
        window: 16,
        mfs_root_squash: true,
    };
    println!(
        "== bringing up a lab of {} nodes on this machine",
        args.nodes
    );
    let lab = lab::up(&up)?;
    let result = show(&lab, args.job_rounds);
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

fn show(lab: &LabState, job_rounds: u64) -> anyhow::Result<()> {
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
    spread_jobs(lab, job_rounds)
}

/// The demo's job: a CPU loop whose result depends on every step.
pub fn job(rounds: u64) -> u64 {
    let mut x = 1u64;
    for _ in 0..rounds * 1_000_000 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x ^= x >> 29;
    }
    x
}

/// Runs one job per other node on node 1: first all at home, then each
/// sent to its own node by mosrun; compares times and results.
fn spread_jobs(lab: &LabState, job_rounds: u64) -> anyhow::Result<()> {
    let home = lab.nodes[0].plan.id;
    let others: Vec<u16> = lab.nodes[1..].iter().map(|n| n.plan.id).collect();
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("the omx path is not UTF-8")?;
    let rounds = job_rounds.to_string();
    let start = |send_to: Option<u16>| -> anyhow::Result<std::process::Child> {
        let mut command = Command::new(exe);
        command.args(["lab", "exec", "--name", LAB, &home.to_string(), "--", exe]);
        if let Some(node) = send_to {
            command.args(["mosrun", &format!("-{node}"), exe]);
        }
        command
            .args(["__demo-job", &rounds])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start a job")
    };
    let finish = |jobs: Vec<std::process::Child>| -> anyhow::Result<Vec<String>> {
        jobs.into_iter()
            .map(|job| {
                let output = job.wait_with_output()?;
                if !output.status.success() {
                    bail!("a job failed: {}", output.status);
                }
                Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
            })
            .collect()
    };

    println!(
        "\n== {} CPU-bound jobs on node {home}, all at home",
        others.len()
    );
    let started = Instant::now();
    let jobs = (0..others.len())
        .map(|_| start(None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let at_home = finish(jobs)?;
    let home_time = started.elapsed().as_secs_f64();
    println!("  done in {home_time:.1} s: {}", at_home.join(" "));

    println!("\n== the same jobs started on node {home} with `mosrun -N`: each runs on node N");
    let started = Instant::now();
    let jobs = others
        .iter()
        .map(|node| start(Some(*node)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_secs(1));
    let view = status::fetch(&lab.node(home)?.config())?;
    let away: Vec<String> = view
        .away
        .iter()
        .map(|p| format!("pid {} on node {}", p.pid, p.node))
        .collect();
    println!(
        "  node {home} says its processes away are: {}",
        away.join(", ")
    );
    for node in &others {
        let view = status::fetch(&lab.node(*node)?.config())?;
        let guests: Vec<String> = view
            .guests
            .iter()
            .map(|g| format!("pid {} of node {}", g.home_pid, g.home_node))
            .collect();
        println!("  node {node} hosts: {}", guests.join(", "));
    }
    let spread = finish(jobs)?;
    let spread_time = started.elapsed().as_secs_f64();
    println!("  done in {spread_time:.1} s: {}", spread.join(" "));
    if spread != at_home {
        bail!("the jobs computed different results away from home");
    }
    println!(
        "\n== same results; {:.1}x faster spread over {} nodes (each lab node has its share of this machine's CPUs)",
        home_time / spread_time,
        others.len()
    );
    Ok(())
}

fn views(lab: &LabState) -> anyhow::Result<Vec<ClusterView>> {
    lab.nodes
        .iter()
        .map(|n| status::fetch(&n.config()))
        .collect()
}
