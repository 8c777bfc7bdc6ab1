//! Per-process statistics the placement engine decides from: how much CPU
//! a process wants, its resident memory, and its I/O rate with each node
//! holding its files. They decay as in openMosix, so recent behaviour
//! counts most: every decay interval a value keeps `rate` per mille of
//! itself and takes the rest from the newest measurement.

use std::collections::BTreeMap;

use omx_mfs::NodeId;

/// openMosix's slow and fast decay, per mille kept per interval.
pub const DEFAULT_SLOW_DECAY: u32 = 975;
pub const DEFAULT_FAST_DECAY: u32 = 926;

/// How fast statistics forget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decay {
    /// Keep this many per mille per `interval_ms`.
    Rate { permille: u32, interval_ms: u64 },
    /// No decay: the average since the statistics were last cleared.
    None,
}

impl Decay {
    /// The weight the old value keeps after `elapsed_ms`.
    fn kept(&self, elapsed_ms: u64) -> f64 {
        match *self {
            Decay::Rate {
                permille,
                interval_ms,
            } => {
                let per_interval = f64::from(permille.min(1000)) / 1000.0;
                per_interval.powf(elapsed_ms as f64 / interval_ms.max(1) as f64)
            }
            Decay::None => 1.0,
        }
    }
}

/// One measurement of a process since the previous one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurement {
    pub elapsed_ms: u64,
    /// CPU time it used in that time, nanoseconds.
    pub cpu_ns: u64,
    /// Whether it was runnable when sampled.
    pub runnable: bool,
    /// The fraction of the time it ran or waited to run, where known
    /// (`schedstat`): what it wanted of a CPU, and a steadier figure than
    /// its state at one instant (a sleeper caught awake would count as
    /// wanting a whole CPU).
    pub wanted: Option<f64>,
    pub rss: u64,
    /// File bytes it moved, by the node holding the file.
    pub io_by_node: Vec<(NodeId, u64)>,
}

/// Decayed statistics of one process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// How much of a CPU it wants: 1 for a process always runnable.
    demand: f64,
    /// Fraction of a CPU it got.
    cpu_share: f64,
    io_rates: BTreeMap<NodeId, f64>,
    rss: u64,
    /// Time measured since the last clear (for `Decay::None`).
    observed_ms: u64,
}

impl ProcessStats {
    pub fn new() -> ProcessStats {
        ProcessStats::default()
    }

    /// Takes in one measurement. The first after a clear sets the values
    /// outright, so a process is judged from its first second.
    pub fn record(&mut self, m: &Measurement, decay: Decay) {
        if m.elapsed_ms == 0 {
            self.rss = m.rss;
            return;
        }
        let seconds = m.elapsed_ms as f64 / 1000.0;
        let first = self.observed_ms == 0;
        let kept = match decay {
            _ if first => 0.0,
            Decay::None => self.observed_ms as f64 / (self.observed_ms + m.elapsed_ms) as f64,
            rate => rate.kept(m.elapsed_ms),
        };
        let blend = |old: f64, new: f64| old * kept + new * (1.0 - kept);
        let share = (m.cpu_ns as f64 / 1e9 / seconds).max(0.0);
        let wanted = match m.wanted {
            Some(wanted) => wanted.clamp(0.0, 1.0),
            None if m.runnable => 1.0,
            None => share.min(1.0),
        };
        self.demand = blend(self.demand, wanted);
        self.cpu_share = blend(self.cpu_share, share);
        for rate in self.io_rates.values_mut() {
            *rate *= kept;
        }
        for &(node, bytes) in &m.io_by_node {
            *self.io_rates.entry(node).or_default() += bytes as f64 / seconds * (1.0 - kept);
        }
        self.io_rates.retain(|_, r| *r >= 1.0);
        self.rss = m.rss;
        self.observed_ms += m.elapsed_ms;
    }

    /// Forgets everything (after execve, or `decay` `clear`).
    pub fn clear(&mut self) {
        *self = ProcessStats::default();
    }

    /// How much of a CPU it wants, 0..=1 per thread.
    pub fn demand(&self) -> f64 {
        self.demand
    }

    /// The fraction of a CPU it got.
    pub fn cpu_share(&self) -> f64 {
        self.cpu_share
    }

    pub fn rss(&self) -> u64 {
        self.rss
    }

    /// Bytes per second with files held by each node.
    pub fn io_rates(&self) -> Vec<(NodeId, f64)> {
        self.io_rates.iter().map(|(n, r)| (*n, *r)).collect()
    }

    /// Whether anything was measured since the last clear.
    pub fn measured(&self) -> bool {
        self.observed_ms > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u16) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn second(cpu_ms: u64, runnable: bool, io: &[(u16, u64)]) -> Measurement {
        Measurement {
            elapsed_ms: 1000,
            cpu_ns: cpu_ms * 1_000_000,
            runnable,
            wanted: None,
            rss: 1 << 20,
            io_by_node: io.iter().map(|&(n, b)| (node(n), b)).collect(),
        }
    }

    const SLOW: Decay = Decay::Rate {
        permille: DEFAULT_SLOW_DECAY,
        interval_ms: 1000,
    };
    const FAST: Decay = Decay::Rate {
        permille: DEFAULT_FAST_DECAY,
        interval_ms: 1000,
    };

    #[test]
    fn the_time_it_wanted_to_run_beats_its_state_at_one_instant() {
        let demand = |wanted, cpu_ms, runnable| {
            let mut s = ProcessStats::new();
            let m = Measurement {
                wanted: Some(wanted),
                ..second(cpu_ms, runnable, &[])
            };
            s.record(&m, SLOW);
            s.demand()
        };
        // A sleeper caught awake: runnable at the sample, but it ran or
        // waited to run 2% of the second.
        assert!((demand(0.02, 20, true) - 0.02).abs() < 1e-9);
        // A job sharing a CPU with eleven others got a twelfth of it but
        // wanted all of it.
        assert_eq!(demand(1.0, 83, false), 1.0);
    }

    #[test]
    fn the_first_measurement_counts_in_full() {
        let mut s = ProcessStats::new();
        s.record(&second(500, true, &[(3, 4_000_000)]), SLOW);
        assert_eq!(s.demand(), 1.0);
        assert!((s.cpu_share() - 0.5).abs() < 1e-9);
        assert_eq!(s.io_rates(), vec![(node(3), 4_000_000.0)]);
        assert_eq!(s.rss(), 1 << 20);
    }

    #[test]
    fn values_decay_at_the_chosen_rate() {
        for (decay, kept) in [(SLOW, 0.975), (FAST, 0.926)] {
            let mut s = ProcessStats::new();
            s.record(&second(1000, true, &[(2, 1_000_000)]), decay);
            s.record(&second(0, false, &[]), decay);
            assert!(
                (s.demand() - kept).abs() < 1e-9,
                "{decay:?}: {}",
                s.demand()
            );
            let io = s.io_rates()[0].1;
            assert!((io - kept * 1e6).abs() < 1e-3, "{decay:?}: {io}");
        }
    }

    #[test]
    fn fast_decay_forgets_sooner_than_slow() {
        let run = |decay| {
            let mut s = ProcessStats::new();
            s.record(&second(1000, true, &[]), decay);
            for _ in 0..10 {
                s.record(&second(0, false, &[]), decay);
            }
            s.demand()
        };
        assert!(run(FAST) < run(SLOW));
    }

    #[test]
    fn without_decay_it_is_the_plain_average() {
        let mut s = ProcessStats::new();
        s.record(&second(1000, true, &[(1, 3_000)]), Decay::None);
        s.record(&second(0, false, &[]), Decay::None);
        s.record(&second(0, false, &[]), Decay::None);
        assert!((s.demand() - 1.0 / 3.0).abs() < 1e-9);
        assert!((s.io_rates()[0].1 - 1_000.0).abs() < 1e-9);
    }

    #[test]
    fn a_decay_interval_of_two_seconds_halves_the_pace() {
        let two = Decay::Rate {
            permille: 900,
            interval_ms: 2000,
        };
        let mut s = ProcessStats::new();
        s.record(&second(1000, true, &[]), two);
        s.record(&second(0, false, &[]), two);
        assert!((s.demand() - 0.9f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn clearing_starts_over() {
        let mut s = ProcessStats::new();
        s.record(&second(1000, true, &[(4, 10_000)]), SLOW);
        s.clear();
        assert!(!s.measured());
        s.record(&second(0, false, &[]), SLOW);
        assert_eq!(s.demand(), 0.0);
        assert!(s.io_rates().is_empty());
    }
}
