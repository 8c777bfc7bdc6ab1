//! Running a file operation as the process that asked for it.
//!
//! The daemon runs as root, but MFS must never act as root on a caller's
//! behalf: each operation runs on a thread whose file system identity
//! (fsuid, fsgid, supplementary groups) is the caller's, so the kernel
//! checks permissions exactly as for that user logged in on the owner.
//! These are per-thread settings; the thread's file system context
//! (umask) is made private once, so the caller's mode bits, already
//! masked by its own kernel, are used as given.

use std::cell::Cell;

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

/// The supplementary groups of process `pid`, from /proc.
pub fn groups_of(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
