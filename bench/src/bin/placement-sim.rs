//! The placement engine at scale: the real `decide` and the real gossip in
//! the discrete-event simulator, against classic schedulers on the same
//! job trace; prints slowdowns and omx's ratios to each.
//!
//! `cargo run --release -p omx-bench --bin placement-sim [-- --nodes 1000,10000 --seed 1]`

use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use omx_bench::ratio;
use omx_dfsa::sim::placement::{
    GossipModel, Homes, PlacementOutcome, PlacementSimConfig, Policy, run,
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Size of the small cluster (omx against start-time placement).
    #[arg(long, default_value_t = 12)]
    small: usize,
    /// Sizes of the large clusters (omx against central and p2c).
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
    nodes: Vec<usize>,
    /// Offered work as a fraction of the cluster's capacity.
    #[arg(long, default_value_t = 0.8)]
    load: f64,
    /// Seconds of arrivals before measuring.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// Seconds of measured arrivals in the small cluster (cheap to
    /// simulate; its few jobs a second need a long window).
    #[arg(long, default_value_t = 1800)]
    small_duration: u64,
    /// Seconds of measured arrivals, for larger clusters with real gossip
    /// tables.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Seconds of measured arrivals, for clusters with sampled gossip.
    #[arg(long, default_value_t = 20)]
    large_duration: u64,
    /// Seconds arrivals go on after the measurement window, before the
    /// system drains; "all": until every measured job has finished.
    #[arg(long, default_value = "30")]
    arrivals_after: String,
    /// Share of the small cluster's jobs started on node 1 in its second
    /// scenario (a login node).
    #[arg(long, default_value_t = 0.25)]
    hot_share: f64,
    /// Moves per decision round of the extra omx row of the small tables.
    #[arg(long, default_value_t = 4)]
    extra_moves: usize,
    /// Decision interval of the migrating policies, ms (the daemon's
    /// `placement.interval_ms`).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Override `Params::max_age_ms`: gossip entries older than this are
    /// ignored by `decide`.
    #[arg(long)]
    max_age_ms: Option<u64>,
    /// Clusters larger than this draw views from gossip ages measured on
    /// a real gossip cluster of this many nodes (a real table per node
    /// takes memory as the square of the cluster's size).
    #[arg(long, default_value_t = PlacementSimConfig::REAL_GOSSIP_MAX_NODES)]
    real_gossip_max: usize,
    /// Policies of the large tables (names as printed; default: all but
    /// omx+probe with sampled gossip, the slowest to simulate).
    #[arg(long, value_delimiter = ',')]
    policies: Option<Vec<String>>,
    /// Simulations run at once (default: the CPUs available).
    #[arg(long)]
    threads: Option<usize>,
}

/// Moves per site and round of the daemon's balancer
/// (`tools/src/daemon/balancer.rs`, `MAX_MOVES_PER_ROUND`).
const BALANCER_MOVES: usize = 6;

/// One simulation of a table: a label, a configuration, a policy.
struct Run {
    label: String,
    config: PlacementSimConfig,
    policy: Policy,
}

impl Run {
    fn new(config: &PlacementSimConfig, policy: Policy) -> Run {
        let mut config = config.clone();
        if policy == Policy::OmxBalancer {
            config.moves_per_decision = BALANCER_MOVES;
        }
        Run {
            label: policy.name().into(),
            config,
            policy,
        }
    }
}

const LARGE_POLICIES: [Policy; 9] = [
    Policy::Omx,
    Policy::Central,
    Policy::PowerOfTwo,
    Policy::OmxBalancer,
    Policy::OmxExact,
    Policy::OmxProbe,
    Policy::OmxTwoChoices,
    Policy::CentralMoves,
    Policy::Home,
];

fn main() {
    let args = Args::parse();
    let command: Vec<String> = std::env::args().collect();
    println!("command: {}", command.join(" "));
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });

    let mut small = configure(args.small, &args);
    small.measure_ms = args.small_duration * 1000;
    print_parameters(&small, &args);

    println!(
        "\n(i) {} nodes (capacity {:.1} reference CPUs, {:.1} jobs/s), homes in proportion to capacity: \
         omx against start-time placement",
        args.small,
        small.capacity(),
        small.arrivals_per_second()
    );
    let nodes: Vec<String> = small
        .cluster
        .iter()
        .map(|n| format!("{}x{:.2}", n.cpus, n.speed_factor()))
        .collect();
    println!("nodes (CPUs x speed): {}", nodes.join(" "));
    small_table(&small, &args, threads);

    let mut hot = small.clone();
    hot.homes = Homes::Hot {
        share: args.hot_share,
    };
    println!(
        "\n(i') the same {} nodes, {:.0}% of jobs started on node 1 (a login node of capacity {:.1}: \
         offered {:.1}x its capacity)",
        args.small,
        args.hot_share * 100.0,
        hot.cluster[0].capacity(),
        offered_to_first(&hot)
    );
    small_table(&hot, &args, threads);

    let large_policies: Vec<Policy> = match &args.policies {
        Some(names) => LARGE_POLICIES
            .into_iter()
            .filter(|p| names.iter().any(|n| n == p.name()))
            .collect(),
        None => LARGE_POLICIES.to_vec(),
    };
    for &nodes in &args.nodes {
        let config = configure(nodes, &args);
        let sampled = matches!(config.gossip, GossipModel::Sampled { .. });
        println!(
            "\n({}) {nodes} nodes (capacity {:.0} reference CPUs, {:.0} jobs/s), {}, {} s measured: \
             omx against central and p2c",
            if sampled { "iii" } else { "ii" },
            config.capacity(),
            config.arrivals_per_second(),
            describe_gossip(&config),
            config.measure_ms / 1000
        );
        // The balancer decides for jobs away from home from the site's own
        // gossip entry, however old; sampled views hold young entries of
        // random nodes only.
        let chosen = args.policies.is_some();
        let runs: Vec<Run> = large_policies
            .iter()
            .filter(|p| !(sampled && **p == Policy::OmxBalancer))
            .filter(|p| !(sampled && !chosen && **p == Policy::OmxProbe))
            .map(|p| Run::new(&config, *p))
            .collect();
        let outcomes = run_all(&runs, threads);
        print_table(
            &runs,
            &outcomes,
            &[Policy::Central, Policy::PowerOfTwo, Policy::Home],
        );
    }
    println!("{NOTES}");
}

/// The defaults for `nodes`, with the command line's settings.
fn configure(nodes: usize, args: &Args) -> PlacementSimConfig {
    let mut config = PlacementSimConfig::new(nodes, args.seed);
    let sampled = nodes > args.real_gossip_max;
    config.utilisation = args.load;
    config.warmup_ms = args.warmup * 1000;
    config.measure_ms = 1000
        * if sampled {
            args.large_duration
        } else {
            args.duration
        };
    config.arrivals_after_ms = match args.arrivals_after.as_str() {
        "all" => None,
        seconds => Some(
            1000 * seconds
                .parse::<u64>()
                .expect("--arrivals-after: seconds or all"),
        ),
    };
    config.decision_interval_ms = args.interval_ms;
    if let Some(max_age) = args.max_age_ms {
        config.params.max_age_ms = max_age;
    }
    config.gossip = if sampled {
        GossipModel::Sampled {
            profile_nodes: args.real_gossip_max,
        }
    } else {
        GossipModel::Real
    };
    config
}

/// omx, omx with several moves per round, and the start-time policies.
fn small_table(config: &PlacementSimConfig, args: &Args, threads: usize) {
    let mut multi = config.clone();
    multi.moves_per_decision = args.extra_moves;
    let mut runs = vec![
        Run::new(config, Policy::Omx),
        Run {
            label: format!("omx {} moves/rnd", args.extra_moves),
            config: multi,
            policy: Policy::Omx,
        },
        Run::new(config, Policy::OmxBalancer),
    ];
    for policy in [
        Policy::RoundRobin,
        Policy::LeastLoadedStart,
        Policy::Home,
        Policy::Central,
    ] {
        runs.push(Run::new(config, policy));
    }
    let outcomes = run_all(&runs, threads);
    print_table(
        &runs,
        &outcomes,
        &[Policy::RoundRobin, Policy::LeastLoadedStart, Policy::Home],
    );
}

/// What node 1 is offered, as a multiple of its capacity.
fn offered_to_first(config: &PlacementSimConfig) -> f64 {
    let Homes::Hot { share } = config.homes else {
        return config.utilisation;
    };
    let first = config.cluster[0].capacity();
    let proportional = (1.0 - share) * first / config.capacity();
    config.utilisation * config.capacity() * (share + proportional) / first
}

fn describe_gossip(config: &PlacementSimConfig) -> String {
    match config.gossip {
        GossipModel::Real => "real gossip tables".into(),
        GossipModel::Sampled { profile_nodes } => {
            format!("gossip views sampled from a real {profile_nodes}-node gossip cluster")
        }
    }
}

fn print_parameters(config: &PlacementSimConfig, args: &Args) {
    let work = config.work;
    let p = &config.params;
    println!(
        "jobs: Poisson arrivals at {:.0}% of capacity; work bounded Pareto alpha {} on [{}, {}] \
         reference-CPU s (mean {:.2} s; {:.0}% of the work in jobs >= {} s), unknown to the policies; \
         rss {}-{} MiB",
        config.utilisation * 100.0,
        work.alpha,
        work.min_s,
        work.max_s,
        work.mean(),
        work.work_share_above(config.long_job_s) * 100.0,
        config.long_job_s,
        config.rss_mib.0,
        config.rss_mib.1
    );
    println!(
        "nodes: 1, 2 or 4 CPUs at 0.5x-2x reference speed (drawn from the seed); processor sharing, \
         at most one CPU per job"
    );
    println!(
        "measured: jobs arriving after {} s of warm-up, for {} s ({} nodes), {} s (real gossip) or \
         {} s (sampled gossip); arrivals then go on for {} s before the system drains",
        args.warmup,
        args.small_duration,
        args.small,
        args.duration,
        args.large_duration,
        args.arrivals_after
    );
    println!(
        "omx: decide() every {} ms per node (random phases), one move per round; gossip every {} ms, \
         w = {}; load smoothed over {} ms; Params::default() (margin {}, residency {} ms, horizon \
         {} ms, max age {} ms, migration {} ms + {} ms/MiB frozen)",
        config.decision_interval_ms,
        config.gossip_interval_ms,
        config.gossip_window,
        config.smoothing_ms,
        p.stability_margin,
        p.min_residency_ms,
        p.horizon_ms,
        p.max_age_ms,
        p.migration_fixed_cost_ms,
        p.migration_cost_per_mib_ms
    );
    println!(
        "slowdown = (completion - arrival) / (work / speed of the cluster's fastest CPU): >= 1, \
         the same yardstick for every policy"
    );
}

/// Runs `runs`, `threads` at a time; outcomes in the same order, each
/// with its wall time in seconds.
fn run_all(runs: &[Run], threads: usize) -> Vec<(PlacementOutcome, f64)> {
    // Popped from the end: the first run (omx, the slowest) starts first.
    let todo = Mutex::new((0..runs.len()).rev().collect::<Vec<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let Some(index) = todo.lock().expect("not poisoned").pop() else {
                        break;
                    };
                    let started = Instant::now();
                    let outcome = run(&runs[index].config, runs[index].policy);
                    let wall = started.elapsed().as_secs_f64();
                    done.lock()
                        .expect("not poisoned")
                        .push((index, outcome, wall));
                }
            });
        }
    });
    let mut done = done.into_inner().expect("not poisoned");
    done.sort_by_key(|(index, _, _)| *index);
    done.into_iter().map(|(_, o, wall)| (o, wall)).collect()
}

/// One line per run; the ratios of omx (the first run) to the runs of
/// the `compared` policies.
fn print_table(runs: &[Run], outcomes: &[(PlacementOutcome, f64)], compared: &[Policy]) {
    println!(
        "{:>17} | {:>7} | {:>7} {:>7} {:>7} | {:>6} | {:>7} {:>7} | {:>4} {:>5} {:>6}",
        "policy",
        "jobs",
        "mean",
        "p99",
        "long",
        "migr/j",
        "omx/x",
        "omx/x",
        "view",
        "sim s",
        "wall s"
    );
    println!(
        "{:>17} | {:>7} | {:>7} {:>7} {:>7} | {:>6} | {:>7} {:>7} | {:>4} {:>5} {:>6}",
        "", "", "", "", "", "", "mean", "p99", "", "", ""
    );
    let omx = &outcomes[0].0;
    for (run, (o, wall)) in runs.iter().zip(outcomes) {
        let is_compared = compared.contains(&run.policy) && run.label == run.policy.name();
        let (mean_ratio, p99_ratio) = if is_compared {
            (
                ratio(omx.mean_slowdown, Some(o.mean_slowdown)),
                ratio(omx.p99_slowdown, Some(o.p99_slowdown)),
            )
        } else {
            (String::new(), String::new())
        };
        let view = if o.view_entries > 0.0 {
            format!("{:.0}", o.view_entries)
        } else {
            String::new()
        };
        let unfinished = if o.unfinished > 0 {
            format!("  ({} unfinished: lower bounds)", o.unfinished)
        } else {
            String::new()
        };
        println!(
            "{:>17} | {:>7} | {:>7.2} {:>7.2} {:>7.2} | {:>6.3} | {:>7} {:>7} | {:>4} {:>5} {:>6.1}{unfinished}",
            run.label,
            o.jobs,
            o.mean_slowdown,
            o.p99_slowdown,
            o.mean_slowdown_long,
            o.migrations_per_job,
            mean_ratio,
            p99_ratio,
            view,
            o.end_ms / 1000,
            wall
        );
    }
}

const NOTES: &str = "
mean, p99: slowdown of the measured jobs; long: mean slowdown of the jobs of >= 10 s of work;
migr/j: migrations per measured job; omx/x: omx's figure over that row's (below 1: omx better);
view: mean number of other nodes a decision saw; sim s: simulated time when the last measured job
ended; wall s: time the run took here.
omx balancer: decide() driven as the daemon's balancer does (each home for its own jobs wherever
they run, up to 6 moves per site and round, its moves counted until gossip shows them); not run on
sampled gossip. What-ifs around the same decide(): omx exact-info (decide sees exact, instantaneous
figures), omx+probe (the chosen target is asked for its figures before the move), omx 2-choices
(decide sees two random entries of the gossip view), omx N moves/rnd (several moves per round).
See docs/placement.md, \"Simulation\".";
