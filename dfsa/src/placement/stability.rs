//! The rules that keep decisions from oscillating.
//!
//! - A process that arrived less than `min_residency_ms` ago stays.
//! - A load-balancing move must leave the receiver no more loaded (per
//!   reference CPU) than the sender: each such move lowers
//!   `sum(runnable^2 / capacity)` by at least `d^2 (1/c_i + 1/c_j)`, so
//!   the same load cannot travel back.
//! - No move may leave the receiver short of memory (it would usher back).

use super::{Candidate, NodeLoad, Params};

/// The process may move now (movable, and settled long enough).
pub fn may_move(c: &Candidate, now_ms: u64, params: &Params) -> bool {
    c.movable
        && c.arrived_at_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= params.min_residency_ms)
}

/// Moving `demand` from `from` to `to` leaves `to` no more loaded than
/// `from`.
pub fn no_reversal(from: &NodeLoad, to: &NodeLoad, demand: f64) -> bool {
    let to_after = super::cost::ratio(to.runnable + demand, to.capacity());
    let from_after = super::cost::ratio((from.runnable - demand).max(0.0), from.capacity());
    to_after <= from_after
}

/// `node` keeps at least its low-water mark free after taking `rss`.
pub fn fits(node: &NodeLoad, rss: u64, params: &Params) -> bool {
    let low = params.memory_low_fraction * node.mem_total as f64;
    node.mem_free as f64 - rss as f64 >= low
}

/// Below the low-water mark: time to usher.
pub fn short_of_memory(node: &NodeLoad, params: &Params) -> bool {
    (node.mem_free as f64) < params.memory_low_fraction * node.mem_total as f64
}

/// Estimated freeze time of moving `rss` bytes.
pub fn migration_ms(rss: u64, params: &Params) -> f64 {
    params.migration_fixed_cost_ms
        + params.migration_cost_per_mib_ms * rss as f64 / (1024.0 * 1024.0)
}
