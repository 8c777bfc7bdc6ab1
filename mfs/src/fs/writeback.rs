//! Starting the writeback of what other nodes write, off their path: a
//! thread of its own asks the kernel to write a file's range out, so that
//! a disk whose queue is full holds up that thread, never a writer's
//! requests. What it cannot take at once is left to the kernel, which
//! writes dirty pages out in its own time anyway.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tracing::warn;

/// Ranges waiting for the thread; more are dropped, not waited for.
const WAITING: usize = 4;

/// A write that reaches the end of an aligned stretch of this many bytes
/// starts the writeback of what is before it (see [`range_to_start`]).
pub const STRETCH: u64 = 8 << 20;

/// What to start writing out after a write of `written` bytes at
/// `offset`, when writeback was last started up to `started_to`: from the
/// start of the first stretch the write touched, or from `started_to` if
/// that is earlier (a range the thread left out while busy is taken up
/// by the next), to the last stretch end the write reached. `None` if it
/// reached none. The kernel visits only dirty pages of the range, so a
/// range larger than the stretch costs no more than what is dirty in it.
pub fn range_to_start(offset: u64, written: u64, started_to: u64) -> Option<(u64, u64)> {
    let end = offset.checked_add(written)?;
    if written == 0 || offset / STRETCH == end / STRETCH {
        return None;
    }
    let filled = end / STRETCH * STRETCH;
    let start = (offset / STRETCH * STRETCH).min(started_to);
    Some((start, filled))
}

type Job = Box<dyn FnOnce() + Send>;

/// The writeback thread's queue; the thread ends when this is dropped.
pub struct Writeback {
    jobs: Option<SyncSender<Job>>,
}

impl Writeback {
    /// Starts the thread. Without one (the system refused a thread),
    /// every range is left to the kernel.
    pub fn start() -> Writeback {
        let (jobs, waiting) = sync_channel::<Job>(WAITING);
        let started = std::thread::Builder::new()
            .name("mfs-writeback".into())
            .spawn(move || run(waiting));
        match started {
            Ok(_) => Writeback { jobs: Some(jobs) },
            Err(e) => {
                warn!(
                    "MFS: cannot start the writeback thread ({e}): other nodes' writes reach \
                     the disk when the kernel writes them out"
                );
                Writeback { jobs: None }
            }
        }
    }

    /// Runs `start` on the thread, unless it is busy with [`WAITING`]
    /// others; `false` if it was left out (the caller then leaves its
    /// range for the next one).
    pub fn offer(&self, start: impl FnOnce() + Send + 'static) -> bool {
        let Some(jobs) = &self.jobs else {
            return false;
        };
        match jobs.try_send(Box::new(start)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

fn run(waiting: Receiver<Job>) {
    while let Ok(job) = waiting.recv() {
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    const S: u64 = STRETCH;

    #[test]
    fn a_write_starts_writeback_up_to_the_last_stretch_end_it_reached() {
        // Within a stretch, or starting on an end: nothing.
        assert_eq!(range_to_start(0, S - 1, 0), None);
        assert_eq!(range_to_start(S, 4096, S), None);
        assert_eq!(range_to_start(S, 0, 0), None);
        // Reaching an end: the stretch before it.
        assert_eq!(range_to_start(S - 4096, 4096, S - S), Some((0, S)));
        assert_eq!(range_to_start(2 * S - 1, 1, S), Some((S, 2 * S)));
        // Across several ends: every stretch it touched, to the last end.
        assert_eq!(range_to_start(S + 5, 3 * S, 10 * S), Some((S, 4 * S)));
        // A range left out before: taken up by the next.
        assert_eq!(range_to_start(3 * S - 10, 10, S), Some((S, 3 * S)));
        // A writer back below what was started: from its own stretch.
        assert_eq!(range_to_start(S - 1, 1, 5 * S), Some((0, S)));
        // Past the end of the offsets: nothing, and no overflow.
        assert_eq!(range_to_start(u64::MAX - 1, 4096, 0), None);
    }

    #[test]
    fn jobs_run_on_the_thread_and_a_busy_thread_leaves_the_rest_out() {
        let writeback = Writeback::start();
        let (unblock, unblocked) = std::sync::mpsc::channel::<()>();
        let ran = Arc::new(AtomicUsize::new(0));
        // The first job holds the thread; WAITING more fit in the queue.
        assert!(writeback.offer(move || {
            let _ = unblocked.recv();
        }));
        let started = Instant::now();
        let mut taken = 0;
        for _ in 0..WAITING + 3 {
            let ran = ran.clone();
            if writeback.offer(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }) {
                taken += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "offering waited for the busy thread"
        );
        // The holder may not have been taken off the queue yet: then one
        // fewer fits.
        assert!(
            taken == WAITING || taken == WAITING - 1,
            "{taken} jobs queued behind a busy thread"
        );
        drop(unblock);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ran.load(Ordering::SeqCst) < taken && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(ran.load(Ordering::SeqCst), taken);
    }
}
