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
    static PREPARED: Cell<bool> = const { Cell::new(false) };
    /// The thread's own supplementary groups, given back after each
    /// operation (read once: they never change).
    static OWN_GROUPS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `operation` with `credentials` on this thread, then gives the
/// thread back its own identity.
pub fn run_as<T>(
    credentials: &Credentials,
    operation: impl FnOnce() -> Result<T, Errno>,
) -> Result<T, Errno> {
    prepare_thread()?;
    sys::set_thread_groups(&credentials.groups).map_err(io_errno)?;
    setfsgid(Gid::from_raw(credentials.gid));
    setfsuid(Uid::from_raw(credentials.uid));
    let result = operation();
    setfsuid(Uid::from_raw(0));
    setfsgid(Gid::from_raw(0));
    OWN_GROUPS
        .with_borrow(|own| sys::set_thread_groups(own))
        .map_err(io_errno)?;
    result
}

fn prepare_thread() -> Result<(), Errno> {
    if PREPARED.get() {
        return Ok(());
    }
    let own = sys::thread_groups().map_err(io_errno)?;
    OWN_GROUPS.with_borrow_mut(|groups| *groups = own);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    PREPARED.set(true);
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
