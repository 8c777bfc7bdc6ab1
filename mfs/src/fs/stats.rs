//! Running totals of what MFS did through this node's mount, for the
//! daemon's metrics. Local reads and writes the kernel does itself (FUSE
//! passthrough) never reach the daemon and are not counted.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct FsStats {
    /// Operations run on this node's own files.
    pub local_ops: AtomicU64,
    /// Operations sent to the node that owns the file.
    pub remote_ops: AtomicU64,
    /// Bytes read through the daemon.
    pub bytes_read: AtomicU64,
    /// Bytes written through the daemon.
    pub bytes_written: AtomicU64,
    /// Of those, bytes of writes that returned before the owner answered
    /// them (under its write lease).
    pub bytes_written_behind: AtomicU64,
}

impl FsStats {
    pub fn count_op(&self, local: bool) {
        let counter = if local {
            &self.local_ops
        } else {
            &self.remote_ops
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_read(&self, bytes: usize) {
        self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count_written(&self, bytes: usize) {
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count_written_behind(&self, bytes: usize) {
        self.bytes_written_behind
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}
