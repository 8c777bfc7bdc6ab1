//! Starting the writeback of what other nodes write, off their path: a
//! thread of its own asks the kernel to write a file's range out, so that
//! a disk whose queue is full holds up that thread, never a writer's
//! requests. What it cannot take at once is left to the kernel, which
//! writes dirty pages out in its own time anyway.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tracing::warn;

/// Ranges waiting for the thread; more are dropped, not waited for.
const WAITING: usize = 4;

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
    /// others; `false` if it was left out.
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
