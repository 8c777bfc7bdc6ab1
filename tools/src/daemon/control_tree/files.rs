//! What the control files say and what writing them does: one model,
//! served both by the FUSE tree and by the control socket (`mosctl`).

use std::sync::Arc;

use omx_mfs::NodeId;
use omx_mfs::cluster_map::ClusterMap;
use omx_mfs::fs::Exporter;
use omx_mfs::wire::{ControlReply, DecayHint, JobHint, MigrateTarget, NodeState, NodeView};

use super::entries::{Access, Entry, Kind};
use crate::daemon::balancer::{Balancer, StatsView};
use crate::daemon::migration::{self, ProcessControls};
use crate::daemon::settings::{Refused, Switches};
use crate::daemon::{Migrations, Node};

/// What `pid/N/decay` takes (and `decay/NAME` applies to a pid).
pub const DECAY_WORDS: &[&str] = &[
    "clear", "cpujob", "iojob", "anyjob", "slow", "fast", "nodecay", "normal",
];

/// The largest speed accepted, far above any machine (10000 is the
/// reference processor).
pub const MAX_SPEED: u32 = 100_000_000;

/// Who reads or writes a control file (as the kernel or the control
/// socket reports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("{0}: no such control file")]
    NotFound(String),
    /// A bad value; nothing changed.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
}

impl ControlError {
    /// The errno a file system call fails with.
    pub fn errno(&self) -> i32 {
        match self {
            ControlError::NotFound(_) => libc::ENOENT,
            ControlError::Invalid(_) => libc::EINVAL,
            ControlError::Denied(_) => libc::EACCES,
        }
    }
}

impl From<Refused> for ControlError {
    fn from(refused: Refused) -> ControlError {
        ControlError::Invalid(refused.0)
    }
}

/// Everything the control files show and change.
pub struct ControlFiles {
    node: Arc<Node>,
    migrations: Arc<Migrations>,
    exporter: Arc<Exporter>,
    balancer: Arc<Balancer>,
    /// For moves and other work started from the FUSE threads.
    runtime: tokio::runtime::Handle,
}

impl ControlFiles {
    pub fn new(
        node: Arc<Node>,
        migrations: Arc<Migrations>,
        exporter: Arc<Exporter>,
        balancer: Arc<Balancer>,
        runtime: tokio::runtime::Handle,
    ) -> ControlFiles {
        ControlFiles {
            node,
            migrations,
            exporter,
            balancer,
            runtime,
        }
    }

    /// Whether `entry` exists now (a node in the map, a running process,
    /// a guest hosted here).
    pub fn exists(&self, entry: Entry) -> bool {
        match entry {
            Entry::Node(n) | Entry::NodeFile(n, _) => {
                NodeId::new(n).is_some_and(|n| self.node.map().contains(n))
            }
            Entry::Pid(p) | Entry::PidFile(p, _) => process_exists(p),
            Entry::Guest(p) | Entry::GuestFile(p, _) => self.guest(p).is_some(),
            _ => true,
        }
    }

    /// The entry at `path` (like `admin/block` or `self/where`), relative
    /// to the root of the tree; `self` is resolved for `caller`.
    pub fn resolve(&self, path: &str, caller: Caller) -> Result<Entry, ControlError> {
        let mut entry = Entry::Root;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            entry = match entry.child(part) {
                Some(Entry::SelfLink) => Entry::Pid(caller.pid),
                Some(child) if self.exists(child) => child,
                _ => return Err(ControlError::NotFound(path.to_string())),
            };
        }
        Ok(entry)
    }

    /// The entries of directory `dir`, with their names.
    pub fn list(&self, dir: Entry) -> Vec<(String, Entry)> {
        match dir {
            Entry::Nodes => self
                .node
                .map()
                .node_ids()
                .into_iter()
                .map(|n| (n.to_string(), Entry::Node(n.get())))
                .collect(),
            Entry::Pids => process_ids()
                .into_iter()
                .map(|p| (p.to_string(), Entry::Pid(p)))
                .collect(),
            Entry::Remote => self
                .migrations
                .guest_list()
                .iter()
                .filter_map(|g| g.local_pid())
                .map(|p| (p.to_string(), Entry::Guest(p)))
                .collect(),
            other => other
                .fixed_children()
                .into_iter()
                .map(|e| (e.name().to_string(), e))
                .collect(),
        }
    }

    /// Who owns an entry: a process's files belong to the process's user,
    /// everything else to root.
    pub fn owner(&self, entry: Entry) -> u32 {
        match entry {
            Entry::Pid(p) | Entry::PidFile(p, _) => process_uid(p).unwrap_or(0),
            _ => 0,
        }
    }

    /// Where `self` points for `caller`.
    pub fn self_target(caller: Caller) -> String {
        format!("pid/{}", caller.pid)
    }

    /// The text of a file, ending with a newline.
    pub fn read(&self, entry: Entry, caller: Caller) -> Result<String, ControlError> {
        if !self.exists(entry) {
            return Err(ControlError::NotFound(entry.name().to_string()));
        }
        let value = match entry {
            Entry::AdminFile(_) => self.read_admin(entry.name()),
            Entry::NodeFile(n, _) => self.read_node(n, entry.name()),
            Entry::DecayFile(_) => self.read_decay_list(entry.name()),
            Entry::PidFile(p, _) => self.read_process(p, entry.name()),
            Entry::GuestFile(p, _) => self.read_guest(p, entry.name()),
            Entry::SelfLink => Self::self_target(caller),
            _ => {
                return Err(ControlError::Invalid(format!(
                    "{} is a directory",
                    entry.name()
                )));
            }
        };
        Ok(if value.ends_with('\n') {
            value
        } else {
            value + "\n"
        })
    }

    /// Applies a write of `value` to `entry` with `caller`'s rights. On
    /// any error nothing changed.
    pub fn write(&self, entry: Entry, value: &str, caller: Caller) -> Result<(), ControlError> {
        if !self.exists(entry) {
            return Err(ControlError::NotFound(entry.name().to_string()));
        }
        if entry.kind() != Kind::File(Access::Write) {
            return Err(ControlError::Denied(format!(
                "{} is read-only",
                entry.name()
            )));
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(ControlError::Invalid(format!(
                "an empty value for {}: write a value",
                entry.name()
            )));
        }
        // Moves start keepers and tasks: they need the runtime.
        let _runtime = self.runtime.enter();
        match entry {
            Entry::AdminFile(_) => {
                if caller.uid != 0 {
                    return Err(ControlError::Denied(format!(
                        "only root may change admin/{}",
                        entry.name()
                    )));
                }
                self.write_admin(entry.name(), value)
            }
            Entry::DecayFile(_) => {
                let pid = parse_pid(value)?;
                self.write_process(pid, "decay", entry.name(), caller)
            }
            Entry::PidFile(p, _) => self.write_process(p, entry.name(), value, caller),
            _ => Err(ControlError::Denied(format!(
                "{} cannot be written",
                entry.name()
            ))),
        }
    }

    fn read_admin(&self, name: &str) -> String {
        let switches = self.node.settings().get();
        let flag = |on: bool| if on { "1" } else { "0" }.to_string();
        match name {
            "block" => flag(switches.block),
            "stay" => flag(switches.stay),
            "lstay" => flag(switches.lstay),
            "quiet" => flag(switches.quiet),
            "nomfs" => flag(self.exporter.refuses_remote()),
            "bring" => self.migrations.away().len().to_string(),
            "expel" => self.migrations.guest_list().len().to_string(),
            "speed" => self.node.speed().to_string(),
            "mospe" => self.node.id().to_string(),
            "decayinterval" => switches.decay.interval_s.to_string(),
            "slowdecay" => switches.decay.slow.to_string(),
            "fastdecay" => switches.decay.fast.to_string(),
            "config" => self.node.map().to_string(),
            "version" => format!(
                "omx {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                omx_mfs::wire::PROTOCOL_VERSION
            ),
            other => unreachable!("admin/{other} has no reader"),
        }
    }

    fn write_admin(&self, name: &str, value: &str) -> Result<(), ControlError> {
        let settings = self.node.settings();
        let switch = |set: fn(&mut Switches, bool)| -> Result<(), ControlError> {
            let on = parse_flag(name, value)?;
            settings.update(|s| {
                set(s, on);
                Ok(())
            })?;
            Ok(())
        };
        let decay = |set: fn(&mut Switches, u32)| -> Result<(), ControlError> {
            let number = parse_number(name, value)?;
            settings.update(|s| {
                set(s, number);
                Ok(())
            })?;
            Ok(())
        };
        match name {
            "block" => switch(|s, on| s.block = on),
            "stay" => switch(|s, on| s.stay = on),
            "lstay" => switch(|s, on| s.lstay = on),
            "quiet" => switch(|s, on| s.quiet = on),
            "nomfs" => {
                let on = parse_flag(name, value)?;
                self.exporter.set_refuse_remote(on);
                Ok(())
            }
            "bring" => {
                parse_trigger(name, value)?;
                self.migrations.bring_all_home();
                Ok(())
            }
            "expel" => {
                parse_trigger(name, value)?;
                settings.update(|s| {
                    s.block = true;
                    Ok(())
                })?;
                self.migrations
                    .send_guests_home(&format!("node {} expels its guests", self.node.id()));
                Ok(())
            }
            "speed" => {
                let speed = parse_number(name, value)?;
                if !(1..=MAX_SPEED).contains(&speed) {
                    return Err(ControlError::Invalid(format!(
                        "a speed of {speed} is out of range: use 1 to {MAX_SPEED} (10000 is the reference processor)"
                    )));
                }
                self.node.set_speed(speed);
                Ok(())
            }
            "decayinterval" => decay(|s, n| s.decay.interval_s = n),
            "slowdecay" => decay(|s, n| s.decay.slow = n),
            "fastdecay" => decay(|s, n| s.decay.fast = n),
            "config" => {
                let map = ClusterMap::parse(value, "admin/config")
                    .map_err(|e| ControlError::Invalid(e.to_string()))?;
                self.node
                    .install_map(map, "admin/config")
                    .map(|_| ())
                    .map_err(ControlError::Invalid)
            }
            other => Err(ControlError::Denied(format!("admin/{other} is read-only"))),
        }
    }

    fn read_node(&self, n: u16, name: &str) -> String {
        let view = self.node.view();
        let Some(node) = view.nodes.iter().find(|v| v.node == n) else {
            return "unknown".into();
        };
        read_node_file(node, name)
    }

    fn read_decay_list(&self, name: &str) -> String {
        let matches = |c: &ProcessControls| match name {
            "cpujob" => c.job == JobHint::Cpu,
            "iojob" => c.job == JobHint::Io,
            "slow" => c.decay == DecayHint::Slow,
            "fast" => c.decay == DecayHint::Fast,
            // `clear` is an action only.
            _ => false,
        };
        self.migrations
            .all_controls()
            .into_iter()
            .filter(|(pid, c)| matches(c) && process_exists(*pid))
            .map(|(pid, _)| pid.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn read_process(&self, pid: u32, name: &str) -> String {
        let location = match self.migrations.location(pid, None) {
            ControlReply::Location(location) => location,
            other => unreachable!("location answered {other:?}"),
        };
        let controls = self.migrations.controls(pid);
        let flag = |on: bool| if on { "1" } else { "0" }.to_string();
        match name {
            "where" => match (location.migrating, location.node) {
                (true, _) => "migrating".into(),
                (false, Some(node)) => node.to_string(),
                (false, None) => "home".into(),
            },
            "lock" => flag(controls.locked),
            "cantmove" => {
                if location.node.is_some() {
                    String::new()
                } else {
                    omx_migrate::constraints::reason_to_stay(pid as i32, 0)
                        .unwrap_or_else(|e| Some(format!("cannot inspect process {pid}: {e}")))
                        .or_else(|| {
                            controls.locked.then(|| {
                                "it is locked: only an explicit move (where, migrate) moves it"
                                    .to_string()
                            })
                        })
                        .unwrap_or_default()
                }
            }
            "nmigs" => location.moves.to_string(),
            "selected" => controls.selected.map_or(0, NodeId::get).to_string(),
            "stats" => {
                let runs_on = location
                    .node
                    .map_or_else(|| "home".to_string(), |n| n.to_string());
                render_stats(&runs_on, pid, &controls, self.balancer.stats_of(pid))
            }
            "decay" => format!(
                "{} {}",
                match controls.decay {
                    DecayHint::Default => "normal",
                    DecayHint::None => "nodecay",
                    DecayHint::Slow => "slow",
                    DecayHint::Fast => "fast",
                },
                match controls.job {
                    JobHint::Unknown => "anyjob",
                    JobHint::Cpu => "cpujob",
                    JobHint::Io => "iojob",
                }
            ),
            other => unreachable!("pid/N/{other} has no reader"),
        }
    }

    fn write_process(
        &self,
        pid: u32,
        name: &str,
        value: &str,
        caller: Caller,
    ) -> Result<(), ControlError> {
        migration::may_signal(Some(caller.uid), pid).map_err(ControlError::Denied)?;
        let set = |change: &mut dyn FnMut(&mut ProcessControls)| {
            self.migrations
                .set_controls(pid, Some(caller.uid), |c| change(c))
                .map_err(ControlError::Denied)
        };
        match name {
            "where" => {
                let to = if value == "home" {
                    MigrateTarget::Home
                } else {
                    let node = self.known_node(value)?;
                    if !self.node.is_up(node) {
                        return Err(ControlError::Invalid(format!("node {node} is down")));
                    }
                    MigrateTarget::Node(node.get())
                };
                match self.migrations.start_move(
                    pid,
                    to,
                    Some(caller.uid),
                    None,
                    migration::Mover::User,
                ) {
                    Ok(()) | Err(ControlReply::Moved { .. }) => Ok(()),
                    Err(ControlReply::Refused { reason }) => Err(ControlError::Invalid(reason)),
                    Err(other) => Err(ControlError::Invalid(format!("{other:?}"))),
                }
            }
            "lock" => {
                let on = parse_flag(name, value)?;
                set(&mut |c| c.locked = on)
            }
            "selected" => {
                let selected = if value == "0" {
                    None
                } else {
                    Some(self.known_node(value)?)
                };
                set(&mut |c| c.selected = selected)
            }
            "decay" => {
                let now = ProcessFigures::of(pid).unwrap_or_default();
                let change = |c: &mut ProcessControls| match value {
                    "clear" => {
                        c.baseline = now;
                        self.balancer.clear_stats(pid);
                    }
                    "cpujob" => c.job = JobHint::Cpu,
                    "iojob" => c.job = JobHint::Io,
                    "anyjob" => c.job = JobHint::Unknown,
                    "slow" => c.decay = DecayHint::Slow,
                    "fast" => c.decay = DecayHint::Fast,
                    "nodecay" => c.decay = DecayHint::None,
                    "normal" => c.decay = DecayHint::Default,
                    _ => unreachable!("checked before"),
                };
                if !DECAY_WORDS.contains(&value) {
                    return Err(ControlError::Invalid(format!(
                        "`{value}` is not a decay control: write one of {}",
                        DECAY_WORDS.join(", ")
                    )));
                }
                set(&mut |c| change(c))
            }
            other => Err(ControlError::Denied(format!("pid/N/{other} is read-only"))),
        }
    }

    fn read_guest(&self, pid: u32, name: &str) -> String {
        let Some(guest) = self.guest(pid) else {
            return String::new();
        };
        let figures = ProcessFigures::of(pid).unwrap_or_default();
        match name {
            "home" => guest.home_node.to_string(),
            "pid" => guest.home_pid.to_string(),
            "mem" => figures.rss_bytes.to_string(),
            "cpu" => figures.cpu_ms.to_string(),
            other => unreachable!("remote/N/{other} has no reader"),
        }
    }

    fn guest(&self, pid: u32) -> Option<migration::Guest> {
        self.migrations
            .guest_list()
            .into_iter()
            .find(|g| g.local_pid() == Some(pid))
    }

    /// A node named by a write: a number of a node in the map.
    fn known_node(&self, value: &str) -> Result<NodeId, ControlError> {
        let node = value
            .parse::<u16>()
            .ok()
            .and_then(NodeId::new)
            .ok_or_else(|| {
                ControlError::Invalid(format!(
                    "`{value}` is not a node: write a node number (or `home`)"
                ))
            })?;
        if !self.node.map().contains(node) {
            return Err(ControlError::Invalid(format!(
                "node {node} is not in the cluster map"
            )));
        }
        Ok(node)
    }
}

fn read_node_file(node: &NodeView, name: &str) -> String {
    let status = match node.state {
        NodeState::Local => "local",
        NodeState::Up => "up",
        NodeState::Down => "down",
        NodeState::Unknown => "unknown",
    };
    if name == "status" {
        return status.into();
    }
    if name == "age" {
        return node
            .age_ms
            .map_or("unknown".into(), |ms| format!("{:.1}", ms as f64 / 1000.0));
    }
    let Some(load) = node.load else {
        return "unknown".into();
    };
    match name {
        "CPUs" => load.cpus.to_string(),
        "load" => load.load.to_string(),
        "mem" => load.mem_free.to_string(),
        "rmem" => load.mem_raw_free.to_string(),
        "tmem" => load.mem_total.to_string(),
        "speed" => load.speed.to_string(),
        "util" => (load.util_permille / 10).to_string(),
        other => unreachable!("nodes/N/{other} has no reader"),
    }
}

/// A process's CPU time, memory and I/O so far, from /proc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessFigures {
    pub cpu_ms: u64,
    pub rss_bytes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

impl ProcessFigures {
    pub fn of(pid: u32) -> Option<ProcessFigures> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        // utime and stime are fields 14 and 15 (11 and 12 after the name).
        let cpu_ticks = ticks(11)? + ticks(12)?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100)
            .max(1) as u64;
        let rss_pages = ticks(21).unwrap_or(0);
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let io_field = |key: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Some(ProcessFigures {
            cpu_ms: cpu_ticks * 1000 / hz,
            rss_bytes: rss_pages * 4096,
            read_bytes: io_field("rchar:"),
            write_bytes: io_field("wchar:"),
        })
    }
}

/// `pid/N/stats`: figures since the last `clear`.
/// Then the placement engine's decayed figures: how much of a CPU it
/// wants and gets, and its I/O rate (bytes/s) by the node holding the
/// files.
fn render_stats(
    runs_on: &str,
    pid: u32,
    controls: &ProcessControls,
    decayed: Option<StatsView>,
) -> String {
    let now = ProcessFigures::of(pid).unwrap_or_default();
    let since = controls.baseline;
    let mut text = if runs_on != "home" {
        // The home pid is the deputy: its figures are not the process's.
        format!(
            "node {runs_on}\ncpu_ms unknown (runs away)\nrss_bytes unknown (runs away)\nread_bytes unknown (runs away)\nwrite_bytes unknown (runs away)\n"
        )
    } else {
        format!(
            "node home\ncpu_ms {}\nrss_bytes {}\nread_bytes {}\nwrite_bytes {}\n",
            now.cpu_ms.saturating_sub(since.cpu_ms),
            now.rss_bytes,
            now.read_bytes.saturating_sub(since.read_bytes),
            now.write_bytes.saturating_sub(since.write_bytes),
        )
    };
    if let Some(d) = decayed {
        let io: Vec<String> = d
            .io_rates
            .iter()
            .map(|(node, rate)| format!("{node}:{rate:.0}"))
            .collect();
        text.push_str(&format!(
            "cpu_demand {:.3}\ncpu_share {:.3}\nmem_bytes {}\nio_rate_by_node {}\n",
            d.demand,
            d.cpu_share,
            d.rss,
            io.join(" ")
        ));
    }
    text
}

fn parse_flag(name: &str, value: &str) -> Result<bool, ControlError> {
    match value {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(ControlError::Invalid(format!(
            "`{other}` is not a value for {name}: write 1 (on) or 0 (off)"
        ))),
    }
}

fn parse_trigger(name: &str, value: &str) -> Result<(), ControlError> {
    if value == "1" {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "`{value}` is not a value for {name}: write 1 to do it"
        )))
    }
}

fn parse_number(name: &str, value: &str) -> Result<u32, ControlError> {
    value.parse().map_err(|_| {
        ControlError::Invalid(format!(
            "`{value}` is not a value for {name}: write a whole number"
        ))
    })
}

fn parse_pid(value: &str) -> Result<u32, ControlError> {
    value
        .parse()
        .ok()
        .filter(|p| *p > 0 && process_exists(*p))
        .ok_or_else(|| ControlError::Invalid(format!("`{value}` is not a process of this node")))
}

fn process_exists(pid: u32) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn process_uid(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

/// The pids of this node's processes, from /proc.
fn process_ids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_numbers_take_only_what_they_say() {
        assert_eq!(parse_flag("block", "1"), Ok(true));
        assert_eq!(parse_flag("block", "0"), Ok(false));
        for bad in ["2", "yes", "-1", "01", "1 1"] {
            let error = parse_flag("block", bad).unwrap_err();
            assert!(error.to_string().contains("block"), "{error}");
        }
        assert!(parse_number("speed", "12x").is_err());
        assert!(parse_number("speed", "-5").is_err());
        assert_eq!(parse_number("speed", "15000"), Ok(15000));
        assert!(parse_trigger("bring", "0").is_err());
    }

    #[test]
    fn figures_of_this_process_are_read() {
        let figures = ProcessFigures::of(std::process::id()).expect("our own /proc entry");
        assert!(figures.rss_bytes > 0);
        assert!(ProcessFigures::of(0).is_none());
    }
}
