//! The rules that keep decisions from oscillating.
//!
//! - A process that arrived less than `min_residency_ms` ago stays.
//! - A load-balancing move of `d` must leave the receiver, counting three
//!   quarters of `d`, no more loaded (per reference CPU) than the sender
//!   keeping a quarter of it: each such move lowers
//!   `sum(runnable^2 / capacity)` by at least `d^2 (1/c_i + 1/c_j) / 2`,
//!   so the same load cannot travel back. (Counting all of `d` at both
//!   ends would keep a second job home whenever the idle receiver shows
//!   any background load at all, such as its own daemon's.)
//! - No move may leave the receiver short of memory (it would usher back).

use super::{Candidate, NodeLoad, Params};

/// The process may move now (movable, and settled long enough).
pub fn may_move(c: &Candidate, now_ms: u64, params: &Params) -> bool {
    c.movable
        && c.arrived_at_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= params.min_residency_ms)
}

/// Moving `demand` from `from` to `to` lowers `sum(runnable^2 /
/// capacity)` by at least `demand^2 (1/c_from + 1/c_to) / 2`.
pub fn no_reversal(from: &NodeLoad, to: &NodeLoad, demand: f64) -> bool {
    let part = 0.75 * demand;
    let to_after = super::cost::ratio(to.runnable + part, to.capacity());
    let from_after = super::cost::ratio((from.runnable - part).max(0.0), from.capacity());
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
