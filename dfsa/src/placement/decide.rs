//! One decision: memory ushering first, then the move the cost model
//! values most.

use super::cost::{self, CostModel};
use super::reason::openmosix_load;
use super::stability::{fits, may_move, migration_ms, no_reversal, short_of_memory};
use super::{Candidate, Decision, NodeLoad, Params, Reason};
use omx_mfs::NodeId;

/// At most one move of one of this node's `candidates` to another node.
///
/// `me` is this node, `others` what gossip says of the rest; only nodes
/// that take guests and whose information is at most `max_age_ms` old are
/// targets. Time is `now_ms` on this node's clock.
pub fn decide(
    me: &NodeLoad,
    others: &[NodeLoad],
    candidates: &[Candidate],
    now_ms: u64,
    params: &Params,
) -> Option<Decision> {
    let targets = super::targets(me, others, params);
    let ready: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| may_move(c, now_ms, params))
        .collect();
    if targets.is_empty() || ready.is_empty() {
        return None;
    }
    if short_of_memory(me, params)
        && let Some(d) = usher(me, &targets, &ready, params)
    {
        return Some(d);
    }
    balance(me, &targets, &ready, others.len() + 1, params)
}

/// The biggest process that fits goes to the node with the most free
/// memory, whatever the loads.
fn usher(
    me: &NodeLoad,
    targets: &[&NodeLoad],
    ready: &[&Candidate],
    params: &Params,
) -> Option<Decision> {
    let to = targets
        .iter()
        .max_by_key(|t| (t.mem_free, std::cmp::Reverse(t.node)))?;
    let c = ready
        .iter()
        .filter(|c| c.rss > 0 && fits(to, c.rss, params))
        .max_by_key(|c| (c.rss, std::cmp::Reverse(c.pid)))?;
    Some(Decision {
        pid: c.pid,
        to: to.node,
        reason: ushering(me, to, c),
    })
}

/// Why `c` leaves `me` for `to`, when memory is the reason.
fn ushering(me: &NodeLoad, to: &NodeLoad, c: &Candidate) -> Reason {
    Reason::MemoryUshering {
        from: me.node,
        to: to.node,
        free: me.mem_free,
        total: me.mem_total,
        rss: c.rss,
        to_free: to.mem_free,
    }
}

/// The node holding most of `c`'s I/O, with its share and rate, if `c` is
/// I/O-bound to it.
fn io_node(c: &Candidate, params: &Params) -> Option<(NodeId, f64, f64)> {
    let total: f64 = c.io_by_node.iter().map(|(_, r)| r.max(0.0)).sum();
    let &(node, rate) = c.io_by_node.iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
    let share = rate / total;
    (share > params.io_majority && rate >= params.io_min_rate).then_some((node, share, rate))
}

/// A candidate move and what it gains over the horizon, net of its cost.
struct Move<'a> {
    c: &'a Candidate,
    to: &'a NodeLoad,
    gain_ms: f64,
    reason: Reason,
}

impl Move<'_> {
    /// Order of preference among equal gains: the longest settled
    /// process, then the lowest pid, then the lowest node.
    fn key(&self) -> (u64, u32, NodeId) {
        (self.c.arrived_at_ms.unwrap_or(0), self.c.pid, self.to.node)
    }
}

/// Move a process from here to `j` when the fraction of the horizon its
/// marginal cost would save, `(M_here - M_j) / M_here`, exceeds the
/// stability margin plus the fraction lost to the migration freeze.
fn balance(
    me: &NodeLoad,
    targets: &[&NodeLoad],
    ready: &[&Candidate],
    nodes: usize,
    params: &Params,
) -> Option<Decision> {
    let model = CostModel::for_decision(me, targets, nodes, params.net_bandwidth);
    let horizon = params.horizon_ms.max(1) as f64;
    let mut best: Option<Move> = None;
    for &c in ready {
        let d = cost::demand(c, me);
        let net_here = model.net_cost(c, me.node);
        let here = model.cost_here(me, d, c.rss) + net_here;
        if here.is_nan() || here <= 0.0 {
            continue;
        }
        let move_ms = migration_ms(c.rss, params);
        let io = io_node(c, params);
        for &to in targets {
            if !fits(to, c.rss, params) {
                continue;
            }
            let net_there = model.net_cost(c, to.node);
            let there = model.cost_there(to, d, c.rss) + net_there;
            let saving = (here - there) / here;
            // The margin guards against estimates (CPU demand, loads that
            // change); the network part of the cost is the process's own
            // measured traffic, which a move to its data removes for sure.
            let uncertain = (here - net_here) / here;
            let needed = params.stability_margin * uncertain + move_ms / horizon;
            if saving.is_nan() || saving <= needed {
                continue;
            }
            // Which resource the saving comes from: the CPU part is the
            // marginal cost without the memory, the network part is known,
            // and memory is the rest.
            let cpu_gain = model.cost_here(me, d, 0) - model.cost_there(to, d, 0);
            let net_gain = net_here - net_there;
            let mem_gain = (here - there) - cpu_gain - net_gain;
            let to_its_files = |io_share, io_rate| Reason::IoLocality {
                from: me.node,
                to: to.node,
                io_share,
                io_rate,
                saving,
                move_ms,
            };
            let io_here = match io {
                Some((n, io_share, io_rate)) if n == to.node && net_gain > 0.0 => {
                    Some((io_share, io_rate))
                }
                _ => None,
            };
            let reason = match io_here {
                // The network part dominates the saving.
                Some((share, rate)) if 2.0 * net_gain >= here - there => to_its_files(share, rate),
                // Memory: the process makes room here where it costs
                // less (fits() keeps the target above its low-water mark).
                _ if mem_gain > cpu_gain.max(0.0) && mem_gain > net_gain => ushering(me, to, c),
                // The CPU part passes the rules against reversal, and the
                // network part is what makes its files' node better than
                // another as idle: the operator is told it follows them.
                Some((share, rate)) if no_reversal(me, to, d) => to_its_files(share, rate),
                _ if no_reversal(me, to, d) => Reason::LoadBalance {
                    from: me.node,
                    to: to.node,
                    from_load: openmosix_load(me.load()),
                    to_load: openmosix_load(to.load()),
                    saving,
                    move_ms,
                },
                _ => continue,
            };
            let m = Move {
                c,
                to,
                gain_ms: saving * horizon - move_ms,
                reason,
            };
            let better = match &best {
                None => true,
                Some(b) => m.gain_ms > b.gain_ms || (m.gain_ms == b.gain_ms && m.key() < b.key()),
            };
            if better {
                best = Some(m);
            }
        }
    }
    best.map(|m| Decision {
        pid: m.c.pid,
        to: m.to.node,
        reason: m.reason,
    })
}
