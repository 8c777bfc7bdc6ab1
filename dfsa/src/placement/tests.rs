use super::*;
use proptest::prelude::*;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const ROUND_MS: u64 = 1_000;

fn id(n: u16) -> NodeId {
    NodeId::new(n).unwrap()
}

#[derive(Clone)]
struct SimNode {
    id: NodeId,
    cpus: f64,
    speed: u32,
    mem_total: u64,
    /// Memory used by things other than the jobs.
    mem_base: u64,
    /// Runnable processes other than the jobs (the node's own daemon).
    background: f64,
    accepts: bool,
}

fn node(n: u16, speed: u32) -> SimNode {
    SimNode {
        id: id(n),
        cpus: 1.0,
        speed,
        mem_total: 16 * GIB,
        mem_base: GIB,
        background: 0.0,
        accepts: true,
    }
}

#[derive(Clone)]
struct Job {
    pid: u32,
    at: NodeId,
    demand: f64,
    rss: u64,
    io: Vec<(NodeId, f64)>,
    movable: bool,
    arrived_at: Option<u64>,
}

fn job(pid: u32, at: u16) -> Job {
    Job {
        pid,
        at: id(at),
        demand: 1.0,
        rss: 10 * MIB,
        io: vec![],
        movable: true,
        arrived_at: None,
    }
}

/// Nodes each deciding in turn on their own jobs, with the others' loads
/// as gossip would give them (all `age_ms` old); moves apply at once.
struct Sim {
    nodes: Vec<SimNode>,
    jobs: Vec<Job>,
    params: Params,
    now: u64,
    age_ms: u64,
    moves: Vec<(u32, NodeId, NodeId, Reason)>,
}

impl Sim {
    fn new(nodes: Vec<SimNode>, jobs: Vec<Job>) -> Sim {
        Sim {
            nodes,
            jobs,
            params: Params::default(),
            now: 0,
            age_ms: 0,
            moves: vec![],
        }
    }

    fn load(&self, n: &SimNode) -> NodeLoad {
        let here = self.jobs.iter().filter(|j| j.at == n.id);
        let runnable: f64 = n.background + here.clone().map(|j| j.demand).sum::<f64>();
        let rss: u64 = here.map(|j| j.rss).sum();
        NodeLoad {
            node: n.id,
            cpus: n.cpus,
            speed: n.speed,
            runnable,
            mem_total: n.mem_total,
            mem_free: n.mem_total.saturating_sub(n.mem_base + rss),
            age_ms: 0,
            accepts_guests: n.accepts,
        }
    }

    fn candidates(&self, n: &SimNode) -> Vec<Candidate> {
        let me = self.load(n);
        let contention = (me.runnable / me.cpus).max(1.0);
        self.jobs
            .iter()
            .filter(|j| j.at == n.id)
            .map(|j| Candidate {
                pid: j.pid,
                cpu_share: j.demand / contention,
                rss: j.rss,
                io_by_node: j.io.clone(),
                movable: j.movable,
                arrived_at_ms: j.arrived_at,
                home: id(1),
            })
            .collect()
    }

    fn decide_on(&self, k: usize) -> Option<Decision> {
        let me = self.load(&self.nodes[k]);
        let others: Vec<NodeLoad> = (self.nodes.iter())
            .filter(|n| n.id != me.node)
            .map(|n| NodeLoad {
                age_ms: self.age_ms,
                ..self.load(n)
            })
            .collect();
        let cands = self.candidates(&self.nodes[k]);
        decide(&me, &others, &cands, self.now, &self.params)
    }

    /// One round; returns the number of moves.
    fn round(&mut self) -> usize {
        self.now += ROUND_MS;
        let mut moved = 0;
        for k in 0..self.nodes.len() {
            if let Some(d) = self.decide_on(k) {
                let j = self.jobs.iter_mut().find(|j| j.pid == d.pid).unwrap();
                assert!(j.movable, "moved an unmovable process");
                self.moves.push((d.pid, j.at, d.to, d.reason));
                j.at = d.to;
                j.arrived_at = Some(self.now);
                moved += 1;
            }
        }
        moved
    }

    fn counts(&self) -> Vec<usize> {
        let n = |s: &SimNode| self.jobs.iter().filter(|j| j.at == s.id).count();
        self.nodes.iter().map(n).collect()
    }

    /// Every pid's moves: never straight back where it came from, unless
    /// meanwhile another process came to where it went or left where it
    /// was (conditions changed: that is adapting, not ping-pong).
    fn assert_no_ping_pong(&self) {
        for (i, (pid, from, to, _)) in self.moves.iter().enumerate() {
            let Some(j) = self.moves[i + 1..].iter().position(|m| m.0 == *pid) else {
                continue;
            };
            let (_, from2, to2, _) = &self.moves[i + 1 + j];
            let changed = self.moves[i + 1..i + 1 + j]
                .iter()
                .any(|m| m.2 == *to || m.1 == *from);
            assert!(
                changed || !(from2 == to && to2 == from),
                "pid {pid} went {from}->{to} and back; all moves:\n{}",
                self.moves
                    .iter()
                    .map(|(p, f, t, r)| format!("{p}: {f}->{t} {r}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// Runs rounds until nothing moves for longer than the residency; panics
/// if that takes more than `max_rounds`. Returns the rounds used.
fn converge(sim: &mut Sim, max_rounds: usize) -> usize {
    let settle = (sim.params.min_residency_ms / ROUND_MS) as usize + 2;
    let mut quiet = 0;
    for r in 1..=max_rounds {
        quiet = if sim.round() == 0 { quiet + 1 } else { 0 };
        if quiet > settle {
            sim.assert_no_ping_pong();
            return r;
        }
    }
    panic!("no convergence in {max_rounds} rounds: {:?}", sim.counts());
}

fn assert_within_one(counts: &[usize], expect: &[usize]) {
    for (c, e) in counts.iter().zip(expect) {
        assert!(c.abs_diff(*e) <= 1, "{counts:?} vs {expect:?}");
    }
}

#[test]
fn two_equal_nodes_share_the_work_and_stop() {
    let jobs = (1..=5).map(|p| job(p, 1)).collect();
    let mut sim = Sim::new(vec![node(1, 10_000), node(2, 10_000)], jobs);
    converge(&mut sim, 50);
    let mut c = sim.counts();
    c.sort();
    assert_eq!(c, vec![2, 3]);
    assert_eq!(sim.moves.len(), 2, "{:?}", sim.moves);
    // And running on adds nothing.
    for _ in 0..20 {
        assert_eq!(sim.round(), 0);
    }
}

#[test]
fn two_unequal_nodes_split_by_speed() {
    let jobs = (1..=8).map(|p| job(p, 1)).collect();
    let mut sim = Sim::new(vec![node(1, 10_000), node(2, 30_000)], jobs);
    converge(&mut sim, 50);
    assert_eq!(sim.counts(), vec![2, 6]);
}

#[test]
fn four_nodes_end_proportional_to_speed() {
    let speeds = [10_000, 10_000, 20_000, 40_000];
    let nodes: Vec<SimNode> = (1..=4).map(|n| node(n, speeds[n as usize - 1])).collect();
    let jobs = (1..=8).map(|p| job(p, 1)).collect();
    let mut sim = Sim::new(nodes.clone(), jobs);
    converge(&mut sim, 100);
    assert_within_one(&sim.counts(), &[1, 1, 2, 4]);
    // Also from everything on the fastest node, and with 16 jobs.
    let jobs = (1..=16).map(|p| job(p, 4)).collect();
    let mut sim = Sim::new(nodes.clone(), jobs);
    converge(&mut sim, 100);
    assert_within_one(&sim.counts(), &[2, 2, 4, 8]);
    // Two CPUs count like double speed.
    let mut wide = nodes;
    wide[3].cpus = 2.0;
    wide[3].speed = 20_000;
    let jobs = (1..=8).map(|p| job(p, 2)).collect();
    let mut sim = Sim::new(wide, jobs);
    converge(&mut sim, 100);
    assert_within_one(&sim.counts(), &[1, 1, 2, 4]);
}

#[test]
fn the_second_of_two_jobs_leaves_for_a_node_with_a_little_background_load() {
    // The idle node's daemon shows as a few hundredths of a runnable
    // process, more than the sender's figure shows of its own (the
    // balancer counts its own node by its jobs when the load figure lags).
    let idle = SimNode {
        background: 0.04,
        ..node(2, 10_000)
    };
    let nodes = vec![node(1, 10_000), idle];
    let mut sim = Sim::new(nodes.clone(), vec![job(1, 1), job(2, 1)]);
    converge(&mut sim, 50);
    assert_eq!(sim.counts(), vec![1, 1]);
    assert_eq!(sim.moves.len(), 1, "{:?}", sim.moves);
    // But a lone job does not go to a node as idle as its own.
    let mut sim = Sim::new(nodes, vec![job(1, 1)]);
    converge(&mut sim, 50);
    assert!(sim.moves.is_empty(), "{:?}", sim.moves);
}

#[test]
fn aged_information_still_converges() {
    let nodes = (1..=4).map(|n| node(n, 10_000)).collect();
    let jobs = (1..=12).map(|p| job(p, 1)).collect();
    let mut sim = Sim::new(nodes, jobs);
    sim.age_ms = 1_500;
    converge(&mut sim, 100);
    assert_eq!(sim.counts(), vec![3, 3, 3, 3]);
}

#[test]
fn memory_pressure_ushers_the_biggest_process() {
    let mut nodes: Vec<SimNode> = (1..=3).map(|n| node(n, 10_000)).collect();
    nodes[0].mem_base = 13 * GIB; // 1 GiB of 16 left after the jobs
    nodes[1].mem_base = 12 * GIB; // 4 GiB free
    nodes[2].mem_base = 2 * GIB; // 14 GiB free
    let mut jobs = vec![job(1, 1), job(2, 1), job(3, 2), job(4, 3), job(5, 3)];
    jobs[0].rss = 500 * MIB;
    jobs[1].rss = 1500 * MIB;
    let mut sim = Sim::new(nodes, jobs);
    let d = sim.decide_on(0).expect("must usher");
    assert_eq!((d.pid, d.to), (2, id(3)), "{d}");
    assert!(matches!(d.reason, Reason::MemoryUshering { .. }));
    assert!(d.to_string().contains("ushers 1500 MiB to node 3"), "{d}");
    // Even against load balance: node 3 is the most loaded.
    converge(&mut sim, 50);
    assert_eq!(sim.jobs[1].at, id(3));
}

#[test]
fn io_bound_job_goes_to_its_files() {
    let nodes = (1..=4).map(|n| node(n, 10_000)).collect();
    // Job 1 mostly waits for 100 MB/s from node 3, which is busy.
    let mut jobs = vec![job(1, 1), job(2, 3)];
    jobs[0].io = vec![(id(3), 100e6), (id(1), 5e6)];
    jobs[0].demand = 0.3;
    let mut sim = Sim::new(nodes, jobs);
    converge(&mut sim, 50);
    assert_eq!(sim.counts(), vec![0, 0, 2, 0]);
    assert_eq!(sim.moves.len(), 1);
    let r = &sim.moves[0].3;
    assert!(matches!(r, Reason::IoLocality { .. }), "{r}");
    assert!(
        r.to_string()
            .starts_with("95% of its I/O (95.4 MiB/s) is with node 3"),
        "{r}"
    );
}

/// A reader of node 3's files on a node its file service keeps busy: the
/// CPU part of the saving is as large on node 2 as on node 3, so it is
/// its I/O that picks node 3, and the operator is told so.
#[test]
fn a_reader_on_a_busy_node_is_said_to_go_to_its_files() {
    let small = |n| SimNode {
        cpus: 0.5,
        background: 0.05,
        ..node(n, 10_000)
    };
    let mut nodes: Vec<SimNode> = (1..=3).map(small).collect();
    // The daemon serving the reader's remote reads shares node 1's CPU.
    nodes[0].background = 0.4;
    let mut jobs = vec![job(1, 1)];
    jobs[0].demand = 0.6;
    jobs[0].io = vec![(id(3), 40e6)];
    let sim = Sim::new(nodes, jobs);
    let d = sim.decide_on(0).expect("the reader must move");
    assert_eq!(d.to, id(3), "{d}");
    assert!(matches!(d.reason, Reason::IoLocality { .. }), "{d}");
}

#[test]
fn just_arrived_job_stays_until_residency() {
    let p = Params::default();
    let me = NodeLoad {
        node: id(1),
        cpus: 1.0,
        speed: 10_000,
        runnable: 4.0,
        mem_total: 16 * GIB,
        mem_free: 8 * GIB,
        age_ms: 0,
        accepts_guests: true,
    };
    let idle = NodeLoad {
        node: id(2),
        runnable: 0.0,
        ..me.clone()
    };
    let c = Candidate {
        pid: 7,
        cpu_share: 0.25,
        rss: MIB,
        io_by_node: vec![],
        movable: true,
        arrived_at_ms: Some(10_000),
        home: id(2),
    };
    let others = [idle];
    let cands = [c];
    assert_eq!(decide(&me, &others, &cands, 12_000, &p), None);
    assert_eq!(decide(&me, &others, &cands, 14_999, &p), None);
    let d = decide(&me, &others, &cands, 15_000, &p).unwrap();
    assert_eq!((d.pid, d.to), (7, id(2)));
    assert!(
        d.to_string()
            .starts_with("move 7 to node 2: node 1 load 400 vs node 2 load 0: saves"),
        "{d}"
    );
}

#[test]
fn stale_information_is_ignored() {
    let mut sim = Sim::new(
        vec![node(1, 10_000), node(2, 10_000)],
        vec![job(1, 1), job(2, 1)],
    );
    sim.age_ms = sim.params.max_age_ms + 1;
    assert!(sim.decide_on(0).is_none());
    sim.age_ms = sim.params.max_age_ms;
    assert!(sim.decide_on(0).is_some());
}

#[test]
fn from_report_reads_the_wire_figures() {
    let r = LoadReport {
        load: 150,
        speed: 20_000,
        cpus: 2,
        runnable_milli: 6_000,
        mem_total: 8 * GIB,
        mem_free: GIB,
        ..LoadReport::default()
    };
    let n = NodeLoad::from_report(id(5), &r, 700, true);
    assert_eq!(n.capacity(), 4.0);
    assert_eq!(n.load(), 1.5);
    assert_eq!((n.age_ms, n.mem_free), (700, GIB));
}

fn arb_node(n: u16) -> impl Strategy<Value = NodeLoad> {
    (
        1u16..=8,
        2_000u32..=50_000,
        0.0f64..20.0,
        1u64..=64,
        0.0f64..=1.0,
    )
        .prop_flat_map(move |(cpus, speed, runnable, gib, free)| {
            (any::<bool>(), 0u64..20_000).prop_map(move |(accepts, age_ms)| NodeLoad {
                node: id(n),
                cpus: f64::from(cpus),
                speed,
                runnable,
                mem_total: gib * GIB,
                mem_free: ((gib * GIB) as f64 * free) as u64,
                age_ms,
                accepts_guests: accepts,
            })
        })
}

fn arb_candidate(pid: u32) -> impl Strategy<Value = Candidate> {
    (
        0.0f64..=1.0,
        0u64..=4 * GIB,
        proptest::collection::vec((1u16..=6, 0.0f64..200e6), 0..3),
        any::<bool>(),
        proptest::option::of(0u64..30_000),
    )
        .prop_map(move |(cpu_share, rss, io, movable, arrived)| Candidate {
            pid,
            cpu_share,
            rss,
            io_by_node: io.into_iter().map(|(n, r)| (id(n), r)).collect(),
            movable,
            arrived_at_ms: arrived,
            home: id(1),
        })
}

fn arb_case() -> impl Strategy<Value = (NodeLoad, Vec<NodeLoad>, Vec<Candidate>)> {
    (
        arb_node(1),
        (2u16..=6).prop_flat_map(|k| (2..=k).map(arb_node).collect::<Vec<_>>()),
        (1u32..=6).prop_flat_map(|k| (1..=k).map(arb_candidate).collect::<Vec<_>>()),
    )
}

proptest! {
    #[test]
    fn decisions_respect_the_rules((me, others, cands) in arb_case(), now in 0u64..40_000) {
        let p = Params::default();
        if let Some(d) = decide(&me, &others, &cands, now, &p) {
            let c = cands.iter().find(|c| c.pid == d.pid).unwrap();
            prop_assert!(c.movable);
            prop_assert!(c.arrived_at_ms.is_none_or(|t| now >= t + p.min_residency_ms));
            prop_assert_ne!(d.to, me.node);
            let to = others.iter().find(|o| o.node == d.to).unwrap();
            prop_assert!(to.accepts_guests && to.age_ms <= p.max_age_ms);
        }
    }

    #[test]
    fn equal_nodes_with_equal_loads_stay(
        (me, _, cands) in arb_case(),
        n in 1u16..6,
        now in 0u64..40_000,
    ) {
        let mut me = me;
        me.accepts_guests = true;
        me.age_ms = 0;
        let others: Vec<NodeLoad> = (2..=n + 1)
            .map(|k| NodeLoad { node: id(k), ..me.clone() })
            .collect();
        // I/O only with files here.
        let cands: Vec<Candidate> = cands
            .into_iter()
            .map(|c| Candidate { io_by_node: vec![(id(1), 1e6)], ..c })
            .collect();
        prop_assert_eq!(decide(&me, &others, &cands, now, &Params::default()), None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_clusters_converge_without_ping_pong(
        shape in proptest::collection::vec((1u16..=4, 1u32..=8), 2..=5),
        jobs in proptest::collection::vec((0usize..5, 0.2f64..=1.0), 1..=20),
    ) {
        let nodes: Vec<SimNode> = shape.iter().enumerate().map(|(k, &(cpus, s))| SimNode {
            cpus: f64::from(cpus),
            ..node(k as u16 + 1, s * 5_000)
        }).collect();
        let jobs = jobs.iter().enumerate().map(|(p, &(at, demand))| Job {
            demand,
            ..job(p as u32 + 1, (at % nodes.len()) as u16 + 1)
        }).collect();
        let mut sim = Sim::new(nodes, jobs);
        converge(&mut sim, 300);
    }
}
