//! Jobs of mixed, unknown lengths arriving over time at random nodes of a
//! 6-node lab: the mean slowdown (time in the system / time alone on one
//! node) with omx's placement, started at home (`mosrun`) or on the best
//! node (`mosrun -b`), against the same trace placed once at start, by
//! round robin and by the least-loaded node the home knows of, with no
//! migration afterwards. The same seeded trace runs under each policy, one
//! after the other. Needs root (labs).
//!
//! `cargo build --release -p omx-tools -p omx-bench && sudo target/release/mixed-jobs`

use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use omx_tests::Lab;
use rand::{RngExt, SeedableRng};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 6)]
    nodes: u16,
    #[arg(long, default_value_t = 30)]
    jobs: usize,
    /// Offered load: the trace's work over the cluster's capacity.
    #[arg(long, default_value_t = 0.7)]
    load: f64,
    /// Shortest and longest job, seconds alone on one node.
    #[arg(long, default_value_t = 1.0)]
    shortest: f64,
    #[arg(long, default_value_t = 40.0)]
    longest: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Also print each job's slowdown under each policy.
    #[arg(long)]
    per_job: bool,
    /// Run omx's policies only (with `OMX_KEEP_LAB=1`, to read its lab's
    /// logs afterwards).
    #[arg(long)]
    omx_only: bool,
}

/// One job of the trace.
#[derive(Clone, Debug)]
struct Job {
    arrives_s: f64,
    home: u16,
    /// Seconds alone on one node.
    alone_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    Omx,
    OmxBest,
    RoundRobin,
    LeastLoaded,
}

fn main() {
    let args = Args::parse();
    let (omx, helper) = omx_bench::lab_binaries();
    // Calibrate: how many million loop steps a lab node runs per second.
    let balance = if args.omx_only { "true" } else { "false" };
    let mut lab = Lab::up("bmix", 203, args.nodes, &["--balance", balance]);
    omx_tests::wait_for(Duration::from_secs(30), "nodes up", || {
        lab.all_see_all("up")
    });
    let calibration = 200u64;
    let started = Instant::now();
    let out = lab.exec(1, &[&helper, "work", "cpu", &calibration.to_string()]);
    assert!(out.status.success());
    let steps_per_s = calibration as f64 / started.elapsed().as_secs_f64();
    let trace = make_trace(&args);
    let work: f64 = trace.iter().map(|j| j.alone_s).sum();
    println!(
        "trace: {} jobs, {:.0} s of work alone, over {:.0} s, on {} nodes (seed {}; {:.0} M steps/s per node)",
        trace.len(),
        work,
        trace.last().map_or(0.0, |j| j.arrives_s),
        args.nodes,
        args.seed,
        steps_per_s
    );
    let mut results = Vec::new();
    if !args.omx_only {
        for policy in [Policy::RoundRobin, Policy::LeastLoaded] {
            results.push((
                policy,
                run(&lab, policy, &trace, steps_per_s, &omx, &helper),
            ));
        }
        drop(lab);
        lab = Lab::up("bmix", 203, args.nodes, &["--balance", "true"]);
        omx_tests::wait_for(Duration::from_secs(30), "nodes up", || {
            lab.all_see_all("up")
        });
    }
    let mut moves = Vec::new();
    for policy in [Policy::Omx, Policy::OmxBest] {
        let before = moves_logged(&lab);
        results.push((
            policy,
            run(&lab, policy, &trace, steps_per_s, &omx, &helper),
        ));
        moves.push((policy, moves_logged(&lab) - before));
    }
    drop(lab);

    let omx_mean = results
        .iter()
        .find(|(p, _)| *p == Policy::Omx)
        .map_or(f64::NAN, |(_, slowdowns)| mean(slowdowns));
    println!(
        "\n{:<40} {:>14} {:>10} {:>16}",
        "policy", "mean slowdown", "p90", "omx / this"
    );
    for (policy, slowdowns) in &results {
        println!(
            "{:<40} {:>14.2} {:>10.2} {:>16}",
            name(*policy),
            mean(slowdowns),
            percentile(slowdowns, 0.9),
            omx_bench::ratio(omx_mean, Some(mean(slowdowns)))
        );
    }
    for (policy, moves) in moves {
        println!("{}: {moves} moves", name(policy));
    }
    if args.per_job {
        print!(
            "\n{:>4} {:>8} {:>5} {:>8}",
            "job", "arrives", "home", "alone"
        );
        for (policy, _) in &results {
            print!(" {:>12}", format!("{policy:?}"));
        }
        println!();
        for (i, job) in trace.iter().enumerate() {
            print!(
                "{i:>4} {:>7.1}s {:>5} {:>7.1}s",
                job.arrives_s, job.home, job.alone_s
            );
            for (_, slowdowns) in &results {
                print!(" {:>12.2}", slowdowns[i]);
            }
            println!();
        }
    }
}

fn name(policy: Policy) -> &'static str {
    match policy {
        Policy::Omx => "omx (start at home, then placement)",
        Policy::OmxBest => "omx -b (best node at start, placement)",
        Policy::RoundRobin => "round robin at start, no migration",
        Policy::LeastLoaded => "least-loaded at start, no migration",
    }
}

/// Automatic moves (start placements included) every node of `lab`
/// logged.
fn moves_logged(lab: &Lab) -> usize {
    (1..=lab.nodes)
        .map(|n| lab.log(n).matches("placement: move").count())
        .sum()
}

fn make_trace(args: &Args) -> Vec<Job> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(args.seed);
    // Bounded Pareto (shape 1.1): many short jobs, a few long ones.
    let (lo, hi, shape) = (args.shortest, args.longest, 1.1f64);
    let mut lengths: Vec<f64> = (0..args.jobs)
        .map(|_| {
            let u: f64 = rng.random();
            let ratio = (lo / hi).powf(shape);
            lo / (1.0 - u * (1.0 - ratio)).powf(1.0 / shape)
        })
        .collect();
    let work: f64 = lengths.iter().sum();
    let span = work / (f64::from(args.nodes) * args.load);
    let mean_gap = span / args.jobs as f64;
    let mut t = 0.0;
    lengths
        .drain(..)
        .map(|alone_s| {
            let job = Job {
                arrives_s: t,
                home: rng.random_range(1..=args.nodes),
                alone_s,
            };
            let u: f64 = rng.random::<f64>().max(1e-9);
            t += -mean_gap * u.ln();
            job
        })
        .collect()
}

/// Runs the trace under `policy`; returns each job's slowdown.
fn run(
    lab: &Lab,
    policy: Policy,
    trace: &[Job],
    steps_per_s: f64,
    omx: &str,
    helper: &str,
) -> Vec<f64> {
    let started = Instant::now();
    let mut next_rr = 0u16;
    let mut running = Vec::new();
    for job in trace {
        let at = Duration::from_secs_f64(job.arrives_s);
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let target = match policy {
            Policy::Omx | Policy::OmxBest => None,
            Policy::RoundRobin => {
                next_rr = next_rr % lab.nodes + 1;
                Some(next_rr)
            }
            Policy::LeastLoaded => least_loaded(lab, job.home),
        };
        let steps = ((job.alone_s * steps_per_s).round() as u64)
            .max(1)
            .to_string();
        let send = target.filter(|t| *t != job.home).map(|t| format!("-{t}"));
        let mut command = vec![omx, "mosrun"];
        if let Some(send) = &send {
            command.push(send);
        }
        if policy == Policy::OmxBest {
            command.push("-b");
        }
        command.extend_from_slice(&[helper, "work", "cpu", &steps]);
        let mut child = lab.spawn(job.home, &command, Stdio::null(), Stdio::null());
        let began = Instant::now();
        let alone = job.alone_s;
        // Each job's end is taken when it ends, not when its turn to be
        // waited for comes (a short job behind a long one in the trace
        // would count the long one's time).
        running.push(std::thread::spawn(move || {
            let status = child.wait().expect("wait");
            (status, began.elapsed().as_secs_f64() / alone)
        }));
    }
    let slowdowns: Vec<f64> = running
        .into_iter()
        .map(|waiter| {
            let (status, slowdown) = waiter.join().expect("waiter thread");
            assert!(
                status.success(),
                "a job failed: {status}; what the nodes warned of:\n{}",
                warnings(lab)
            );
            slowdown
        })
        .collect();
    eprintln!(
        "{policy:?}: mean slowdown {:.2} over {:.0} s",
        mean(&slowdowns),
        started.elapsed().as_secs_f64()
    );
    slowdowns
}

/// Every warning and error the nodes of `lab` logged, by node: what a
/// failed job's keepers said before the lab is removed with their logs.
fn warnings(lab: &Lab) -> String {
    (1..=lab.nodes)
        .flat_map(|n| {
            lab.log(n)
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .map(|l| format!("node {n}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The node with the lowest load in `home`'s view (itself included).
fn least_loaded(lab: &Lab, home: u16) -> Option<u16> {
    let view = lab.status(home)?;
    view["nodes"]
        .as_array()?
        .iter()
        .filter(|n| matches!(n["state"].as_str(), Some("local" | "up")))
        .filter_map(|n| Some((n["load"]["load"].as_u64()?, n["node"].as_u64()? as u16)))
        .min()
        .map(|(_, node)| node)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
