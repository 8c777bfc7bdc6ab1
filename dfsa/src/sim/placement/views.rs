//! What a node knows of the others when it decides.
//!
//! - [`RealGossip`]: the daemon's own [`GossipNode`], one per node, its
//!   payload the daemon's [`LoadReport`]; a node's view is every entry of
//!   its table young enough for `decide`. Each node holds a table of all
//!   members, so memory grows as n²: about 64 bytes x 1,000,000 entries
//!   at 1,000 nodes, but 6.4 GB at 10,000.
//! - [`SampledGossip`], for large clusters: the ages of the young entries
//!   of real gossip tables are measured once ([`AgeProfiles::measure`], the
//!   real protocol in `sim::gossip`'s cluster at a size that fits); at each
//!   decision a node draws one measured table's ages, gives each to a
//!   different random node, and reads that node's figures as they were
//!   that long ago. Same number of entries, same ages, same staleness of
//!   values; what is lost is that a real table persists from one decision
//!   to the next, and which nodes share which entries.
//! - Exact views (built by the engine): the instantaneous counts, age 0,
//!   for the perfect-information baselines.

use std::sync::Arc;

use omx_mfs::NodeId;
use omx_mfs::wire::LoadReport;
use rand::RngExt;
use rand::rngs::SmallRng;

use super::node::Node;
use super::{Stream, stream};
use crate::gossip::{
    GossipNode, GossipParams, GossipTransport, Membership, Millis, Rumor, default_down_after,
};
use crate::placement::NodeLoad;
use crate::sim::gossip::{GossipSimConfig, SimCluster};

/// How nodes running omx learn each other's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GossipModel {
    /// A real `GossipNode` per node (memory grows as the square of the
    /// cluster's size).
    Real,
    /// Views drawn from the ages measured in a real gossip cluster of
    /// `profile_nodes` nodes.
    Sampled { profile_nodes: usize },
}

/// A message in flight: to which node, and what it carries.
pub type Message = (usize, Vec<Rumor<LoadReport>>);

/// Collects what a gossip step sends.
struct Outbox<'a> {
    members: &'a Membership,
    sent: &'a mut Vec<Message>,
}

impl GossipTransport<LoadReport> for Outbox<'_> {
    fn send(&mut self, _from: NodeId, to: NodeId, rumors: Vec<Rumor<LoadReport>>) {
        let to = self.members.slot(to).expect("targets are members");
        self.sent.push((to, rumors));
    }
}

/// Every node's gossip state, the daemon's code unchanged.
pub struct RealGossip {
    nodes: Vec<GossipNode<LoadReport>>,
    members: Arc<Membership>,
    /// The nodes' choices of whom to send to.
    rng: SmallRng,
}

impl RealGossip {
    /// `n` nodes (ids 1..=n) that know nothing of each other yet.
    pub fn new(n: usize, window: usize, interval_ms: Millis, seed: u64) -> RealGossip {
        let ids: Vec<NodeId> = (1..=n)
            .map(|i| NodeId::new(i as u16).expect("ids from 1"))
            .collect();
        let members = Arc::new(Membership::new(ids.clone()));
        let params = GossipParams {
            window,
            down_after: default_down_after(n, window, interval_ms),
        };
        let nodes = ids
            .iter()
            .map(|me| GossipNode::new(*me, members.clone(), params))
            .collect();
        RealGossip {
            nodes,
            members,
            rng: stream(seed, Stream::Gossip),
        }
    }

    /// Node `node`'s gossip step at `now` with its current `report`;
    /// what it sends is appended to `sent`.
    pub fn step(&mut self, node: usize, now: Millis, report: LoadReport, sent: &mut Vec<Message>) {
        let mut outbox = Outbox {
            members: &self.members,
            sent,
        };
        self.nodes[node].step(now, report, &mut self.rng, &mut outbox);
    }

    pub fn receive(&mut self, node: usize, now: Millis, rumors: Vec<Rumor<LoadReport>>) {
        self.nodes[node].receive(now, rumors);
    }

    /// Node `node`'s entries about the others at most `max_age_ms` old.
    pub fn view(&self, node: usize, now: Millis, max_age_ms: Millis, view: &mut Vec<NodeLoad>) {
        let table = &self.nodes[node];
        for (slot, id) in self.members.ids().iter().enumerate() {
            if slot == node {
                continue;
            }
            if let Some((age, report)) = table.entry(now, *id)
                && age <= max_age_ms
            {
                // Every simulated node takes guests.
                view.push(NodeLoad::from_report(*id, report, age, true));
            }
        }
    }
}

/// The ages of the young entries of real gossip tables: one list per
/// table looked at.
#[derive(Clone, Debug, PartialEq)]
pub struct AgeProfiles {
    /// Nodes of the gossip cluster they were measured in.
    pub measured_nodes: usize,
    /// Each table's entries at most `max_age_ms` old, their ages in ms.
    pub tables: Vec<Vec<Millis>>,
}

impl AgeProfiles {
    /// Runs the real protocol (`sim::gossip`'s cluster: random phases,
    /// 1 ms latency) with `nodes` nodes until the young part of the tables
    /// is in its steady state (everything from the start older than
    /// `max_age_ms`), then looks at every table a few times.
    pub fn measure(
        nodes: usize,
        window: usize,
        interval_ms: Millis,
        max_age_ms: Millis,
        seed: u64,
    ) -> AgeProfiles {
        let config = GossipSimConfig {
            nodes,
            window,
            interval: interval_ms,
            latency: 1,
            loss: 0.0,
            warmup_steps: 0,
            measure_steps: 0,
            samples: 0,
            seed: stream(seed, Stream::Profiles).random(),
        };
        let mut cluster = SimCluster::new(&config);
        let warmup = max_age_ms.div_ceil(interval_ms.max(1)) + 20;
        for _ in 0..warmup {
            cluster.run_step();
        }
        let mut tables = Vec::new();
        // A few looks, two steps apart so they are not all alike.
        for _ in 0..4 {
            cluster.run_step();
            cluster.run_step();
            let now = cluster.now();
            for node in &cluster.nodes {
                tables.push(node.ages(now).filter(|age| *age <= max_age_ms).collect());
            }
        }
        AgeProfiles {
            measured_nodes: nodes,
            tables,
        }
    }

    /// Mean number of young entries in a table.
    pub fn mean_entries(&self) -> f64 {
        let total: usize = self.tables.iter().map(Vec::len).sum();
        total as f64 / self.tables.len().max(1) as f64
    }

    /// Mean age of the young entries, ms.
    pub fn mean_age_ms(&self) -> f64 {
        let (sum, count) = self
            .tables
            .iter()
            .flatten()
            .fold((0.0, 0usize), |(s, c), age| (s + *age as f64, c + 1));
        sum / count.max(1) as f64
    }
}

/// Views with the measured ages, given to random nodes.
pub struct SampledGossip {
    profiles: AgeProfiles,
    rng: SmallRng,
    /// `chosen[j] == round` when node j is already in the view being built.
    chosen: Vec<u32>,
    round: u32,
}

impl SampledGossip {
    pub fn new(profiles: AgeProfiles, nodes: usize, seed: u64) -> SampledGossip {
        SampledGossip {
            profiles,
            rng: stream(seed, Stream::Views),
            chosen: vec![0; nodes],
            round: 0,
        }
    }

    pub fn profiles(&self) -> &AgeProfiles {
        &self.profiles
    }

    /// Node `me`'s view at `now`: one measured table's ages, each given to
    /// a different random other node, with that node's figures as they
    /// were then.
    pub fn view(&mut self, me: usize, now: Millis, nodes: &[Node], view: &mut Vec<NodeLoad>) {
        let n = nodes.len();
        if n < 2 || self.profiles.tables.is_empty() {
            return;
        }
        self.round = self.round.wrapping_add(1).max(1);
        self.chosen[me] = self.round;
        let table = self.rng.random_range(0..self.profiles.tables.len());
        // Never more entries than there are other nodes.
        let entries = self.profiles.tables[table].len().min(n - 1);
        for k in 0..entries {
            let age = self.profiles.tables[table][k];
            let other = loop {
                let j = self.rng.random_range(0..n);
                if self.chosen[j] != self.round {
                    break j;
                }
            };
            self.chosen[other] = self.round;
            let Some(then) = now.checked_sub(age) else {
                continue;
            };
            let node = &nodes[other];
            if let Some((runnable, rss)) = node.figures_at(then) {
                let report = node.report(runnable, rss);
                view.push(NodeLoad::from_report(node.id, &report, age, true));
            }
        }
    }
}
