//! omx's own work on a node (the daemon, its keepers, the deputies of
//! processes away) counts in the load by the CPU it takes, not by how
//! often a sample catches it runnable.
//!
//! On a node held to a CPU quota, a deputy that needs 50 us for a
//! forwarded call waits in state R until the next period: counted as a
//! whole process each time, the service of eleven remotes made a home look
//! twice as loaded as it was, and the home's own job was sent away and
//! back again.

use std::collections::HashMap;

use super::procfs::stat_state;

/// The processes doing omx's work on this node, asked at every sample.
pub type ServicePids = Box<dyn Fn() -> Vec<u32> + Send>;

/// Follows the CPU time of the service processes' threads.
pub struct ServiceMeter {
    pids: ServicePids,
    /// CPU nanoseconds of each thread at the previous sample.
    cpu_ns: HashMap<u32, u64>,
}

/// The service processes at one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServiceSample {
    /// Their threads in state R (the sampling thread excepted).
    pub runnable: u32,
    /// CPU time their threads used since the previous sample. A thread
    /// first seen counts from then on.
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
        let me = nix::unistd::gettid().as_raw() as u32;
        let mut seen = HashMap::new();
        let mut sample = ServiceSample::default();
        let mut pids = (self.pids)();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Some(tid) = task
                    .file_name()
                    .to_str()
                    .and_then(|t| t.parse::<u32>().ok())
                else {
                    continue;
                };
                // A thread may end between listing and reading: skip it.
                let dir = task.path();
                if tid != me
                    && std::fs::read_to_string(dir.join("stat"))
                        .is_ok_and(|s| stat_state(&s) == Some('R'))
                {
                    sample.runnable += 1;
                }
                let Some(ns) = std::fs::read_to_string(dir.join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                else {
                    continue;
                };
                if let Some(before) = self.cpu_ns.get(&tid) {
                    sample.cpu_ns += ns.saturating_sub(*before);
                }
                seen.insert(tid, ns);
            }
        }
        self.cpu_ns = seen;
        sample
    }
}

/// The runnable count with the service's threads counted by the CPU they
/// used: `cpu_share` of one CPU of the node (for a node held to a quota, a
/// CPU is `capacity / cpus` of this machine's).
pub fn runnable_with_service(
    runnable: u32,
    service: ServiceSample,
    wall_s: f64,
    cpu_capacity: f64,
) -> f64 {
    let others = f64::from(runnable.saturating_sub(service.runnable));
    if wall_s <= 0.0 || cpu_capacity <= 0.0 {
        return others;
    }
    others + service.cpu_ns as f64 / 1e9 / wall_s / cpu_capacity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_counts_by_cpu_used_not_by_presence() {
        // 5 runnable, 3 of them ours, which used 50 ms in 1 s of a node of
        // 1/6 of a CPU: 2 + 0.3.
        let s = ServiceSample {
            runnable: 3,
            cpu_ns: 50_000_000,
        };
        let r = runnable_with_service(5, s, 1.0, 1.0 / 6.0);
        assert!((r - 2.3).abs() < 1e-9, "{r}");
        // A race between the two counts never gives less than nothing.
        assert_eq!(runnable_with_service(1, s, 0.0, 1.0), 0.0);
    }

    #[test]
    fn follows_the_cpu_time_of_this_process() {
        let mut meter = ServiceMeter::new(Box::new(|| vec![std::process::id()]));
        assert_eq!(
            meter.sample().cpu_ns,
            0,
            "threads count from their first sample"
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
