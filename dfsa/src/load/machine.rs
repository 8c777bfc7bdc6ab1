//! Load of the whole machine, from /proc and PSI.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::procfs::{format_error, keyed_u64, psi_some_avg10, read, stat_state};
use super::{LoadError, LoadProvider, LoadSample};

/// Readings for a node that is a whole machine.
pub struct MachineLoad {
    capacity: f64,
    clock_ticks_per_second: u64,
}

impl MachineLoad {
    pub fn new() -> MachineLoad {
        let capacity = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as u64;
        MachineLoad {
            capacity,
            clock_ticks_per_second: ticks,
        }
    }
}

impl Default for MachineLoad {
    fn default() -> Self {
        MachineLoad::new()
    }
}

impl LoadProvider for MachineLoad {
    fn capacity(&self) -> f64 {
        self.capacity
    }

    fn sample(&mut self, service_tids: &HashSet<u32>) -> Result<LoadSample, LoadError> {
        let stat_path = Path::new("/proc/stat");
        let stat = read(stat_path)?;
        // procs_running counts the thread reading it.
        let me = nix::unistd::gettid().as_raw() as u32;
        let service_running = service_tids
            .iter()
            .filter(|&&tid| tid != me)
            .filter(|tid| {
                std::fs::read_to_string(format!("/proc/{tid}/stat"))
                    .is_ok_and(|s| stat_state(&s) == Some('R'))
            })
            .count() as u64;
        let runnable = keyed_u64(&stat, "procs_running")
            .ok_or_else(|| format_error(stat_path, "no procs_running line"))?
            .saturating_sub(1 + service_running) as u32;
        let cpu_line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .ok_or_else(|| format_error(stat_path, "no cpu line"))?;
        let ticks: Vec<u64> = cpu_line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        if ticks.len() < 5 {
            return Err(format_error(stat_path, "cpu line has fewer than 5 fields"));
        }
        // user nice system idle iowait irq softirq steal ...: busy is all
        // but idle and iowait.
        let busy: u64 = ticks.iter().sum::<u64>() - ticks[3] - ticks[4];
        let cpu_time = Duration::from_secs_f64(busy as f64 / self.clock_ticks_per_second as f64);

        let meminfo_path = Path::new("/proc/meminfo");
        let meminfo = read(meminfo_path)?;
        let kib = |key| {
            keyed_u64(&meminfo, key)
                .map(|v| v * 1024)
                .ok_or_else(|| format_error(meminfo_path, format!("no {key} line")))
        };
        let pressure = |file: &str| {
            std::fs::read_to_string(Path::new("/proc/pressure").join(file))
                .ok()
                .and_then(|t| psi_some_avg10(&t))
        };
        Ok(LoadSample {
            runnable,
            cpu_time,
            mem_total: kib("MemTotal")?,
            mem_free: kib("MemAvailable")?,
            mem_raw_free: kib("MemFree")?,
            cpu_pressure: pressure("cpu"),
            mem_pressure: pressure("memory"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let mut machine = MachineLoad::new();
        let sample = machine.sample(&HashSet::new()).unwrap();
        assert!(machine.capacity() >= 1.0);
        assert!(sample.mem_total > 0);
        assert!(sample.mem_free <= sample.mem_total);
        assert!(sample.cpu_time > Duration::ZERO);
    }
}
