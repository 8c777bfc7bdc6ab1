//! The placement engine at cluster scale: nodes running jobs of unknown
//! lengths, each node calling the real [`crate::placement::decide`] on what
//! gossip tells it, against classic schedulers on the same job trace.
//!
//! - [`workload`]: the machines and the jobs (Poisson arrivals,
//!   bounded-Pareto work), drawn from the seed so every policy sees the
//!   same ones;
//! - [`node`]: processor sharing, and the smoothed load a daemon gossips;
//! - [`views`]: what a node knows of the others (the real gossip code, or
//!   ages measured from it for clusters too big for n² tables);
//! - `engine`: the event loop and the policies.
//!
//! Slowdown of a job = its response time (completion - arrival) divided
//! by the time it would take alone on one CPU of the cluster's fastest
//! node (`work / fastest speed`): at least 1, and the same yardstick for
//! every policy. See `docs/placement.md`, "Simulation".

mod engine;
pub mod node;
#[cfg(test)]
mod tests;
pub mod views;
pub mod workload;

pub use engine::run;
pub use views::{AgeProfiles, GossipModel};
pub use workload::{BoundedPareto, Homes, NodeSpec, heterogeneous_cluster};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::gossip::Millis;
use crate::placement::Params;

/// What each random stream of a run draws. Every purpose has a stream of
/// its own, so that a policy drawing more (probes, phases) leaves the
/// cluster and the job trace unchanged.
#[derive(Clone, Copy)]
enum Stream {
    Cluster,
    Jobs,
    Policy,
    Gossip,
    Views,
    Profiles,
}

/// The generator of `which` stream of the run seeded with `seed`.
fn stream(seed: u64, which: Stream) -> SmallRng {
    // Far-apart seeds for the streams; seed_from_u64 then mixes them.
    SmallRng::seed_from_u64(
        seed.wrapping_add((which as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    )
}

/// How jobs are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// omx: a job starts at home; every decision interval each node calls
    /// `decide` with its own smoothed load and its gossip table.
    Omx,
    /// As omx, but `decide` sees exact, instantaneous figures: what stale
    /// information costs omx.
    OmxExact,
    /// What-if: as omx, but before moving, the node asks the chosen target
    /// for its current figures (running jobs plus those on their way) and
    /// calls `decide` again with that answer alone; it moves only if the
    /// move still passes.
    OmxProbe,
    /// What-if: as omx, but `decide` sees two entries of the gossip view
    /// drawn at random (the power of two choices, on gossip-aged figures).
    OmxTwoChoices,
    /// omx as the daemon's balancer (`tools/src/daemon/balancer.rs`)
    /// runs it: each home decides for its own jobs wherever they run (a
    /// remote site as its gossip entry shows it), up to
    /// `moves_per_decision` moves per site and round, and remembers its
    /// moves until the targets' gossiped figures show them.
    OmxBalancer,
    /// A central scheduler with perfect instantaneous information: each
    /// job starts on the node least loaded per reference CPU once it is
    /// added; no migration.
    Central,
    /// As central, and every node also calls `decide` with exact
    /// information: what migration adds to a perfect start.
    CentralMoves,
    /// Power of two choices: probe two random nodes (exact figures), start
    /// on the less loaded per reference CPU; no migration.
    PowerOfTwo,
    /// Capacity-weighted round robin at start; no migration.
    RoundRobin,
    /// The home node starts the job on the node least loaded per
    /// reference CPU by its gossip table (itself exactly); no migration.
    LeastLoadedStart,
    /// Every job runs where it started.
    Home,
}

impl Policy {
    pub const ALL: [Policy; 11] = [
        Policy::Omx,
        Policy::OmxExact,
        Policy::OmxProbe,
        Policy::OmxTwoChoices,
        Policy::OmxBalancer,
        Policy::Central,
        Policy::CentralMoves,
        Policy::PowerOfTwo,
        Policy::RoundRobin,
        Policy::LeastLoadedStart,
        Policy::Home,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Omx => "omx",
            Policy::OmxExact => "omx exact-info",
            Policy::OmxProbe => "omx+probe",
            Policy::OmxTwoChoices => "omx 2-choices",
            Policy::OmxBalancer => "omx balancer",
            Policy::Central => "central",
            Policy::CentralMoves => "central+moves",
            Policy::PowerOfTwo => "p2c",
            Policy::RoundRobin => "round robin",
            Policy::LeastLoadedStart => "least-loaded",
            Policy::Home => "home",
        }
    }

    /// Moves running jobs (calls `decide`).
    pub fn migrates(self) -> bool {
        matches!(
            self,
            Policy::Omx
                | Policy::OmxExact
                | Policy::OmxProbe
                | Policy::OmxTwoChoices
                | Policy::OmxBalancer
                | Policy::CentralMoves
        )
    }
}

/// One simulation: a cluster, a job trace, and how nodes learn and decide.
#[derive(Clone, Debug)]
pub struct PlacementSimConfig {
    pub cluster: Vec<NodeSpec>,
    /// Draws the trace, the phases and every random choice.
    pub seed: u64,
    /// Work offered, as a fraction of the cluster's capacity.
    pub utilisation: f64,
    pub work: BoundedPareto,
    /// Resident memory of a job, MiB, uniform in this range.
    pub rss_mib: (u64, u64),
    pub homes: Homes,
    /// Jobs arriving in `[warmup, warmup + measure)` are measured.
    pub warmup_ms: Millis,
    pub measure_ms: Millis,
    /// Arrivals go on this long after the window, then stop and the
    /// system drains; `None`: until every measured job has finished (the
    /// load stays as offered to the end, but a policy that leaves some
    /// jobs crawling then simulates much longer).
    pub arrivals_after_ms: Option<Millis>,
    /// The run stops this long after the measurement window even if
    /// measured jobs remain (an overloaded policy); those count as ending
    /// then.
    pub drain_limit_ms: Millis,
    pub decision_interval_ms: Millis,
    /// Moves a node may make per decision round: after each, it calls
    /// `decide` again with its own figures and the target's as the move
    /// leaves them. 1 = one `decide` call per interval.
    pub moves_per_decision: usize,
    /// Time constant of the smoothed runnable count (the daemon's 2 s).
    pub smoothing_ms: Millis,
    pub gossip_interval_ms: Millis,
    pub gossip_window: usize,
    pub gossip_latency_ms: Millis,
    pub gossip: GossipModel,
    /// How many of the least loaded nodes an exact view shows.
    pub exact_view_nodes: usize,
    /// Jobs of at least this much work (reference-CPU seconds) are "long"
    /// in the results.
    pub long_job_s: f64,
    pub params: Params,
}

impl PlacementSimConfig {
    /// Real gossip tables up to this many nodes, sampled views above.
    pub const REAL_GOSSIP_MAX_NODES: usize = 2000;

    /// A heterogeneous cluster of `nodes` at 80% utilisation, jobs of
    /// 0.5 s to 100 s (bounded Pareto, alpha 1.1), homes in proportion to
    /// capacity, one minute of warm-up and five of measurement with
    /// arrivals until every measured job is done, the daemon's settings
    /// (1 s gossip with w = 16, 2 s smoothing, one decision of one move
    /// per second) and `Params::default()`.
    pub fn new(nodes: usize, seed: u64) -> PlacementSimConfig {
        PlacementSimConfig {
            cluster: heterogeneous_cluster(nodes, seed),
            seed,
            utilisation: 0.8,
            work: BoundedPareto {
                alpha: 1.1,
                min_s: 0.5,
                max_s: 100.0,
            },
            rss_mib: (1, 32),
            homes: Homes::Proportional,
            warmup_ms: 60_000,
            measure_ms: 300_000,
            arrivals_after_ms: None,
            drain_limit_ms: 1_800_000,
            decision_interval_ms: 1000,
            moves_per_decision: 1,
            smoothing_ms: 2000,
            gossip_interval_ms: 1000,
            gossip_window: 16,
            gossip_latency_ms: 1,
            gossip: if nodes <= Self::REAL_GOSSIP_MAX_NODES {
                GossipModel::Real
            } else {
                GossipModel::Sampled {
                    profile_nodes: Self::REAL_GOSSIP_MAX_NODES,
                }
            },
            exact_view_nodes: 32,
            long_job_s: 10.0,
            params: Params::default(),
        }
    }

    /// Total capacity in reference CPUs.
    pub fn capacity(&self) -> f64 {
        self.cluster.iter().map(NodeSpec::capacity).sum()
    }

    /// Jobs arriving per second.
    pub fn arrivals_per_second(&self) -> f64 {
        self.utilisation * self.capacity() / self.work.mean()
    }
}

/// What a run measured, over the jobs that arrived in the window.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementOutcome {
    pub policy: Policy,
    pub jobs: usize,
    pub mean_slowdown: f64,
    pub p99_slowdown: f64,
    /// Jobs of at least `long_job_s` of work, and their mean slowdown.
    pub long_jobs: usize,
    pub mean_slowdown_long: f64,
    pub migrations_per_job: f64,
    /// Measured jobs still running when the run gave up.
    pub unfinished: usize,
    /// When the run ended.
    pub end_ms: Millis,
    /// All jobs completed (measured or not) and all migrations.
    pub jobs_completed: u64,
    pub migrations: u64,
    /// Moves proposed on gossip and checked with the target (omx+probe).
    pub probes: u64,
    /// Largest |work done - work| / work of any completed job.
    pub max_work_error: f64,
    /// Mean number of other nodes in a view, and their mean age.
    pub view_entries: f64,
    pub view_age_ms: f64,
}
