//! The opportunity-cost model (Amir, Awerbuch, Barak, Borgstrom, Keren,
//! IEEE TPDS 11(7), 2000), extended to I/O as in Keren & Barak (2003).
//!
//! Each resource of a node costs `base^u`, `u` its utilisation; a node
//! costs the sum over its resources. A process's *marginal* cost on a node
//! is the node's cost with it minus without it:
//! - CPU: a node of `capacity` CPUs of the fastest node's speed (`cpus *
//!   speed / fastest`) counts as that many reference machines sharing its
//!   load: it costs `capacity * base^u`, `u = runnable / capacity`. The
//!   marginal cost of one more process is then about `ln(base) * base^u`,
//!   a function of the normalised load alone, so the cheapest spread is
//!   the one proportional to capacity, and the same runnable count is
//!   cheaper on a faster or wider node;
//! - memory: `u = used / total`;
//! - network: a process doing I/O with files held by node N loads the
//!   network at both ends, `u = bytes_per_s / bandwidth` at each, unless it
//!   runs on N. Nodes' other traffic is not known and counts as zero.
//!
//! The base is the number of nodes considered (`n`, as in the paper),
//! clamped to `2..=16` so that costs stay finite and a large cluster does
//! not make every imbalance look catastrophic.

use super::{Candidate, NodeLoad};
use omx_mfs::NodeId;

/// openMosix speed of the reference processor (a 1 GHz Pentium III).
pub const REFERENCE_SPEED: u32 = 10_000;

const MAX_BASE: usize = 16;
/// Utilisations above this cost the same (keeps `base^u` finite).
const MAX_UTILISATION: f64 = 100.0;

/// `a / b`, with a node of no capacity infinitely loaded when it has work.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else if a > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// The CPU a candidate would use alone, as a runnable count: it got
/// `cpu_share` of a CPU while `runnable` processes shared `cpus` CPUs.
pub fn demand(c: &Candidate, here: &NodeLoad) -> f64 {
    let contention = ratio(here.runnable, here.cpus).clamp(1.0, f64::MAX);
    (c.cpu_share * contention).clamp(0.0, 1.0)
}

/// The cost function for one decision.
#[derive(Clone, Copy, Debug)]
pub struct CostModel {
    pub base: f64,
    pub bandwidth: f64,
    /// The speed of a CPU that counts as one: the fastest node's, so that
    /// a fully busy CPU of the fastest node is at utilisation 1 (priced
    /// against [`REFERENCE_SPEED`] instead, the CPUs of a slow cluster
    /// would all look overloaded, and CPU prices would drown the others).
    pub unit_speed: f64,
}

impl CostModel {
    /// For a decision among `nodes` nodes.
    pub fn new(nodes: usize, bandwidth: f64) -> CostModel {
        CostModel {
            base: nodes.clamp(2, MAX_BASE) as f64,
            bandwidth,
            unit_speed: f64::from(REFERENCE_SPEED),
        }
    }

    /// For a decision at `me` among `nodes` nodes, of which `targets` may
    /// receive: the fastest of them counts as one CPU.
    pub fn for_decision(
        me: &NodeLoad,
        targets: &[&NodeLoad],
        nodes: usize,
        bandwidth: f64,
    ) -> CostModel {
        let fastest = targets.iter().map(|t| t.speed).chain([me.speed]).max();
        CostModel::new(nodes, bandwidth).with_unit_speed(fastest.unwrap_or(REFERENCE_SPEED))
    }

    /// Counts CPUs of `speed` as one (see [`CostModel::unit_speed`]).
    pub fn with_unit_speed(self, speed: u32) -> CostModel {
        CostModel {
            unit_speed: f64::from(speed.max(1)),
            ..self
        }
    }

    /// Computing power of `node` in CPUs of the unit speed.
    fn capacity(&self, node: &NodeLoad) -> f64 {
        node.cpus.max(0.0) * f64::from(node.speed) / self.unit_speed
    }

    /// What a resource at utilisation `u` costs.
    pub fn price(&self, u: f64) -> f64 {
        self.base.powf(u.clamp(0.0, MAX_UTILISATION))
    }

    /// CPU and memory cost of `node` with `runnable` and `used` bytes.
    fn node_cost(&self, node: &NodeLoad, runnable: f64, used: f64) -> f64 {
        let mem = if node.mem_total > 0 {
            self.price(used / node.mem_total as f64)
        } else {
            0.0
        };
        let capacity = self.capacity(node);
        capacity.max(1e-3) * self.price(ratio(runnable, capacity)) + mem
    }

    /// Marginal CPU and memory cost of a process (`demand`, `rss`) that
    /// runs on `node` (whose figures include it).
    pub fn cost_here(&self, node: &NodeLoad, demand: f64, rss: u64) -> f64 {
        let (r, used) = (node.runnable, node.mem_used());
        let without = ((r - demand).max(0.0), (used - rss as f64).max(0.0));
        self.node_cost(node, r, used) - self.node_cost(node, without.0, without.1)
    }

    /// Marginal CPU and memory cost of placing the process on `node`
    /// (whose figures do not include it).
    pub fn cost_there(&self, node: &NodeLoad, demand: f64, rss: u64) -> f64 {
        let (r, used) = (node.runnable, node.mem_used());
        self.node_cost(node, r + demand, used + rss as f64) - self.node_cost(node, r, used)
    }

    /// Network cost of the process's I/O if it runs on `at`.
    pub fn net_cost(&self, c: &Candidate, at: NodeId) -> f64 {
        let remote = || c.io_by_node.iter().filter(|(n, _)| *n != at);
        let total: f64 = remote().map(|(_, rate)| rate.max(0.0)).sum();
        if total <= 0.0 {
            return 0.0;
        }
        let far_ends: f64 = remote()
            .map(|(_, rate)| self.price(rate.max(0.0) / self.bandwidth) - 1.0)
            .sum();
        self.price(total / self.bandwidth) - 1.0 + far_ends
    }
}
