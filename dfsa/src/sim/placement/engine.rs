//! The event loop: jobs arrive, run under processor sharing, complete; the
//! policy places them at arrival and, for the migrating policies, every
//! node calls the real [`decide`] each decision interval and carries out
//! what it proposes.

use std::collections::BTreeSet;

use omx_mfs::wire::LoadReport;
use rand::RngExt;
use rand::rngs::SmallRng;

use super::node::{Job, Node};
use super::views::{AgeProfiles, GossipModel, Message, RealGossip, SampledGossip};
use super::workload::{JobSource, JobSpec};
use super::{PlacementOutcome, PlacementSimConfig, Policy, Stream, stream};
use crate::gossip::{Millis, Rumor};
use crate::placement::stability::{may_move, migration_ms};
use crate::placement::{Candidate, Decision, NodeLoad, cost, decide};
use crate::sim::EventQueue;
use omx_mfs::NodeId;

enum Event {
    /// The source's next job arrives.
    Arrival,
    /// A migrating job lands on `node` after its freeze.
    Landing { slot: usize, node: usize },
    /// `node` runs `decide` on its jobs.
    Decision { node: usize },
    /// `node` sends its gossip message.
    GossipStep { node: usize },
    Delivery {
        to: usize,
        rumors: Vec<Rumor<LoadReport>>,
    },
}

/// Where a node's knowledge of the others comes from.
enum Info {
    /// The policy never looks at other nodes' load, or only with probes
    /// of the exact figures at arrival.
    None,
    Real(RealGossip),
    Sampled(SampledGossip),
    /// Exact, instantaneous figures of the least loaded nodes.
    Exact,
}

/// Capacity-weighted round robin (smooth weighted round robin, as nginx
/// does it): over any stretch of arrivals each node gets jobs in
/// proportion to its capacity, evenly interleaved. With equal nodes it is
/// plain round robin; plain round robin would overload the slow nodes of
/// a mixed cluster without bound.
struct WeightedRoundRobin {
    weights: Vec<f64>,
    current: Vec<f64>,
    total: f64,
}

impl WeightedRoundRobin {
    fn new(weights: Vec<f64>) -> WeightedRoundRobin {
        let total = weights.iter().sum();
        WeightedRoundRobin {
            current: vec![0.0; weights.len()],
            weights,
            total,
        }
    }

    fn next(&mut self) -> usize {
        let mut best = 0;
        for i in 0..self.weights.len() {
            self.current[i] += self.weights[i];
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= self.total;
        best
    }
}

/// A move the daemon's balancer made, which the mover counts in its
/// view of `node` until that node's gossiped figures show it.
struct Adjustment {
    node: NodeId,
    runnable: f64,
    mem: i64,
    at_ms: Millis,
}

/// The balancer's constants (`tools/src/daemon/balancer.rs`): a move
/// starts to show in load figures this long after its decision ...
const MOVE_LAG_MS: u64 = 500;
/// ... and is forgotten once less than this part of it is unseen.
const UNSEEN_FORGOTTEN: f64 = 0.05;

/// What a measured job's completion tells.
struct Finished {
    slowdown: f64,
    long: bool,
    migrations: u32,
}

struct Engine<'a> {
    config: &'a PlacementSimConfig,
    policy: Policy,
    now: Millis,
    nodes: Vec<Node>,
    /// Jobs by slot; slots are reused, and a job's slot is its pid.
    jobs: Vec<Option<Job>>,
    free_slots: Vec<usize>,
    queue: EventQueue<Event>,
    /// (when, node) of each node's next completion: kept apart from the
    /// queue so that a rescheduled completion leaves nothing stale behind.
    completions: BTreeSet<(Millis, usize)>,
    source: JobSource,
    info: Info,
    /// (key of (committed + 1) / capacity, node), for the policies with
    /// exact information; `load_keys[node]` is its current key.
    by_load: Option<BTreeSet<(u64, usize)>>,
    load_keys: Vec<u64>,
    round_robin: WeightedRoundRobin,
    /// Slots of the jobs of each home (kept for the balancer only).
    homed: Vec<Vec<usize>>,
    /// Each node's balancer's moves not yet shown by gossip.
    adjustments: Vec<Vec<Adjustment>>,
    /// Position of each node in the view being built (balancer).
    position: Vec<Option<usize>>,
    /// Random choices of the policies (probes, phases).
    rng: SmallRng,
    fastest_speed: f64,
    measure_from: Millis,
    measure_until: Millis,
    /// Measured jobs not finished yet.
    pending: usize,
    finished: Vec<Finished>,
    completed: u64,
    max_work_error: f64,
    moves: u64,
    probes: u64,
    views: u64,
    view_entries: u64,
    view_age_ms: f64,
    // Buffers reused by every decision.
    view: Vec<NodeLoad>,
    candidates: Vec<Candidate>,
    sent: Vec<Message>,
}

/// Runs `policy` on the cluster and trace of `config`.
pub fn run(config: &PlacementSimConfig, policy: Policy) -> PlacementOutcome {
    Engine::new(config, policy).run()
}

impl<'a> Engine<'a> {
    fn new(config: &'a PlacementSimConfig, policy: Policy) -> Engine<'a> {
        let n = config.cluster.len();
        assert!(n >= 1, "a cluster has nodes");
        let info = match policy {
            Policy::Omx
            | Policy::OmxProbe
            | Policy::OmxTwoChoices
            | Policy::OmxBalancer
            | Policy::LeastLoadedStart => match config.gossip {
                GossipModel::Real => Info::Real(RealGossip::new(
                    n,
                    config.gossip_window,
                    config.gossip_interval_ms,
                    config.seed,
                )),
                GossipModel::Sampled { profile_nodes } => {
                    let profiles = AgeProfiles::measure(
                        profile_nodes.max(2),
                        config.gossip_window,
                        config.gossip_interval_ms,
                        config.params.max_age_ms,
                        config.seed,
                    );
                    Info::Sampled(SampledGossip::new(profiles, n, config.seed))
                }
            },
            Policy::OmxExact | Policy::CentralMoves => Info::Exact,
            Policy::Central | Policy::PowerOfTwo | Policy::RoundRobin | Policy::Home => Info::None,
        };
        // Sampled views read the figures a node had up to max_age ago.
        let history_ms = matches!(info, Info::Sampled(_))
            .then_some(config.params.max_age_ms + config.gossip_interval_ms);
        let nodes: Vec<Node> = config
            .cluster
            .iter()
            .enumerate()
            .map(|(i, spec)| Node::new(i, spec.clone(), config.smoothing_ms, history_ms))
            .collect();
        let by_load = matches!(
            policy,
            Policy::Central | Policy::CentralMoves | Policy::OmxExact
        )
        .then(|| {
            nodes
                .iter()
                .enumerate()
                .map(|(i, node)| (load_key(node), i))
                .collect()
        });
        let load_keys = nodes.iter().map(load_key).collect();
        let source = JobSource::for_config(config);
        let fastest_speed = config
            .cluster
            .iter()
            .map(|s| s.speed_factor())
            .fold(0.0, f64::max);
        let mut engine = Engine {
            config,
            policy,
            now: 0,
            round_robin: WeightedRoundRobin::new(nodes.iter().map(|n| n.spec.capacity()).collect()),
            homed: vec![Vec::new(); n],
            adjustments: (0..n).map(|_| Vec::new()).collect(),
            position: vec![None; n],
            nodes,
            jobs: Vec::new(),
            free_slots: Vec::new(),
            queue: EventQueue::new(),
            completions: BTreeSet::new(),
            info,
            by_load,
            load_keys,
            rng: stream(config.seed, Stream::Policy),
            fastest_speed,
            measure_from: config.warmup_ms,
            measure_until: config.warmup_ms + config.measure_ms,
            pending: 0,
            finished: Vec::new(),
            completed: 0,
            max_work_error: 0.0,
            moves: 0,
            probes: 0,
            views: 0,
            view_entries: 0,
            view_age_ms: 0.0,
            view: Vec::new(),
            candidates: Vec::new(),
            sent: Vec::new(),
            source,
        };
        engine
            .queue
            .schedule(engine.source.next_arrival_ms(), Event::Arrival);
        // Each node on its own phase, as independent daemons are.
        for node in 0..n {
            if policy.migrates() {
                let phase = engine
                    .rng
                    .random_range(0..config.decision_interval_ms.max(1));
                engine.queue.schedule(phase, Event::Decision { node });
            }
            if matches!(engine.info, Info::Real(_)) {
                let phase = engine.rng.random_range(0..config.gossip_interval_ms.max(1));
                engine.queue.schedule(phase, Event::GossipStep { node });
            }
        }
        engine
    }

    fn run(mut self) -> PlacementOutcome {
        let give_up_at = self.measure_until + self.config.drain_limit_ms;
        loop {
            if self.now >= self.measure_until && self.pending == 0 || self.now >= give_up_at {
                break;
            }
            let next_completion = self.completions.first().copied();
            // Queue events strictly before the next completion go first.
            let limit = next_completion.map_or(Millis::MAX, |(at, _)| at.saturating_sub(1));
            if let Some((at, event)) = self.queue.pop_until(limit) {
                self.now = at;
                self.handle(event);
            } else if let Some((at, node)) = next_completion {
                self.completions.remove(&(at, node));
                self.nodes[node].next_completion = None;
                self.now = at;
                self.complete(node);
            } else {
                break;
            }
        }
        self.outcome()
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Arrival => self.arrive(),
            Event::Landing { slot, node } => self.land(slot, node),
            Event::Decision { node } if self.policy == Policy::OmxBalancer => {
                self.balancer_round(node)
            }
            Event::Decision { node } => self.decide_at(node),
            Event::GossipStep { node } => self.gossip_step(node),
            Event::Delivery { to, rumors } => {
                if let Info::Real(gossip) = &mut self.info {
                    gossip.receive(to, self.now, rumors);
                }
            }
        }
    }

    fn arrive(&mut self) {
        let spec = self.source.next_job();
        let next = self.source.next_arrival_ms();
        let arrivals_end = self
            .config
            .arrivals_after_ms
            .map_or(Millis::MAX, |after| self.measure_until + after);
        if next < arrivals_end {
            self.queue.schedule(next, Event::Arrival);
        }
        let measured = (self.measure_from..self.measure_until).contains(&spec.arrival_ms);
        let target = self.place(&spec);
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.jobs.push(None);
                self.jobs.len() - 1
            }
        };
        let home = spec.home;
        let mut job = Job::new(spec, measured);
        job.site = Some(target);
        self.jobs[slot] = Some(job);
        if measured {
            self.pending += 1;
        }
        if self.policy == Policy::OmxBalancer {
            self.homed[home].push(slot);
        }
        let now = self.now;
        let node = &mut self.nodes[target];
        node.advance(now, &mut self.jobs);
        node.add(now, slot, &self.jobs);
        self.committed_changed(target);
        self.reschedule(target);
    }

    /// Where the policy starts a job.
    fn place(&mut self, job: &JobSpec) -> usize {
        let n = self.nodes.len();
        match self.policy {
            Policy::Omx
            | Policy::OmxExact
            | Policy::OmxProbe
            | Policy::OmxTwoChoices
            | Policy::OmxBalancer
            | Policy::Home => job.home,
            Policy::Central | Policy::CentralMoves => {
                let by_load = self.by_load.as_ref().expect("kept for central");
                by_load.first().expect("a cluster has nodes").1
            }
            Policy::PowerOfTwo => {
                if n < 2 {
                    return 0;
                }
                let a = self.rng.random_range(0..n);
                let mut b = self.rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let after = |node: &Node| (node.committed() as f64 + 1.0) / node.spec.capacity();
                if after(&self.nodes[b]) < after(&self.nodes[a]) {
                    b
                } else {
                    a
                }
            }
            Policy::RoundRobin => self.round_robin.next(),
            Policy::LeastLoadedStart => {
                let mut view = std::mem::take(&mut self.view);
                view.clear();
                self.gossip_view(job.home, &mut view);
                let home = &self.nodes[job.home];
                let mut best = (
                    (home.smoothed(self.now) + 1.0) / home.spec.capacity(),
                    job.home,
                );
                for other in &view {
                    let after = (other.runnable + 1.0) / other.capacity();
                    let index = usize::from(other.node.get()) - 1;
                    // Ties stay home, else go to the lowest id.
                    let tie_wins = after == best.0 && best.1 != job.home && index < best.1;
                    if after < best.0 || tie_wins {
                        best = (after, index);
                    }
                }
                self.view = view;
                best.1
            }
        }
    }

    fn land(&mut self, slot: usize, to: usize) {
        let now = self.now;
        let job = self.jobs[slot].as_mut().expect("a migrating job");
        job.arrived_at = Some(now);
        job.sampled_at = now;
        job.sampled_cpu_ms = job.cpu_ms;
        job.site = Some(to);
        let node = &mut self.nodes[to];
        node.incoming -= 1;
        node.advance(now, &mut self.jobs);
        node.add(now, slot, &self.jobs);
        self.reschedule(to);
    }

    fn complete(&mut self, at: usize) {
        let now = self.now;
        self.nodes[at].advance(now, &mut self.jobs);
        let done: Vec<usize> = self.nodes[at]
            .running
            .iter()
            .copied()
            .filter(|s| self.jobs[*s].as_ref().expect("a live job").is_finished())
            .collect();
        for slot in done {
            self.nodes[at].remove(now, slot, &self.jobs);
            let job = self.jobs[slot].take().expect("a live job");
            self.free_slots.push(slot);
            if self.policy == Policy::OmxBalancer {
                let homed = &mut self.homed[job.spec.home];
                let at = homed.iter().position(|s| *s == slot).expect("homed");
                homed.swap_remove(at);
            }
            self.record(job);
        }
        self.committed_changed(at);
        self.reschedule(at);
    }

    fn record(&mut self, job: Job) {
        self.completed += 1;
        let error = (job.done - job.spec.work).abs() / job.spec.work.max(1e-9);
        self.max_work_error = self.max_work_error.max(error);
        if job.measured {
            self.pending -= 1;
            self.finished.push(self.finished_figures(&job));
        }
    }

    fn finished_figures(&self, job: &Job) -> Finished {
        // The job alone on one CPU of the fastest node: the least time it
        // could take anywhere.
        let ideal_ms = job.spec.work / self.fastest_speed;
        let response_ms = self.now.saturating_sub(job.spec.arrival_ms) as f64;
        Finished {
            slowdown: response_ms / ideal_ms,
            long: job.spec.work >= self.config.long_job_s * 1000.0,
            migrations: job.migrations,
        }
    }

    /// `at`'s periodic decision: measure its jobs' recent CPU shares, ask
    /// `decide`, carry out the move.
    fn decide_at(&mut self, at: usize) {
        let now = self.now;
        self.queue.schedule(
            now + self.config.decision_interval_ms.max(1),
            Event::Decision { node: at },
        );
        if self.nodes[at].running.is_empty() {
            return;
        }
        self.nodes[at].advance(now, &mut self.jobs);
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        let current_share = self.nodes[at].share();
        for &slot in &self.nodes[at].running {
            let job = self.jobs[slot].as_mut().expect("a live job");
            // What it got since its node last looked (or since it came).
            let cpu_share = if now > job.sampled_at {
                (job.cpu_ms - job.sampled_cpu_ms) / (now - job.sampled_at) as f64
            } else {
                current_share
            };
            job.sampled_at = now;
            job.sampled_cpu_ms = job.cpu_ms;
            candidates.push(Candidate {
                pid: slot as u32,
                cpu_share: cpu_share.clamp(0.0, 1.0),
                rss: job.spec.rss,
                io_by_node: Vec::new(),
                movable: true,
                arrived_at_ms: job.arrived_at,
                home: self.nodes[job.spec.home].id,
            });
        }
        if !candidates
            .iter()
            .any(|c| may_move(c, now, &self.config.params))
        {
            // decide() would answer None: spare building the view.
            self.candidates = candidates;
            return;
        }
        let node = &self.nodes[at];
        let me = match self.info {
            // The daemon knows itself by its own smoothed figures.
            Info::Real(_) | Info::Sampled(_) => node.load(node.smoothed(now), 0),
            _ => node.load(node.committed() as f64, 0),
        };
        let mut view = std::mem::take(&mut self.view);
        view.clear();
        match self.info {
            Info::Exact => self.exact_view(at, &mut view),
            _ => self.gossip_view(at, &mut view),
        }
        if self.policy == Policy::OmxTwoChoices {
            // Two entries drawn without replacement go to the front.
            for k in 0..view.len().min(2) {
                let pick = self.rng.random_range(k..view.len());
                view.swap(k, pick);
            }
            view.truncate(2);
        }
        // decide() prices with a base of the number of nodes it is told of,
        // clamped to 16, and a daemon tells it of its whole table: stale
        // stand-ins (which it ignores) give it the same count.
        let table = (self.nodes.len() - 1).min(BASE_TABLE_ENTRIES);
        while view.len() < table {
            view.push(NodeLoad {
                age_ms: u64::MAX,
                accepts_guests: false,
                ..me.clone()
            });
        }
        let mut me = me;
        let mut moves = 0;
        loop {
            let mut decision = decide(&me, &view, &candidates, now, &self.config.params);
            if self.policy == Policy::OmxProbe {
                decision = self.confirm(&me, &mut view, &candidates, decision);
            }
            let Some(decision) = decision else {
                break;
            };
            let to = usize::from(decision.to.get()) - 1;
            self.migrate(decision.pid as usize, at, to);
            moves += 1;
            if moves >= self.config.moves_per_decision {
                break;
            }
            // Another move in the same round: this node's view of itself
            // and of the target, as the move leaves them.
            let moved = take_candidate(&mut candidates, decision.pid);
            let demand = cost::demand(&moved, &me);
            me.runnable = (me.runnable - demand).max(0.0);
            me.mem_free += moved.rss;
            if let Some(target) = view.iter_mut().find(|v| v.node == decision.to) {
                target.runnable += demand;
                target.mem_free = target.mem_free.saturating_sub(moved.rss);
            }
        }
        self.view = view;
        self.candidates = candidates;
    }

    /// omx as the daemon's balancer runs it: home `home` decides for its
    /// own jobs at each site where they run, `here` being the site as its
    /// table shows it (itself exactly), up to `moves_per_decision` moves
    /// per site, counting its recent moves into the figures until gossip
    /// shows them. Its own figures and the table's, then, not the sites'.
    fn balancer_round(&mut self, home: usize) {
        let now = self.now;
        self.queue.schedule(
            now + self.config.decision_interval_ms.max(1),
            Event::Decision { node: home },
        );
        if self.homed[home].is_empty() {
            return;
        }
        let mut loads = std::mem::take(&mut self.view);
        loads.clear();
        let own = &self.nodes[home];
        loads.push(own.load(own.smoothed(now), 0));
        match &mut self.info {
            // Every entry the table holds: a site's may be old.
            Info::Real(gossip) => gossip.view(home, now, Millis::MAX, &mut loads),
            Info::Sampled(sampled) => sampled.view(home, now, &self.nodes, &mut loads),
            Info::Exact | Info::None => {}
        }
        self.views += 1;
        for (at, load) in loads.iter().enumerate() {
            self.position[usize::from(load.node.get()) - 1] = Some(at);
            if at > 0 && load.age_ms <= self.config.params.max_age_ms {
                self.view_entries += 1;
                self.view_age_ms += load.age_ms as f64;
            }
        }
        let position =
            |node: NodeId, position: &[Option<usize>]| position[usize::from(node.get()) - 1];
        // Moves the figures do not show yet: smoothed figures show a
        // move gradually, from MOVE_LAG_MS after it, as gossip brings them.
        let tau_ms = self.config.smoothing_ms.max(1) as f64;
        let mut adjustments = std::mem::take(&mut self.adjustments[home]);
        adjustments.retain(|a| {
            let entry = position(a.node, &self.position).map(|at| &mut loads[at]);
            let age = entry.as_ref().map_or(0, |l| l.age_ms);
            let measured_at = now.saturating_sub(age);
            let shown_for = measured_at.saturating_sub(a.at_ms + MOVE_LAG_MS) as f64;
            let unseen = (-shown_for / tau_ms).exp();
            if unseen < UNSEEN_FORGOTTEN {
                return false;
            }
            if let Some(l) = entry {
                shift(l, a.runnable * unseen, (a.mem as f64 * unseen) as i64);
            }
            true
        });
        let mut jobs: Vec<(usize, usize)> = self.homed[home]
            .iter()
            .filter_map(|slot| Some((self.jobs[*slot].as_ref()?.site?, *slot)))
            .collect();
        jobs.sort_unstable();
        let mut candidates = std::mem::take(&mut self.candidates);
        for site_jobs in jobs.chunk_by(|a, b| a.0 == b.0) {
            let site = site_jobs[0].0;
            let Some(here_at) = position(self.nodes[site].id, &self.position) else {
                continue;
            };
            let here = loads[here_at].clone();
            // decide()'s demand estimate is share x contention: a job that
            // is always runnable wants a whole CPU, as the daemon measures.
            let contention = cost::ratio(here.runnable, here.cpus).max(1.0);
            candidates.clear();
            for &(_, slot) in site_jobs {
                let job = self.jobs[slot].as_ref().expect("a live job");
                // The daemon judges a process from its second sample on.
                if now < job.spec.arrival_ms + self.config.decision_interval_ms {
                    continue;
                }
                candidates.push(Candidate {
                    pid: slot as u32,
                    cpu_share: 1.0 / contention,
                    rss: job.spec.rss,
                    io_by_node: Vec::new(),
                    movable: true,
                    arrived_at_ms: job.arrived_at,
                    home: self.nodes[home].id,
                });
            }
            for _ in 0..self.config.moves_per_decision {
                let here = loads[here_at].clone();
                // decide() leaves `here` itself out of the targets; the
                // whole table can go as it is once its count is past the
                // cost base's clamp (16), else the count must be exact.
                let decision = if loads.len() > BASE_TABLE_ENTRIES + 1 {
                    decide(&here, &loads, &candidates, now, &self.config.params)
                } else {
                    let others: Vec<NodeLoad> = loads
                        .iter()
                        .filter(|l| l.node != here.node)
                        .cloned()
                        .collect();
                    decide(&here, &others, &candidates, now, &self.config.params)
                };
                let Some(decision) = decision else {
                    break;
                };
                let moved = take_candidate(&mut candidates, decision.pid);
                let to = usize::from(decision.to.get()) - 1;
                self.migrate(moved.pid as usize, site, to);
                let demand = cost::demand(&moved, &here);
                let rss = moved.rss as i64;
                for (node, runnable, mem) in
                    [(here.node, -demand, -rss), (decision.to, demand, rss)]
                {
                    if let Some(at) = position(node, &self.position) {
                        shift(&mut loads[at], runnable, mem);
                    }
                    adjustments.push(Adjustment {
                        node,
                        runnable,
                        mem,
                        at_ms: now,
                    });
                }
            }
        }
        for load in &loads {
            self.position[usize::from(load.node.get()) - 1] = None;
        }
        self.adjustments[home] = adjustments;
        self.candidates = candidates;
        self.view = loads;
    }

    /// omx+probe: asks the proposed target for its figures now (what runs
    /// there and what is on its way), puts the answer in place of the
    /// stale entry and calls `decide` again: a move to a node whose
    /// answer was just heard goes ahead; a move to another node means
    /// probing that one, up to `PROBES` probes per decision.
    fn confirm(
        &mut self,
        me: &NodeLoad,
        view: &mut [NodeLoad],
        candidates: &[Candidate],
        mut decision: Option<Decision>,
    ) -> Option<Decision> {
        const PROBES: usize = 3;
        let mut probed = Vec::with_capacity(PROBES);
        while let Some(proposed) = decision {
            if probed.contains(&proposed.to) {
                return Some(proposed);
            }
            if probed.len() == PROBES {
                return None;
            }
            let target = &self.nodes[usize::from(proposed.to.get()) - 1];
            let answer = target.load(target.committed() as f64, 0);
            let entry = view
                .iter_mut()
                .find(|v| v.node == proposed.to)
                .expect("decide proposes nodes of the view");
            *entry = answer;
            probed.push(proposed.to);
            self.probes += 1;
            decision = decide(me, view, candidates, self.now, &self.config.params);
        }
        None
    }

    /// Freezes `slot` on `from` (advanced to now) and lands it on `to`
    /// after the migration's freeze time.
    fn migrate(&mut self, slot: usize, from: usize, to: usize) {
        let now = self.now;
        self.nodes[from].remove(now, slot, &self.jobs);
        self.nodes[to].incoming += 1;
        let job = self.jobs[slot].as_mut().expect("a live job");
        job.migrations += 1;
        job.site = None;
        let freeze = migration_ms(job.spec.rss, &self.config.params).round() as Millis;
        self.moves += 1;
        self.committed_changed(from);
        self.committed_changed(to);
        self.reschedule(from);
        self.queue
            .schedule(now + freeze, Event::Landing { slot, node: to });
    }

    fn gossip_step(&mut self, at: usize) {
        let now = self.now;
        self.queue.schedule(
            now + self.config.gossip_interval_ms.max(1),
            Event::GossipStep { node: at },
        );
        let Info::Real(gossip) = &mut self.info else {
            return;
        };
        let node = &self.nodes[at];
        let report = node.report(node.smoothed(now), node.rss);
        gossip.step(at, now, report, &mut self.sent);
        for (to, rumors) in self.sent.drain(..) {
            self.queue.schedule(
                now + self.config.gossip_latency_ms,
                Event::Delivery { to, rumors },
            );
        }
    }

    /// What gossip tells `at` of the others: the entries `decide` would
    /// use (at most `max_age_ms` old).
    fn gossip_view(&mut self, at: usize, view: &mut Vec<NodeLoad>) {
        match &mut self.info {
            Info::Real(gossip) => gossip.view(at, self.now, self.config.params.max_age_ms, view),
            Info::Sampled(sampled) => sampled.view(at, self.now, &self.nodes, view),
            Info::Exact | Info::None => {}
        }
        self.views += 1;
        self.view_entries += view.len() as u64;
        self.view_age_ms += view.iter().map(|v| v.age_ms as f64).sum::<f64>();
    }

    /// The exact figures of the least loaded other nodes (all of them in a
    /// small cluster). The cheapest target of any move is among the least
    /// loaded per reference CPU, so this is what a view of every node
    /// would offer `decide`, at a fraction of the work.
    fn exact_view(&mut self, at: usize, view: &mut Vec<NodeLoad>) {
        let by_load = self.by_load.as_ref().expect("kept for exact views");
        for &(_, other) in by_load {
            if other == at {
                continue;
            }
            let node = &self.nodes[other];
            view.push(node.load(node.committed() as f64, 0));
            if view.len() >= self.config.exact_view_nodes {
                break;
            }
        }
        self.views += 1;
        self.view_entries += view.len() as u64;
    }

    /// Keeps `by_load` in step with `node`'s committed count.
    fn committed_changed(&mut self, node: usize) {
        let Some(by_load) = self.by_load.as_mut() else {
            return;
        };
        let key = load_key(&self.nodes[node]);
        if key != self.load_keys[node] {
            by_load.remove(&(self.load_keys[node], node));
            by_load.insert((key, node));
            self.load_keys[node] = key;
        }
    }

    /// Replaces `node`'s completion event after a change (node advanced
    /// to now).
    fn reschedule(&mut self, node: usize) {
        if let Some(at) = self.nodes[node].next_completion.take() {
            self.completions.remove(&(at, node));
        }
        if let Some(at) = self.nodes[node].completion_time(self.now, &self.jobs) {
            self.completions.insert((at, node));
            self.nodes[node].next_completion = Some(at);
        }
    }

    fn outcome(mut self) -> PlacementOutcome {
        // Measured jobs still running when the run gave up count as if
        // they ended now: their slowdown is a lower bound.
        let unfinished: Vec<Finished> = self
            .jobs
            .iter()
            .flatten()
            .filter(|j| j.measured)
            .map(|j| self.finished_figures(j))
            .collect();
        let unfinished_count = unfinished.len();
        self.finished.extend(unfinished);
        let mut slowdowns: Vec<f64> = self.finished.iter().map(|f| f.slowdown).collect();
        slowdowns.sort_by(f64::total_cmp);
        let jobs = slowdowns.len();
        let mean = |values: &mut dyn Iterator<Item = f64>| {
            let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
            sum / count.max(1) as f64
        };
        let long: Vec<f64> = self
            .finished
            .iter()
            .filter(|f| f.long)
            .map(|f| f.slowdown)
            .collect();
        let migrations: u64 = self.finished.iter().map(|f| u64::from(f.migrations)).sum();
        PlacementOutcome {
            policy: self.policy,
            jobs,
            mean_slowdown: mean(&mut slowdowns.iter().copied()),
            p99_slowdown: percentile(&slowdowns, 0.99),
            long_jobs: long.len(),
            mean_slowdown_long: mean(&mut long.iter().copied()),
            migrations_per_job: migrations as f64 / jobs.max(1) as f64,
            unfinished: unfinished_count,
            end_ms: self.now,
            jobs_completed: self.completed,
            migrations: self.moves,
            probes: self.probes,
            max_work_error: self.max_work_error,
            view_entries: self.view_entries as f64 / self.views.max(1) as f64,
            view_age_ms: self.view_age_ms / self.view_entries.max(1) as f64,
        }
    }
}

/// Adds `runnable` and `mem` bytes used to `load` (the balancer's
/// `apply`).
fn shift(load: &mut NodeLoad, runnable: f64, mem: i64) {
    load.runnable = (load.runnable + runnable).max(0.0);
    load.mem_free = (load.mem_free as i64 - mem).clamp(0, load.mem_total as i64) as u64;
}

/// Other nodes known beyond which `decide`'s cost base no longer grows
/// (`placement::cost`: the base is the number of nodes, clamped to 16).
const BASE_TABLE_ENTRIES: usize = 15;

/// Orders nodes by their normalised load once one more job is added.
/// Positive floats order as their bits.
fn load_key(node: &Node) -> u64 {
    ((node.committed() as f64 + 1.0) / node.spec.capacity()).to_bits()
}

/// The `q` quantile of sorted `values` (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Removes the candidate `decide` chose from `candidates`.
fn take_candidate(candidates: &mut Vec<Candidate>, pid: u32) -> Candidate {
    let at = candidates
        .iter()
        .position(|c| c.pid == pid)
        .expect("decide proposes a candidate");
    candidates.swap_remove(at)
}
