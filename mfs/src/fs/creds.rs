//! Running a file operation as the process that asked for it.
//!
//! The daemon runs as root, but MFS must never act as root on a caller's
//! behalf: each operation runs on a thread whose file system identity
//! (fsuid, fsgid, supplementary groups) is the caller's, so the kernel
//! checks permissions exactly as for that user logged in on the owner.
//! These are per-thread settings. A thread that makes files has its file
//! system context (umask) made private once, so the caller's mode bits,
//! already masked by its own kernel, are used as given; a look (a stat, a
//! lookup) leaves it alone, as it may run on a thread shared with other
//! work. A non-root caller's groups are read from /proc for every
//! operation ([`CallerGroups`]); root's decide nothing.

use std::cell::Cell;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use nix::errno::Errno;
use nix::unistd::{Gid, Uid, setfsgid, setfsuid};

use super::sys;
use crate::wire::fs::Caller;

/// The identity an operation runs with at the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// How root callers from other nodes are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Squash {
    /// Map uid 0 of another node to `uid`/`gid`.
    pub root: bool,
    pub uid: u32,
    pub gid: u32,
}

impl Credentials {
    /// The identity a caller gets here; `remote` when it asks from
    /// another node.
    pub fn of(caller: &Caller, remote: bool, squash: Squash) -> Credentials {
        if remote && squash.root && caller.uid == 0 {
            return Credentials {
                uid: squash.uid,
                gid: squash.gid,
                groups: Vec::new(),
            };
        }
        Credentials {
            uid: caller.uid,
            gid: caller.gid,
            groups: caller.groups.clone(),
        }
    }
}

thread_local! {
    /// Whether this thread's file system context (umask) is its own.
    static UMASK_PRIVATE: Cell<bool> = const { Cell::new(false) };
    /// The thread's own supplementary groups, given back after each
    /// operation (read once: they never change).
    static OWN_GROUPS: std::cell::RefCell<Option<Vec<u32>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `operation` with `credentials` on this thread, then gives the
/// thread back its own identity. The thread's umask is made private and
/// cleared first, once, so files are made with the mode the caller's own
/// kernel already masked.
pub fn run_as<T>(
    credentials: &Credentials,
    operation: impl FnOnce() -> Result<T, Errno>,
) -> Result<T, Errno> {
    make_umask_private()?;
    as_caller(credentials, operation)
}

/// Runs `operation`, which makes nothing (a stat, a lookup, a read of a
/// link or of attributes), with `credentials` on this thread, leaving the
/// thread's umask alone: it may run on a thread shared with other work of
/// the daemon, which must keep making its own files with its own umask.
pub fn run_as_looking<T>(
    credentials: &Credentials,
    operation: impl FnOnce() -> Result<T, Errno>,
) -> Result<T, Errno> {
    as_caller(credentials, operation)
}

fn as_caller<T>(
    credentials: &Credentials,
    operation: impl FnOnce() -> Result<T, Errno>,
) -> Result<T, Errno> {
    // Root (not squashed) is what the thread already is: its groups decide
    // nothing that its capabilities do not override, and files it makes
    // get group 0 either way. Six identity changes saved per operation.
    if credentials.uid == 0 && credentials.gid == 0 {
        return operation();
    }
    let own = own_groups()?;
    // Gives the thread its identity back however `operation` ends, a
    // panic included: the thread goes on serving other callers.
    struct Restore(Vec<u32>);
    impl Drop for Restore {
        fn drop(&mut self) {
            setfsuid(Uid::from_raw(0));
            setfsgid(Gid::from_raw(0));
            if let Err(e) = sys::set_thread_groups(&self.0) {
                // The thread would keep a caller's groups for whatever it
                // runs next, which no error return can undo.
                tracing::error!("cannot give an MFS thread back its own groups ({e}): stopping");
                std::process::abort();
            }
        }
    }
    sys::set_thread_groups(&credentials.groups).map_err(io_errno)?;
    let _restore = Restore(own);
    setfsgid(Gid::from_raw(credentials.gid));
    setfsuid(Uid::from_raw(credentials.uid));
    operation()
}

fn own_groups() -> Result<Vec<u32>, Errno> {
    OWN_GROUPS.with_borrow_mut(|own| {
        if own.is_none() {
            *own = Some(sys::thread_groups().map_err(io_errno)?);
        }
        Ok(own.clone().unwrap_or_default())
    })
}

fn make_umask_private() -> Result<(), Errno> {
    if UMASK_PRIVATE.get() {
        return Ok(());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    UMASK_PRIVATE.set(true);
    Ok(())
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// How many callers' `status` files [`CallerGroups`] keeps open.
const STATUS_FILES_KEPT: usize = 64;

/// The supplementary groups of calling processes, read from
/// `/proc/PID/status` for every operation (a process may change them at
/// any moment). Each caller's file is kept open: a read at offset 0 makes
/// the kernel write it afresh, and opening it anew costs more than the
/// read. A kept file of a process that ended reads ESRCH, never another
/// process's groups, even when its pid has been given to a new process
/// since: then the file is opened again.
pub struct CallerGroups {
    status_files: Mutex<LruCache<u32, Arc<File>>>,
}

impl Default for CallerGroups {
    fn default() -> CallerGroups {
        let kept = NonZeroUsize::new(STATUS_FILES_KEPT).expect("a non-zero count");
        CallerGroups {
            status_files: Mutex::new(LruCache::new(kept)),
        }
    }
}

impl CallerGroups {
    /// The supplementary groups of process (or thread) `pid` now; none if
    /// it cannot be read (the process is gone).
    pub fn of(&self, pid: u32) -> Vec<u32> {
        let kept = self.files().get(&pid).cloned();
        if let Some(file) = kept {
            if let Some(groups) = groups_in(&file) {
                return groups;
            }
            self.files().pop(&pid);
        }
        let Ok(file) = File::open(format!("/proc/{pid}/status")) else {
            return Vec::new();
        };
        let groups = groups_in(&file).unwrap_or_default();
        self.files().put(pid, Arc::new(file));
        groups
    }

    fn files(&self) -> std::sync::MutexGuard<'_, LruCache<u32, Arc<File>>> {
        self.status_files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The groups in an open `/proc/PID/status`, read whole in one read from
/// offset 0 (so from one writing of it by the kernel).
fn groups_in(status: &File) -> Option<Vec<u32>> {
    let mut buffer = vec![0u8; 4096];
    let read = loop {
        let read = status.read_at(&mut buffer, 0).ok()?;
        // A full buffer may have cut the file short (a process with
        // thousands of groups): read it again into a larger one.
        if read < buffer.len() {
            break read;
        }
        buffer.resize(buffer.len() * 2, 0);
    };
    let text = std::str::from_utf8(&buffer[..read]).ok()?;
    let groups = text
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Some(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_groups_are_read_afresh_through_the_kept_file() {
        let groups = CallerGroups::default();
        // This test's own thread, whose groups only it changes.
        std::thread::spawn(move || {
            let tid = nix::unistd::gettid().as_raw() as u32;
            sys::set_thread_groups(&[4101, 4102]).unwrap();
            assert_eq!(groups.of(tid), vec![4101, 4102]);
            assert!(groups.files().contains(&tid), "the file is kept");
            sys::set_thread_groups(&[4103]).unwrap();
            assert_eq!(groups.of(tid), vec![4103], "the groups of the moment");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_ended_process_has_no_groups_though_its_file_was_kept() {
        let groups = CallerGroups::default();
        let mut child = std::process::Command::new("setpriv")
            .args(["--groups=4242", "sleep", "30"])
            .spawn()
            .unwrap();
        let pid = child.id();
        // setpriv sets the groups, then becomes sleep, under one pid.
        let started = std::time::Instant::now();
        while groups.of(pid) != vec![4242] {
            assert!(
                started.elapsed().as_secs() < 10,
                "setpriv never set the groups"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // The kept file now reads ESRCH; the pid names no process.
        assert_eq!(groups.of(pid), Vec::<u32>::new());
    }

    #[test]
    fn a_process_with_thousands_of_groups_has_them_all() {
        let groups = CallerGroups::default();
        let many: Vec<u32> = (10_000..13_000).collect();
        let wanted = many.clone();
        std::thread::spawn(move || {
            let tid = nix::unistd::gettid().as_raw() as u32;
            sys::set_thread_groups(&many).unwrap();
            assert_eq!(groups.of(tid), wanted);
        })
        .join()
        .unwrap();
    }
}
