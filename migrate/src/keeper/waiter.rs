//! Waiting for several things at once in a single-threaded keeper: its
//! descriptors, and the state changes of the process it keeps (SIGCHLD,
//! read through a signalfd).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// SIGCHLD as a descriptor.
pub struct Waiter {
    signals: SignalFd,
}

impl Waiter {
    /// Blocks SIGCHLD (call before starting or tracing the process, so
    /// that no change is missed) and opens a signalfd for it.
    pub fn new() -> io::Result<Waiter> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Waiter { signals })
    }

    /// Forgets the SIGCHLDs received; the caller then asks waitpid.
    pub fn drain(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
    }

    /// Waits until the process changed state or one of `fds` is readable.
    /// Returns whether the process (may have) changed, and for each fd
    /// whether it is readable (or closed).
    pub fn wait(
        &mut self,
        fds: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> io::Result<(bool, Vec<bool>)> {
        let mut polled: Vec<PollFd<'_>> = Vec::with_capacity(fds.len() + 1);
        polled.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
        for fd in fds {
            polled.push(PollFd::new(*fd, PollFlags::POLLIN));
        }
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(t.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX),
        };
        loop {
            match poll(&mut polled, timeout) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let ready = |p: &PollFd<'_>| {
            p.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let child = ready(&polled[0]);
        let others = polled[1..].iter().map(ready).collect();
        drop(polled);
        if child {
            self.drain();
        }
        Ok((child, others))
    }
}
