//! What a process uses, read from procfs: CPU time, resident memory, and
//! file I/O by the node that holds each file. The placement engine's
//! statistics are built from these samples, at home for processes that run
//! there (and for deputies, whose forwarded I/O moves their offsets) and by
//! remote keepers for their guests.

use std::collections::HashMap;
use std::io;
use std::path::Path;

/// One sample of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since it started, nanoseconds.
    pub cpu_ns: u64,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Runnable when sampled (state `R`: running, or waiting for a CPU
    /// or for its cgroup's quota).
    pub runnable: bool,
    /// Time spent runnable but waiting to run since it started (waiting
    /// for a CPU or for its cgroup's quota), nanoseconds, where the kernel
    /// keeps scheduler statistics.
    pub wait_ns: Option<u64>,
    /// Its open regular files and their offsets.
    pub files: Vec<FilePosition>,
}

/// An open regular file of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePosition {
    pub fd: i32,
    pub holder: FileHolder,
    pub pos: u64,
    /// Open with `O_APPEND`: its offset is where the file ends, not what
    /// this process moved (`cmd >> big.log`).
    pub appending: bool,
}

/// Which node holds a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileHolder {
    /// Under `/mfs/<node>/`.
    Node(u16),
    /// A file of the node the process runs on, outside MFS.
    Local,
}

/// Samples process `pid`. `mfs_root` is where MFS is mounted (`/mfs`).
pub fn sample(pid: u32, mfs_root: &Path) -> io::Result<Usage> {
    let schedstat = schedstat(pid);
    Ok(Usage {
        cpu_ns: match schedstat {
            Some((cpu_ns, _)) => cpu_ns,
            None => cpu_ns_from_stat(pid)?,
        },
        rss: rss(pid)?,
        runnable: runnable(pid)?,
        wait_ns: schedstat.map(|(_, wait_ns)| wait_ns),
        files: files(pid, mfs_root),
    })
}

/// CPU time and time waiting on a run queue (nanoseconds), where the
/// kernel keeps scheduler statistics.
fn schedstat(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let mut figures = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((figures.next()??, figures.next()??))
}

/// The fields of `/proc/PID/stat` after the command name (field 3 on).
fn stat_fields(pid: u32) -> io::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat has no command field")))?;
    Ok(after.split_whitespace().map(str::to_string).collect())
}

fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64
}

/// CPU time from `stat` in clock ticks, where the kernel has no scheduler
/// statistics.
fn cpu_ns_from_stat(pid: u32) -> io::Result<u64> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Ok(ticks * (1_000_000_000 / clock_ticks_per_second()))
}

/// When process `pid` started, in clock ticks after boot (field 22 of
/// `/proc/PID/stat`): with the pid, it names one process, not a later one
/// that reused the number.
pub fn start_ticks(pid: u32) -> io::Result<u64> {
    stat_fields(pid)?
        .get(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat has no start time")))
}

/// How long ago process `pid` started (to clock-tick precision): its CPU
/// and wait times so far were spent in this long.
pub fn age(pid: u32) -> io::Result<std::time::Duration> {
    let ticks = start_ticks(pid)?;
    let started =
        std::time::Duration::from_nanos(ticks * (1_000_000_000 / clock_ticks_per_second()));
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_err(io::Error::from)?;
    let now = std::time::Duration::from(now);
    Ok(now.saturating_sub(started))
}

fn runnable(pid: u32) -> io::Result<bool> {
    let fields = stat_fields(pid)?;
    let state = fields
        .first()
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat has no state field")))?;
    Ok(state == "R")
}

fn rss(pid: u32) -> io::Result<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096)
        .max(1) as u64;
    Ok(pages * page)
}

/// Open regular files with their offsets; descriptors that close while
/// being read are skipped.
fn files(pid: u32, mfs_root: &Path) -> Vec<FilePosition> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let Some(holder) = holder_of(&target, mfs_root) else {
            continue;
        };
        let Some((pos, appending)) = position(pid, fd) else {
            continue;
        };
        files.push(FilePosition {
            fd,
            holder,
            pos,
            appending,
        });
    }
    files.sort_by_key(|f| f.fd);
    files
}

/// Which node holds the file an fd link names; `None` for what is not a
/// file on a disk (pipes, sockets, anonymous inodes, devices, deleted
/// files).
pub fn holder_of(target: &Path, mfs_root: &Path) -> Option<FileHolder> {
    let text = target.to_str()?;
    if !text.starts_with('/') || text.ends_with(" (deleted)") || text.starts_with("/dev/") {
        return None;
    }
    if let Ok(rest) = target.strip_prefix(mfs_root) {
        let node = rest
            .components()
            .next()?
            .as_os_str()
            .to_str()?
            .parse()
            .ok()?;
        return Some(FileHolder::Node(node));
    }
    if text.starts_with("/proc/") || text.starts_with("/sys/") {
        return None;
    }
    Some(FileHolder::Local)
}

/// A descriptor's offset, and whether it appends (`pos:` and the octal
/// `flags:` of its fdinfo).
fn position(pid: u32, fd: i32) -> Option<(u64, bool)> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let pos = field("pos:")?.parse().ok()?;
    let flags = field("flags:").and_then(|f| i32::from_str_radix(f, 8).ok());
    Some((pos, flags.is_some_and(|f| f & libc::O_APPEND != 0)))
}

/// Turns successive samples into bytes moved per file holder: the
/// distance each descriptor's offset travelled since the last sample.
/// (Positioned reads and writes that leave the offset alone are not seen.)
#[derive(Debug, Default)]
pub struct IoTracker {
    last: HashMap<i32, (FileHolder, u64)>,
}

impl IoTracker {
    pub fn new() -> IoTracker {
        IoTracker::default()
    }

    /// Bytes moved since the previous call, by holder. A descriptor not
    /// seen before only sets where its offset starts from.
    pub fn update(&mut self, files: &[FilePosition]) -> HashMap<FileHolder, u64> {
        self.track(files, false)
    }

    /// Bytes moved since each descriptor was opened, by holder: its offset
    /// (for a process seen for the first time, measured over its life).
    /// An appending descriptor's offset is the file's size, inherited from
    /// whoever opened it: it only sets where its offset starts from.
    pub fn update_from_open(&mut self, files: &[FilePosition]) -> HashMap<FileHolder, u64> {
        self.track(files, true)
    }

    fn track(&mut self, files: &[FilePosition], new_from_open: bool) -> HashMap<FileHolder, u64> {
        let mut moved: HashMap<FileHolder, u64> = HashMap::new();
        let mut next = HashMap::with_capacity(files.len());
        for f in files {
            match self.last.get(&f.fd) {
                Some(&(holder, pos)) if holder == f.holder => {
                    *moved.entry(holder).or_default() += f.pos.abs_diff(pos);
                }
                Some(_) => {}
                None if new_from_open && !f.appending => {
                    *moved.entry(f.holder).or_default() += f.pos
                }
                None => {}
            }
            next.insert(f.fd, (f.holder, f.pos));
        }
        self.last = next;
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn a_child_is_as_old_as_the_time_since_it_was_started() {
        use std::time::{Duration, Instant};
        let before_spawn = Instant::now();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let after_spawn = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        let at_least = after_spawn.elapsed();
        let age = age(child.id()).unwrap();
        let at_most = before_spawn.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        // It started between the two instants; its start time is rounded
        // down to a clock tick, which can add up to one tick.
        let tick = Duration::from_nanos(1_000_000_000 / clock_ticks_per_second());
        assert!(age >= at_least, "{age:?} < {at_least:?}");
        assert!(age <= at_most + tick, "{age:?} > {at_most:?} + {tick:?}");
        // This process has run longer than its child.
        assert!(super::age(std::process::id()).unwrap() >= age);
    }

    #[test]
    fn holders_follow_the_path() {
        let mfs = Path::new("/mfs");
        assert_eq!(
            holder_of(Path::new("/mfs/3/data/x"), mfs),
            Some(FileHolder::Node(3))
        );
        assert_eq!(holder_of(Path::new("/mfs/here"), mfs), None);
        assert_eq!(
            holder_of(Path::new("/home/u/x"), mfs),
            Some(FileHolder::Local)
        );
        assert_eq!(holder_of(Path::new("pipe:[1234]"), mfs), None);
        assert_eq!(holder_of(Path::new("/dev/null"), mfs), None);
        assert_eq!(holder_of(Path::new("/tmp/x (deleted)"), mfs), None);
    }

    #[test]
    fn a_file_read_here_counts_its_bytes() {
        let dir = std::env::temp_dir().join(format!("omx-usage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&vec![7u8; 100_000])
            .unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let me = std::process::id();
        let mut tracker = IoTracker::new();
        let before = sample(me, Path::new("/mfs")).unwrap();
        assert!(before.rss > 0 && before.cpu_ns > 0);
        tracker.update(&before.files);
        let mut buffer = vec![0u8; 60_000];
        file.read_exact(&mut buffer).unwrap();
        let after = sample(me, Path::new("/mfs")).unwrap();
        let moved = tracker.update(&after.files);
        assert_eq!(moved.get(&FileHolder::Local), Some(&60_000));
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        let back = tracker.update(&sample(me, Path::new("/mfs")).unwrap().files);
        assert_eq!(
            back.get(&FileHolder::Local),
            Some(&60_000),
            "a seek back counts as distance"
        );
        // Seen for the first time: what it read since it opened the file,
        // and not the size of a file it appends to.
        file.read_exact(&mut buffer[..25_000]).unwrap();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        log.write_all(b"appended").unwrap();
        let mut first_sight = IoTracker::new();
        let from_open = first_sight.update_from_open(&sample(me, Path::new("/mfs")).unwrap().files);
        assert_eq!(from_open.get(&FileHolder::Local), Some(&25_000));
        assert!(
            IoTracker::new()
                .update(&sample(me, Path::new("/mfs")).unwrap().files)
                .is_empty(),
            "a plain first update only sets where offsets start"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
