//! Load of a lab node: everything inside its cgroup.
//!
//! A lab node is a set of processes confined by a cgroup whose CPU quota
//! and memory limit stand for the node's CPUs and RAM. Works with cgroup v1
//! (one directory per hierarchy: cpu, cpuacct, memory) and cgroup v2 (one
//! directory): each figure is read from whichever listed directory has the
//! file for it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::procfs::{format_error, keyed_u64, psi_some_avg10, read, stat_state};
use super::{LoadError, LoadProvider, LoadSample, MachineLoad};

/// Readings for a node that is a cgroup.
pub struct CgroupLoad {
    dirs: Vec<PathBuf>,
    machine_capacity: f64,
    machine_memory: u64,
}

impl CgroupLoad {
    pub fn new(dirs: Vec<PathBuf>) -> Result<CgroupLoad, LoadError> {
        let mut machine = MachineLoad::new();
        let machine_memory = machine.sample(&HashSet::new())?.mem_total;
        let provider = CgroupLoad {
            dirs,
            machine_capacity: machine.capacity(),
            machine_memory,
        };
        // Fail now, not at the first gossip step, if the cgroup is not there.
        provider.find_any(&["tasks", "cgroup.threads"])?;
        Ok(provider)
    }

    /// The first existing `dir/name` among the dirs, for any of `names`.
    fn find_any(&self, names: &[&str]) -> Result<PathBuf, LoadError> {
        self.try_find(names)
            .ok_or_else(|| LoadError::MissingCgroupFile {
                file: names.join(" or "),
                dirs: self.dirs.iter().map(|d| d.display().to_string()).collect(),
            })
    }

    fn try_find(&self, names: &[&str]) -> Option<PathBuf> {
        names
            .iter()
            .flat_map(|name| self.dirs.iter().map(move |d| d.join(name)))
            .find(|p| p.exists())
    }

    fn runnable(&self, service_tids: &HashSet<u32>) -> Result<u32, LoadError> {
        let tasks = self.find_any(&["tasks", "cgroup.threads"])?;
        let me = nix::unistd::gettid().as_raw();
        let mut count = 0;
        for tid in all_tasks(
            tasks.parent().expect("a file in a directory"),
            tasks.file_name().expect("a file name"),
        )? {
            if tid == me || service_tids.contains(&(tid as u32)) {
                continue;
            }
            // A task may exit between listing and reading: skip it.
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{tid}/stat"))
                && stat_state(&stat) == Some('R')
            {
                count += 1;
            }
        }
        Ok(count)
    }

    fn cpu_time(&self) -> Result<Duration, LoadError> {
        if let Some(path) = self.try_find(&["cpuacct.usage"]) {
            let ns = read(&path)?
                .trim()
                .parse::<u64>()
                .map_err(|_| format_error(&path, "not a number of nanoseconds"))?;
            return Ok(Duration::from_nanos(ns));
        }
        let path = self.find_any(&["cpuacct.usage", "cpu.stat"])?;
        let usec = keyed_u64(&read(&path)?, "usage_usec")
            .ok_or_else(|| format_error(&path, "no usage_usec line"))?;
        Ok(Duration::from_micros(usec))
    }

    /// Total, free (page cache counted as free) and raw free memory.
    fn memory(&self) -> Result<(u64, u64, u64), LoadError> {
        let (limit, usage, inactive_key) =
            if let Some(limit) = self.try_find(&["memory.limit_in_bytes"]) {
                let usage = self.find_any(&["memory.usage_in_bytes"])?;
                (
                    read_limit(&limit)?,
                    read_u64(&usage)?,
                    "total_inactive_file",
                )
            } else {
                let limit = self.find_any(&["memory.limit_in_bytes", "memory.max"])?;
                let usage = self.find_any(&["memory.current"])?;
                (read_limit(&limit)?, read_u64(&usage)?, "inactive_file")
            };
        let total = limit
            .unwrap_or(self.machine_memory)
            .min(self.machine_memory);
        // Inactive page cache can be reclaimed at once: count it as free,
        // as MemAvailable does for a machine.
        let reclaimable = self
            .try_find(&["memory.stat"])
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| keyed_u64(&t, inactive_key))
            .unwrap_or(0);
        let used = usage.saturating_sub(reclaimable);
        Ok((
            total,
            total.saturating_sub(used),
            total.saturating_sub(usage),
        ))
    }

    fn pressure(&self, file: &str) -> Option<f64> {
        let path = self.try_find(&[file])?;
        psi_some_avg10(&std::fs::read_to_string(path).ok()?)
    }
}

impl LoadProvider for CgroupLoad {
    fn capacity(&self) -> f64 {
        let quota = if let Some(path) = self.try_find(&["cpu.cfs_quota_us"]) {
            let period = path.with_file_name("cpu.cfs_period_us");
            match (read_i64(&path), read_i64(&period)) {
                (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
                _ => None,
            }
        } else if let Some(path) = self.try_find(&["cpu.max"]) {
            std::fs::read_to_string(path).ok().and_then(|t| {
                let mut fields = t.split_whitespace();
                let q: f64 = fields.next()?.parse().ok()?;
                let p: f64 = fields.next()?.parse().ok()?;
                (p > 0.0).then_some(q / p)
            })
        } else {
            None
        };
        quota.map_or(self.machine_capacity, |q| q.min(self.machine_capacity))
    }

    fn sample(&mut self, service_tids: &HashSet<u32>) -> Result<LoadSample, LoadError> {
        let (mem_total, mem_free, mem_raw_free) = self.memory()?;
        Ok(LoadSample {
            runnable: self.runnable(service_tids)?,
            cpu_time: self.cpu_time()?,
            mem_total,
            mem_free,
            mem_raw_free,
            cpu_pressure: self.pressure("cpu.pressure"),
            mem_pressure: self.pressure("memory.pressure"),
        })
    }
}

/// Task ids listed in `file` of `dir` and of every cgroup below it.
fn all_tasks(dir: &Path, file: &std::ffi::OsStr) -> Result<Vec<i32>, LoadError> {
    let path = dir.join(file);
    let mut tids: Vec<i32> = read(&path)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                tids.extend(all_tasks(&entry.path(), file)?);
            }
        }
    }
    Ok(tids)
}

fn read_u64(path: &Path) -> Result<u64, LoadError> {
    read(path)?
        .trim()
        .parse()
        .map_err(|_| format_error(path, "not a number"))
}

fn read_i64(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A memory limit; `None` for "max" or the v1 "no limit" value.
fn read_limit(path: &Path) -> Result<Option<u64>, LoadError> {
    let text = read(path)?;
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    let value: u64 = text
        .parse()
        .map_err(|_| format_error(path, "not a number or \"max\""))?;
    Ok((value < (1 << 60)).then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v1(dir: &Path, quota: i64) {
        std::fs::create_dir_all(dir.join("child")).unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), format!("{quota}\n")).unwrap();
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000\n").unwrap();
        std::fs::write(dir.join("cpuacct.usage"), "2500000000\n").unwrap();
        std::fs::write(dir.join("memory.limit_in_bytes"), "1073741824\n").unwrap();
        std::fs::write(dir.join("memory.usage_in_bytes"), "536870912\n").unwrap();
        std::fs::write(
            dir.join("memory.stat"),
            "cache 0\ntotal_inactive_file 268435456\n",
        )
        .unwrap();
        let me = nix::unistd::gettid().as_raw();
        std::fs::write(dir.join("tasks"), format!("{me}\n")).unwrap();
        std::fs::write(dir.join("child").join("tasks"), "").unwrap();
    }

    #[test]
    fn reads_a_v1_style_cgroup() {
        let dir = std::env::temp_dir().join(format!("omx-cg-{}", std::process::id()));
        fake_v1(&dir, 50_000);
        let mut cgroup = CgroupLoad::new(vec![dir.clone()]).unwrap();
        assert_eq!(cgroup.capacity(), 0.5);
        let sample = cgroup.sample(&HashSet::new()).unwrap();
        assert_eq!(sample.runnable, 0, "the reading thread is not counted");
        assert_eq!(sample.cpu_time, Duration::from_millis(2500));
        assert_eq!(sample.mem_total, 1 << 30);
        assert_eq!(sample.mem_free, (1 << 30) - (1 << 28));
        assert!(sample.mem_raw_free <= sample.mem_free);
        assert_eq!(sample.cpu_pressure, None);

        // A spinning thread in a child cgroup is runnable, unless it is
        // one of the service's.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                tid_tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let spinning = tid_rx.recv().unwrap();
        std::fs::write(dir.join("child").join("tasks"), format!("{spinning}\n")).unwrap();
        assert_eq!(cgroup.sample(&HashSet::new()).unwrap().runnable, 1);
        assert_eq!(
            cgroup.sample(&HashSet::from([spinning])).unwrap().runnable,
            0,
            "a service thread is counted by its CPU elsewhere"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();

        std::fs::write(dir.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        assert!(cgroup.capacity() >= 1.0, "no quota: the machine's CPUs");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_a_directory_that_is_not_a_cgroup() {
        let e = CgroupLoad::new(vec![PathBuf::from("/nonexistent/cg")])
            .err()
            .unwrap();
        assert!(e.to_string().contains("tasks or cgroup.threads"), "{e}");
    }
}
