//! The gossip protocol at cluster scale: information age and message rate.

use std::collections::HashSet;
use std::sync::Arc;

use omx_mfs::NodeId;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::EventQueue;
use crate::gossip::{
    GossipNode, GossipParams, GossipTransport, Membership, Millis, NodeStatus, Rumor, closed_form,
    default_down_after,
};

/// One simulation run.
#[derive(Clone, Debug)]
pub struct GossipSimConfig {
    pub nodes: usize,
    pub window: usize,
    pub interval: Millis,
    /// Network delay of every message.
    pub latency: Millis,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Steps before measuring, so that ages reach their steady state.
    pub warmup_steps: u64,
    /// Steps over which ages are sampled.
    pub measure_steps: u64,
    /// How many times during the measurement all tables are scanned.
    pub samples: u64,
    pub seed: u64,
}

impl GossipSimConfig {
    /// Settings long enough to reach steady state for `nodes` and `window`:
    /// warm up for twice the expected maximum age.
    pub fn steady_state(nodes: usize, window: usize, seed: u64) -> GossipSimConfig {
        let max = closed_form::expected_max_age(nodes, window).unwrap_or(10.0);
        GossipSimConfig {
            nodes,
            window,
            interval: 1000,
            latency: 1,
            loss: 0.0,
            warmup_steps: (2.0 * max).ceil().max(50.0) as u64,
            measure_steps: (max.ceil() as u64).clamp(20, 2000),
            samples: 8,
            seed,
        }
    }
}

/// What a run measured, ages in steps.
#[derive(Clone, Debug, PartialEq)]
pub struct GossipSimReport {
    pub nodes: usize,
    pub window: usize,
    /// Mean age of all entries of all nodes, over the samples.
    pub average_age: f64,
    /// Mean over nodes and samples of a node's oldest entry.
    pub mean_max_age: f64,
    /// The oldest entry seen anywhere.
    pub worst_age: f64,
    pub messages_per_node_per_second: f64,
    pub entries_per_message: f64,
    pub formula_average_age: Option<f64>,
    pub formula_max_age: Option<f64>,
}

/// A message in flight.
struct Delivery {
    from: NodeId,
    to: usize,
    rumors: Vec<Rumor<()>>,
}

/// The in-memory network: queues what nodes send.
struct SimNetwork<'a> {
    now: Millis,
    latency: Millis,
    loss: f64,
    rng: &'a mut SmallRng,
    members: &'a Membership,
    in_flight: &'a mut EventQueue<Delivery>,
    sent: u64,
    entries: u64,
}

impl GossipTransport<()> for SimNetwork<'_> {
    fn send(&mut self, from: NodeId, to: NodeId, rumors: Vec<Rumor<()>>) {
        self.sent += 1;
        self.entries += rumors.len() as u64;
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            return;
        }
        let to = self.members.slot(to).expect("targets are members");
        self.in_flight
            .schedule(self.now + self.latency, Delivery { from, to, rumors });
    }
}

/// A cluster of simulated nodes running the daemon's gossip code.
pub struct SimCluster {
    pub nodes: Vec<GossipNode<()>>,
    members: Arc<Membership>,
    /// Each node's offset within a step, so nodes do not send in lockstep.
    phase: Vec<Millis>,
    /// Nodes in order of their phase.
    tick_order: Vec<usize>,
    crashed: HashSet<usize>,
    /// Global time at which each node's local clock read 0: a restarted
    /// node starts a fresh clock, as a restarted daemon does.
    clock_origin: Vec<Millis>,
    in_flight: EventQueue<Delivery>,
    /// Chooses gossip targets (the nodes' own randomness).
    choice_rng: SmallRng,
    /// Decides which messages the network loses.
    loss_rng: SmallRng,
    interval: Millis,
    latency: Millis,
    loss: f64,
    now: Millis,
    pub messages_sent: u64,
    pub entries_sent: u64,
}

impl SimCluster {
    /// `n` nodes (ids 1..=n) that all start out knowing everyone at time 0.
    pub fn new(config: &GossipSimConfig) -> SimCluster {
        assert!(config.nodes >= 2 && config.nodes <= NodeId::MAX as usize);
        let ids: Vec<NodeId> = (1..=config.nodes as u16)
            .map(|n| NodeId::new(n).expect("n >= 1"))
            .collect();
        let members = Arc::new(Membership::new(ids.clone()));
        let params = GossipParams {
            window: config.window,
            down_after: default_down_after(config.nodes, config.window, config.interval),
        };
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let nodes = ids
            .iter()
            .map(|me| {
                let mut node = GossipNode::new(*me, members.clone(), params);
                let everyone = ids
                    .iter()
                    .map(|n| Rumor {
                        node: *n,
                        age: 0,
                        payload: (),
                    })
                    .collect();
                node.receive(0, everyone);
                node
            })
            .collect();
        let phase: Vec<Millis> = (0..config.nodes)
            .map(|_| rng.random_range(0..config.interval))
            .collect();
        let mut tick_order: Vec<usize> = (0..config.nodes).collect();
        tick_order.sort_by_key(|i| phase[*i]);
        SimCluster {
            nodes,
            members,
            phase,
            tick_order,
            crashed: HashSet::new(),
            clock_origin: vec![0; config.nodes],
            in_flight: EventQueue::new(),
            loss_rng: SmallRng::seed_from_u64(config.seed ^ 0x5eed),
            choice_rng: rng,
            interval: config.interval,
            latency: config.latency,
            loss: config.loss,
            now: 0,
            messages_sent: 0,
            entries_sent: 0,
        }
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    /// Stops node `id`: it neither sends nor receives from now on.
    pub fn crash(&mut self, id: NodeId) {
        self.crashed
            .insert(self.members.slot(id).expect("a member"));
    }

    /// Restarts a crashed node with an empty table, as a fresh daemon,
    /// which announces itself.
    pub fn restart(&mut self, id: NodeId) {
        let slot = self.members.slot(id).expect("a member");
        self.crashed.remove(&slot);
        let params = self.nodes[slot].params();
        self.nodes[slot] = GossipNode::new(id, self.members.clone(), params);
        self.clock_origin[slot] = self.now;
        self.sending(slot, self.now, |node, network, rng| {
            node.announce(0, (), rng, network);
        });
    }

    /// Runs `send` on node `slot` (with the nodes' randomness) at global
    /// time `at`, through the network, and counts what it sent.
    fn sending(
        &mut self,
        slot: usize,
        at: Millis,
        send: impl FnOnce(&mut GossipNode<()>, &mut SimNetwork<'_>, &mut SmallRng),
    ) {
        let mut network = SimNetwork {
            now: at,
            latency: self.latency,
            loss: self.loss,
            rng: &mut self.loss_rng,
            members: &self.members,
            in_flight: &mut self.in_flight,
            sent: 0,
            entries: 0,
        };
        send(&mut self.nodes[slot], &mut network, &mut self.choice_rng);
        self.messages_sent += network.sent;
        self.entries_sent += network.entries;
    }

    /// Runs one step: every live node ticks once, at its phase.
    pub fn run_step(&mut self) {
        let step_start = self.now - self.now % self.interval;
        for index in 0..self.tick_order.len() {
            let node = self.tick_order[index];
            let at = step_start + self.phase[node];
            self.deliver_until(at);
            self.now = at;
            if self.crashed.contains(&node) {
                continue;
            }
            let local = at - self.clock_origin[node];
            self.sending(node, at, |node, network, rng| {
                node.step(local, (), rng, network);
            });
        }
        self.now = step_start + self.interval;
        self.deliver_until(self.now - 1);
    }

    fn deliver_until(&mut self, until: Millis) {
        while let Some((at, delivery)) = self.in_flight.pop_until(until) {
            if self.crashed.contains(&delivery.to) {
                continue;
            }
            let local = at - self.clock_origin[delivery.to];
            let Delivery { from, to, rumors } = delivery;
            self.sending(to, at, |node, network, _| {
                node.receive_and_welcome(local, from, rumors, (), network);
            });
        }
    }

    /// How many live nodes see `id` with `status`.
    pub fn count_seeing(&self, id: NodeId, status: NodeStatus) -> usize {
        (0..self.nodes.len())
            .filter(|i| !self.crashed.contains(i) && self.members.ids()[*i] != id)
            .filter(|i| self.nodes[*i].status(self.now - self.clock_origin[*i], id) == Some(status))
            .count()
    }
}

/// Runs the gossip protocol and measures the age of information.
pub fn run(config: &GossipSimConfig) -> GossipSimReport {
    let mut cluster = SimCluster::new(config);
    for _ in 0..config.warmup_steps {
        cluster.run_step();
    }
    let (messages_before, entries_before) = (cluster.messages_sent, cluster.entries_sent);
    let interval = config.interval as f64;
    let sample_every = (config.measure_steps / config.samples.max(1)).max(1);
    let (mut age_sum, mut age_count) = (0.0f64, 0u64);
    let (mut max_sum, mut max_count) = (0.0f64, 0u64);
    let mut worst: Millis = 0;
    for step in 1..=config.measure_steps {
        cluster.run_step();
        if step % sample_every != 0 {
            continue;
        }
        let now = cluster.now();
        for node in &cluster.nodes {
            let (mut sum, mut count, mut max) = (0u64, 0u64, 0u64);
            for age in node.ages(now) {
                sum += age;
                count += 1;
                max = max.max(age);
            }
            age_sum += sum as f64;
            age_count += count;
            max_sum += max as f64;
            max_count += 1;
            worst = worst.max(max);
        }
    }
    let messages = (cluster.messages_sent - messages_before) as f64;
    let seconds = config.measure_steps as f64 * interval / 1000.0;
    GossipSimReport {
        nodes: config.nodes,
        window: config.window,
        average_age: age_sum / age_count.max(1) as f64 / interval,
        mean_max_age: max_sum / max_count.max(1) as f64 / interval,
        worst_age: worst as f64 / interval,
        messages_per_node_per_second: messages / config.nodes as f64 / seconds,
        entries_per_message: (cluster.entries_sent - entries_before) as f64 / messages.max(1.0),
        formula_average_age: closed_form::expected_average_age(config.nodes, config.window),
        formula_max_age: closed_form::expected_max_age(config.nodes, config.window),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hundred_nodes_match_the_closed_form() {
        let report = run(&GossipSimConfig::steady_state(100, 16, 42));
        let formula = report.formula_average_age.unwrap();
        // The forms count whole steps; the simulation measures continuous
        // ages between steps, half a step older on average.
        let ratio = report.average_age / formula;
        assert!(
            (0.85..1.25).contains(&ratio),
            "avg {} vs {formula}",
            report.average_age
        );
        let max_ratio = report.mean_max_age / report.formula_max_age.unwrap();
        assert!(
            (0.6..1.4).contains(&max_ratio),
            "max {} vs {:?}",
            report.mean_max_age,
            report.formula_max_age
        );
        assert!((report.messages_per_node_per_second - 1.0).abs() < 1e-9);
        assert_eq!(report.entries_per_message, 17.0);
    }

    #[test]
    fn a_crashed_node_is_marked_down_everywhere_and_a_restarted_one_up() {
        let config = GossipSimConfig::steady_state(50, 16, 7);
        let mut cluster = SimCluster::new(&config);
        for _ in 0..30 {
            cluster.run_step();
        }
        let victim = NodeId::new(17).unwrap();
        assert_eq!(cluster.count_seeing(victim, NodeStatus::Up), 49);
        cluster.crash(victim);
        let timeout_steps = default_down_after(50, 16, 1000) / 1000;
        for _ in 0..timeout_steps + 2 {
            cluster.run_step();
        }
        assert_eq!(cluster.count_seeing(victim, NodeStatus::Down), 49);
        cluster.restart(victim);
        // Its announcement and the answers: one step, not a spread by
        // random steps.
        cluster.run_step();
        let slot = cluster.members.slot(victim).unwrap();
        let (now, origin) = (cluster.now, cluster.clock_origin[slot]);
        let up_for_it = (1..=50u16)
            .map(|n| NodeId::new(n).unwrap())
            .filter(|n| *n != victim)
            .filter(|n| cluster.nodes[slot].status(now - origin, *n) == Some(NodeStatus::Up))
            .count();
        assert_eq!(up_for_it, 49, "the answers tell it of everyone");
        let seeing_it = cluster.count_seeing(victim, NodeStatus::Up);
        assert!(
            seeing_it >= crate::gossip::ANNOUNCE_TO,
            "{seeing_it} see it up"
        );
        for _ in 0..20 {
            cluster.run_step();
        }
        assert_eq!(cluster.count_seeing(victim, NodeStatus::Up), 49);
    }

    #[test]
    fn a_restarted_node_does_not_bring_dead_nodes_back() {
        // A small cluster: every message carries every entry, dead ones too.
        let config = GossipSimConfig::steady_state(10, 16, 11);
        let mut cluster = SimCluster::new(&config);
        for _ in 0..20 {
            cluster.run_step();
        }
        let dead = NodeId::new(5).unwrap();
        cluster.crash(dead);
        let timeout_steps = default_down_after(10, 16, 1000) / 1000;
        for _ in 0..timeout_steps * 3 {
            cluster.run_step();
        }
        assert_eq!(cluster.count_seeing(dead, NodeStatus::Down), 9);
        // Node 9 restarts with a fresh clock and learns of node 5 from others.
        let restarted = NodeId::new(9).unwrap();
        cluster.crash(restarted);
        cluster.restart(restarted);
        for _ in 0..30 {
            cluster.run_step();
            assert_eq!(cluster.count_seeing(dead, NodeStatus::Up), 0);
        }
        assert_eq!(cluster.count_seeing(dead, NodeStatus::Down), 9);
    }

    #[test]
    fn lost_messages_make_information_older() {
        let mut config = GossipSimConfig::steady_state(60, 8, 3);
        let clean = run(&config);
        config.loss = 0.5;
        let lossy = run(&config);
        assert!(
            lossy.average_age > clean.average_age * 1.3,
            "{lossy:?} vs {clean:?}"
        );
    }
}
