//! Where a new job starts (`mosrun -b`): the node where one more
//! CPU-bound process costs least, so that a short job does not first
//! share its home's CPU and then wait for a move. Near-ties are broken at
//! random: homes that place jobs at the same time from the same gossip
//! would otherwise all pick the same idle node (the herd of
//! least-loaded-at-start placement on stale figures).

use super::cost::{self, CostModel};
use super::reason::openmosix_load;
use super::stability::fits;
use super::{Decision, NodeLoad, Params, Reason};

/// A node is as good as the cheapest when it would cost no more than the
/// cheapest would with this many more runnable processes. Less than a
/// node's background noise (its own daemon, a job's own start already
/// in its home's smoothed figure) should not decide; a node that got a job
/// half a second ago shows a fifth of it (figures are smoothed over 2 s),
/// and is no longer as good as an idle one.
pub const TIE_RUNNABLE: f64 = 0.15;

/// Home keeps a new job unless another node is better by more than this
/// many runnable processes: a move costs both nodes a keeper and a
/// transfer, and home's figure holds noise the others' do not (the job's
/// own start, `mosrun` included, and the daemon serving it).
pub const HOME_MARGIN_RUNNABLE: f64 = 0.3;

/// Where new process `pid` of `rss` bytes should start, if not at `me`,
/// its home. Home keeps it unless another node is cheaper by more than
/// [`HOME_MARGIN_RUNNABLE`] (starting there needs no move); among other
/// nodes equally good, `pick(k)` chooses one of the `k` (it returns
/// `0..k`; the daemon passes a random choice, tests a fixed one).
///
/// Only nodes that take guests, whose information is at most
/// `params.max_age_ms` old, and that keep their low-water mark of memory
/// free with the process are considered; with none, it starts at home.
pub fn start_node(
    pid: u32,
    me: &NodeLoad,
    others: &[NodeLoad],
    rss: u64,
    params: &Params,
    pick: impl FnOnce(usize) -> usize,
) -> Option<Decision> {
    let mut targets = super::targets(me, others, params);
    targets.retain(|t| fits(t, rss, params));
    if targets.is_empty() {
        return None;
    }
    let model = CostModel::for_decision(me, &targets, others.len() + 1, params.net_bandwidth);
    // A new job's wants are unknown: one full CPU, as a CPU-bound job.
    let cost_of = |node: &NodeLoad| model.cost_there(node, 1.0, rss);
    let home = cost_of(me);
    let cheapest = targets
        .iter()
        .copied()
        .chain([me])
        .filter(|n| !cost_of(n).is_nan())
        .min_by(|a, b| cost_of(a).total_cmp(&cost_of(b)))?;
    if home <= cost_with_more(&model, cheapest, HOME_MARGIN_RUNNABLE, rss) {
        return None;
    }
    let tie = cost_with_more(&model, cheapest, TIE_RUNNABLE, rss);
    if !tie.is_finite() {
        return None;
    }
    let mut equal: Vec<&NodeLoad> = targets.into_iter().filter(|t| cost_of(t) <= tie).collect();
    equal.sort_by_key(|t| t.node);
    let to = equal[pick(equal.len()).min(equal.len() - 1)];
    // Loads as they would be with the job.
    let with_job =
        |node: &NodeLoad| openmosix_load(cost::ratio(node.runnable + 1.0, node.capacity()));
    Some(Decision {
        pid,
        to: to.node,
        reason: Reason::StartPlacement {
            from: me.node,
            to: to.node,
            from_load: with_job(me),
            to_load: with_job(to),
        },
    })
}

/// What a new job would cost on `node` if it ran `more` runnable
/// processes: the bound of a band of nodes as good as it.
fn cost_with_more(model: &CostModel, node: &NodeLoad, more: f64, rss: u64) -> f64 {
    let busier = NodeLoad {
        runnable: node.runnable + more,
        ..node.clone()
    };
    model.cost_there(&busier, 1.0, rss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use omx_mfs::NodeId;
    use proptest::prelude::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn node(n: u16, runnable: f64) -> NodeLoad {
        NodeLoad {
            node: NodeId::new(n).unwrap(),
            cpus: 1.0,
            speed: cost::REFERENCE_SPEED,
            runnable,
            mem_total: 16 * GIB,
            mem_free: 12 * GIB,
            age_ms: 0,
            accepts_guests: true,
        }
    }

    fn target(d: Option<Decision>) -> Option<u16> {
        d.map(|d| d.to.get())
    }

    #[test]
    fn a_busy_home_sends_a_new_job_to_an_idle_node_and_an_idle_home_keeps_it() {
        let p = Params::default();
        let others = [node(2, 1.0), node(3, 0.0), node(4, 2.0)];
        let d = start_node(7, &node(1, 1.0), &others, 0, &p, |_| 0).expect("a move");
        assert_eq!((d.pid, d.to.get()), (7, 3));
        assert!(matches!(
            d.reason,
            Reason::StartPlacement {
                from_load: 200,
                to_load: 100,
                ..
            }
        ));
        assert_eq!(
            target(start_node(7, &node(1, 0.0), &others, 0, &p, |_| 0)),
            None
        );
        // A home barely busier than the idle node is a tie: no move.
        assert_eq!(
            target(start_node(7, &node(1, 0.01), &others, 0, &p, |_| 0)),
            None
        );
    }

    #[test]
    fn equally_idle_nodes_are_chosen_by_the_pick_and_a_node_showing_part_of_a_job_is_not_one() {
        let p = Params::default();
        let others = [node(2, 0.0), node(3, 0.2), node(4, 0.0), node(5, 0.0)];
        let home = node(1, 1.0);
        let chosen: Vec<Option<u16>> = (0..4)
            .map(|i| {
                target(start_node(1, &home, &others, 0, &p, |k| {
                    assert_eq!(k, 3, "nodes 2, 4 and 5 tie; 3 shows a fifth of a job");
                    i
                }))
            })
            .collect();
        // A pick out of range is held to the last.
        assert_eq!(chosen, [Some(2), Some(4), Some(5), Some(5)]);
    }

    #[test]
    fn a_faster_node_wins_over_an_equally_idle_slow_one() {
        let p = Params::default();
        let mut fast = node(3, 0.0);
        fast.speed = 2 * cost::REFERENCE_SPEED;
        let others = [node(2, 0.0), fast];
        assert_eq!(
            target(start_node(1, &node(1, 1.0), &others, 0, &p, |_| 0)),
            Some(3)
        );
    }

    #[test]
    fn stale_blocked_and_full_nodes_are_never_chosen() {
        let p = Params::default();
        let mut stale = node(2, 0.0);
        stale.age_ms = p.max_age_ms + 1;
        let mut blocked = node(3, 0.0);
        blocked.accepts_guests = false;
        let mut full = node(4, 0.0);
        full.mem_free = 3 * GIB;
        let home = node(1, 3.0);
        let others = [stale, blocked, full];
        assert_eq!(
            target(start_node(1, &home, &others, 2 * GIB, &p, |_| 0)),
            None
        );
        // The full node takes a small job.
        assert_eq!(target(start_node(1, &home, &others, 0, &p, |_| 0)), Some(4));
    }

    proptest! {
        /// The chosen node takes guests, is fresh, and costs at most the
        /// tie tolerance above the cheapest eligible node, home included;
        /// home is left only for a node clearly cheaper.
        #[test]
        fn the_start_node_is_eligible_and_about_the_cheapest(
            loads in prop::collection::vec((0.0f64..4.0, 1u32..4, 0u64..4000, any::<bool>()), 1..12),
            home_load in 0.0f64..4.0,
            choice in 0usize..16,
        ) {
            let p = Params::default();
            let others: Vec<NodeLoad> = loads.iter().enumerate().map(|(i, &(r, speed, age, accepts))| {
                let mut n = node(i as u16 + 2, r);
                n.speed = speed * cost::REFERENCE_SPEED;
                n.age_ms = age;
                n.accepts_guests = accepts;
                n
            }).collect();
            let home = node(1, home_load);
            let eligible: Vec<&NodeLoad> = others.iter()
                .filter(|o| o.accepts_guests && o.age_ms <= p.max_age_ms)
                .collect();
            let model = CostModel::for_decision(&home, &eligible, others.len() + 1, p.net_bandwidth);
            let cost_of = |n: &NodeLoad| model.cost_there(n, 1.0, 0);
            let cheapest = eligible.iter().copied().chain([&home])
                .min_by(|a, b| cost_of(a).total_cmp(&cost_of(b))).unwrap();
            let tie = cost_with_more(&model, cheapest, TIE_RUNNABLE, 0);
            let home_tie = cost_with_more(&model, cheapest, HOME_MARGIN_RUNNABLE, 0);
            match start_node(1, &home, &others, 0, &p, |k| choice % k) {
                None => prop_assert!(eligible.is_empty() || cost_of(&home) <= home_tie),
                Some(d) => {
                    let to = others.iter().find(|o| o.node == d.to).unwrap();
                    prop_assert!(to.accepts_guests && to.age_ms <= p.max_age_ms);
                    prop_assert!(cost_of(to) <= tie);
                    prop_assert!(cost_of(&home) > home_tie);
                }
            }
        }
    }
}
