//! Measuring this node's load, the openMosix way.
//!
//! The load figure is the smoothed number of runnable processes, normalised
//! by the number of CPUs and by their speed:
//! `load = runnable * 100 / cpus / (speed / 10000)`, so a node running one
//! process per reference-speed CPU has load 100. Memory and CPU utilisation
//! travel beside it. Raw readings come from a [`LoadProvider`]: the whole
//! machine ([`MachineLoad`]) or a lab node's cgroup ([`CgroupLoad`]).

mod cgroup;
mod machine;
mod procfs;
mod service;
pub mod speed;

use std::collections::HashSet;
use std::time::{Duration, Instant};

pub use cgroup::CgroupLoad;
pub use machine::MachineLoad;
use omx_mfs::wire::LoadReport;
use service::ServiceMeter;
pub use service::ServicePids;

/// The speed of the reference machine, in openMosix units.
pub const REFERENCE_SPEED: u32 = 10_000;

/// One instantaneous reading of a node's resources.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadSample {
    /// Tasks runnable right now, not counting the one taking the reading
    /// nor the service's threads it was given.
    pub runnable: u32,
    /// CPU time consumed so far by everything the provider covers.
    pub cpu_time: Duration,
    pub mem_total: u64,
    /// Memory processes can get without swapping (page cache counted
    /// as free, as MemAvailable does).
    pub mem_free: u64,
    /// Memory not used for anything, page cache included as used
    /// (openMosix's raw memory, `rmem`).
    pub mem_raw_free: u64,
    /// PSI "some" avg10 in percent, where available.
    pub cpu_pressure: Option<f64>,
    pub mem_pressure: Option<f64>,
}

/// A source of load readings.
pub trait LoadProvider: Send {
    /// Processing capacity in CPUs (fractional for a quota-limited node).
    fn capacity(&self) -> f64;
    /// A reading whose runnable count leaves out `service_tids` (omx's
    /// own threads, counted by the CPU they use instead).
    fn sample(&mut self, service_tids: &HashSet<u32>) -> Result<LoadSample, LoadError>;
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} does not have the expected format: {detail}")]
    Format { path: String, detail: String },
    #[error(
        "none of the cgroup directories {dirs:?} has {file}: is this a cgroup of this machine?"
    )]
    MissingCgroupFile { file: String, dirs: Vec<String> },
}

/// Turns a provider's raw readings into the figures a node gossips.
pub struct LoadMeter {
    provider: Box<dyn LoadProvider>,
    speed: u32,
    /// Time constant of the exponential smoothing of the runnable count.
    smoothing: Duration,
    runnable: Option<f64>,
    utilisation: f64,
    previous: Option<(Instant, Duration)>,
    latest: Option<LoadSample>,
    /// omx's own processes, counted by the CPU they use.
    service: Option<ServiceMeter>,
}

impl LoadMeter {
    pub fn new(provider: Box<dyn LoadProvider>, speed: u32, smoothing: Duration) -> LoadMeter {
        LoadMeter {
            provider,
            speed: speed.max(1),
            smoothing,
            runnable: None,
            utilisation: 0.0,
            previous: None,
            latest: None,
            service: None,
        }
    }

    /// Counts the threads of `pids` (omx's own work on this node) by the
    /// CPU they use rather than as runnable processes.
    pub fn set_service(&mut self, pids: ServicePids) {
        self.service = Some(ServiceMeter::new(pids));
    }

    pub fn speed(&self) -> u32 {
        self.speed
    }

    pub fn set_speed(&mut self, speed: u32) {
        self.speed = speed.max(1);
    }

    /// Takes a reading at `now` and folds it into the smoothed figures.
    pub fn update(&mut self, now: Instant) -> Result<(), LoadError> {
        let service = self.service.as_mut().map(ServiceMeter::sample);
        let no_service = HashSet::new();
        let sample = self
            .provider
            .sample(service.as_ref().map_or(&no_service, |s| &s.tids))?;
        let capacity = self.provider.capacity();
        let runnable = match service {
            Some(service) => {
                let wall = self.previous.map_or(0.0, |(then, _)| {
                    now.saturating_duration_since(then).as_secs_f64()
                });
                let cpu_capacity = capacity / capacity.ceil().max(1.0);
                service::runnable_with_service(sample.runnable, service.cpu_ns, wall, cpu_capacity)
            }
            None => f64::from(sample.runnable),
        };
        match (self.runnable, self.previous) {
            (Some(smoothed), Some((then, _))) => {
                let dt = now.saturating_duration_since(then).as_secs_f64();
                let keep = (-dt / self.smoothing.as_secs_f64().max(1e-3)).exp();
                self.runnable = Some(smoothed * keep + runnable * (1.0 - keep));
            }
            _ => self.runnable = Some(runnable),
        }
        if let Some((then, cpu_then)) = self.previous {
            let wall = now.saturating_duration_since(then).as_secs_f64();
            if wall > 0.0 {
                let used = sample.cpu_time.saturating_sub(cpu_then).as_secs_f64();
                self.utilisation = (used / (wall * capacity.max(1e-3))).clamp(0.0, 1.0);
            }
        }
        self.previous = Some((now, sample.cpu_time));
        self.latest = Some(sample);
        Ok(())
    }

    /// The figures to publish, from the readings so far.
    pub fn report(&self) -> LoadReport {
        let cpus = self.provider.capacity().ceil().max(1.0);
        let runnable = self.runnable.unwrap_or(0.0);
        let load = openmosix_load(runnable, cpus, self.speed);
        let latest = self.latest.as_ref();
        let permille = |p: Option<f64>| p.map(|p| (p * 10.0).round().clamp(0.0, 1000.0) as u16);
        LoadReport {
            load,
            speed: self.speed,
            cpus: cpus as u16,
            runnable_milli: (runnable * 1000.0).round() as u32,
            util_permille: (self.utilisation * 1000.0).round() as u16,
            mem_total: latest.map_or(0, |s| s.mem_total),
            mem_free: latest.map_or(0, |s| s.mem_free),
            mem_raw_free: latest.map_or(0, |s| s.mem_raw_free),
            cpu_pressure_permille: permille(latest.and_then(|s| s.cpu_pressure)),
            mem_pressure_permille: permille(latest.and_then(|s| s.mem_pressure)),
            accepts_guests: true,
            guests_stay: false,
        }
    }
}

/// `runnable * 100 / cpus / (speed / 10000)`, rounded.
pub fn openmosix_load(runnable: f64, cpus: f64, speed: u32) -> u32 {
    let relative_speed = f64::from(speed.max(1)) / f64::from(REFERENCE_SPEED);
    (runnable * 100.0 / cpus.max(1.0) / relative_speed).round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scripted {
        capacity: f64,
        samples: Vec<LoadSample>,
    }

    impl LoadProvider for Scripted {
        fn capacity(&self) -> f64 {
            self.capacity
        }
        fn sample(&mut self, _: &HashSet<u32>) -> Result<LoadSample, LoadError> {
            Ok(self.samples.remove(0))
        }
    }

    fn sample(runnable: u32, cpu_secs: f64) -> LoadSample {
        LoadSample {
            runnable,
            cpu_time: Duration::from_secs_f64(cpu_secs),
            mem_total: 1000,
            mem_free: 400,
            mem_raw_free: 300,
            cpu_pressure: Some(2.5),
            mem_pressure: None,
        }
    }

    #[test]
    fn load_formula_matches_openmosix() {
        assert_eq!(openmosix_load(1.0, 1.0, 10_000), 100);
        assert_eq!(openmosix_load(2.0, 2.0, 10_000), 100);
        assert_eq!(openmosix_load(1.0, 1.0, 20_000), 50);
        assert_eq!(openmosix_load(3.0, 2.0, 5_000), 300);
        assert_eq!(openmosix_load(0.0, 4.0, 30_000), 0);
    }

    #[test]
    fn meter_smooths_runnable_and_measures_utilisation() {
        let provider = Scripted {
            capacity: 2.0,
            samples: vec![sample(0, 10.0), sample(4, 11.0), sample(4, 12.0)],
        };
        let mut meter = LoadMeter::new(Box::new(provider), 10_000, Duration::from_secs(1));
        let t0 = Instant::now();
        meter.update(t0).unwrap();
        assert_eq!(meter.report().load, 0);
        meter.update(t0 + Duration::from_secs(1)).unwrap();
        let after_one = meter.report();
        // One time constant: 1 - e^-1 of the way from 0 to 4.
        assert_eq!(after_one.runnable_milli, 2528);
        // 1 CPU-second used in 1 s on 2 CPUs.
        assert_eq!(after_one.util_permille, 500);
        meter.update(t0 + Duration::from_secs(2)).unwrap();
        let after_two = meter.report();
        assert!(after_two.runnable_milli > after_one.runnable_milli);
        assert_eq!(after_two.cpus, 2);
        assert_eq!(after_two.mem_free, 400);
        assert_eq!(after_two.cpu_pressure_permille, Some(25));
        assert_eq!(after_two.mem_pressure_permille, None);
    }
}
