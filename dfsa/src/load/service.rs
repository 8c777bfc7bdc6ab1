//! omx's own work on a node (the daemon, its keepers, the deputies of
//! processes away) counts in the load by the CPU it takes, not by how
//! often a sample catches it runnable.
//!
//! On a node held to a CPU quota, a deputy that needs 50 us for a
//! forwarded call waits in state R until the next period: counted as a
//! whole process each time, the service of eleven remotes made a home look
//! twice as loaded as it was, and the home's own job was sent away and
//! back again.

use std::collections::{HashMap, HashSet};

use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

/// The processes doing omx's work on this node, asked at every sample.
pub type ServicePids = Box<dyn Fn() -> Vec<u32> + Send>;

/// Follows the CPU time of the service processes.
///
/// Sampled ten times a second on a node that may have a sixth of a CPU,
/// so it reads as little as it can: one directory listing and one clock
/// per process, not a file per thread (the daemon alone has dozens of
/// threads, and reading them all cost its node a tenth of its CPU).
pub struct ServiceMeter {
    pids: ServicePids,
    /// CPU nanoseconds of each process (all its threads, living or ended)
    /// at the previous sample.
    cpu_ns: HashMap<u32, u64>,
}

/// The service processes at one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceSample {
    /// Their threads: the load providers leave them out of the runnable
    /// count.
    pub tids: HashSet<u32>,
    /// CPU time they used since the previous sample. A process first seen
    /// counts from then on.
    pub cpu_ns: u64,
}

impl ServiceMeter {
    pub fn new(pids: ServicePids) -> ServiceMeter {
        ServiceMeter {
            pids,
            cpu_ns: HashMap::new(),
        }
    }

    pub fn sample(&mut self) -> ServiceSample {
        let mut seen = HashMap::new();
        let mut sample = ServiceSample::default();
        let mut pids = (self.pids)();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            sample.tids.extend(
                tasks
                    .flatten()
                    .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok()),
            );
            // The process may end between listing and reading: skip it.
            let Some(ns) = process_cpu_ns(pid) else {
                continue;
            };
            if let Some(before) = self.cpu_ns.get(&pid) {
                sample.cpu_ns += ns.saturating_sub(*before);
            }
            seen.insert(pid, ns);
        }
        self.cpu_ns = seen;
        sample
    }
}

/// CPU time of all threads of `pid` so far, from its process CPU clock
/// (`/proc/PID/schedstat` has only the main thread's).
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let clock = ClockId::pid_cpu_clock_id(Pid::from_raw(i32::try_from(pid).ok()?)).ok()?;
    let t = clock_gettime(clock).ok()?;
    u64::try_from(t.tv_sec())
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(t.tv_nsec()).ok()?)
}

/// The runnable count with the service's threads counted by the CPU they
/// used: `cpu_share` of one CPU of the node (for a node held to a quota, a
/// CPU is `capacity / cpus` of this machine's).
///
/// `others` is the runnable count without the service's threads.
pub fn runnable_with_service(
    others: u32,
    service_cpu_ns: u64,
    wall_s: f64,
    cpu_capacity: f64,
) -> f64 {
    let others = f64::from(others);
    if wall_s <= 0.0 || cpu_capacity <= 0.0 {
        return others;
    }
    others + service_cpu_ns as f64 / 1e9 / wall_s / cpu_capacity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_threads_of_the_service_processes() {
        // A process of one thread (this test process's threads come and go
        // with the other tests).
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let pid = sleeper.id();
        let mut meter = ServiceMeter::new(Box::new(move || vec![pid, pid]));
        let sample = meter.sample();
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert_eq!(sample.tids, HashSet::from([pid]));
    }

    #[test]
    fn service_counts_by_cpu_used_not_by_presence() {
        // 2 runnable besides ours, which used 50 ms in 1 s of a node of
        // 1/6 of a CPU: 2 + 0.3.
        let r = runnable_with_service(2, 50_000_000, 1.0, 1.0 / 6.0);
        assert!((r - 2.3).abs() < 1e-9, "{r}");
        // Without a measured interval, only the others count.
        assert_eq!(runnable_with_service(1, 50_000_000, 0.0, 1.0), 1.0);
    }

    #[test]
    fn follows_the_cpu_time_of_this_process() {
        let mut meter = ServiceMeter::new(Box::new(|| vec![std::process::id()]));
        assert_eq!(
            meter.sample().cpu_ns,
            0,
            "processes count from their first sample"
        );
        // Spin until this thread used 30 ms of CPU, however busy the
        // machine is.
        let cpu_ns = || {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .expect("this thread's schedstat")
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .expect("CPU nanoseconds")
        };
        let started = cpu_ns();
        let mut x = 0u64;
        while cpu_ns() - started < 30_000_000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let sample = meter.sample();
        assert!(
            sample.cpu_ns >= 30_000_000,
            "30 ms of spinning shows as {} ns",
            sample.cpu_ns
        );
    }
}
