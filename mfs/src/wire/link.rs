//! Messages of a migrated process's link, and of a node's keepers.
//!
//! A migrated process is served by two *keepers*: at home, the one that
//! traces its deputy; where it runs, the one that spawned its remote. They
//! talk over a link of their own: a TCP connection that a daemon accepted
//! (`PeerMessage::OpenLink`), then handed to a keeper, which starts a fresh
//! encrypted channel on it.

use rkyv::{Archive, Deserialize, Serialize};

use super::image::ImageHeader;

/// Asks the accepting daemon to hand this connection to a keeper.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LinkRequest {
    /// A process of `home_node` is coming to run here.
    Immigrate {
        home_node: u16,
        home_pid: u32,
        /// Chosen at home when the process first left: names this
        /// migration episode, so that a reused pid is never confused.
        session: u64,
        /// Asked by the placement engine, not by a user: the receiver
        /// refuses it if it took as many guests as it has CPUs within the
        /// last second (news the sender's figures cannot show yet).
        from_placement: bool,
    },
    /// The process `home_pid` of this (home) node now runs on the sending
    /// node: connect it to its deputy's keeper.
    Rejoin { home_pid: u32, session: u64 },
}

/// The daemon's answer to a [`LinkRequest`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LinkReply {
    /// The connection now belongs to a keeper: start a new channel.
    Accepted,
    Refused {
        reason: String,
    },
}

/// What the two keepers of a migrated process say to each other.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum LinkMessage {
    /// An image follows: this header, page runs, `ImageEnd`.
    Header(Box<ImageHeader>),
    /// The contents of `len` bytes of pages from `address` follow, raw in
    /// the encrypted stream (not a message): they are decrypted straight
    /// into the process, without intermediate copies.
    PageRun {
        address: u64,
        len: u64,
    },
    ImageEnd,
    /// The process runs on the node that received the image.
    Restored,
    /// The image could not be rebuilt; the sender keeps the process.
    RestoreFailed {
        reason: String,
    },

    /// Remote to home: run this call in the deputy.
    Call(ForwardedCall),
    /// Home to remote: what the call did.
    CallResult(CallResult),

    /// Home to remote: the home pid received a signal; `during_call` if a
    /// forwarded call was in progress at home.
    Signal {
        signal: i32,
        during_call: bool,
    },
    /// Remote to home: whether that signal interrupts the call (so home
    /// abandons it) or not (home lets it go on).
    SignalVerdict {
        interrupts_call: bool,
    },

    /// Remote to home: the process stopped (job control) or continued.
    Stopped {
        signal: i32,
    },
    Continued,
    /// Remote to home: the process ended.
    Exited {
        code: i32,
    },
    Killed {
        signal: i32,
        core_dumped: bool,
    },

    /// Home to remote: end the process (its home pid died).
    Kill,
    /// Home to remote: move to `node` at `address` (the home node's id:
    /// come home).
    MoveTo {
        node: u16,
        address: String,
        port: u16,
        /// Asked by the placement engine, not by a user: the receiver
        /// refuses it if it took as many guests as it has CPUs within the
        /// last second (news the sender's figures cannot show yet).
        from_placement: bool,
    },
    /// Remote to home, before moving: stop the call you are running for me
    /// (the answer is `CallAbandoned`, or the call's result if it was over).
    AbandonCall,
    CallAbandoned,
    /// Remote to home: it could not move; it keeps running where it is.
    MoveFailed {
        reason: String,
    },
    /// Remote to home: the process comes home (an image follows), because
    /// of `reason` (a call that needs home, a request, a constraint).
    ComingHome {
        reason: String,
    },
    /// Home to the remote that moved away: the new remote has taken over.
    Released,
    /// Remote to home, once the process it sent away (home, or on to
    /// another node) runs there: what the move cost, measured where the
    /// process was frozen.
    MoveDone(MoveStats),
    /// Remote to home, about once a second: what the process used where
    /// it runs (for the placement engine at home).
    Usage(GuestUsage),

    /// Sender of an image to its receiver, before the image: the files
    /// the process has open that the receiving node can open itself
    /// through its MFS (DFSA).
    DfsaFiles(DfsaList),
    /// Remote to home: set the offsets of these descriptors of the deputy
    /// (`(fd, offset)`), which the process moved where it runs; sent before
    /// any call or message that needs them right at home.
    Offsets(Vec<(i32, u64)>),
}

/// A migrated process's files to reopen where it runs, and as whom.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct DfsaList {
    /// The process's file system uid and gid, and its supplementary
    /// groups: MFS checks access with them at each file's owner.
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub files: Vec<DfsaFile>,
}

/// An open file of a migrated process that the node it runs on reopens
/// through its own MFS, so that the file's I/O runs there (DFSA).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DfsaFile {
    /// The descriptor, the same number at home and where it runs.
    pub fd: i32,
    /// Its cluster-wide name, relative to where MFS is mounted:
    /// `<node>/<path beneath that node's export>`.
    pub path: String,
    /// The `open` flags to reopen it with (access mode, `O_APPEND`, ...).
    pub flags: i32,
    /// Whether the descriptor is close-on-exec.
    pub cloexec: bool,
    /// The offset of its open file description.
    pub offset: u64,
    /// Its MFS inode number, the same at every node: a reopened path that
    /// names another file is refused.
    pub ino: u64,
}

/// What a process used while away, as its remote keeper measured it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestUsage {
    /// CPU time since it started on this node, nanoseconds.
    pub cpu_ns: u64,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Whether it was runnable (running or waiting for a CPU, state `R`)
    /// when sampled: averaged over samples, how much CPU it would use.
    pub runnable: bool,
    /// Time spent waiting for a CPU since it started on this node
    /// (`schedstat`), nanoseconds, where the kernel keeps it: with
    /// `cpu_ns`, what it wanted of a CPU, a steadier figure than `runnable`.
    pub wait_ns: Option<u64>,
    /// Bytes of file I/O the process did there itself (DFSA) since the
    /// last report, by the node holding the file.
    pub io_by_node: Vec<(u16, u64)>,
}

/// A forwarded system call: its number, its arguments (pointers as the
/// remote had them), and one slot per memory argument, in argument order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ForwardedCall {
    pub nr: u32,
    pub args: Vec<u64>,
    pub slots: Vec<CallSlot>,
}

/// One memory argument: absent (a null pointer), or the bytes the call
/// reads and the room it may fill.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallSlot {
    pub null: bool,
    pub input: Vec<u8>,
    pub capacity: u64,
}

/// The call's return value and the bytes it wrote, one entry per slot the
/// call may write, in slot order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    pub ret: i64,
    pub outputs: Vec<Vec<u8>>,
    /// For an `open` that gave a file every node reaches through MFS: that
    /// file, which the node where the process runs reopens (DFSA).
    pub opened: Option<DfsaFile>,
}

/// What a move cost.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MoveStats {
    /// Bytes of pages sent.
    pub bytes: u64,
    /// How long the process ran nowhere (stopped at the source until
    /// running at the target), in microseconds, as the source measured it.
    pub frozen_us: u64,
    /// From the move request reaching the home daemon until the process
    /// ran at the target, in microseconds. Keepers leave it 0; the home
    /// daemon, which received the request, fills it in.
    pub total_us: u64,
}

/// A daemon's instruction to one of its keepers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum KeeperCommand {
    /// Move the process to `node` (this node's id: bring it home).
    MoveTo {
        node: u16,
        address: String,
        port: u16,
        /// Asked by the placement engine, not by a user: the receiver
        /// refuses it if it took as many guests as it has CPUs within the
        /// last second (news the sender's figures cannot show yet).
        from_placement: bool,
    },
    /// A connection for this keeper (its descriptor travels with this
    /// message): the process's new remote, after a move.
    TakeLink { node: u16 },
    /// To a guest's keeper: send the process home (this node expels its
    /// guests, or leaves the cluster).
    GoHome { reason: String },
}

/// A keeper's report to its daemon.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum KeeperReport {
    /// The process runs on `node` now (its `moves`-th move).
    RunsOn {
        node: u16,
        moves: u32,
        stats: Option<MoveStats>,
    },
    /// The process runs at home again; the keeper is done.
    Home {
        moves: u32,
        stats: Option<MoveStats>,
    },
    /// A move was refused; the process runs where it did.
    CannotMove { reason: String },
    /// The process ended (`code`, or killed by `signal`).
    Ended {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The link to the node running the process broke: the process was
    /// ended (its home pid killed), as `reason` says.
    Lost { node: u16, reason: String },
    /// System calls forwarded home and run by the deputy since the last
    /// such report (for the daemon's metrics).
    ForwardedCalls { count: u64 },
    /// The remote keeper's latest usage figures of the process away.
    Usage(GuestUsage),
}
