//! The cgroups that give each lab node its CPUs and RAM.
//!
//! A node's CPU count is a CFS quota (1.5 CPUs = 15 ms per 10 ms period)
//! and its RAM a memory limit. The period is short because a quota stalls
//! a node that used it up until the period ends: with the kernel's usual
//! 100 ms, a node of 1/6 CPU would answer a request only after up to 83
//! ms, which no slow CPU does; 10 ms keeps stalls under 10 ms. Works on cgroup v1 (separate cpu, cpuacct
//! and memory hierarchies, as on this project's machines), nesting the lab
//! under the cgroups this process is already in, and on cgroup v2.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::journal::{Journal, Resource};

const CFS_PERIOD_US: u64 = 10_000;
/// The kernel's smallest quota.
const MIN_QUOTA_US: u64 = 1_000;
/// The kernel's longest period.
const MAX_PERIOD_US: u64 = 1_000_000;

/// The CFS period and quota for `cpus`: the short period, lengthened where
/// the quota would fall below the kernel's minimum.
fn quota_and_period(cpus: f64) -> (u64, u64) {
    let period = if cpus * (CFS_PERIOD_US as f64) < MIN_QUOTA_US as f64 {
        ((MIN_QUOTA_US as f64 / cpus).ceil() as u64).min(MAX_PERIOD_US)
    } else {
        CFS_PERIOD_US
    };
    let quota = ((cpus * period as f64).round() as u64).max(MIN_QUOTA_US);
    (quota, period)
}

/// Where cgroups of each kind are created on this machine.
#[derive(Debug, Clone)]
pub enum CgroupLayout {
    /// cgroup v1: the directory under which to nest, per hierarchy (the
    /// same directory twice if cpu and cpuacct are co-mounted).
    V1 {
        cpu: PathBuf,
        cpuacct: PathBuf,
        memory: PathBuf,
    },
    /// cgroup v2: the mount's root.
    V2 { root: PathBuf },
}

/// The cgroup directories of one lab node.
#[derive(Debug, Clone)]
pub struct NodeCgroups {
    pub dirs: Vec<PathBuf>,
}

impl CgroupLayout {
    pub fn detect() -> anyhow::Result<CgroupLayout> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let v1_base = |controller: &str| -> Option<PathBuf> {
            let mountpoint = mountinfo.lines().find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let mut fs = right.split_whitespace();
                if fs.next()? != "cgroup" {
                    return None;
                }
                let options = fs.nth(1)?;
                options
                    .split(',')
                    .any(|o| o == controller)
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })?;
            let path = own.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let _id = parts.next()?;
                let controllers = parts.next()?;
                let path = parts.next()?;
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then_some(path)
            })?;
            Some(mountpoint.join(path.trim_start_matches('/')))
        };
        if let (Some(cpu), Some(memory)) = (v1_base("cpu"), v1_base("memory")) {
            let cpuacct = v1_base("cpuacct").unwrap_or_else(|| cpu.clone());
            return Ok(CgroupLayout::V1 {
                cpu,
                cpuacct,
                memory,
            });
        }
        let v2_root = mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        });
        if let Some(root) = v2_root {
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if has("cpu") && has("memory") {
                return Ok(CgroupLayout::V2 { root });
            }
        }
        bail!(
            "this machine offers no cpu and memory cgroup controllers (neither cgroup v1 hierarchies nor cgroup v2 with both enabled): the lab needs them to give nodes their CPUs and RAM"
        )
    }

    /// Creates the lab's parent cgroups, journaling each.
    pub fn create_lab(&self, lab: &str, journal: &mut Journal) -> anyhow::Result<()> {
        for dir in self.lab_dirs(lab) {
            make_dir(&dir, journal)?;
        }
        if let CgroupLayout::V2 { root } = self {
            write(&root.join("cgroup.subtree_control"), "+cpu +memory")?;
            write(
                &root.join(lab_dir_name(lab)).join("cgroup.subtree_control"),
                "+cpu +memory",
            )?;
        }
        Ok(())
    }

    /// Creates one node's cgroups with its CPU quota and memory limit.
    pub fn create_node(
        &self,
        lab: &str,
        node: u16,
        cpus: f64,
        mem_bytes: u64,
        journal: &mut Journal,
    ) -> anyhow::Result<NodeCgroups> {
        let (quota_us, period_us) = quota_and_period(cpus);
        let name = format!("node-{node}");
        match self {
            CgroupLayout::V1 {
                cpu,
                cpuacct,
                memory,
            } => {
                let mut dirs = Vec::new();
                for base in [cpu, cpuacct, memory] {
                    let dir = base.join(lab_dir_name(lab)).join(&name);
                    if !dirs.contains(&dir) {
                        make_dir(&dir, journal)?;
                        dirs.push(dir);
                    }
                }
                let cpu_dir = cpu.join(lab_dir_name(lab)).join(&name);
                write(&cpu_dir.join("cpu.cfs_period_us"), &period_us.to_string())?;
                write(&cpu_dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
                let memory_dir = memory.join(lab_dir_name(lab)).join(&name);
                write(
                    &memory_dir.join("memory.limit_in_bytes"),
                    &mem_bytes.to_string(),
                )?;
                Ok(NodeCgroups { dirs })
            }
            CgroupLayout::V2 { root } => {
                let dir = root.join(lab_dir_name(lab)).join(&name);
                make_dir(&dir, journal)?;
                write(&dir.join("cpu.max"), &format!("{quota_us} {period_us}"))?;
                write(&dir.join("memory.max"), &mem_bytes.to_string())?;
                Ok(NodeCgroups { dirs: vec![dir] })
            }
        }
    }

    /// The lab's parent cgroup directories (one per hierarchy).
    pub fn lab_dirs(&self, lab: &str) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        let bases: Vec<&PathBuf> = match self {
            CgroupLayout::V1 {
                cpu,
                cpuacct,
                memory,
            } => vec![cpu, cpuacct, memory],
            CgroupLayout::V2 { root } => vec![root],
        };
        for base in bases {
            let dir = base.join(lab_dir_name(lab));
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }
}

pub fn lab_dir_name(lab: &str) -> String {
    format!("omx-lab-{lab}")
}

fn make_dir(dir: &Path, journal: &mut Journal) -> anyhow::Result<()> {
    journal.record(&Resource::Cgroup {
        path: dir.to_path_buf(),
    })?;
    std::fs::create_dir(dir).with_context(|| format!("cannot create cgroup {}", dir.display()))
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value)
        .with_context(|| format!("cannot write {value:?} to {}", path.display()))
}

/// Moves the calling process into `dirs` (one cgroup per hierarchy).
pub fn join(dirs: &[PathBuf]) -> anyhow::Result<()> {
    let pid = std::process::id().to_string();
    for dir in dirs {
        write(&dir.join("cgroup.procs"), &pid)?;
    }
    Ok(())
}

/// Kills every process in the cgroup `dir` and below, and waits until they
/// are gone.
pub fn kill_all(dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = procs_below(dir);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "processes {pids:?} in {} do not die",
                dir.display()
            ));
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn procs_below(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for child in child_dirs(dir) {
        pids.extend(procs_below(&child));
    }
    pids
}

fn child_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes an empty cgroup and its children (cgroup directories are
/// removed with rmdir, deepest first). Returns whether it existed.
pub fn remove_tree(dir: &Path) -> Result<bool, String> {
    if !dir.exists() {
        return Ok(false);
    }
    for child in child_dirs(dir) {
        remove_tree(&child)?;
    }
    // A cgroup whose last process just exited can be busy for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("cannot remove cgroup {}: {e}", dir.display())),
        }
    }
}

/// Whether process `pid` is in a cgroup whose path ends with `suffix`
/// (in any hierarchy).
pub fn process_in(pid: i32, suffix: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|t| {
        t.lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| path == suffix || path.ends_with(&format!("/{suffix}")))
    })
}

#[cfg(test)]
mod tests {
    use super::quota_and_period;

    #[test]
    fn quotas_use_a_short_period_and_respect_the_kernel_minimum() {
        assert_eq!(quota_and_period(1.5), (15_000, 10_000));
        assert_eq!(quota_and_period(1.0 / 6.0), (1_667, 10_000));
        // 0.05 CPU would be 0.5 ms per 10 ms: the period grows instead.
        assert_eq!(quota_and_period(0.05), (1_000, 20_000));
        assert_eq!(quota_and_period(0.01), (1_000, 100_000));
    }
}
