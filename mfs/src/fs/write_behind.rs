//! Large writes to another node's file that let their program go on
//! before the owner answers: only under the owner's write lease (no one
//! else has the file open, and the owner has this node land every write
//! it sent before anyone else opens, truncates or stats the file), and
//! only up to [`WRITE_BEHIND`] bytes in [`WRITES_BEHIND`] requests at a
//! time.
//!
//! A write that already returned and then failed at the owner (a full
//! disk) fails every later write of the file, until a flush (its close)
//! or an fsync reports it, as NFS reports a failed write-back. (Reported
//! by one write only, it could be lost: the kernel turns a failure in the
//! second part of a write it sent in two into a short count.)

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use nix::errno::Errno;

use crate::wire::fs::FsResult;

/// How many bytes of one file may be on their way to its owner after
/// their write returned. Two writes of 1 MiB: while the owner writes one,
/// the next is encrypted and on the wire, and the program makes the one
/// after. A client that fails loses at most this much of what its
/// programs wrote and did not fsync, as a kernel loses its dirty pages.
pub const WRITE_BEHIND: usize = 2 << 20;

/// How many writes of one file may be on their way: a program writing
/// in small blocks has each one a request, which the owner runs on a
/// thread of its own (a pool shared by every node and file).
pub const WRITES_BEHIND: usize = 64;

/// A write sent and not yet answered.
pub struct PendingWrite {
    pub offset: u64,
    pub len: usize,
    pub answer: Receiver<FsResult>,
}

/// One open file's writes behind its program, and its write lease.
#[derive(Default)]
pub struct Behind {
    /// The write lease the owner granted this node, if it holds one.
    pub lease: Option<u64>,
    /// The latest lease the owner revoked: an answer naming it or an
    /// earlier one grants nothing (it was sent before the revoke).
    pub revoked: u64,
    /// Writes that returned to the program and await their answers, in
    /// the order they were sent.
    pub pending: VecDeque<PendingWrite>,
    /// The first failure of a write that had returned, not yet reported
    /// by a flush or fsync.
    pub error: Option<Errno>,
}

impl Behind {
    /// Bytes on their way.
    pub fn pending_bytes(&self) -> usize {
        self.pending.iter().map(|write| write.len).sum()
    }

    /// Waits, until `deadline`, for the oldest writes on their way until
    /// `len` bytes more, in `pieces` requests, fit within [`WRITE_BEHIND`]
    /// bytes and [`WRITES_BEHIND`] requests.
    pub fn make_room(&mut self, len: usize, pieces: usize, deadline: Instant) {
        while !self.pending.is_empty()
            && (self.pending_bytes() + len > WRITE_BEHIND
                || self.pending.len() + pieces > WRITES_BEHIND)
        {
            self.settle_oldest(deadline);
        }
    }

    /// Whether a write of `len` bytes at `offset` touches bytes still on
    /// their way: the owner runs requests side by side, so it could land
    /// the two in the other order.
    pub fn overlaps(&self, offset: u64, len: usize) -> bool {
        let end = offset.saturating_add(len as u64);
        self.pending
            .iter()
            .any(|write| write.offset < end && offset < write.offset + write.len as u64)
    }

    /// Records that the owner granted lease `epoch`, unless it was
    /// revoked since.
    pub fn grant(&mut self, epoch: u64) {
        if epoch > self.revoked {
            self.lease = Some(epoch);
        }
    }

    /// Takes in the answer to a write of `len` bytes (or the failure to
    /// get one): a renewed lease, or the first error to report.
    pub fn absorb(&mut self, len: usize, answer: Result<FsResult, Errno>) {
        let failure = match answer {
            Ok(FsResult::WrittenLeased { written, epoch }) => {
                self.grant(epoch);
                (written as usize != len).then_some(Errno::EIO)
            }
            Ok(FsResult::Written(written)) => (written as usize != len).then_some(Errno::EIO),
            Ok(FsResult::Errno(e)) => Some(Errno::from_raw(e)),
            Ok(_) => Some(Errno::EIO),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            self.error.get_or_insert(e);
        }
    }

    /// Waits, until `deadline`, for the oldest write on its way.
    pub fn settle_oldest(&mut self, deadline: Instant) {
        if let Some(write) = self.pending.pop_front() {
            let answer = wait_until(&write.answer, deadline);
            self.absorb(write.len, answer);
        }
    }

    /// Waits, until `deadline`, for every write on its way.
    pub fn settle_all(&mut self, deadline: Instant) {
        while !self.pending.is_empty() {
            self.settle_oldest(deadline);
        }
    }
}

/// An answer by `deadline`: EIO if the owner does not answer in time,
/// ENOTCONN if the connection ended.
fn wait_until(answer: &Receiver<FsResult>, deadline: Instant) -> Result<FsResult, Errno> {
    let left = deadline.saturating_duration_since(Instant::now());
    answer.recv_timeout(left).map_err(|e| match e {
        RecvTimeoutError::Timeout => Errno::EIO,
        RecvTimeoutError::Disconnected => Errno::ENOTCONN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    fn pending(behind: &mut Behind, offset: u64, len: usize, answer: Option<FsResult>) {
        let (tx, rx) = sync_channel(1);
        if let Some(answer) = answer {
            tx.send(answer).unwrap();
        }
        behind.pending.push_back(PendingWrite {
            offset,
            len,
            answer: rx,
        });
    }

    #[test]
    fn room_is_made_by_bytes_and_by_requests() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut big = Behind::default();
        pending(&mut big, 0, 1 << 20, Some(FsResult::Written(1 << 20)));
        pending(&mut big, 1 << 20, 1 << 20, Some(FsResult::Written(1 << 20)));
        big.make_room(1 << 20, 2, deadline);
        assert_eq!(big.pending.len(), 1, "2 MiB at most: the oldest settled");
        assert_eq!(big.pending[0].offset, 1 << 20);

        let mut small = Behind::default();
        for i in 0..WRITES_BEHIND as u64 {
            pending(&mut small, i * 10, 10, Some(FsResult::Written(10)));
        }
        small.make_room(10, 1, deadline);
        assert_eq!(small.pending.len(), WRITES_BEHIND - 1);
        assert_eq!(small.error, None);
    }

    #[test]
    fn overlapping_writes_are_found_and_adjacent_ones_are_not() {
        let mut behind = Behind::default();
        pending(&mut behind, 1 << 20, 1 << 20, None);
        assert!(
            !behind.overlaps(0, 1 << 20),
            "ends where the pending one starts"
        );
        assert!(!behind.overlaps(2 << 20, 10), "starts where it ends");
        assert!(behind.overlaps((2 << 20) - 1, 10));
        assert!(behind.overlaps(0, (1 << 20) + 1));
        assert!(behind.overlaps(0, 8 << 20), "covers it");
        assert_eq!(behind.pending_bytes(), 1 << 20);
    }

    #[test]
    fn a_failed_write_behind_is_kept_for_the_next_report_and_only_the_first() {
        let mut behind = Behind::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        pending(&mut behind, 0, 10, Some(FsResult::Written(10)));
        pending(&mut behind, 10, 10, Some(FsResult::Errno(libc::ENOSPC)));
        pending(&mut behind, 20, 10, Some(FsResult::Errno(libc::EIO)));
        behind.settle_oldest(deadline);
        assert_eq!(behind.error, None);
        behind.settle_all(deadline);
        assert!(behind.pending.is_empty());
        assert_eq!(behind.error, Some(Errno::ENOSPC));
    }

    #[test]
    fn a_short_write_or_an_owner_gone_is_an_error() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut short = Behind::default();
        pending(&mut short, 0, 10, Some(FsResult::Written(4)));
        short.settle_all(deadline);
        assert_eq!(short.error, Some(Errno::EIO));

        let mut gone = Behind::default();
        let (tx, rx) = sync_channel::<FsResult>(1);
        drop(tx);
        gone.pending.push_back(PendingWrite {
            offset: 0,
            len: 10,
            answer: rx,
        });
        gone.settle_all(deadline);
        assert_eq!(gone.error, Some(Errno::ENOTCONN));

        let mut silent = Behind::default();
        let (_tx, rx) = sync_channel::<FsResult>(1);
        silent.pending.push_back(PendingWrite {
            offset: 0,
            len: 10,
            answer: rx,
        });
        silent.settle_all(Instant::now());
        assert_eq!(silent.error, Some(Errno::EIO), "no answer by the deadline");
    }

    #[test]
    fn a_lease_revoked_is_not_granted_again_by_an_answer_sent_before_the_revoke() {
        let mut behind = Behind::default();
        behind.grant(3);
        assert_eq!(behind.lease, Some(3));
        // The revoke of lease 3 is handled...
        behind.revoked = 3;
        behind.lease = None;
        // ...before the answer of a write sent under it is taken in.
        behind.absorb(
            10,
            Ok(FsResult::WrittenLeased {
                written: 10,
                epoch: 3,
            }),
        );
        assert_eq!(behind.lease, None);
        assert_eq!(behind.error, None);
        // A lease taken after the revoke counts.
        behind.absorb(
            10,
            Ok(FsResult::WrittenLeased {
                written: 10,
                epoch: 4,
            }),
        );
        assert_eq!(behind.lease, Some(4));
    }
}
