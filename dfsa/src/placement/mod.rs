//! Where processes should run: the placement engine's decisions as pure
//! code (no I/O, time as numbers), so the daemon and a simulator run the
//! same logic. See `docs/placement.md` for the model and why it cannot
//! ping-pong.
//!
//! [`decide`] looks at this node, what gossip says of the others and this
//! node's movable processes, and proposes at most one move: memory
//! ushering first, then the cheapest move by the opportunity-cost model
//! ([`cost`]), held back by the stability rules ([`stability`]).
//! [`start_node`] places a new job before it has a history (`mosrun -b`).

pub mod cost;
mod decide;
mod reason;
pub mod stability;
mod start;
#[cfg(test)]
mod tests;

use omx_mfs::NodeId;
use omx_mfs::wire::LoadReport;

pub use cost::REFERENCE_SPEED;
pub use decide::decide;
pub use reason::{Decision, Reason};
pub use start::{HOME_MARGIN_RUNNABLE, TIE_RUNNABLE, start_node};

/// What this node knows of one node's load.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLoad {
    pub node: NodeId,
    pub cpus: f64,
    /// Speed per CPU, [`REFERENCE_SPEED`] = the reference machine.
    pub speed: u32,
    /// Smoothed number of runnable processes.
    pub runnable: f64,
    pub mem_total: u64,
    /// Memory available to processes, bytes.
    pub mem_free: u64,
    /// How old the information is.
    pub age_ms: u64,
    /// The node takes guests (not blocked, not expelling).
    pub accepts_guests: bool,
}

impl NodeLoad {
    /// From a gossiped (or locally measured) report. Whether the node takes
    /// guests is not in the report: the caller knows it.
    pub fn from_report(
        node: NodeId,
        report: &LoadReport,
        age_ms: u64,
        accepts_guests: bool,
    ) -> NodeLoad {
        NodeLoad {
            node,
            cpus: f64::from(report.cpus),
            speed: report.speed,
            runnable: f64::from(report.runnable_milli) / 1000.0,
            mem_total: report.mem_total,
            mem_free: report.mem_free,
            age_ms,
            accepts_guests,
        }
    }

    /// Computing power in reference CPUs: `cpus * speed / REFERENCE_SPEED`.
    pub fn capacity(&self) -> f64 {
        self.cpus.max(0.0) * f64::from(self.speed) / f64::from(REFERENCE_SPEED)
    }

    /// Normalised load: runnable processes per reference CPU (openMosix
    /// shows it x 100).
    pub fn load(&self) -> f64 {
        cost::ratio(self.runnable, self.capacity())
    }

    fn mem_used(&self) -> f64 {
        self.mem_total.saturating_sub(self.mem_free) as f64
    }
}

/// The nodes of `others` that may receive a process from `me`: they take
/// guests, their news is at most `params.max_age_ms` old, and they have
/// CPUs and memory.
fn targets<'a>(me: &NodeLoad, others: &'a [NodeLoad], params: &Params) -> Vec<&'a NodeLoad> {
    others
        .iter()
        .filter(|o| {
            o.node != me.node
                && o.accepts_guests
                && o.age_ms <= params.max_age_ms
                && o.capacity() > 0.0
                && o.mem_total > 0
        })
        .collect()
}

/// A process of this node that might move.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub pid: u32,
    /// Fraction of one CPU it used recently (0..=1 for one thread).
    pub cpu_share: f64,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Its I/O rate (bytes/s) with files held by each node, one entry per
    /// node.
    pub io_by_node: Vec<(NodeId, f64)>,
    /// False when it cannot migrate (shared memory, locked, ...).
    pub movable: bool,
    /// When it last arrived here by migration, on the local clock.
    pub arrived_at_ms: Option<u64>,
    pub home: NodeId,
}

/// Tuning of the decisions. See [`Params::default`].
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// A move must save this fraction of the horizon beyond its own cost.
    pub stability_margin: f64,
    /// A process that arrived less than this ago does not move again.
    pub min_residency_ms: u64,
    /// Estimated freeze time per MiB of resident memory.
    pub migration_cost_per_mib_ms: f64,
    /// Estimated fixed freeze time of any migration.
    pub migration_fixed_cost_ms: f64,
    /// How long a process is expected to keep running.
    pub horizon_ms: u64,
    /// Usher when free memory falls below this fraction of the total; no
    /// move may leave a target below it.
    pub memory_low_fraction: f64,
    /// Information older than this is ignored.
    pub max_age_ms: u64,
    /// Network bandwidth of a node, bytes/s (network utilisation =
    /// traffic / this).
    pub net_bandwidth: f64,
    /// A process is I/O-bound to node N when more than this fraction of its
    /// I/O is with N ...
    pub io_majority: f64,
    /// ... and that I/O is at least this many bytes/s.
    pub io_min_rate: f64,
}

impl Default for Params {
    /// Margin 0.3 (a move must save 30% of the horizon beyond its cost),
    /// residency 5 s, migration 20 ms + 3 ms/MiB, horizon 10 s, ushering
    /// below 10% free memory, information older than 2 s (two gossip
    /// steps of 1 s) ignored, 1 Gbit/s network, I/O-bound = more than half
    /// of at least 1 MiB/s with one node.
    ///
    /// The age limit matters most at scale: every loaded node picks the
    /// best target it knows, so old news of an idle node draws a herd to
    /// it (the simulation in `docs/placement.md` measures it).
    fn default() -> Params {
        Params {
            stability_margin: 0.3,
            min_residency_ms: 5_000,
            migration_cost_per_mib_ms: 3.0,
            migration_fixed_cost_ms: 20.0,
            horizon_ms: 10_000,
            memory_low_fraction: 0.1,
            max_age_ms: 2_000,
            net_bandwidth: 125e6,
            io_majority: 0.5,
            io_min_rate: 1024.0 * 1024.0,
        }
    }
}
