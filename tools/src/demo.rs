//! `omx demo`: the main demonstration, the seed's own example.
//!
//! Brings up a lab of small nodes, starts a dozen compressions on node 1
//! and lets the placement engine spread them, showing live where they run;
//! then reports the makespan against one compression alone and against
//! the same dozen left at home, and checks that every output is the same.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use omx_mfs::wire::NodeState;
use serde::Serialize;

use crate::lab::{self, LabState, NameArg, UpArgs};
use crate::status;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of nodes (each gets an equal share of this machine).
    #[arg(long, default_value_t = 12)]
    pub nodes: usize,
    /// Number of compressions (default: one per node).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// How long one compression alone should take on one node, seconds
    /// (the input is sized for it).
    #[arg(long, default_value_t = 15.0)]
    pub job_seconds: f64,
    /// Skip the run of every compression at home without migration (it
    /// takes about jobs x job-seconds).
    #[arg(long)]
    pub no_baseline: bool,
    /// Leave the lab up at the end.
    #[arg(long)]
    pub keep: bool,
    /// Print the final report as JSON too (for bench/).
    #[arg(long, hide = true)]
    pub json: bool,
    /// The lab's name.
    #[arg(long, default_value = "demo", hide = true)]
    pub lab_name: String,
    /// The lab's /24 network.
    #[arg(long, default_value = "10.78.0.0", hide = true)]
    pub subnet: std::net::Ipv4Addr,
}

/// What the demo measured.
#[derive(Serialize, Debug)]
pub struct Report {
    pub nodes: usize,
    pub jobs: usize,
    pub input_bytes: u64,
    /// One compression alone on one node, seconds.
    pub alone_s: f64,
    /// All of them started on node 1, placed by omx.
    pub spread_s: f64,
    /// All of them on node 1 without migration (if run).
    pub at_home_s: Option<f64>,
    /// Moves the placement engine made.
    pub moves: usize,
}

/// The compressor and its options.
const COMPRESS: [&str; 4] = ["xz", "-6", "-T1", "-c"];

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.nodes < 2 {
        bail!("--nodes {}: the demo needs at least 2 nodes", args.nodes);
    }
    if !(args.job_seconds > 0.0 && args.job_seconds <= 3600.0) {
        bail!("--job-seconds {}: use 0 to 3600 seconds", args.job_seconds);
    }
    let up = UpArgs {
        nodes: args.nodes,
        cpus: Vec::new(),
        mem: Vec::new(),
        speed: Vec::new(),
        name: NameArg {
            name: args.lab_name.clone(),
        },
        subnet: args.subnet,
        port: omx_mfs::config::DEFAULT_PORT,
        metrics_port: lab::DEFAULT_LAB_METRICS_PORT,
        gossip_ms: 500,
        window: 16,
        mfs_root_squash: true,
        balance: true,
    };
    println!(
        "== bringing up a lab of {} nodes on this machine, each with 1/{} of its CPUs",
        args.nodes, args.nodes
    );
    let lab = lab::up(&up)?;
    let result = show(&lab, &args);
    if args.keep {
        println!(
            "\n== the lab stays up: `omx lab status --name {0}`, `omx lab down --name {0}`",
            args.lab_name
        );
    } else {
        println!("\n== tearing the lab down");
        lab::run(lab::LabCommand::Down(NameArg {
            name: args.lab_name.clone(),
        }))?;
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn show(lab: &LabState, args: &DemoArgs) -> anyhow::Result<Report> {
    wait_until_all_up(lab)?;
    let home = lab.nodes[0].plan.id;
    print!(
        "\n{}",
        status::render(&status::fetch(&lab.node(home)?.config())?)
    );

    let jobs = args.jobs.unwrap_or(args.nodes).max(1);
    // On node 1's own disk, which it exports as /mfs/1: a file every node
    // reaches, so a compression that moves reads it where it runs (DFSA)
    // instead of asking node 1 for every block.
    let input = lab.node(home)?.dir.join("disk").join("demo-input");
    let input_bytes = make_input(&input, lab.nodes[0].plan.cpus, args.job_seconds)?;
    println!(
        "\n== the job: `{} {}` ({} MiB of text), {} of them, all started on node {home}",
        COMPRESS.join(" "),
        input.display(),
        input_bytes >> 20,
        jobs
    );

    println!("\n== one compression alone on node {home}");
    let started = Instant::now();
    let alone = finish(vec![start(lab, home, false, &input)?])?;
    let alone_s = started.elapsed().as_secs_f64();
    println!("  {alone_s:.1} s: {}", alone[0]);

    println!(
        "\n== {jobs} compressions started on node {home} with mosrun: omx spreads them \
         (watch with `omx lab exec 1 -- omx mosmon` while the lab is up)"
    );
    let started = Instant::now();
    let mut running = (0..jobs)
        .map(|_| start(lab, home, true, &input))
        .collect::<anyhow::Result<Vec<Job>>>()?;
    let pids: Vec<u32> = running.iter().map(|j| j.child.id()).collect();
    let header: Vec<String> = lab
        .nodes
        .iter()
        .map(|n| format!("{:>3}", n.plan.id))
        .collect();
    println!("  {:>6}  node{}   done", "time", header.join(""));
    let mut outputs: Vec<Option<String>> = vec![None; jobs];
    let mut moves_seen: std::collections::HashMap<u32, u64> = Default::default();
    while outputs.iter().any(Option::is_none) {
        std::thread::sleep(Duration::from_secs(1));
        for (i, job) in running.iter_mut().enumerate() {
            if outputs[i].is_none() && job.child.try_wait()?.is_some() {
                outputs[i] = Some(job.result()?);
            }
        }
        let view = status::fetch(&lab.node(home)?.config())?;
        let mut per_node = vec![0usize; lab.nodes.len()];
        for (i, pid) in pids.iter().enumerate() {
            if outputs[i].is_some() {
                continue;
            }
            let node = view
                .away
                .iter()
                .find(|p| p.pid == *pid)
                .map_or(home, |p| p.node);
            if let Some(slot) = lab.nodes.iter().position(|n| n.plan.id == node) {
                per_node[slot] += 1;
            }
        }
        for p in &view.away {
            let request = omx_mfs::wire::ControlRequest::Where { pid: p.pid };
            if let Ok(omx_mfs::wire::ControlReply::Location(l)) =
                crate::control_client::request(&lab.node(home)?.config(), request)
            {
                moves_seen.insert(p.pid, u64::from(l.moves));
            }
        }
        let counts: Vec<String> = per_node.iter().map(|c| format!("{c:>3}")).collect();
        let done = outputs.iter().filter(|o| o.is_some()).count();
        println!(
            "  {:>5.0}s      {}   {done}/{jobs}",
            started.elapsed().as_secs_f64(),
            counts.join("")
        );
    }
    let spread_s = started.elapsed().as_secs_f64();
    let spread: Vec<String> = outputs.into_iter().map(Option::unwrap_or_default).collect();
    if spread.iter().any(|o| *o != alone[0]) {
        bail!("a compression spread by omx gave a different output: {spread:?}");
    }
    let moves = moves_seen.values().sum::<u64>() as usize;

    let at_home_s = if args.no_baseline {
        None
    } else {
        println!("\n== the same {jobs} compressions on node {home} without migration");
        let started = Instant::now();
        let at_home = finish(
            (0..jobs)
                .map(|_| start(lab, home, false, &input))
                .collect::<anyhow::Result<Vec<Job>>>()?,
        )?;
        let at_home_s = started.elapsed().as_secs_f64();
        if at_home.iter().any(|o| *o != alone[0]) {
            bail!("a compression at home gave a different output: {at_home:?}");
        }
        println!("  {at_home_s:.1} s");
        Some(at_home_s)
    };

    println!("\n== report");
    println!("  one compression alone on one node:       {alone_s:7.1} s");
    println!(
        "  {jobs} started on node {home}, spread by omx: {spread_s:7.1} s   ({:.2}x one alone, {moves} moves)",
        spread_s / alone_s
    );
    match at_home_s {
        Some(h) => println!(
            "  {jobs} on node {home} without migration:   {h:7.1} s   ({:.2}x one alone; omx is {:.1}x faster)",
            h / alone_s,
            h / spread_s
        ),
        None => println!("  {jobs} on node {home} without migration:   not run (--no-baseline)"),
    }
    println!("  every output is the same: {}", alone[0]);
    let _ = std::fs::remove_file(&input);
    Ok(Report {
        nodes: lab.nodes.len(),
        jobs,
        input_bytes,
        alone_s,
        spread_s,
        at_home_s,
        moves,
    })
}

fn wait_until_all_up(lab: &LabState) -> anyhow::Result<()> {
    let started = Instant::now();
    let n = lab.nodes.len();
    loop {
        let complete = lab.nodes.iter().all(|node| {
            status::fetch(&node.config()).is_ok_and(|v| {
                v.nodes
                    .iter()
                    .all(|n| matches!(n.state, NodeState::Local | NodeState::Up))
            })
        });
        if complete {
            println!(
                "== all {n} nodes see all {} others up, {:.1} s after the daemons answered",
                n - 1,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "after 60 s some nodes still do not see each other: see `omx lab status --name {}`",
                lab.name
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes text that compresses like prose, sized so that one compression
/// takes about `seconds` on a node of `cpus` CPUs; returns its size.
fn make_input(path: &Path, cpus: f64, seconds: f64) -> anyhow::Result<u64> {
    let sample = text(4 << 20);
    let started = Instant::now();
    let mut gzip = Command::new(COMPRESS[0])
        .args(&COMPRESS[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot run xz: install it (apt-get install xz-utils)")?;
    gzip.stdin.take().expect("piped").write_all(&sample)?;
    gzip.wait()?;
    let rate = sample.len() as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let size = (rate * cpus * seconds).clamp(1e6, 2e9) as usize;
    std::fs::write(path, text(size)).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(size as u64)
}

/// `len` bytes of words drawn from a small vocabulary.
fn text(len: usize) -> Vec<u8> {
    const WORDS: [&str; 32] = [
        "the", "cluster", "runs", "your", "jobs", "wherever", "cpu", "memory", "and", "data",
        "are", "process", "migrates", "node", "home", "deputy", "remote", "load", "balance",
        "gossip", "file", "system", "open", "mosix", "kernel", "user", "space", "signal", "exit",
        "status", "fast", "small",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 32) as usize].as_bytes());
        out.push(if x.is_multiple_of(13) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// A running compression and the thread reading its output.
struct Job {
    child: Child,
    reader: Option<std::thread::JoinHandle<std::io::Result<(u64, u64)>>>,
}

impl Job {
    /// Its output's size and checksum, once it ended.
    fn result(&mut self) -> anyhow::Result<String> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("a compression failed: {status}");
        }
        let (bytes, sum) = self
            .reader
            .take()
            .context("result taken twice")?
            .join()
            .map_err(|_| anyhow::anyhow!("the output reader panicked"))??;
        Ok(format!("{bytes} bytes compressed, checksum {sum:016x}"))
    }
}

fn start(lab: &LabState, node: u16, mosrun: bool, input: &Path) -> anyhow::Result<Job> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(&exe);
    command.args(["lab", "exec", "--name", &lab.name, &node.to_string(), "--"]);
    if mosrun {
        command.arg(&exe).arg("mosrun");
    }
    let mut child = command
        .args(COMPRESS)
        .arg(input)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start a compression")?;
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 16];
        let (mut bytes, mut sum) = (0u64, 0xcbf2_9ce4_8422_2325u64);
        loop {
            let n = out.read(&mut buffer)?;
            if n == 0 {
                return Ok((bytes, sum));
            }
            bytes += n as u64;
            for b in &buffer[..n] {
                sum = (sum ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    });
    Ok(Job {
        child,
        reader: Some(reader),
    })
}

fn finish(jobs: Vec<Job>) -> anyhow::Result<Vec<String>> {
    jobs.into_iter().map(|mut job| job.result()).collect()
}
