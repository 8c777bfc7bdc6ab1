//! The messages themselves.
//!
//! Node ids travel as plain `u16` (0 is refused when a message is used);
//! times travel as ages, never as clock readings, since nodes' clocks differ.

use rkyv::{Archive, Deserialize, Serialize};

/// First handshake payload, from the connecting node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u16,
    pub node: u16,
}

/// The accepting node's answer to [`Hello`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum HelloReply {
    Welcome { protocol: u16, node: u16 },
    Refused { protocol: u16, reason: String },
}

/// What nodes send each other once connected.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum PeerMessage {
    Gossip(GossipPacket),
    /// Hand this connection to a keeper (the first and only message of a
    /// migration link; the daemon answers with a `LinkReply`).
    OpenLink(super::link::LinkRequest),
    /// Make this connection an MFS connection (requests for files of the
    /// accepting node; see [`super::fs`]).
    OpenFs,
}

/// One gossip step: the sender's own fresh entry and its window. The
/// sender is the authenticated peer of the channel it arrives on.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GossipPacket {
    pub entries: Vec<GossipEntry>,
}

/// What one node knows of another, and how old that knowledge is.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GossipEntry {
    pub node: u16,
    pub age_ms: u32,
    pub load: LoadReport,
}

/// A node's load, as measured by that node.
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default, serde::Serialize,
)]
pub struct LoadReport {
    /// openMosix load: runnable processes x 100 / CPUs / (speed / 10000).
    pub load: u32,
    /// Speed per CPU in openMosix units (10000 = the reference machine).
    pub speed: u32,
    pub cpus: u16,
    /// Smoothed number of runnable processes, x 1000.
    pub runnable_milli: u32,
    /// CPU utilisation over the last sample, per mille of all CPUs.
    pub util_permille: u16,
    pub mem_total: u64,
    /// Memory available to processes (page cache counted as free).
    pub mem_free: u64,
    /// Memory not used at all (page cache counted as used): `rmem`.
    pub mem_raw_free: u64,
    /// PSI "some" pressure (avg10), per mille, where the source has it.
    pub cpu_pressure_permille: Option<u16>,
    pub mem_pressure_permille: Option<u16>,
    /// The node takes guests (not blocked by `mosctl block` or `expel`).
    pub accepts_guests: bool,
    /// Automatic placement moves nothing away from this node (`stay`):
    /// the homes of its guests leave them there.
    pub guests_stay: bool,
}

/// A request from a user's command to the local daemon.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ControlRequest {
    /// This node's view of the cluster.
    Status,
    /// The map in force.
    GetMap,
    /// Install a new map (root only); `origin` names it in errors.
    SetMap { text: String, origin: String },
    /// Move process `pid` (the caller must be allowed to signal it);
    /// with `wait`, answer once it runs at the target or cannot move.
    Migrate {
        pid: u32,
        to: MigrateTarget,
        wait: bool,
    },
    /// Where process `pid` runs, and why it cannot move if it cannot.
    Where { pid: u32 },
    /// `mosrun`: process `pid` (the caller itself) is about to run a
    /// program with these options.
    Register { pid: u32, options: RunOptions },
    /// The value of a file of the control tree (`admin/block`,
    /// `nodes/3/load`, `pid/42/where`, ...).
    ReadControl { path: String },
    /// Writes `value` to a file of the control tree, with the caller's
    /// rights (root for `admin/`, the owner for a process's files).
    WriteControl { path: String, value: String },
    /// `setpe -off`: send the guests home, bring this node's processes
    /// home, then stop the daemon (root only).
    Leave,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum MigrateTarget {
    Node(u16),
    Home,
}

/// How `mosrun` asked a program to be run.
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, serde::Serialize,
)]
pub struct RunOptions {
    /// Send it to one of these nodes right after it starts (empty: start
    /// at home).
    pub send_to: Vec<u16>,
    /// Locked against automatic moves (`-L`), or explicitly not (`-l`).
    pub lock: Option<bool>,
    /// Keep it home (`-h`).
    pub stay_home: bool,
    /// Start it on the best node by load and memory (`-b`), not at home.
    pub start_at_best: bool,
    pub job: JobHint,
    pub decay: DecayHint,
}

#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize,
)]
pub enum JobHint {
    #[default]
    Unknown,
    /// `-c`: mostly computes.
    Cpu,
    /// `-i`: mostly does I/O.
    Io,
}

#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize,
)]
pub enum DecayHint {
    #[default]
    Default,
    /// `-n`: statistics do not decay.
    None,
    /// `-s`: slow decay.
    Slow,
    /// `-f`: fast decay.
    Fast,
}

/// Where a process runs, as its home node knows it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcessLocation {
    pub pid: u32,
    /// The node it runs on; `None` at home.
    pub node: Option<u16>,
    pub migrating: bool,
    pub moves: u32,
    pub locked: bool,
    /// Why it cannot move now, if it cannot.
    pub cannot_move: Option<String>,
    /// Why the last move failed, if it did.
    pub last_failure: Option<String>,
}

/// The daemon's answer to a [`ControlRequest`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ControlReply {
    Status(ClusterView),
    Map {
        text: String,
    },
    MapInstalled {
        nodes: u32,
    },
    Refused {
        reason: String,
    },
    /// The process runs on `node` now (`None`: at home), and what the move
    /// cost if it was one.
    Moved {
        node: Option<u16>,
        stats: Option<super::link::MoveStats>,
    },
    /// The request was taken (an asynchronous move, a registration).
    Accepted,
    Location(ProcessLocation),
    /// The text of a control file.
    Value {
        text: String,
    },
}

/// One node's view of the whole cluster.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterView {
    pub this_node: u16,
    pub gossip_interval_ms: u32,
    pub down_after_ms: u64,
    pub nodes: Vec<NodeView>,
    /// Processes of this node that run elsewhere.
    pub away: Vec<AwayProcess>,
    /// Processes of other nodes that run here.
    pub guests: Vec<GuestProcess>,
}

/// A process of the viewing node that runs on `node`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AwayProcess {
    pub pid: u32,
    pub node: u16,
}

/// A process of `home_node` (its pid there: `home_pid`) that runs on the
/// viewing node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestProcess {
    pub home_node: u16,
    pub home_pid: u32,
    /// Its pid on the viewing node (`None` while it is being set up).
    pub pid: Option<u32>,
}

/// What the viewing node knows of one node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeView {
    pub node: u16,
    pub address: String,
    pub state: NodeState,
    /// Age of the freshest information, absent if there never was any.
    pub age_ms: Option<u64>,
    pub load: Option<LoadReport>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// The viewing node itself.
    Local,
    Up,
    Down,
    /// In the map, but never heard of.
    Unknown,
}
