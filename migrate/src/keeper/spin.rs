//! Busy-waiting, briefly, for the next message of a link before sleeping.
//!
//! A forwarded call crosses CPUs four times (process to remote keeper,
//! remote to home keeper, and back). Waking a sleeping task on an idle CPU
//! costs a few microseconds on bare metal, but 20-40 us on a virtual
//! machine whose idle vCPUs halt: there, sleeping dominates the call. So a
//! keeper that expects a message soon (the remote, the answer to its
//! call; home, the next call of a process that just made one) watches the
//! link for a short budget first. The spinner learns: when spinning keeps
//! missing (calls that block, a process that calls rarely), it stops
//! spinning and only tries again now and then, so an idle keeper costs
//! nothing.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Credit, from misses (each -2) and hits (each +1), below which the
/// spinner stops spinning.
const GIVE_UP: i32 = -8;
/// While given up, one chance in this many is still spun, to notice when
/// spinning pays again.
const RETRY_EVERY: u32 = 32;

pub struct Spinner {
    budget: Duration,
    credit: i32,
    skipped: u32,
}

impl Spinner {
    /// A spinner that spins up to `budget` at a time (zero: never).
    pub fn new(budget: Duration) -> Spinner {
        Spinner {
            budget,
            credit: 0,
            skipped: 0,
        }
    }

    /// Watches `fd` until it is readable or the budget is spent; returns
    /// whether it became readable.
    pub fn spin(&mut self, fd: BorrowedFd<'_>) -> bool {
        if self.budget.is_zero() {
            return false;
        }
        if self.credit <= GIVE_UP {
            self.skipped += 1;
            if self.skipped < RETRY_EVERY {
                return false;
            }
            self.skipped = 0;
        }
        let until = Instant::now() + self.budget;
        loop {
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0) {
                self.credit = (self.credit + 1).min(-GIVE_UP);
                return true;
            }
            if Instant::now() >= until {
                self.credit = (self.credit - 2).max(GIVE_UP);
                return false;
            }
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn sees_a_message_that_is_there_and_gives_up_on_silence() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let mut spinner = Spinner::new(Duration::from_micros(50));
        ours.write_all(b"x").unwrap();
        assert!(spinner.spin(theirs.as_fd()));

        let (_quiet, silent) = UnixStream::pair().unwrap();
        let mut spinner = Spinner::new(Duration::from_micros(50));
        let mut spun = 0;
        for _ in 0..(RETRY_EVERY * 3) {
            let started = Instant::now();
            assert!(!spinner.spin(silent.as_fd()));
            if started.elapsed() >= Duration::from_micros(50) {
                spun += 1;
            }
        }
        // A few misses to give up, then one retry in RETRY_EVERY.
        assert!(spun <= 4 + 3, "spun {spun} times on a silent link");
        assert!(spun >= 4, "gave up too soon ({spun})");
    }

    #[test]
    fn a_zero_budget_never_spins() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        ours.write_all(b"x").unwrap();
        assert!(!Spinner::new(Duration::ZERO).spin(theirs.as_fd()));
    }
}
