//! What [`super::decide`] proposes, and why, in words an operator reads.

use omx_mfs::NodeId;
use std::fmt;

/// Move process `pid` to node `to`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub pid: u32,
    pub to: NodeId,
    pub reason: Reason,
}

/// Why a process moves.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// Loads in openMosix units (x 100 per reference CPU); `saving` is the
    /// fraction of the horizon saved, `move_ms` the estimated freeze.
    LoadBalance {
        from: NodeId,
        to: NodeId,
        from_load: u32,
        to_load: u32,
        saving: f64,
        move_ms: f64,
    },
    /// This node was short of memory (`free` of `total` bytes).
    MemoryUshering {
        from: NodeId,
        to: NodeId,
        free: u64,
        total: u64,
        rss: u64,
        to_free: u64,
    },
    /// `io_share` of the process's I/O (`io_rate` bytes/s) is with `to`.
    IoLocality {
        from: NodeId,
        to: NodeId,
        io_share: f64,
        io_rate: f64,
        saving: f64,
        move_ms: f64,
    },
    /// A new job asked to start on the best node (`mosrun -b`): loads in
    /// openMosix units, each counting the new job.
    StartPlacement {
        from: NodeId,
        to: NodeId,
        from_load: u32,
        to_load: u32,
    },
}

const MIB: f64 = 1024.0 * 1024.0;

/// A load as openMosix shows it: x 100 per reference CPU.
pub(crate) fn openmosix_load(load: f64) -> u32 {
    (load * 100.0).round().clamp(0.0, f64::from(u32::MAX)) as u32
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::LoadBalance {
                from,
                to,
                from_load,
                to_load,
                saving,
                move_ms,
            } => write!(
                f,
                "node {from} load {from_load} vs node {to} load {to_load}: \
                 saves {:.0}% of the horizon, moving costs {move_ms:.0} ms",
                saving * 100.0
            ),
            Reason::MemoryUshering {
                from,
                to,
                free,
                total,
                rss,
                to_free,
            } => write!(
                f,
                "node {from} has {:.0} of {:.0} MiB free: ushers {:.0} MiB \
                 to node {to} ({:.0} MiB free)",
                *free as f64 / MIB,
                *total as f64 / MIB,
                *rss as f64 / MIB,
                *to_free as f64 / MIB
            ),
            Reason::IoLocality {
                from,
                to,
                io_share,
                io_rate,
                saving,
                move_ms,
            } => write!(
                f,
                "{:.0}% of its I/O ({:.1} MiB/s) is with node {to}: running \
                 there instead of node {from} saves {:.0}% of the horizon, \
                 moving costs {move_ms:.0} ms",
                io_share * 100.0,
                io_rate / MIB,
                saving * 100.0
            ),
            Reason::StartPlacement {
                from,
                to,
                from_load,
                to_load,
            } => write!(
                f,
                "a new job asked for the best node (mosrun -b): node {to} \
                 would be at load {to_load} with it, node {from} at {from_load}"
            ),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "move {} to node {}: {}", self.pid, self.to, self.reason)
    }
}
