//! The daemon's side of migration: which of this node's processes are
//! away (and their keepers), which guests this node hosts, and the
//! connections other nodes hand over for keepers.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use omx_mfs::NodeId;
use omx_mfs::cluster_map::ClusterMap;
use omx_mfs::config::NodeConfig;
use omx_mfs::transport::listener::IncomingLink;
use omx_mfs::wire::link::{
    GuestUsage, KeeperCommand, KeeperReport, LinkReply, LinkRequest, MoveStats,
};
use omx_mfs::wire::plain::PlainFramed;
use omx_mfs::wire::{
    AwayProcess, ControlReply, DecayHint, GuestProcess, JobHint, MigrateTarget, ProcessLocation,
    RunOptions,
};
use rand::RngExt;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::control_tree::ProcessFigures;
use super::settings::Settings;

/// After `mosrun -NODE` starts a program, how long it runs at home before
/// it is sent (so that its dynamic loader has mapped its libraries here).
const STARTUP_GRACE: Duration = Duration::from_millis(150);
/// A node refuses a placement move when it took as many guests as it has
/// CPUs within this long: about what gossip and load smoothing take to
/// show them to the other homes, which otherwise all pick the same node
/// that looked idle.
const ADMISSION_WINDOW: Duration = Duration::from_secs(1);
/// How long a synchronous `migrate` waits for the move.
const MOVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Who asks for a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mover {
    /// A user (`migrate`, the control tree, `mosrun -NODE`) or a node
    /// control (`expel`, leaving): never refused for being busy.
    User,
    /// The placement engine: a guess from gossip, which the target may
    /// refuse (see [`ADMISSION_WINDOW`]).
    Placement,
}

/// Where one of this node's processes is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Location {
    Home,
    Migrating,
    Away(NodeId),
}

/// One of this node's processes that migrated or was registered.
struct Managed {
    /// When the process started (clock ticks since boot): a pid reused by
    /// another process does not inherit this entry.
    start_time: u64,
    session: u64,
    keeper: Option<mpsc::UnboundedSender<(KeeperCommand, Option<OwnedFd>)>>,
    location: Location,
    /// Where it was when the move in progress started.
    before_move: Location,
    moves: u32,
    /// Moves that ended with the process running at its destination
    /// (away or home), never reset: a move that failed leaves it as it
    /// was, a quick trip there and back does not.
    landings: u64,
    options: RunOptions,
    /// What the process wrote to its `selected` control file.
    selected: Option<NodeId>,
    baseline: ProcessFigures,
    last_failure: Option<String>,
    /// When the move in progress was requested.
    move_requested: Option<Instant>,
    /// What its remote keeper last said it used (I/O summed since the
    /// placement engine last took it).
    away_usage: Option<GuestUsage>,
    waiters: Vec<oneshot::Sender<ControlReply>>,
}

impl Managed {
    fn new(start_time: u64) -> Managed {
        Managed {
            start_time,
            session: rand::rng().random(),
            keeper: None,
            location: Location::Home,
            before_move: Location::Home,
            moves: 0,
            landings: 0,
            options: RunOptions::default(),
            selected: None,
            baseline: ProcessFigures::default(),
            last_failure: None,
            move_requested: None,
            away_usage: None,
            waiters: Vec::new(),
        }
    }

    /// A keeper's figures for the move that just ended, with its total
    /// time as seen from the request.
    fn with_total(&mut self, stats: Option<MoveStats>) -> Option<MoveStats> {
        let requested = self.move_requested.take();
        stats.map(|stats| MoveStats {
            total_us: requested.map_or(0, |at| at.elapsed().as_micros() as u64),
            ..stats
        })
    }

    fn controls(&self) -> ProcessControls {
        ProcessControls {
            locked: self.options.lock == Some(true),
            selected: self.selected,
            job: self.options.job,
            decay: self.options.decay,
            baseline: self.baseline,
            start_at_best: self.options.start_at_best,
        }
    }

    fn answer_all(&mut self, reply: ControlReply) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(reply.clone());
        }
    }
}

/// A process of another node that runs here.
#[derive(Clone, Debug)]
pub struct Guest {
    pub home_node: NodeId,
    pub home_pid: u32,
    /// The keeper serving it here (its parent).
    pub keeper_pid: u32,
    /// Orders for that keeper.
    orders: mpsc::UnboundedSender<KeeperCommand>,
}

impl Guest {
    /// The guest process itself: the keeper's child, if it still runs.
    pub fn local_pid(&self) -> Option<u32> {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.keeper_pid))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// Where one of this node's processes is, for the placement engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    Home,
    Moving,
    Away(NodeId),
}

/// One of this node's processes as the placement engine sees it.
#[derive(Clone, Debug)]
pub struct PlacementEntry {
    pub pid: u32,
    pub site: Site,
    /// Moves it completed so far (see `Managed::landings`).
    pub landings: u64,
    pub controls: ProcessControls,
}

/// Running totals for the daemon's metrics.
#[derive(Debug, Default)]
pub struct MigrationCounters {
    /// Moves of this node's processes to other nodes.
    pub moves_out: AtomicU64,
    /// This node's processes that came home.
    pub moves_home: AtomicU64,
    /// Guests taken in.
    pub guests_in: AtomicU64,
    /// System calls of this node's processes forwarded home.
    pub forwarded_calls: AtomicU64,
}

/// What the control tree shows and changes of one of this node's
/// processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessControls {
    pub locked: bool,
    /// The node the process chose for `/mfs/selected`.
    pub selected: Option<NodeId>,
    pub job: JobHint,
    pub decay: DecayHint,
    /// The process's figures when its statistics were last cleared.
    pub baseline: ProcessFigures,
    /// `mosrun -b`: the balancer places it as soon as it runs its program.
    pub start_at_best: bool,
}

pub struct Migrations {
    me: NodeId,
    config: NodeConfig,
    map: watch::Receiver<Arc<ClusterMap>>,
    exe: PathBuf,
    processes: Mutex<HashMap<u32, Managed>>,
    /// Guests by their keeper's pid.
    guests: Mutex<HashMap<u32, Guest>>,
    settings: Arc<Settings>,
    counters: MigrationCounters,
    /// Held while a keeper is spawned: descriptors meant for one keeper
    /// must not leak into another spawned at the same time.
    spawning: Mutex<()>,
    /// Every keeper this daemon started that has not ended (omx's own
    /// work, which the load counts by the CPU it uses).
    keepers: Mutex<HashSet<u32>>,
    /// When guests were last accepted here (within [`ADMISSION_WINDOW`]).
    arrivals: Mutex<Vec<Instant>>,
    /// This node's CPUs: how many guests it takes per admission window
    /// from the placement engines.
    cpus: usize,
    /// Told of each program `mosrun` starts, and of each move that did
    /// not happen: the balancer looks at it soon, not at its next round.
    pub judge_soon: tokio::sync::Notify,
}

/// When the process started (clock ticks after boot).
fn start_time(pid: u32) -> Option<u64> {
    omx_migrate::usage::start_ticks(pid).ok()
}

impl Migrations {
    /// The entry of `pid`, made if missing; an entry left by an earlier
    /// process with the same pid is dropped first.
    fn entry(processes: &mut HashMap<u32, Managed>, pid: u32) -> &mut Managed {
        let started = start_time(pid).unwrap_or(0);
        if processes.get(&pid).is_some_and(|m| m.start_time != started) {
            processes.remove(&pid);
        }
        processes
            .entry(pid)
            .or_insert_with(|| Managed::new(started))
    }

    /// Drops the entry of `pid` if that process is gone (or was replaced).
    fn forget_if_gone(processes: &mut HashMap<u32, Managed>, pid: u32) {
        let started = start_time(pid);
        if processes
            .get(&pid)
            .is_some_and(|m| Some(m.start_time) != started && m.keeper.is_none())
        {
            processes.remove(&pid);
        }
    }

    pub fn new(
        me: NodeId,
        config: NodeConfig,
        map: watch::Receiver<Arc<ClusterMap>>,
        settings: Arc<Settings>,
        cpus: usize,
    ) -> std::io::Result<Migrations> {
        Ok(Migrations {
            me,
            config,
            map,
            settings,
            counters: MigrationCounters::default(),
            exe: std::env::current_exe()?,
            processes: Mutex::new(HashMap::new()),
            guests: Mutex::new(HashMap::new()),
            spawning: Mutex::new(()),
            keepers: Mutex::new(HashSet::new()),
            arrivals: Mutex::new(Vec::new()),
            cpus: cpus.max(1),
            judge_soon: tokio::sync::Notify::new(),
        })
    }

    /// Where MFS is mounted here (DFSA reopens files through it).
    fn mfs_root(&self) -> &std::path::Path {
        self.config
            .mfs
            .mount
            .as_deref()
            .unwrap_or(std::path::Path::new("/mfs"))
    }

    /// Moves `pid` to `to`; with `wait`, answers when it is there.
    pub async fn migrate(
        self: &Arc<Self>,
        pid: u32,
        to: MigrateTarget,
        wait: bool,
        caller_uid: Option<u32>,
    ) -> ControlReply {
        let (reply_tx, reply_rx) = oneshot::channel();
        let waiter = wait.then_some(reply_tx);
        if let Err(reply) = self.start_move(pid, to, caller_uid, waiter, Mover::User) {
            return reply;
        }
        if !wait {
            return ControlReply::Accepted;
        }
        match tokio::time::timeout(MOVE_TIMEOUT, reply_rx).await {
            Ok(Ok(reply)) => reply,
            _ => ControlReply::Refused {
                reason: format!("process {pid} did not finish moving within {MOVE_TIMEOUT:?}"),
            },
        }
    }

    /// Starts moving `pid` to `to` (within a tokio runtime's context);
    /// `waiter` hears when the move ends. `Err` is the answer when there is
    /// nothing to wait for: a refusal, or the process is there already.
    pub fn start_move(
        self: &Arc<Self>,
        pid: u32,
        to: MigrateTarget,
        caller_uid: Option<u32>,
        waiter: Option<oneshot::Sender<ControlReply>>,
        by: Mover,
    ) -> Result<(), ControlReply> {
        let from_placement = by == Mover::Placement;
        let refused = |reason: String| Err(ControlReply::Refused { reason });
        if let Err(reason) = may_signal(caller_uid, pid) {
            return refused(reason);
        }
        let target = match to {
            MigrateTarget::Node(n) if n == self.me.get() => None,
            MigrateTarget::Node(n) => {
                match NodeId::new(n).filter(|n| self.map.borrow().contains(*n)) {
                    Some(node) => Some(node),
                    None => {
                        return refused(format!("node {n} is not in the cluster map"));
                    }
                }
            }
            MigrateTarget::Home => None,
        };
        {
            let mut processes = self.processes.lock().expect("process table");
            let managed = Self::entry(&mut processes, pid);
            match (managed.location, target) {
                (Location::Migrating, _) => {
                    return refused(format!("process {pid} is moving already"));
                }
                (Location::Home, None) => {
                    return Err(ControlReply::Moved {
                        node: None,
                        stats: None,
                    });
                }
                (Location::Away(node), Some(target)) if node == target => {
                    return Err(ControlReply::Moved {
                        node: Some(node.get()),
                        stats: None,
                    });
                }
                (Location::Home, Some(target)) => {
                    let Some(address) = self.map.borrow().address(target) else {
                        return refused(format!("node {target} is not in the cluster map"));
                    };
                    match self.spawn_home_keeper(
                        pid,
                        managed.session,
                        target,
                        address,
                        from_placement,
                    ) {
                        Ok(keeper) => managed.keeper = Some(keeper),
                        Err(e) => return refused(format!("cannot start a keeper: {e}")),
                    }
                }
                (Location::Away(_), target) => {
                    let node = target.unwrap_or(self.me);
                    let address = self
                        .map
                        .borrow()
                        .address(node)
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    let command = KeeperCommand::MoveTo {
                        node: node.get(),
                        address,
                        port: self.config.port,
                        from_placement,
                    };
                    if let Some(keeper) = &managed.keeper {
                        let _ = keeper.send((command, None));
                    }
                }
            }
            managed.before_move = managed.location;
            managed.location = Location::Migrating;
            managed.move_requested = Some(Instant::now());
            managed.waiters.extend(waiter);
        }
        Ok(())
    }

    /// Where `pid` runs and whether it can move.
    pub fn location(&self, pid: u32, cannot_move: Option<String>) -> ControlReply {
        let mut processes = self.processes.lock().expect("process table");
        Self::forget_if_gone(&mut processes, pid);
        let (node, migrating, moves, locked, last_failure) = match processes.get(&pid) {
            Some(m) => (
                match m.location {
                    Location::Away(node) => Some(node.get()),
                    _ => None,
                },
                m.location == Location::Migrating,
                m.moves,
                m.options.lock == Some(true),
                m.last_failure.clone(),
            ),
            None => (None, false, 0, false, None),
        };
        let cannot_move = match node {
            // While it is away, what would keep it home was checked when it
            // left; report the lock only.
            Some(_) => None,
            None => cannot_move,
        };
        ControlReply::Location(ProcessLocation {
            pid,
            node,
            migrating,
            moves,
            locked,
            // A constraint is the stronger reason: even `migrate` cannot
            // override it.
            cannot_move: cannot_move.or_else(|| {
                locked
                    .then(|| "it is locked (mosrun -L): only an explicit `migrate` moves it".into())
            }),
            last_failure,
        })
    }

    /// `mosrun`: records a program's options; sends it away shortly after
    /// it starts if asked.
    pub fn register(
        self: &Arc<Self>,
        pid: u32,
        options: RunOptions,
        caller_uid: Option<u32>,
    ) -> ControlReply {
        if let Err(reason) = may_signal(caller_uid, pid) {
            return ControlReply::Refused { reason };
        }
        let send_to = options.send_to.clone();
        Self::entry(&mut self.processes.lock().expect("process table"), pid).options = options;
        self.judge_soon.notify_one();
        if let Some(first) = self.pick(&send_to) {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(STARTUP_GRACE).await;
                match me
                    .migrate(pid, MigrateTarget::Node(first), true, caller_uid)
                    .await
                {
                    ControlReply::Moved { .. } => {}
                    other => {
                        warn!("mosrun could not send process {pid} to node {first}: {other:?}")
                    }
                }
            });
        }
        ControlReply::Accepted
    }

    /// The first node of `candidates` that is in the map.
    fn pick(&self, candidates: &[u16]) -> Option<u16> {
        let map = self.map.borrow();
        candidates
            .iter()
            .copied()
            .find(|n| NodeId::new(*n).is_some_and(|n| map.contains(n)))
    }

    fn spawn_home_keeper(
        self: &Arc<Self>,
        pid: u32,
        session: u64,
        to: NodeId,
        address: std::net::IpAddr,
        from_placement: bool,
    ) -> std::io::Result<mpsc::UnboundedSender<(KeeperCommand, Option<OwnedFd>)>> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let mut args = vec![
            "__home-keeper".to_string(),
            format!("--pid={pid}"),
            format!("--session={session}"),
            format!("--node={}", self.me),
            format!("--key={}", self.config.key_path.display()),
            format!("--to={to}"),
            format!("--address={address}"),
            format!("--port={}", self.config.port),
            format!("--spin-us={}", self.config.forward_spin.as_micros()),
            format!("--export={}", self.config.mfs.export.display()),
            format!("--mfs={}", self.mfs_root().display()),
            format!("--daemon-fd={}", theirs.as_raw_fd()),
        ];
        if from_placement {
            args.push("--from-placement".to_string());
        }
        let child = self.spawn_keeper(&args, &[theirs.into()])?;
        let (commands, orders) = mpsc::unbounded_channel();
        let me = self.clone();
        tokio::spawn(async move { me.run_home_keeper(pid, ours, orders, child).await });
        Ok(commands)
    }

    /// Starts `omx ARGS` with `fds` inherited at their own numbers.
    fn spawn_keeper(
        &self,
        args: &[String],
        fds: &[OwnedFd],
    ) -> std::io::Result<tokio::process::Child> {
        let _only_us = self.spawning.lock().expect("spawn lock");
        for fd in fds {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
        }
        let spawned = tokio::process::Command::new(&self.exe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false)
            .spawn();
        if let Some(pid) = spawned.as_ref().ok().and_then(tokio::process::Child::id) {
            self.keepers.lock().expect("keepers").insert(pid);
        }
        // Our copies of the child's ends close when `fds` is dropped.
        spawned
    }

    /// Waits for a keeper to end, and forgets it.
    async fn reap_keeper(
        &self,
        child: &mut tokio::process::Child,
    ) -> std::io::Result<std::process::ExitStatus> {
        let pid = child.id();
        let status = child.wait().await;
        if let Some(pid) = pid {
            self.keepers.lock().expect("keepers").remove(&pid);
        }
        status
    }

    async fn run_home_keeper(
        self: Arc<Self>,
        pid: u32,
        channel: std::os::unix::net::UnixStream,
        mut orders: mpsc::UnboundedReceiver<(KeeperCommand, Option<OwnedFd>)>,
        mut child: tokio::process::Child,
    ) {
        let stream = match channel
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(channel))
        {
            Ok(stream) => stream,
            Err(e) => {
                error!("keeper channel for process {pid}: {e}");
                return;
            }
        };
        let mut framed = PlainFramed::new(stream);
        loop {
            tokio::select! {
                report = framed.recv::<KeeperReport>() => match report {
                    Ok(Some(report)) => self.on_report(pid, report),
                    _ => break,
                },
                order = orders.recv() => match order {
                    Some((command, fd)) => {
                        if let Err(e) = send_order(&mut framed, &command, fd).await {
                            warn!("cannot instruct the keeper of process {pid}: {e}");
                        }
                    }
                    None => break,
                },
            }
        }
        let status = self.reap_keeper(&mut child).await;
        let mut processes = self.processes.lock().expect("process table");
        if let Some(managed) = processes.get_mut(&pid)
            && managed.keeper.is_some()
        {
            // The keeper ended without saying how the process is.
            warn!("the keeper of process {pid} ended ({status:?})");
            managed.answer_all(ControlReply::Refused {
                reason: "its keeper ended unexpectedly".into(),
            });
            processes.remove(&pid);
        }
    }

    fn on_report(&self, pid: u32, report: KeeperReport) {
        match &report {
            KeeperReport::ForwardedCalls { count } => {
                self.counters
                    .forwarded_calls
                    .fetch_add(*count, Ordering::Relaxed);
                return;
            }
            KeeperReport::RunsOn { .. } => {
                self.counters.moves_out.fetch_add(1, Ordering::Relaxed);
            }
            KeeperReport::Home { .. } => {
                self.counters.moves_home.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let mut processes = self.processes.lock().expect("process table");
        let Some(managed) = processes.get_mut(&pid) else {
            return;
        };
        match report {
            KeeperReport::RunsOn { node, moves, stats } => {
                let Some(node) = NodeId::new(node) else {
                    return;
                };
                managed.location = Location::Away(node);
                managed.moves = moves;
                managed.landings += 1;
                managed.last_failure = None;
                let stats = managed.with_total(stats);
                managed.answer_all(ControlReply::Moved {
                    node: Some(node.get()),
                    stats,
                });
            }
            KeeperReport::Home { moves, stats } => {
                managed.location = Location::Home;
                managed.away_usage = None;
                managed.moves = moves;
                managed.landings += 1;
                managed.keeper = None;
                let stats = managed.with_total(stats);
                managed.answer_all(ControlReply::Moved { node: None, stats });
            }
            KeeperReport::CannotMove { reason } => {
                managed.location = managed.before_move;
                if managed.location == Location::Home {
                    // A first move failed: that keeper is done.
                    managed.keeper = None;
                }
                managed.last_failure = Some(reason.clone());
                managed.answer_all(ControlReply::Refused { reason });
                // A placement move another node refused is tried elsewhere.
                self.judge_soon.notify_one();
            }
            KeeperReport::Ended { code, signal } => {
                info!("process {pid} ended away from home (code {code:?}, signal {signal:?})");
                managed.answer_all(ControlReply::Refused {
                    reason: "the process ended".into(),
                });
                processes.remove(&pid);
            }
            KeeperReport::ForwardedCalls { .. } => {}
            KeeperReport::Usage(usage) => {
                let io = match managed.away_usage.take() {
                    Some(mut before) => {
                        for (node, bytes) in usage.io_by_node {
                            match before.io_by_node.iter_mut().find(|(n, _)| *n == node) {
                                Some((_, sum)) => *sum += bytes,
                                None => before.io_by_node.push((node, bytes)),
                            }
                        }
                        before.io_by_node
                    }
                    None => usage.io_by_node,
                };
                managed.away_usage = Some(GuestUsage {
                    io_by_node: io,
                    ..usage
                });
            }
            KeeperReport::Lost { node, reason } => {
                error!("process {pid} was lost with node {node}: {reason}");
                managed.answer_all(ControlReply::Refused {
                    reason: format!("the process was lost with node {node}: {reason}"),
                });
                processes.remove(&pid);
            }
        }
    }

    /// A connection another node wants handed to a keeper.
    pub async fn incoming_link(self: &Arc<Self>, mut link: IncomingLink) {
        let from = link.from;
        let decision = match link.request {
            LinkRequest::Immigrate {
                home_node,
                home_pid,
                session,
                from_placement,
            } => self.accept_guest(from, home_node, home_pid, session, from_placement),
            LinkRequest::Rejoin { home_pid, session } => {
                self.accept_rejoin(from, home_pid, session)
            }
        };
        let reply = match &decision {
            Ok(_) => LinkReply::Accepted,
            Err(reason) => LinkReply::Refused {
                reason: reason.clone(),
            },
        };
        if let Err(e) = link.channel.send(&reply).await {
            warn!("link request from node {from}: cannot answer: {e}");
            return;
        }
        let Ok(hand_over) = decision else { return };
        let stream = match link
            .channel
            .into_inner()
            .and_then(|s| s.into_std().map_err(Into::into))
        {
            Ok(stream) => stream,
            Err(e) => {
                warn!("link request from node {from}: {e}");
                return;
            }
        };
        if let Err(e) = stream.set_nonblocking(false) {
            warn!("link request from node {from}: {e}");
            return;
        }
        hand_over(self, OwnedFd::from(stream));
    }

    #[allow(clippy::type_complexity)]
    fn accept_guest(
        &self,
        from: NodeId,
        home_node: u16,
        home_pid: u32,
        session: u64,
        from_placement: bool,
    ) -> Result<Box<dyn FnOnce(&Arc<Self>, OwnedFd) + Send>, String> {
        let home = NodeId::new(home_node).ok_or("home node 0")?;
        if self.settings.get().block {
            return Err(format!(
                "node {} is blocked: it takes no guests (mosctl noblock lifts it)",
                self.me
            ));
        }
        let home_address =
            self.map.borrow().address(home).ok_or_else(|| {
                format!("node {home} (the process's home) is not in this node's map")
            })?;
        {
            let mut arrivals = self.arrivals.lock().expect("arrivals");
            let now = Instant::now();
            arrivals.retain(|t| now.duration_since(*t) < ADMISSION_WINDOW);
            if from_placement && arrivals.len() >= self.cpus {
                return Err(format!(
                    "node {} took {} guest(s) in the last {:?} for its {} CPU(s): the sender's figures do not show them yet",
                    self.me,
                    arrivals.len(),
                    ADMISSION_WINDOW,
                    self.cpus
                ));
            }
            arrivals.push(now);
        }
        Ok(Box::new(move |me: &Arc<Self>, link: OwnedFd| {
            let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
                Ok(pair) => pair,
                Err(e) => return warn!("cannot start a keeper: {e}"),
            };
            let args = vec![
                "__remote-keeper".to_string(),
                format!("--node={}", me.me),
                format!("--key={}", me.config.key_path.display()),
                format!("--home-node={home}"),
                format!("--home-address={home_address}"),
                format!("--port={}", me.config.port),
                format!("--home-pid={home_pid}"),
                format!("--session={session}"),
                format!("--sender={from}"),
                format!("--guest-uid={}", me.config.guest_uid),
                format!("--guest-gid={}", me.config.guest_gid),
                format!("--guest-root={}", me.config.guest_root.display()),
                format!("--spin-us={}", me.config.forward_spin.as_micros()),
                format!("--mfs={}", me.mfs_root().display()),
                format!("--daemon-fd={}", theirs.as_raw_fd()),
                format!("--link-fd={}", link.as_raw_fd()),
            ];
            let child = match me.spawn_keeper(&args, &[theirs.into(), link]) {
                Ok(child) => child,
                Err(e) => {
                    return warn!(
                        "cannot start a keeper for process {home_pid} of node {home}: {e}"
                    );
                }
            };
            let id = child.id().unwrap_or(0);
            me.counters.guests_in.fetch_add(1, Ordering::Relaxed);
            let (orders, orders_rx) = mpsc::unbounded_channel();
            me.guests.lock().expect("guests").insert(
                id,
                Guest {
                    home_node: home,
                    home_pid,
                    keeper_pid: id,
                    orders,
                },
            );
            let me = me.clone();
            tokio::spawn(async move {
                run_guest_keeper(home, home_pid, ours, orders_rx).await;
                let mut child = child;
                let _ = me.reap_keeper(&mut child).await;
                me.guests.lock().expect("guests").remove(&id);
            });
        }))
    }

    #[allow(clippy::type_complexity)]
    fn accept_rejoin(
        &self,
        from: NodeId,
        home_pid: u32,
        session: u64,
    ) -> Result<Box<dyn FnOnce(&Arc<Self>, OwnedFd) + Send>, String> {
        let processes = self.processes.lock().expect("process table");
        let managed = processes
            .get(&home_pid)
            .filter(|m| m.session == session && m.keeper.is_some())
            .ok_or_else(|| {
                format!("process {home_pid} is not away from this node in that session")
            })?;
        let keeper = managed.keeper.clone().expect("checked above");
        Ok(Box::new(move |_me: &Arc<Self>, link: OwnedFd| {
            let _ = keeper.send((KeeperCommand::TakeLink { node: from.get() }, Some(link)));
        }))
    }

    /// The guests this node hosts, with their keepers.
    pub fn guest_list(&self) -> Vec<Guest> {
        let mut guests: Vec<Guest> = self
            .guests
            .lock()
            .expect("guests")
            .values()
            .cloned()
            .collect();
        guests.sort_by_key(|g| (g.home_node, g.home_pid));
        guests
    }

    /// Sends every guest home (an expel, or this node leaving); returns
    /// how many were told to go.
    pub fn send_guests_home(&self, reason: &str) -> usize {
        let guests = self.guests.lock().expect("guests");
        for guest in guests.values() {
            let _ = guest.orders.send(KeeperCommand::GoHome {
                reason: reason.to_string(),
            });
        }
        guests.len()
    }

    /// Brings every process of this node that runs elsewhere home; returns
    /// how many were asked to come.
    pub fn bring_all_home(self: &Arc<Self>) -> usize {
        let away = self.away();
        for process in &away {
            if let Err(ControlReply::Refused { reason }) =
                self.start_move(process.pid, MigrateTarget::Home, Some(0), None, Mover::User)
            {
                warn!("cannot bring process {} home: {reason}", process.pid);
            }
        }
        away.len()
    }

    /// The control-tree settings of `pid`.
    pub fn controls(&self, pid: u32) -> ProcessControls {
        let mut processes = self.processes.lock().expect("process table");
        Self::forget_if_gone(&mut processes, pid);
        processes
            .get(&pid)
            .map(Managed::controls)
            .unwrap_or_default()
    }

    /// The control-tree settings of every process that has any.
    pub fn all_controls(&self) -> Vec<(u32, ProcessControls)> {
        let processes = self.processes.lock().expect("process table");
        let mut all: Vec<(u32, ProcessControls)> = processes
            .iter()
            .map(|(pid, m)| (*pid, m.controls()))
            .collect();
        all.sort_by_key(|(pid, _)| *pid);
        all
    }

    /// Changes the control-tree settings of `pid`, if the caller may.
    pub fn set_controls(
        &self,
        pid: u32,
        caller_uid: Option<u32>,
        change: impl FnOnce(&mut ProcessControls),
    ) -> Result<(), String> {
        may_signal(caller_uid, pid)?;
        let mut processes = self.processes.lock().expect("process table");
        let managed = Self::entry(&mut processes, pid);
        let mut controls = managed.controls();
        change(&mut controls);
        managed.options.lock = Some(controls.locked);
        managed.selected = controls.selected;
        managed.options.job = controls.job;
        managed.options.decay = controls.decay;
        managed.baseline = controls.baseline;
        Ok(())
    }

    /// Processes of other nodes running here, by home node and pid.
    pub fn guests(&self) -> Vec<GuestProcess> {
        let mut guests: Vec<GuestProcess> = self
            .guests
            .lock()
            .expect("guests")
            .values()
            .map(|g| GuestProcess {
                home_node: g.home_node.get(),
                home_pid: g.home_pid,
                pid: g.local_pid(),
            })
            .collect();
        guests.sort_by_key(|g| (g.home_node, g.home_pid));
        guests
    }

    pub fn counters(&self) -> &MigrationCounters {
        &self.counters
    }

    /// omx's own processes on this node besides the daemon: its keepers,
    /// and the deputies of processes away.
    pub fn service_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .keepers
            .lock()
            .expect("keepers")
            .iter()
            .copied()
            .collect();
        pids.extend(self.deputies());
        pids
    }

    /// The deputies: this node's processes that are away or moving, whose
    /// home side only serves the remote.
    pub fn deputies(&self) -> Vec<u32> {
        self.processes
            .lock()
            .expect("process table")
            .iter()
            .filter(|(_, m)| m.location != Location::Home)
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// How many of this node's processes are moving now.
    pub fn moving(&self) -> usize {
        self.processes
            .lock()
            .expect("process table")
            .values()
            .filter(|m| m.location == Location::Migrating)
            .count()
    }

    /// This node's processes the placement engine may consider: every
    /// process of the table (started by `mosrun`, or moved once), where it
    /// is and its controls.
    pub fn placement_entries(&self) -> Vec<PlacementEntry> {
        let mut processes = self.processes.lock().expect("process table");
        let pids: Vec<u32> = processes.keys().copied().collect();
        for pid in pids {
            Self::forget_if_gone(&mut processes, pid);
        }
        let mut entries: Vec<PlacementEntry> = processes
            .iter()
            .map(|(pid, m)| PlacementEntry {
                pid: *pid,
                site: match m.location {
                    Location::Home => Site::Home,
                    Location::Migrating => Site::Moving,
                    Location::Away(node) => Site::Away(node),
                },
                landings: m.landings,
                controls: m.controls(),
            })
            .collect();
        entries.sort_by_key(|e| e.pid);
        entries
    }

    /// What the keeper of `pid` (away) reported it used since the last
    /// call (the latest figures, with the I/O of every report summed), or
    /// `None` if it reported nothing since.
    pub fn take_away_usage(&self, pid: u32) -> Option<GuestUsage> {
        let mut processes = self.processes.lock().expect("process table");
        processes.get_mut(&pid)?.away_usage.take()
    }

    /// Processes of this node running elsewhere, by pid.
    pub fn away(&self) -> Vec<AwayProcess> {
        let mut away: Vec<AwayProcess> = self
            .processes
            .lock()
            .expect("process table")
            .iter()
            .filter_map(|(pid, m)| match m.location {
                Location::Away(node) => Some(AwayProcess {
                    pid: *pid,
                    node: node.get(),
                }),
                _ => None,
            })
            .collect();
        away.sort_by_key(|p| p.pid);
        away
    }
}

/// Relays orders to a guest's keeper until it ends, and logs what it
/// reports (its home node's daemon is the one that acts on the reports).
async fn run_guest_keeper(
    home: NodeId,
    home_pid: u32,
    channel: std::os::unix::net::UnixStream,
    mut orders: mpsc::UnboundedReceiver<KeeperCommand>,
) {
    let stream = match channel
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(channel))
    {
        Ok(stream) => stream,
        Err(e) => return warn!("keeper channel for process {home_pid} of node {home}: {e}"),
    };
    let mut framed = PlainFramed::new(stream);
    loop {
        tokio::select! {
            report = framed.recv::<KeeperReport>() => match report {
                Ok(Some(report)) => debug!("guest {home_pid} of node {home}: {report:?}"),
                _ => return,
            },
            order = orders.recv() => match order {
                Some(command) => {
                    if let Err(e) = framed.send(&command).await {
                        warn!("cannot instruct the keeper of guest {home_pid} of node {home}: {e}");
                    }
                }
                None => {
                    // Nobody gives orders any more; keep the channel open
                    // while the keeper lives.
                    while let Ok(Some(_)) = framed.recv::<KeeperReport>().await {}
                    return;
                }
            },
        }
    }
}

/// Sends a command to a keeper, with a descriptor if given.
async fn send_order(
    framed: &mut PlainFramed<UnixStream>,
    command: &KeeperCommand,
    fd: Option<OwnedFd>,
) -> std::io::Result<()> {
    let Some(fd) = fd else {
        return framed.send(command).await.map_err(std::io::Error::other);
    };
    let bytes = omx_mfs::wire::frame::encode_frame(&omx_mfs::wire::encode(command));
    let stream = framed.get_ref();
    stream.writable().await?;
    stream.try_io(Interest::WRITABLE, || {
        let fds = [fd.as_raw_fd()];
        let control = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let sent = nix::sys::socket::sendmsg::<()>(
            stream.as_raw_fd(),
            &[std::io::IoSlice::new(&bytes)],
            &control,
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .map_err(std::io::Error::from)?;
        if sent != bytes.len() {
            return Err(std::io::Error::other("a keeper command was cut short"));
        }
        Ok(())
    })
}

/// Whether the caller (uid) may move `pid`: as kill(2) would let it
/// signal the process.
pub fn may_signal(caller_uid: Option<u32>, pid: u32) -> Result<(), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| format!("there is no process {pid} on this node"))?;
    let Some(caller) = caller_uid else {
        return Err("the caller's identity is unknown".into());
    };
    if caller == 0 {
        return Ok(());
    }
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if uids.iter().take(3).any(|u| *u == caller) {
        Ok(())
    } else {
        Err(format!(
            "you may move only processes you could kill, and process {pid} is not yours"
        ))
    }
}

/// MFS's magic links follow this node's processes where they run.
impl omx_mfs::fs::Whereabouts for Migrations {
    fn place(&self, pid: u32) -> omx_mfs::fs::Place {
        let processes = self.processes.lock().expect("process table");
        let managed = processes.get(&pid);
        let here = match managed.map(|m| &m.location) {
            // A forwarded call of a process away comes from its deputy.
            Some(Location::Away(node)) => *node,
            _ => self.me,
        };
        let selected = managed.and_then(|m| m.selected).unwrap_or(here);
        omx_mfs::fs::Place {
            here,
            home: self.me,
            // execve needs home: a process execs where it belongs.
            lastexec: self.me,
            selected,
            magic: here,
        }
    }
}
