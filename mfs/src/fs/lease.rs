//! Read and write leases: the owner lets a node keep what it read ahead
//! of a file for as long as no one can write the file, and takes that back
//! before any writer proceeds, so reading ahead never returns stale data;
//! and it lets the only node that has a file open write behind its
//! program, and has those writes land before anyone else opens the file.
//!
//! A write lease (`F_WRLCK`) is granted only while no one else has the
//! file open at all; any open or truncate by another process then blocks
//! until the holder lets go, as for a read lease.
//!
//! The kernel's file leases (`fcntl(F_SETLEASE, F_RDLCK)`, what Samba's
//! oplocks use) do the watching. A read lease is granted only while no one
//! has the file open for writing; an open for writing or a truncate by any
//! process of this node, through MFS or straight on the disk, blocks until
//! the holder lets go. The kernel tells the holder with a signal that
//! names the descriptor: the handler passes the number to a thread, which
//! has the holder revoke what the nodes kept (and waits for them to
//! confirm) before releasing the lease.
//!
//! Without leases (another file system, no `CAP_LEASE`), reads are simply
//! not kept: each one asks the owner, as before.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock, Weak};

use tracing::warn;

/// What holds a lease and knows how to take back what it granted.
pub trait LeaseHolder: Send + Sync {
    /// The lease on the descriptor is being broken: revoke, wait for the
    /// nodes, and return. The lease is released afterwards.
    fn on_break(&self);
}

/// Leases held, by descriptor number.
type Holders = Mutex<HashMap<RawFd, Weak<dyn LeaseHolder>>>;

struct Leases {
    holders: Holders,
    signal: i32,
}

/// `fcntl` command naming the signal for I/O and lease events (Linux,
/// <fcntl.h>; the libc crate does not export it for this target).
const F_SETSIG: libc::c_int = 10;

/// The write end of the pipe from the signal handler to the lease thread.
static BREAK_PIPE: AtomicI32 = AtomicI32::new(-1);

static LEASES: OnceLock<Option<Leases>> = OnceLock::new();

/// `siginfo_t` as the kernel fills it for a signal set with `F_SETSIG`
/// (x86_64 layout: the SIGPOLL fields after the three ints and padding).
#[repr(C)]
struct SigPollInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    band: libc::c_long,
    fd: i32,
}

extern "C" fn on_lease_signal(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler;
    // for a lease break signalled with F_SETSIG it carries the SIGPOLL
    // fields, laid out as `SigPollInfo`.
    let fd = unsafe { (*(info as *const SigPollInfo)).fd };
    let pipe = BREAK_PIPE.load(Ordering::Relaxed);
    if pipe >= 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer is a local.
        unsafe { libc::write(pipe, (&fd as *const i32).cast(), 4) };
    }
}

fn leases() -> Option<&'static Leases> {
    LEASES.get_or_init(start).as_ref()
}

/// Installs the handler and starts the lease thread, once.
fn start() -> Option<Leases> {
    let signal = libc::SIGRTMIN() + 6;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-int array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        warn!(
            "no read leases (reads of other nodes' files are not kept): cannot make a pipe: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: both descriptors were just made by pipe2 and are ours.
    let mut reading = unsafe { File::from_raw_fd(fds[0]) };
    BREAK_PIPE.store(fds[1], Ordering::Relaxed);
    // SAFETY: a zeroed sigaction is valid; the handler only reads its
    // siginfo and writes to a pipe (async-signal-safe).
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_lease_signal as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if installed != 0 {
        warn!(
            "no read leases: cannot install the lease signal handler: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    let spawned = std::thread::Builder::new()
        .name("mfs-leases".into())
        .spawn(move || {
            let mut buffer = [0u8; 4];
            while reading.read_exact(&mut buffer).is_ok() {
                let fd = i32::from_ne_bytes(buffer);
                let holder = leases().and_then(|l| {
                    l.holders
                        .lock()
                        .expect("lease holders")
                        .get(&fd)
                        .and_then(Weak::upgrade)
                });
                if let Some(holder) = holder {
                    // Each break waits for nodes: one does not hold up another.
                    std::thread::spawn(move || holder.on_break());
                }
            }
        });
    if let Err(e) = spawned {
        warn!("no read leases: cannot start the lease thread: {e}");
        return None;
    }
    Some(Leases {
        holders: Mutex::new(HashMap::new()),
        signal,
    })
}

/// The kind of lease: what the holder keeps, and so who must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Data read ahead: writers (opens for writing, truncates) wait.
    Read,
    /// Writes not yet landed: every other open (and truncate) waits.
    Write,
}

/// Takes a lease of `kind` on `file` for `holder`; false if the kernel
/// refuses (for a read lease: someone has it open for writing; for a
/// write lease: anyone else has it open; not a regular file, ...).
pub fn take(file: &File, kind: Kind, holder: Weak<dyn LeaseHolder>) -> bool {
    let Some(leases) = leases() else {
        return false;
    };
    let fd = file.as_raw_fd();
    leases
        .holders
        .lock()
        .expect("lease holders")
        .insert(fd, holder);
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let taken = unsafe {
        libc::fcntl(fd, F_SETSIG, leases.signal) == 0
            && libc::fcntl(
                fd,
                libc::F_SETLEASE,
                match kind {
                    Kind::Read => libc::F_RDLCK,
                    Kind::Write => libc::F_WRLCK,
                },
            ) == 0
    };
    if !taken {
        leases.holders.lock().expect("lease holders").remove(&fd);
    }
    taken
}

/// Lets go of the lease on `file` (a writer waits for this).
pub fn release(file: &File) {
    let fd = file.as_raw_fd();
    // Forget the holder before letting go: once the lease is gone, a read
    // may take a new one on the same descriptor at once, and removing the
    // entry after that would leave the new lease with no one to break it
    // (its writer would wait out lease-break-time, and what the nodes kept
    // would not be revoked).
    if let Some(leases) = leases() {
        leases.holders.lock().expect("lease holders").remove(&fd);
    }
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
}
