//! The placement engine at work. Every interval this node measures its own
//! processes (those running here, and through their keepers' reports
//! those away) and moves a few of them where the opportunity-cost model
//! (`omx_dfsa::placement`) says they are cheapest to run.
//!
//! Each home decides for its own processes, wherever they run: it knows
//! their figures and their controls, and only it can move them. A node's
//! guests are decided by their homes, from the same gossip; the node says
//! in its gossip whether it takes guests (`block`, `expel`) and whether
//! they may leave it (`stay`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use omx_dfsa::placement::{self, Candidate, Decision, NodeLoad, Params};
use omx_dfsa::stats::{Decay, Measurement, ProcessStats};
use omx_mfs::NodeId;
use omx_mfs::wire::{DecayHint, JobHint, MigrateTarget};
use omx_migrate::usage::{self, FileHolder, IoTracker};
use tracing::{debug, info, warn};

use super::migration::{Migrations, Mover, PlacementEntry, ProcessControls, Site};
use super::node::Node;

/// At most this many moves of this node's processes under way at once:
/// enough to spread a burst of jobs in a few rounds, few enough that the
/// load figures the next decisions use are not all guesses.
const MAX_MOVES_PER_ROUND: usize = 6;
/// How long after its decision a move starts to show in load figures
/// (the process must first stop, travel and start).
const MOVE_LAG_MS: u64 = 500;
/// A process the kernel interface says cannot move is not tried again
/// for this long.
const UNMOVABLE_RETRY_MS: u64 = 30_000;
/// A process younger than this is too young for its life so far to say
/// what it wants: its first figures come a round later.
const FIRST_MEASUREMENT_MIN: std::time::Duration = std::time::Duration::from_millis(100);
/// A process that has run less than this is judged a round later, however
/// long it has waited: on a node with a small CPU share, a shell starting
/// its child has waited all its short life and looks like a starved job;
/// the next round finds it asleep.
const FIRST_MEASUREMENT_MIN_CPU: std::time::Duration = std::time::Duration::from_millis(10);
/// After a program starts, the round that judges it waits this much
/// beyond [`FIRST_MEASUREMENT_MIN`] (ticks are 10 ms; `mosrun` registers
/// before it runs the program).
const NEW_PROGRAM_SLACK: std::time::Duration = std::time::Duration::from_millis(50);
/// A node that did not take a process (its admission, or any failure)
/// is not a target of this node's moves for this long: it took as many
/// guests as it has CPUs within its last second, which the figures here
/// do not show yet.
const REFUSED_FOR_MS: u64 = 1_000;
/// Moves in a row that may fail before the process is held for the
/// minimum residency after one, as after an arrival: a destination that
/// cannot rebuild it, or a process that cannot be captured, would
/// otherwise be stopped and sent again every second.
const QUICK_RETRIES: u32 = 2;
/// How many generations below a followed process are followed too.
const MAX_DESCENDANT_DEPTH: usize = 64;

/// Whether a process seen for the first time has shown enough of itself
/// for its life so far to be its first measurement: runnable, old enough,
/// and having run a little (not only waited).
fn judged_at_first_sight(runnable: bool, age: std::time::Duration, cpu_ns: u64) -> bool {
    runnable
        && age >= FIRST_MEASUREMENT_MIN
        && cpu_ns >= FIRST_MEASUREMENT_MIN_CPU.as_nanos() as u64
}

/// One process the balancer follows.
struct Tracked {
    /// Its program (`/proc/PID/exe`): a change means an execve, which
    /// clears its statistics.
    exe: Option<PathBuf>,
    site: Site,
    last_sample: Option<Instant>,
    last_cpu_ns: Option<u64>,
    /// Time waiting to run so far (`schedstat`), at the last sample.
    last_wait_ns: Option<u64>,
    io: IoTracker,
    stats: ProcessStats,
    /// When it last arrived where it runs, on the balancer's clock.
    arrived_at_ms: Option<u64>,
    unmovable_until_ms: u64,
    /// Its controls (a descendant of a `mosrun` process has its).
    controls: ProcessControls,
    /// Not sampled yet: its CPU and wait times so far make its first
    /// measurement.
    unseen: bool,
    /// `mosrun -b`: where it starts was decided.
    start_placed: bool,
    /// Sent away by its start placement and not landed yet: that move
    /// was a guess on old figures, not a judgement of the process, and
    /// does not hold it where it lands for the minimum residency (three
    /// homes that picked the same idle node at once would keep their
    /// three jobs there for seconds).
    start_move_pending: bool,
    /// Where it was, since when, and its moves completed, before the move
    /// under way: a move that does not happen (the destination refused
    /// it) leaves it as it was, not held where it is as if it had just
    /// arrived.
    before_move: Option<(Site, Option<u64>, u64)>,
    /// Moves completed, as its entry last said.
    landings: u64,
    /// Moves in a row that did not happen (see [`QUICK_RETRIES`]).
    failed_moves: u32,
}

impl Tracked {
    fn new(site: Site) -> Tracked {
        Tracked {
            exe: None,
            site,
            controls: ProcessControls::default(),
            last_sample: None,
            last_cpu_ns: None,
            last_wait_ns: None,
            io: IoTracker::new(),
            stats: ProcessStats::new(),
            arrived_at_ms: None,
            unmovable_until_ms: 0,
            unseen: true,
            start_placed: false,
            start_move_pending: false,
            before_move: None,
            landings: 0,
            failed_moves: 0,
        }
    }
}

/// A move's expected effect on one node's load figures until they show
/// it.
struct Adjustment {
    /// The process moving, and where to.
    pid: u32,
    to: NodeId,
    node: NodeId,
    runnable: f64,
    mem: i64,
    /// When it arrived; `None` while it is on its way (a move from a busy
    /// node can take seconds, and counts in full until it lands).
    landed_at_ms: Option<u64>,
}

/// A process's statistics as the control tree shows them.
#[derive(Clone, Debug, Default)]
pub struct StatsView {
    pub demand: f64,
    pub cpu_share: f64,
    pub rss: u64,
    pub io_rates: Vec<(NodeId, f64)>,
}

pub struct Balancer {
    node: Arc<Node>,
    migrations: Arc<Migrations>,
    mfs_root: PathBuf,
    started: Instant,
    params: Params,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tracked: HashMap<u32, Tracked>,
    adjustments: Vec<Adjustment>,
    /// Nodes that did not take a move of ours, until when (balancer ms).
    refused_until: HashMap<NodeId, u64>,
}

impl Balancer {
    pub fn new(node: Arc<Node>, migrations: Arc<Migrations>) -> Balancer {
        let config = node.config();
        let mfs_root = config
            .mfs
            .mount
            .clone()
            .unwrap_or_else(|| PathBuf::from("/mfs"));
        let params = Params {
            min_residency_ms: config.placement.min_residency.as_millis() as u64,
            ..Params::default()
        };
        Balancer {
            node,
            migrations,
            mfs_root,
            started: Instant::now(),
            params,
            state: Mutex::new(State::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Measures and decides every interval, for as long as the daemon runs.
    pub async fn run(self: Arc<Self>) {
        let interval = self.node.config().placement.interval;
        // A random phase: started in step with the load sampling, every
        // round would be running when the load is sampled, and count as
        // load itself.
        let phase = rand::random_range(0..interval.as_millis().max(1) as u64);
        tokio::time::sleep(std::time::Duration::from_millis(phase)).await;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.migrations.judge_soon.notified() => {
                    // A program just started: give it the time to say
                    // what it wants, then judge it (and the rest of a
                    // burst with it) without waiting out the round. Or a
                    // move was refused: try another node as soon.
                    tokio::time::sleep(FIRST_MEASUREMENT_MIN + NEW_PROGRAM_SLACK).await;
                    ticker.reset();
                }
            }
            let me = self.clone();
            // /proc reads block: keep them off the async workers.
            let _ = tokio::task::spawn_blocking(move || me.measure()).await;
            self.round(self.node.config().placement.balance);
        }
    }

    /// The statistics of `pid`, if it is followed and was measured since
    /// it was last cleared (before that they would read as all zero).
    pub fn stats_of(&self, pid: u32) -> Option<StatsView> {
        let state = self.state.lock().expect("balancer state");
        let t = state.tracked.get(&pid).filter(|t| t.stats.measured())?;
        Some(StatsView {
            demand: t.stats.demand(),
            cpu_share: t.stats.cpu_share(),
            rss: t.stats.rss(),
            io_rates: t.stats.io_rates(),
        })
    }

    /// Clears the statistics of `pid` (`decay` `clear`): they start over
    /// from what it does after the clear (the next sample is only a new
    /// starting point, or the CPU it used just before would count in
    /// full).
    pub fn clear_stats(&self, pid: u32) {
        if let Some(t) = self
            .state
            .lock()
            .expect("balancer state")
            .tracked
            .get_mut(&pid)
        {
            t.stats.clear();
            // Restart now, not from its start.
            t.unseen = false;
            t.last_sample = None;
            t.last_cpu_ns = None;
            t.last_wait_ns = None;
        }
    }

    /// Samples every process it follows and updates their statistics.
    fn measure(&self) {
        let me = self.node.id();
        let entries = self.entries();
        let switches = self.node.settings().get();
        let now = Instant::now();
        let now_ms = self.now_ms();
        let mut state = self.state.lock().expect("balancer state");
        let present: HashSet<u32> = entries.iter().map(|e| e.pid).collect();
        state.tracked.retain(|pid, _| present.contains(pid));
        for entry in &entries {
            let tracked = state
                .tracked
                .entry(entry.pid)
                .or_insert_with(|| Tracked::new(entry.site));
            tracked.controls = entry.controls.clone();
            if tracked.site != entry.site {
                let before_move = std::mem::take(&mut tracked.before_move);
                if entry.site == Site::Moving {
                    // A move seen under way (a user's `migrate`) is
                    // remembered as one started here is.
                    tracked.before_move =
                        Some((tracked.site, tracked.arrived_at_ms, tracked.landings));
                } else if let Some((site, arrived_at_ms, _)) =
                    before_move.filter(|(site, _, landings)| {
                        *site == entry.site && *landings == entry.landings
                    })
                {
                    // The move did not happen: it carries on where it was,
                    // and is judged again at once, the first times.
                    tracked.failed_moves += 1;
                    debug!(
                        "process {} did not move ({} in a row): it stays on {site:?}",
                        entry.pid, tracked.failed_moves
                    );
                    tracked.arrived_at_ms = if tracked.failed_moves > QUICK_RETRIES {
                        Some(now_ms)
                    } else {
                        arrived_at_ms
                    };
                    tracked.start_move_pending = false;
                } else {
                    tracked.failed_moves = 0;
                    tracked.arrived_at_ms =
                        (!std::mem::take(&mut tracked.start_move_pending)).then_some(now_ms);
                    // CPU time restarts with each remote, and the home
                    // offsets jump when a remote hands back its DFSA files.
                    tracked.last_cpu_ns = None;
                    tracked.last_wait_ns = None;
                    tracked.io = IoTracker::new();
                }
                tracked.site = entry.site;
            }
            tracked.landings = entry.landings;
            let decay = match entry.controls.decay {
                DecayHint::None => Decay::None,
                DecayHint::Fast => Decay::Rate {
                    permille: switches.decay.fast,
                    interval_ms: u64::from(switches.decay.interval_s) * 1000,
                },
                DecayHint::Default | DecayHint::Slow => Decay::Rate {
                    permille: switches.decay.slow,
                    interval_ms: u64::from(switches.decay.interval_s) * 1000,
                },
            };
            // At home: the process itself. Away: its deputy, only checked
            // to be there; the remote keeper counts the I/O (its DFSA
            // files), and the deputy's offsets jump when it hands them
            // back, so they would count the same bytes twice. (Sampling
            // every deputy's files twice a second was a good part of what
            // a home serving eleven remotes spent.)
            let local = if entry.site == Site::Home {
                match usage::sample(entry.pid, &self.mfs_root) {
                    Ok(local) => Some(local),
                    Err(_) => continue,
                }
            } else if std::path::Path::new(&format!("/proc/{}", entry.pid)).exists() {
                None
            } else {
                continue;
            };
            let exe = std::fs::read_link(format!("/proc/{}/exe", entry.pid)).ok();
            if tracked.exe.is_some() && exe != tracked.exe {
                debug!(
                    "process {} ran a new program: its statistics start over",
                    entry.pid
                );
                tracked.stats.clear();
            }
            tracked.exe = exe;
            // A process seen for the first time at home, and runnable: its
            // CPU and wait times run from its start, and its files'
            // offsets from their opening, so its life so far is its first
            // measurement, and a job is judged at the first round that
            // sees it, not a round later (half a second of a burst; and a
            // reader of another node's files would start from no I/O at
            // all, and take many decay intervals to be drawn to them).
            // One asleep is judged a round later: a shell that started its
            // child and waits for it was busy all its short life.
            let first_sight = std::mem::take(&mut tracked.unseen) && entry.site == Site::Home;
            let started = local
                .as_ref()
                .filter(|_| first_sight)
                .and_then(|l| Some((l, usage::age(entry.pid).ok()?)))
                .filter(|(l, age)| judged_at_first_sight(l.runnable, *age, l.cpu_ns))
                .and_then(|(_, age)| now.checked_sub(age));
            let mut io_by_node: HashMap<NodeId, u64> = HashMap::new();
            let home_files = local.as_ref().map_or(&[][..], |l| &l.files[..]);
            let moved = if started.is_some() {
                tracked.io.update_from_open(home_files)
            } else {
                tracked.io.update(home_files)
            };
            for (holder, bytes) in moved {
                let node = match holder {
                    FileHolder::Node(n) => NodeId::new(n),
                    FileHolder::Local => Some(me),
                };
                if let Some(node) = node {
                    *io_by_node.entry(node).or_default() += bytes;
                }
            }
            let (cpu_total, wait_total, rss, runnable) = match entry.site {
                Site::Home => match &local {
                    Some(local) => (Some(local.cpu_ns), local.wait_ns, local.rss, local.runnable),
                    None => continue,
                },
                Site::Moving => continue,
                Site::Away(_) => match self.migrations.take_away_usage(entry.pid) {
                    Some(away) => {
                        for (n, bytes) in away.io_by_node {
                            if let Some(n) = NodeId::new(n) {
                                *io_by_node.entry(n).or_default() += bytes;
                            }
                        }
                        (Some(away.cpu_ns), away.wait_ns, away.rss, away.runnable)
                    }
                    // No report since the last round: keep the figures.
                    None => continue,
                },
            };
            if let Some(started) = started {
                tracked.last_sample = Some(started);
                tracked.last_cpu_ns = Some(0);
                tracked.last_wait_ns = wait_total.map(|_| 0);
            }
            // Measured since the last figures taken in (a remote keeper
            // reports once a second, less often than this runs).
            let elapsed_ms = tracked
                .last_sample
                .map_or(0, |t| now.duration_since(t).as_millis() as u64);
            tracked.last_sample = Some(now);
            let cpu_ns = match (cpu_total, tracked.last_cpu_ns) {
                (Some(now), Some(before)) if now >= before => now - before,
                _ => 0,
            };
            tracked.last_cpu_ns = cpu_total;
            // What it wanted of a CPU: the time it ran or waited to run.
            let wanted = match (wait_total, tracked.last_wait_ns, elapsed_ms) {
                (Some(now), Some(before), ms) if now >= before && ms > 0 => {
                    Some((cpu_ns + (now - before)) as f64 / 1e6 / ms as f64)
                }
                _ => None,
            };
            tracked.last_wait_ns = wait_total;
            if elapsed_ms == 0 {
                continue;
            }
            tracked.stats.record(
                &Measurement {
                    elapsed_ms,
                    cpu_ns,
                    runnable,
                    wanted,
                    rss,
                    io_by_node: io_by_node.into_iter().collect(),
                },
                decay,
            );
        }
    }

    /// This node's processes to follow: the process table's, and every
    /// descendant at home of one of them (a `mosrun make` balances the
    /// whole build), except omx's own programs.
    fn entries(&self) -> Vec<PlacementEntry> {
        let mut entries = self.migrations.placement_entries();
        if entries.is_empty() {
            // Nothing of ours to follow, and so no descendants to look for.
            return entries;
        }
        let own_exe = std::env::current_exe().ok();
        // Each descendant takes the controls of its nearest followed
        // ancestor: walk down from the followed processes (the whole
        // process table is hundreds of /proc reads every round).
        let mut known: HashSet<u32> = entries.iter().map(|e| e.pid).collect();
        // A deputy's children (started before it left) are at home too.
        let mut level: Vec<(u32, ProcessControls)> = entries
            .iter()
            .map(|e| (e.pid, e.controls.clone()))
            .collect();
        for _ in 0..MAX_DESCENDANT_DEPTH {
            let mut next = Vec::new();
            for (parent, controls) in &level {
                for child in children_of(*parent) {
                    if !known.insert(child) {
                        continue;
                    }
                    next.push((child, controls.clone()));
                }
            }
            for (pid, controls) in &next {
                if own_exe.is_some()
                    && std::fs::read_link(format!("/proc/{pid}/exe")).ok() == own_exe
                {
                    continue;
                }
                entries.push(PlacementEntry {
                    pid: *pid,
                    site: Site::Home,
                    landings: 0,
                    controls: ProcessControls {
                        selected: None,
                        baseline: Default::default(),
                        // Only the job itself starts elsewhere: its
                        // children start where it runs.
                        start_at_best: false,
                        ..controls.clone()
                    },
                });
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        entries
    }

    /// One round of decisions: where new `mosrun -b` jobs start, and, if
    /// `balance`, moves of this node's processes at each site.
    fn round(&self, balance: bool) {
        let switches = self.node.settings().get();
        if switches.quiet {
            return;
        }
        let me = self.node.id();
        let now_ms = self.now_ms();
        let params = Params {
            max_age_ms: max_age_ms(self.node.map_len(), self.node.config().gossip.interval),
            ..self.params.clone()
        };
        let own = self.node.own_report();
        let mut loads: Vec<NodeLoad> = vec![NodeLoad::from_report(me, &own, 0, own.accepts_guests)];
        let mut guests_stay: HashSet<NodeId> = HashSet::new();
        let mut ages: HashMap<NodeId, u64> = HashMap::new();
        for (node, report, age) in self.node.others_loads() {
            if report.guests_stay {
                guests_stay.insert(node);
            }
            ages.insert(node, age);
            loads.push(NodeLoad::from_report(
                node,
                &report,
                age,
                report.accepts_guests,
            ));
        }
        let mut state = self.state.lock().expect("balancer state");
        // Load figures are smoothed (exponentially, `LOAD_SMOOTHING`): a
        // move shows in them gradually, so the part of its effect they do
        // not show yet is added to them, until it is negligible.
        let tau_ms = super::LOAD_SMOOTHING.as_millis() as f64;
        let State {
            tracked,
            adjustments,
            refused_until,
        } = &mut *state;
        adjustments.retain_mut(|a| {
            if a.landed_at_ms.is_none() {
                match tracked.get(&a.pid).map(|t| t.site) {
                    Some(Site::Moving) => {}
                    Some(Site::Home) if a.to == me => a.landed_at_ms = Some(now_ms),
                    Some(Site::Away(n)) if a.to == n => a.landed_at_ms = Some(now_ms),
                    // It did not go: nothing to expect, and its destination
                    // is full for now.
                    Some(_) => {
                        if a.to != me {
                            refused_until.insert(a.to, now_ms + REFUSED_FOR_MS);
                        }
                        return false;
                    }
                    // It is gone.
                    None => return false,
                }
            }
            let unseen = match a.landed_at_ms {
                None => 1.0,
                Some(landed) => {
                    let measured_at = now_ms.saturating_sub(*ages.get(&a.node).unwrap_or(&0));
                    let shown_for = measured_at.saturating_sub(landed + MOVE_LAG_MS) as f64;
                    (-shown_for / tau_ms).exp()
                }
            };
            if unseen < 0.05 {
                return false;
            }
            if let Some(l) = loads.iter_mut().find(|l| l.node == a.node) {
                apply(l, a.runnable * unseen, (a.mem as f64 * unseen) as i64);
            }
            true
        });
        refused_until.retain(|_, until| *until > now_ms);
        for load in loads.iter_mut() {
            if refused_until.contains_key(&load.node) {
                load.accepts_guests = false;
            }
        }
        if !(switches.stay || switches.lstay) {
            start_new_jobs(&mut state, &mut loads, &params, |decision, state| {
                self.carry_out(decision, me, me, now_ms, state)
            });
        }
        if !balance {
            return;
        }
        let mut by_site: HashMap<NodeId, Vec<u32>> = HashMap::new();
        let mut ours_by_site: HashMap<NodeId, f64> = HashMap::new();
        for (pid, t) in &state.tracked {
            let site = match t.site {
                Site::Home => me,
                Site::Away(n) => n,
                Site::Moving => continue,
            };
            by_site.entry(site).or_default().push(*pid);
            *ours_by_site.entry(site).or_default() += t.stats.demand();
        }
        // A node runs at least the processes this node knows it has there.
        // The smoothed figures lag a burst of new jobs by seconds, and the
        // moves subtracted from them in full would then leave a node of
        // eight jobs looking nearly idle: the rules against reversal would
        // keep the rest of the burst at home.
        for load in loads.iter_mut() {
            if let Some(&ours) = ours_by_site.get(&load.node) {
                load.runnable = load.runnable.max(ours);
            }
        }
        let mut sites: Vec<NodeId> = by_site.keys().copied().collect();
        sites.sort();
        for site in sites {
            let stays = if site == me {
                switches.stay || switches.lstay
            } else {
                guests_stay.contains(&site)
            };
            if stays {
                continue;
            }
            let mut pids = by_site.remove(&site).unwrap_or_default();
            // A process still in `mosrun` would run its `execve` away,
            // and so come straight back.
            pids.retain(|p| state.tracked.get(p).is_some_and(runs_its_program));
            pids.sort();
            // Moves still on their way count against this round's: each
            // costs the sender CPU, and its effect is still a guess.
            let in_flight = state
                .tracked
                .values()
                .filter(|t| t.site == Site::Moving)
                .count();
            for _ in in_flight..MAX_MOVES_PER_ROUND {
                let Some(here) = loads.iter().find(|l| l.node == site).cloned() else {
                    break;
                };
                let others: Vec<NodeLoad> =
                    loads.iter().filter(|l| l.node != site).cloned().collect();
                let candidates: Vec<Candidate> = pids
                    .iter()
                    .filter_map(|pid| {
                        candidate(*pid, state.tracked.get(pid)?, &here, me, now_ms, &params)
                    })
                    .collect();
                let Some(decision) =
                    placement::decide(&here, &others, &candidates, now_ms, &params)
                else {
                    if site == me && !pids.is_empty() {
                        debug!(
                            "round at {now_ms} ms: no move from node {site} (load {:.2}): {} of {} processes candidates ({}), {} in flight; targets: {}",
                            here.load(),
                            candidates.len(),
                            pids.len(),
                            candidates
                                .iter()
                                .map(|c| format!(
                                    "{} wants {:.2} arrived {:?}",
                                    c.pid,
                                    placement::cost::demand(c, &here),
                                    c.arrived_at_ms
                                ))
                                .collect::<Vec<_>>()
                                .join(", "),
                            in_flight,
                            others
                                .iter()
                                .map(|o| format!(
                                    "{}:{:.2}@{}ms{}",
                                    o.node,
                                    o.load(),
                                    o.age_ms,
                                    if o.accepts_guests { "" } else { " (no guests)" }
                                ))
                                .collect::<Vec<_>>()
                                .join(" ")
                        );
                    }
                    break;
                };
                let c = candidates
                    .iter()
                    .find(|c| c.pid == decision.pid)
                    .expect("decide picks a candidate")
                    .clone();
                pids.retain(|p| *p != decision.pid);
                if !self.carry_out(&decision, site, me, now_ms, &mut state) {
                    continue;
                }
                let demand = placement::cost::demand(&c, &here);
                let moves = [
                    (site, -demand, -(c.rss as i64)),
                    (decision.to, demand, c.rss as i64),
                ];
                for (node, runnable, mem) in moves {
                    if let Some(l) = loads.iter_mut().find(|l| l.node == node) {
                        apply(l, runnable, mem);
                    }
                    state.adjustments.push(Adjustment {
                        pid: c.pid,
                        to: decision.to,
                        node,
                        runnable,
                        mem,
                        landed_at_ms: None,
                    });
                }
            }
        }
    }

    /// Starts the move; false if it could not start.
    fn carry_out(
        &self,
        decision: &Decision,
        site: NodeId,
        me: NodeId,
        now_ms: u64,
        state: &mut State,
    ) -> bool {
        let pid = decision.pid;
        if site == me {
            match omx_migrate::constraints::reason_to_stay(pid as i32, 0) {
                Ok(None) => {}
                Ok(Some(reason)) => {
                    debug!("process {pid} stays: {reason}");
                    if let Some(t) = state.tracked.get_mut(&pid) {
                        t.unmovable_until_ms = now_ms + UNMOVABLE_RETRY_MS;
                    }
                    return false;
                }
                Err(_) => return false,
            }
        }
        let to = if decision.to == me {
            MigrateTarget::Home
        } else {
            MigrateTarget::Node(decision.to.get())
        };
        match self
            .migrations
            .start_move(pid, to, Some(0), None, Mover::Placement)
        {
            Ok(()) => {
                info!("placement: {decision}");
                if let Some(t) = state.tracked.get_mut(&pid) {
                    t.before_move = Some((t.site, t.arrived_at_ms, t.landings));
                    t.site = Site::Moving;
                    t.arrived_at_ms = Some(now_ms);
                }
                true
            }
            Err(reply) => {
                warn!("placement could not move process {pid}: {reply:?}");
                if let Some(t) = state.tracked.get_mut(&pid) {
                    t.unmovable_until_ms = now_ms + UNMOVABLE_RETRY_MS;
                }
                false
            }
        }
    }
}

/// Whether a followed process runs its own program, not yet (or only)
/// `mosrun`, which is omx itself. Away, its program is not read here: it
/// left only after it ran it.
fn runs_its_program(t: &Tracked) -> bool {
    static OWN_EXE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let own = OWN_EXE.get_or_init(|| std::env::current_exe().ok());
    match t.site {
        Site::Home => t.exe.is_some() && t.exe != *own,
        Site::Away(_) | Site::Moving => true,
    }
}

/// Places the `mosrun -b` jobs of this node that now run their program
/// (before, the process is still `mosrun`, and would run its `execve`
/// away): each at the node [`placement::start_node`] picks from `loads`,
/// which then count the job, so a burst spreads within one round.
/// `carry_out` starts a move and says whether it started.
fn start_new_jobs(
    state: &mut State,
    loads: &mut [NodeLoad],
    params: &Params,
    mut carry_out: impl FnMut(&Decision, &mut State) -> bool,
) {
    let Some(me) = loads.first().map(|l| l.node) else {
        return;
    };
    let mut new: Vec<u32> = state
        .tracked
        .iter()
        .filter(|(_, t)| {
            t.controls.start_at_best
                && !t.start_placed
                && t.site == Site::Home
                && runs_its_program(t)
        })
        .map(|(pid, _)| *pid)
        .collect();
    new.sort();
    for pid in new {
        let Some(t) = state.tracked.get_mut(&pid) else {
            continue;
        };
        t.start_placed = true;
        let rss = t.stats.rss();
        let mut here = loads[0].clone();
        // The job has run at home since it started, and the smoothed
        // figure of home already holds that part of it: no reason to go.
        let tau_s = super::LOAD_SMOOTHING.as_secs_f64();
        let shown = usage::age(pid).map_or(0.0, |age| 1.0 - (-age.as_secs_f64() / tau_s).exp());
        here.runnable = (here.runnable - shown).max(0.0);
        let decision = placement::start_node(pid, &here, &loads[1..], rss, params, |k| {
            rand::random_range(0..k.max(1))
        });
        let to = match decision {
            Some(decision) if carry_out(&decision, state) => {
                if let Some(t) = state.tracked.get_mut(&pid) {
                    t.start_move_pending = true;
                    t.arrived_at_ms = None;
                }
                decision.to
            }
            _ => me,
        };
        // The job is not in any figure yet: count it where it goes until
        // the figures show it.
        if let Some(l) = loads.iter_mut().find(|l| l.node == to) {
            apply(l, 1.0, rss as i64);
        }
        state.adjustments.push(Adjustment {
            pid,
            to,
            node: to,
            runnable: 1.0,
            mem: rss as i64,
            landed_at_ms: None,
        });
    }
}

/// How old news of a node may be to count. In a small cluster few homes
/// decide at once, and this node's own moves are in its bookkeeping until
/// the figures show them: eight steps. (With four, in the demo's twelve
/// nodes, a third of the idle nodes were older than that at any moment:
/// node 1 sent three jobs in a row to the one idle node it had fresh news
/// of.) In a large cluster, every loaded node would pick the same node
/// that looked idle a while ago (the herd the simulation in
/// docs/placement.md measures): two steps.
fn max_age_ms(nodes: usize, gossip: std::time::Duration) -> u64 {
    let steps = if nodes <= 64 { 8 } else { 2 };
    (steps * gossip.as_millis() as u64).max(1000)
}

/// A followed process as the decision code sees it, unless it may not
/// move now.
fn candidate(
    pid: u32,
    t: &Tracked,
    site: &NodeLoad,
    home: NodeId,
    now_ms: u64,
    params: &Params,
) -> Option<Candidate> {
    if !t.stats.measured() || t.controls.locked || now_ms < t.unmovable_until_ms {
        return None;
    }
    // The decision code estimates what a process wants from the CPU share
    // it got under the site's contention; ours is measured directly, so
    // express it as that share.
    let contention = placement::cost::ratio(site.runnable, site.cpus).max(1.0);
    let mut io_by_node = t.stats.io_rates();
    match t.controls.job {
        // `cpujob`: its I/O is not a reason to move it.
        JobHint::Cpu => io_by_node.clear(),
        // `iojob`: its I/O draws it to its data even when slow.
        JobHint::Io => {
            if let Some(top) = io_by_node.iter_mut().max_by(|a, b| a.1.total_cmp(&b.1)) {
                top.1 = top.1.max(params.io_min_rate);
            }
        }
        JobHint::Unknown => {}
    }
    Some(Candidate {
        pid,
        cpu_share: t.stats.demand() / contention,
        rss: t.stats.rss(),
        io_by_node,
        movable: true,
        arrived_at_ms: t.arrived_at_ms,
        home,
    })
}

fn apply(load: &mut NodeLoad, runnable: f64, mem: i64) {
    load.runnable = (load.runnable + runnable).max(0.0);
    load.mem_free = (load.mem_free as i64 - mem).clamp(0, load.mem_total as i64) as u64;
}

/// The children of every thread of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    threads
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A job seen running is judged at once; a shell that has only waited
    /// (for the CPU share of its node, while starting its child) and one
    /// too young or asleep are judged a round later.
    #[test]
    fn only_a_process_seen_running_is_judged_at_first_sight() {
        let ms = |n: u64| Duration::from_millis(n);
        let cpu_ms = |n: u64| n * 1_000_000;
        assert!(
            judged_at_first_sight(true, ms(150), cpu_ms(60)),
            "a running job"
        );
        assert!(
            judged_at_first_sight(true, ms(150), cpu_ms(10)),
            "a starved job that ran 10 ms"
        );
        assert!(
            !judged_at_first_sight(true, ms(150), cpu_ms(3)),
            "a shell starting its child"
        );
        assert!(!judged_at_first_sight(false, ms(150), cpu_ms(60)), "asleep");
        assert!(
            !judged_at_first_sight(true, ms(50), cpu_ms(40)),
            "too young"
        );
    }
}
