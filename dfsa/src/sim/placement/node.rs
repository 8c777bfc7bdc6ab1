//! A simulated machine running jobs, and what its daemon would measure.
//!
//! CPU model: processor sharing among single-threaded jobs. A node of
//! `cpus` CPUs of speed factor `s` running `k` jobs gives each job
//! `min(1, cpus / k)` of one CPU, i.e. `s * min(1, cpus / k)` reference-CPU
//! seconds of progress per second: one job cannot use more than one CPU,
//! and `k > cpus` jobs share all of them equally (as a fair scheduler
//! does over intervals longer than its time slices).

use std::collections::VecDeque;

use omx_mfs::NodeId;
use omx_mfs::wire::LoadReport;

use super::workload::{JobSpec, NodeSpec};
use crate::gossip::Millis;
use crate::load::openmosix_load;
use crate::placement::NodeLoad;

/// A job in the system (running, or frozen while it migrates).
#[derive(Clone, Debug)]
pub struct Job {
    pub spec: JobSpec,
    /// Reference-CPU ms of work done so far; never exceeds `spec.work`.
    pub done: f64,
    /// CPU time it got so far (ms of one CPU, whatever its speed).
    pub cpu_ms: f64,
    /// `cpu_ms` and the time when its node last looked at it: its recent
    /// CPU share is measured from there, as a daemon reading its CPU time.
    pub sampled_cpu_ms: f64,
    pub sampled_at: Millis,
    /// When it last arrived where it is by migration.
    pub arrived_at: Option<Millis>,
    pub migrations: u32,
    /// Arrived within the measurement window: counted in the results.
    pub measured: bool,
    /// The node running it; `None` while it migrates.
    pub site: Option<usize>,
}

impl Job {
    pub fn new(spec: JobSpec, measured: bool) -> Job {
        Job {
            done: 0.0,
            cpu_ms: 0.0,
            sampled_cpu_ms: 0.0,
            sampled_at: spec.arrival_ms,
            arrived_at: None,
            migrations: 0,
            measured,
            site: None,
            spec,
        }
    }

    pub fn remaining(&self) -> f64 {
        (self.spec.work - self.done).max(0.0)
    }

    /// Done, up to rounding.
    pub fn is_finished(&self) -> bool {
        self.remaining() <= 1e-9 * self.spec.work.max(1.0)
    }
}

/// What a node's load figures were from `at` on, until the next change:
/// enough to recompute its smoothed load at any later moment.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    at: Millis,
    smoothed: f64,
    running: u32,
    rss: u64,
}

/// A node's state.
pub struct Node {
    pub id: NodeId,
    pub spec: NodeSpec,
    /// Slots of the jobs running here.
    pub running: Vec<usize>,
    /// Jobs migrating here, frozen until they land.
    pub incoming: u32,
    /// Resident memory of the running jobs.
    pub rss: u64,
    /// Work and CPU time of the running jobs are accounted up to here.
    advanced_at: Millis,
    /// Smoothed runnable count as of `smoothed_at` (the daemon's
    /// `LoadMeter`: an exponential average with time constant
    /// `smoothing_ms`, here computed exactly between changes).
    smoothed: f64,
    smoothed_at: Millis,
    smoothing_ms: f64,
    /// When the next running job completes, if any runs.
    pub next_completion: Option<Millis>,
    /// Recent figures, kept only when views are drawn from them (sampled
    /// gossip): covers `history_ms` back from the latest change.
    history: Option<VecDeque<Snapshot>>,
    history_ms: Millis,
}

impl Node {
    pub fn new(
        index: usize,
        spec: NodeSpec,
        smoothing_ms: Millis,
        history_ms: Option<Millis>,
    ) -> Node {
        let id = NodeId::new(u16::try_from(index + 1).expect("at most 65535 nodes"))
            .expect("ids start at 1");
        let start = Snapshot {
            at: 0,
            smoothed: 0.0,
            running: 0,
            rss: 0,
        };
        Node {
            id,
            spec,
            running: Vec::new(),
            incoming: 0,
            rss: 0,
            advanced_at: 0,
            smoothed: 0.0,
            smoothed_at: 0,
            smoothing_ms: smoothing_ms.max(1) as f64,
            next_completion: None,
            history: history_ms.map(|_| VecDeque::from([start])),
            history_ms: history_ms.unwrap_or(0),
        }
    }

    /// Fraction of one CPU each running job gets.
    pub fn share(&self) -> f64 {
        share(self.spec.cpus, self.running.len())
    }

    /// Jobs here or on their way: what a scheduler that made every
    /// decision itself would count.
    pub fn committed(&self) -> usize {
        self.running.len() + self.incoming as usize
    }

    /// Accounts the running jobs' progress up to `now`.
    pub fn advance(&mut self, now: Millis, jobs: &mut [Option<Job>]) {
        let dt = now.saturating_sub(self.advanced_at) as f64;
        self.advanced_at = self.advanced_at.max(now);
        if dt <= 0.0 || self.running.is_empty() {
            return;
        }
        let share = self.share();
        let progress = share * self.spec.speed_factor() * dt;
        for &slot in &self.running {
            let job = jobs[slot].as_mut().expect("running jobs exist");
            job.done += progress.min(job.remaining());
            job.cpu_ms += share * dt;
        }
    }

    /// The smoothed runnable count at `now` (not before the last change).
    pub fn smoothed(&self, now: Millis) -> f64 {
        decay(
            self.smoothed,
            self.running.len() as f64,
            now.saturating_sub(self.smoothed_at),
            self.smoothing_ms,
        )
    }

    /// Starts `slot` here at `now` (the node must be advanced to `now`).
    pub fn add(&mut self, now: Millis, slot: usize, jobs: &[Option<Job>]) {
        self.settle_smoothed(now);
        self.running.push(slot);
        self.rss += jobs[slot].as_ref().expect("a live job").spec.rss;
        self.record(now);
    }

    /// Takes `slot` off this node at `now` (advanced to `now`).
    pub fn remove(&mut self, now: Millis, slot: usize, jobs: &[Option<Job>]) {
        self.settle_smoothed(now);
        let at = self
            .running
            .iter()
            .position(|s| *s == slot)
            .expect("the job runs here");
        self.running.swap_remove(at);
        self.rss -= jobs[slot].as_ref().expect("a live job").spec.rss;
        self.record(now);
    }

    fn settle_smoothed(&mut self, now: Millis) {
        self.smoothed = self.smoothed(now);
        self.smoothed_at = now;
    }

    fn record(&mut self, now: Millis) {
        let Some(history) = self.history.as_mut() else {
            return;
        };
        let snapshot = Snapshot {
            at: now,
            smoothed: self.smoothed,
            running: self.running.len() as u32,
            rss: self.rss,
        };
        if history.back().is_some_and(|last| last.at == now) {
            history.pop_back();
        }
        history.push_back(snapshot);
        // Keep one snapshot at or before the oldest moment still asked for.
        let oldest_needed = now.saturating_sub(self.history_ms);
        while history.len() >= 2 && history[1].at <= oldest_needed {
            history.pop_front();
        }
    }

    /// Smoothed runnable count and job memory as they were at `at` (at most
    /// `history_ms` ago), if the node kept its history and existed then.
    pub fn figures_at(&self, at: Millis) -> Option<(f64, u64)> {
        let history = self.history.as_ref()?;
        let after = history.partition_point(|s| s.at <= at);
        let s = history.get(after.checked_sub(1)?)?;
        let smoothed = decay(
            s.smoothed,
            f64::from(s.running),
            at - s.at,
            self.smoothing_ms,
        );
        Some((smoothed, s.rss))
    }

    pub fn mem_free(&self, rss: u64) -> u64 {
        self.spec
            .mem_total
            .saturating_sub(self.spec.mem_base)
            .saturating_sub(rss)
    }

    /// When the first running job will be done, from `now` (advanced).
    pub fn completion_time(&self, now: Millis, jobs: &[Option<Job>]) -> Option<Millis> {
        let rate = self.share() * self.spec.speed_factor();
        let least = self
            .running
            .iter()
            .map(|s| jobs[*s].as_ref().expect("a live job").remaining())
            .min_by(f64::total_cmp)?;
        Some(now + (least / rate).ceil().max(0.0) as Millis)
    }

    /// What the daemon would gossip: the report its `LoadMeter` gives,
    /// with a smoothed runnable count of `runnable` and `rss` of jobs.
    pub fn report(&self, runnable: f64, rss: u64) -> LoadReport {
        let cpus = f64::from(self.spec.cpus);
        LoadReport {
            load: openmosix_load(runnable, cpus, self.spec.speed),
            speed: self.spec.speed,
            cpus: self.spec.cpus as u16,
            runnable_milli: (runnable * 1000.0).round() as u32,
            mem_total: self.spec.mem_total,
            mem_free: self.mem_free(rss),
            mem_raw_free: self.mem_free(rss),
            ..LoadReport::default()
        }
    }

    /// This node's figures as `decide` takes them, with `runnable` as the
    /// runnable count.
    pub fn load(&self, runnable: f64, age_ms: u64) -> NodeLoad {
        NodeLoad {
            node: self.id,
            cpus: f64::from(self.spec.cpus),
            speed: self.spec.speed,
            runnable,
            mem_total: self.spec.mem_total,
            mem_free: self.mem_free(self.rss),
            age_ms,
            accepts_guests: true,
        }
    }
}

/// Fraction of one CPU each of `running` jobs gets on `cpus` CPUs.
pub fn share(cpus: u32, running: usize) -> f64 {
    if running == 0 {
        1.0
    } else {
        (f64::from(cpus) / running as f64).min(1.0)
    }
}

/// An exponential average that was `from` and has tracked the constant
/// `target` for `elapsed_ms`.
fn decay(from: f64, target: f64, elapsed_ms: Millis, time_constant_ms: f64) -> f64 {
    target + (from - target) * (-(elapsed_ms as f64) / time_constant_ms).exp()
}
