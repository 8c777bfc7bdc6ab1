//! The cluster and the job trace: both drawn from the seed alone, so every
//! policy of a comparison sees the same machines and the same jobs.

use rand::RngExt;
use rand::rngs::SmallRng;

use super::{Stream, stream};
use crate::gossip::Millis;
use crate::placement::REFERENCE_SPEED;

const MIB: u64 = 1024 * 1024;

/// One simulated machine.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub cpus: u32,
    /// Speed per CPU, [`REFERENCE_SPEED`] = the reference machine.
    pub speed: u32,
    pub mem_total: u64,
    /// Memory used by everything but the jobs.
    pub mem_base: u64,
}

impl NodeSpec {
    /// How fast one CPU runs, in reference CPUs.
    pub fn speed_factor(&self) -> f64 {
        f64::from(self.speed) / f64::from(REFERENCE_SPEED)
    }

    /// Computing power in reference CPUs.
    pub fn capacity(&self) -> f64 {
        f64::from(self.cpus) * self.speed_factor()
    }
}

/// `n` machines with 1, 2 or 4 CPUs (2 twice as often) of speeds between
/// 0.5x and 2x the reference, so capacities span 0.5 to 8 reference CPUs.
pub fn heterogeneous_cluster(n: usize, seed: u64) -> Vec<NodeSpec> {
    let mut rng = stream(seed, Stream::Cluster);
    (0..n)
        .map(|_| {
            let cpus = [1, 2, 2, 4][rng.random_range(0..4)];
            // Steps of 5% of the reference, like calibrated speeds.
            let speed = rng.random_range(10..=40u32) * REFERENCE_SPEED / 20;
            NodeSpec {
                cpus,
                speed,
                mem_total: 4 * 1024 * MIB * u64::from(cpus),
                mem_base: 1024 * MIB,
            }
        })
        .collect()
}

/// Job lengths: bounded Pareto on `[min_s, max_s]` reference-CPU seconds
/// with tail index `alpha` (`P(X > x) ~ x^-alpha`), the shape measured for
/// Unix process lifetimes (Harchol-Balter & Downey, 1997): most jobs are
/// short, and a few long ones carry much of the work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoundedPareto {
    pub alpha: f64,
    pub min_s: f64,
    pub max_s: f64,
}

impl BoundedPareto {
    /// Draws by inverting the distribution function.
    pub fn sample(&self, rng: &mut SmallRng) -> f64 {
        let u: f64 = rng.random();
        let tail = (self.min_s / self.max_s).powf(self.alpha);
        self.min_s / (1.0 - u * (1.0 - tail)).powf(1.0 / self.alpha)
    }

    /// The mean, in reference-CPU seconds.
    pub fn mean(&self) -> f64 {
        let (a, k, p) = (self.alpha, self.min_s, self.max_s);
        let tail = (k / p).powf(a);
        if (a - 1.0).abs() < 1e-9 {
            k * (p / k).ln() / (1.0 - tail)
        } else {
            a / (a - 1.0) * k * (1.0 - (k / p).powf(a - 1.0)) / (1.0 - tail)
        }
    }

    /// The fraction of all work carried by jobs longer than `x` seconds.
    pub fn work_share_above(&self, x: f64) -> f64 {
        let x = x.clamp(self.min_s, self.max_s);
        let (a, k, p) = (self.alpha, self.min_s, self.max_s);
        if (a - 1.0).abs() < 1e-9 {
            (p / x).ln() / (p / k).ln()
        } else {
            (x.powf(1.0 - a) - p.powf(1.0 - a)) / (k.powf(1.0 - a) - p.powf(1.0 - a))
        }
    }
}

/// Where jobs are started by their users.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Homes {
    /// Each node in proportion to its capacity: every node is offered the
    /// same utilisation, and imbalance comes from chance alone.
    Proportional,
    /// A share of all jobs starts on node 1 (a login node), the rest in
    /// proportion to capacity.
    Hot { share: f64 },
}

/// One job as its user starts it. Its work is unknown to the policies.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// Order of arrival, from 0.
    pub seq: u64,
    pub arrival_ms: Millis,
    /// Index of the node it starts from.
    pub home: usize,
    /// Reference-CPU milliseconds: on a CPU of speed factor `s` alone, it
    /// runs `work / s` ms.
    pub work: f64,
    pub rss: u64,
}

/// The job trace: Poisson arrivals at the rate that offers `utilisation`
/// of the cluster's capacity, drawn lazily (a 10,000-node trace has
/// millions of jobs) from a generator of its own.
pub struct JobSource {
    rng: SmallRng,
    /// Arrivals per millisecond.
    rate: f64,
    next_at: f64,
    next_seq: u64,
    home_weights: Vec<f64>,
    homes: Homes,
    work: BoundedPareto,
    rss_mib: (u64, u64),
}

impl JobSource {
    /// The job trace of a simulation's configuration.
    pub fn for_config(config: &super::PlacementSimConfig) -> JobSource {
        JobSource::new(
            &config.cluster,
            config.utilisation,
            config.work,
            config.homes,
            config.rss_mib,
            config.seed,
        )
    }

    pub fn new(
        cluster: &[NodeSpec],
        utilisation: f64,
        work: BoundedPareto,
        homes: Homes,
        rss_mib: (u64, u64),
        seed: u64,
    ) -> JobSource {
        let capacity: f64 = cluster.iter().map(NodeSpec::capacity).sum();
        // Reference-CPU ms offered per ms = utilisation x capacity.
        let rate = utilisation * capacity / (work.mean() * 1000.0);
        let mut cumulative = 0.0;
        let home_weights = cluster
            .iter()
            .map(|n| {
                cumulative += n.capacity();
                cumulative
            })
            .collect();
        let mut source = JobSource {
            rng: stream(seed, Stream::Jobs),
            rate,
            next_at: 0.0,
            next_seq: 0,
            home_weights,
            homes,
            work,
            rss_mib,
        };
        source.next_at = source.gap();
        source
    }

    /// Jobs per second.
    pub fn arrivals_per_second(&self) -> f64 {
        self.rate * 1000.0
    }

    /// When the next job arrives.
    pub fn next_arrival_ms(&self) -> Millis {
        self.next_at as Millis
    }

    /// The next job, in arrival order.
    pub fn next_job(&mut self) -> JobSpec {
        let arrival_ms = self.next_at as Millis;
        let home = self.home();
        let work = self.work.sample(&mut self.rng) * 1000.0;
        let (low, high) = self.rss_mib;
        let rss = self.rng.random_range(low..=high.max(low)) * MIB;
        let job = JobSpec {
            seq: self.next_seq,
            arrival_ms,
            home,
            work,
            rss,
        };
        self.next_seq += 1;
        self.next_at += self.gap();
        job
    }

    fn gap(&mut self) -> f64 {
        let u: f64 = self.rng.random();
        -(1.0 - u).ln() / self.rate
    }

    fn home(&mut self) -> usize {
        if let Homes::Hot { share } = self.homes
            && self.rng.random_bool(share.clamp(0.0, 1.0))
        {
            return 0;
        }
        let total = *self.home_weights.last().expect("a cluster has nodes");
        let x = self.rng.random::<f64>() * total;
        self.home_weights
            .partition_point(|c| *c <= x)
            .min(self.home_weights.len() - 1)
    }
}
