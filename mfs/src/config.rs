//! A node's configuration: `/etc/omx/omx.toml` by default.
//!
//! The file names this node, the cluster map, the cluster key, the port and
//! the intervals. Loading resolves and checks everything a daemon needs
//! (config, map, this node's place in it) so that nothing starts
//! half-configured: any problem is an error naming the file, line and reason.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::NodeId;
use crate::cluster_map::{ClusterMap, MapError};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/omx/omx.toml";
pub const DEFAULT_PORT: u16 = 7210;

/// Where this node's load figures come from.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadSource {
    /// The whole machine: /proc and PSI.
    Machine,
    /// A lab node: the cgroup directories that confine it (one per cgroup v1
    /// hierarchy, or a single cgroup v2 directory).
    Cgroup { dirs: Vec<PathBuf> },
}

/// Gossip timing and window (MOSIX's information dissemination).
#[derive(Clone, Debug, PartialEq)]
pub struct GossipConfig {
    /// One step: each node sends one message per interval.
    pub interval: Duration,
    /// How many of the freshest entries it holds a node sends with its own.
    pub window: usize,
    /// A node with no news for this long is marked down; `None` means a
    /// default computed from the cluster size (see the dfsa crate).
    pub down_after: Option<Duration>,
}

/// The placement engine's switches.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementConfig {
    /// Whether this node moves its processes on its own (load balancing,
    /// memory ushering, I/O locality). Off, processes move only when asked.
    pub balance: bool,
    /// How often it considers a move.
    pub interval: Duration,
    /// A moved process stays put at least this long.
    pub min_residency: Duration,
}

/// A validated node configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// The file it was read from (relative paths inside are resolved
    /// against its directory).
    pub path: PathBuf,
    /// This node, if named; otherwise found in the map by local address.
    pub node: Option<NodeId>,
    pub map_path: PathBuf,
    pub key_path: PathBuf,
    /// The TCP port every node of the cluster listens on.
    pub port: u16,
    /// The address to listen on; default: this node's address in the map.
    pub listen: Option<IpAddr>,
    /// The daemon's local control socket, for the user's commands.
    pub control_socket: PathBuf,
    /// Where the control tree is mounted when `/proc/openMosix` cannot
    /// take it (`None`, from `control_tree = ""`: nowhere).
    pub control_tree: Option<PathBuf>,
    /// This node's speed in openMosix units (10000 = the reference
    /// machine); `None` means calibrate at start.
    pub speed: Option<u32>,
    /// Refuse a peer whose source address is not its address in the map.
    pub check_peer_address: bool,
    pub gossip: GossipConfig,
    pub load_source: LoadSource,
    /// How often the load is sampled (the load is smoothed over samples).
    pub load_sample: Duration,
    /// The unprivileged identity guest processes run under on this node
    /// (no local user should have it).
    pub guest_uid: u32,
    pub guest_gid: u32,
    /// An empty, root-owned directory guest processes are confined to.
    pub guest_root: PathBuf,
    /// How long a keeper busy-waits for the next message of a forwarded
    /// call before sleeping (zero: never).
    pub forward_spin: Duration,
    pub mfs: MfsConfig,
    pub placement: PlacementConfig,
}

/// The `[mfs]` section: the cluster file system.
#[derive(Debug, Clone, PartialEq)]
pub struct MfsConfig {
    /// Where `/mfs` is mounted; `None` (`mount = ""`) mounts nothing, but
    /// this node still serves its files to the others.
    pub mount: Option<PathBuf>,
    /// The tree this node exports as `/mfs/<this node>/`.
    pub export: PathBuf,
    /// How long an operation waits for an owner that does not answer.
    pub timeout: Duration,
    /// Root of other nodes acts as `squash_uid`/`squash_gid` here.
    pub root_squash: bool,
    pub squash_uid: u32,
    pub squash_gid: u32,
    /// Refuse other nodes' access to this node's files.
    pub nomfs: bool,
    /// Threads serving the kernel's requests.
    pub threads: usize,
}

/// Where the control tree goes on a kernel without `/proc/openMosix`.
pub const DEFAULT_CONTROL_TREE: &str = "/run/openMosix";

/// Where the companion kernel module offers the control tree a place.
pub const KERNEL_CONTROL_TREE: &str = "/proc/openMosix";

/// Long enough to catch a forwarded call's answer on a local network.
pub const DEFAULT_FORWARD_SPIN_US: u64 = 200;

/// `nobody`: what root of another node is through MFS by default.
pub const DEFAULT_SQUASH_ID: u32 = 65534;

/// The default guest uid and gid: far above any ordinary account.
pub const DEFAULT_GUEST_ID: u32 = 2_000_000_000;

/// A configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(
        "{path}: `node` is not set and no address of this machine is in the map {map}: set `node = ID` in {path}"
    )]
    NodeNotFound { path: PathBuf, map: PathBuf },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: Option<Spanned<u32>>,
    map: Option<PathBuf>,
    key: Option<PathBuf>,
    port: Option<Spanned<u32>>,
    listen: Option<Spanned<String>>,
    control_socket: Option<PathBuf>,
    control_tree: Option<PathBuf>,
    speed: Option<Spanned<u64>>,
    check_peer_address: Option<bool>,
    guest_uid: Option<u32>,
    guest_gid: Option<u32>,
    guest_root: Option<PathBuf>,
    forward_spin_us: Option<Spanned<u64>>,
    #[serde(default)]
    gossip: RawGossip,
    #[serde(default)]
    load: RawLoad,
    #[serde(default)]
    mfs: RawMfs,
    #[serde(default)]
    placement: RawPlacement,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    balance: Option<bool>,
    interval_ms: Option<Spanned<u64>>,
    min_residency_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMfs {
    mount: Option<PathBuf>,
    export: Option<PathBuf>,
    timeout_ms: Option<Spanned<u64>>,
    root_squash: Option<bool>,
    squash_uid: Option<u32>,
    squash_gid: Option<u32>,
    nomfs: Option<bool>,
    threads: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGossip {
    interval_ms: Option<Spanned<u64>>,
    window: Option<Spanned<u64>>,
    down_after_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    source: Option<Spanned<String>>,
    cgroup_dirs: Option<Spanned<Vec<PathBuf>>>,
    sample_ms: Option<Spanned<u64>>,
}

impl NodeConfig {
    /// Reads and validates a config file (not yet the map it names).
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        NodeConfig::parse(&text, path)
    }

    /// Validates config text; `path` is where it came from.
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let invalid_at = |offset: usize, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            reason,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            invalid_at(
                e.span().map_or(0, |s| s.start),
                e.message().trim().to_string(),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let resolve = |p: Option<PathBuf>, default: &str| {
            let p = p.unwrap_or_else(|| PathBuf::from(default));
            if p.is_absolute() { p } else { base.join(p) }
        };
        let check = |value: &Spanned<u64>, ok: bool, reason: &str| {
            if ok {
                Ok(*value.get_ref())
            } else {
                Err(invalid_at(value.span().start, reason.to_string()))
            }
        };

        let node = match &raw.node {
            None => None,
            Some(n) => Some(
                u16::try_from(*n.get_ref())
                    .ok()
                    .and_then(NodeId::new)
                    .ok_or_else(|| {
                        invalid_at(
                            n.span().start,
                            format!("node = {}: node ids are 1..65535", n.get_ref()),
                        )
                    })?,
            ),
        };
        let port = match &raw.port {
            None => DEFAULT_PORT,
            Some(p) => u16::try_from(*p.get_ref())
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    invalid_at(
                        p.span().start,
                        format!("port = {}: a port is 1..65535", p.get_ref()),
                    )
                })?,
        };
        let listen = match &raw.listen {
            None => None,
            Some(l) => Some(l.get_ref().parse::<IpAddr>().map_err(|_| {
                invalid_at(
                    l.span().start,
                    format!("listen = {:?} is not an IP address", l.get_ref()),
                )
            })?),
        };
        let speed = match &raw.speed {
            None => None,
            Some(s) => {
                let v = check(
                    s,
                    (1..=100_000_000).contains(s.get_ref()),
                    "speed must be 1..100000000 (10000 = the reference machine)",
                )?;
                Some(v as u32)
            }
        };
        let interval_ms = match &raw.gossip.interval_ms {
            None => 1000,
            Some(v) => check(
                v,
                (10..=3_600_000).contains(v.get_ref()),
                "gossip.interval_ms must be 10..3600000",
            )?,
        };
        let window = match &raw.gossip.window {
            None => 16,
            Some(v) => check(
                v,
                (1..=4096).contains(v.get_ref()),
                "gossip.window must be 1..4096",
            )? as usize,
        };
        let down_after = match &raw.gossip.down_after_ms {
            None => None,
            Some(v) => Some(Duration::from_millis(check(
                v,
                *v.get_ref() >= 2 * interval_ms,
                "gossip.down_after_ms must be at least two gossip intervals",
            )?)),
        };
        let load_source = match raw.load.source.as_ref().map(|s| (s.get_ref().as_str(), s)) {
            None | Some(("machine", _)) => {
                if let Some(dirs) = &raw.load.cgroup_dirs {
                    return Err(invalid_at(
                        dirs.span().start,
                        "load.cgroup_dirs is only used with load.source = \"cgroup\"".into(),
                    ));
                }
                LoadSource::Machine
            }
            Some(("cgroup", s)) => {
                let dirs = raw.load.cgroup_dirs.as_ref().ok_or_else(|| {
                    invalid_at(
                        s.span().start,
                        "load.source = \"cgroup\" needs load.cgroup_dirs".into(),
                    )
                })?;
                if dirs.get_ref().is_empty() || dirs.get_ref().iter().any(|d| !d.is_absolute()) {
                    return Err(invalid_at(
                        dirs.span().start,
                        "load.cgroup_dirs must list absolute cgroup directories".into(),
                    ));
                }
                LoadSource::Cgroup {
                    dirs: dirs.get_ref().clone(),
                }
            }
            Some((other, s)) => {
                return Err(invalid_at(
                    s.span().start,
                    format!("load.source = {other:?}: expected \"machine\" or \"cgroup\""),
                ));
            }
        };
        let forward_spin_us = match &raw.forward_spin_us {
            None => DEFAULT_FORWARD_SPIN_US,
            Some(v) => check(
                v,
                *v.get_ref() <= 10_000,
                "forward_spin_us must be 0..10000",
            )?,
        };
        let sample_ms = match &raw.load.sample_ms {
            None => 250,
            Some(v) => check(
                v,
                (10..=60_000).contains(v.get_ref()),
                "load.sample_ms must be 10..60000",
            )?,
        };

        let mfs_timeout_ms = match &raw.mfs.timeout_ms {
            None => 5000,
            Some(v) => check(
                v,
                (100..=600_000).contains(v.get_ref()),
                "mfs.timeout_ms must be 100..600000",
            )?,
        };
        let mfs_threads = match &raw.mfs.threads {
            None => 16,
            Some(v) => check(
                v,
                (1..=256).contains(v.get_ref()),
                "mfs.threads must be 1..256",
            )?,
        };
        let placement = PlacementConfig {
            balance: raw.placement.balance.unwrap_or(true),
            interval: Duration::from_millis(match &raw.placement.interval_ms {
                None => 500,
                Some(v) => check(
                    v,
                    (100..=60_000).contains(v.get_ref()),
                    "placement.interval_ms must be 100..60000",
                )?,
            }),
            min_residency: Duration::from_millis(match &raw.placement.min_residency_ms {
                None => 5000,
                Some(v) => check(
                    v,
                    *v.get_ref() <= 3_600_000,
                    "placement.min_residency_ms must be 0..3600000",
                )?,
            }),
        };
        let mfs = MfsConfig {
            mount: match raw.mfs.mount {
                Some(p) if p.as_os_str().is_empty() => None,
                other => Some(resolve(other, "/mfs")),
            },
            export: resolve(raw.mfs.export, "/"),
            timeout: Duration::from_millis(mfs_timeout_ms),
            root_squash: raw.mfs.root_squash.unwrap_or(true),
            squash_uid: raw.mfs.squash_uid.unwrap_or(DEFAULT_SQUASH_ID),
            squash_gid: raw.mfs.squash_gid.unwrap_or(DEFAULT_SQUASH_ID),
            nomfs: raw.mfs.nomfs.unwrap_or(false),
            threads: mfs_threads as usize,
        };

        Ok(NodeConfig {
            path: path.to_path_buf(),
            node,
            map_path: resolve(raw.map, "/etc/omx/omx.map"),
            key_path: resolve(raw.key, "/etc/omx/cluster.key"),
            port,
            listen,
            control_socket: resolve(raw.control_socket, "/run/omx/omx.sock"),
            control_tree: match raw.control_tree {
                Some(p) if p.as_os_str().is_empty() => None,
                other => Some(resolve(other, DEFAULT_CONTROL_TREE)),
            },
            speed,
            check_peer_address: raw.check_peer_address.unwrap_or(true),
            gossip: GossipConfig {
                interval: Duration::from_millis(interval_ms),
                window,
                down_after,
            },
            load_source,
            load_sample: Duration::from_millis(sample_ms),
            guest_uid: raw.guest_uid.unwrap_or(DEFAULT_GUEST_ID),
            guest_gid: raw.guest_gid.unwrap_or(DEFAULT_GUEST_ID),
            guest_root: resolve(raw.guest_root, "/run/omx/empty"),
            forward_spin: Duration::from_micros(forward_spin_us),
            mfs,
            placement,
        })
    }

    /// Loads the map this config names and finds this node in it: by the
    /// `node` setting, or else by an address of this machine.
    pub fn load_map(&self) -> Result<(NodeId, ClusterMap), ConfigError> {
        let map = ClusterMap::load(&self.map_path)?;
        let node = self.node_in(&map)?;
        Ok((node, map))
    }

    /// This node's id in `map`, or the reason it has none.
    pub fn node_in(&self, map: &ClusterMap) -> Result<NodeId, ConfigError> {
        match self.node {
            Some(node) if map.contains(node) => Ok(node),
            Some(node) => {
                let text = std::fs::read_to_string(&self.path).unwrap_or_default();
                let line = text
                    .lines()
                    .position(|l| l.trim_start().starts_with("node"))
                    .map_or(0, |i| i + 1);
                Err(ConfigError::Invalid {
                    path: self.path.clone(),
                    line,
                    reason: format!(
                        "node {node} (this node) is not in the map {}",
                        self.map_path.display()
                    ),
                })
            }
            None => local_addresses()
                .into_iter()
                .find_map(|a| map.node_at(a))
                .ok_or_else(|| ConfigError::NodeNotFound {
                    path: self.path.clone(),
                    map: self.map_path.clone(),
                }),
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifa| {
            let a = ifa.address?;
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("/etc/omx/omx.toml"))
    }

    fn invalid(text: &str) -> (usize, String) {
        match parse(text) {
            Err(ConfigError::Invalid { line, reason, .. }) => (line, reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_an_empty_config() {
        let c = parse("").unwrap();
        assert_eq!(c.node, None);
        assert_eq!(c.map_path, PathBuf::from("/etc/omx/omx.map"));
        assert_eq!(c.port, DEFAULT_PORT);
        assert_eq!(c.gossip.interval, Duration::from_secs(1));
        assert_eq!(c.gossip.window, 16);
        assert_eq!(c.load_source, LoadSource::Machine);
        assert!(c.check_peer_address);
        assert_eq!(c.control_tree, Some(PathBuf::from(DEFAULT_CONTROL_TREE)));
    }

    #[test]
    fn placement_is_on_by_default_and_checked() {
        let c = parse("").unwrap();
        assert!(c.placement.balance);
        assert_eq!(c.placement.interval, Duration::from_millis(500));
        assert_eq!(c.placement.min_residency, Duration::from_secs(5));
        let off =
            parse("[placement]\nbalance = false\ninterval_ms = 500\nmin_residency_ms = 0").unwrap();
        assert!(!off.placement.balance);
        assert_eq!(off.placement.interval, Duration::from_millis(500));
        assert_eq!(off.placement.min_residency, Duration::ZERO);
        let (line, reason) = invalid("[placement]\ninterval_ms = 5");
        assert_eq!(line, 2);
        assert!(
            reason.contains("placement.interval_ms must be 100..60000"),
            "{reason}"
        );
        let (_, reason) = invalid("[placement]\nbalanse = true");
        assert!(reason.contains("balanse"), "{reason}");
    }

    #[test]
    fn the_control_tree_can_be_moved_or_left_out() {
        let moved = parse("control_tree = \"/srv/om\"").unwrap();
        assert_eq!(moved.control_tree, Some(PathBuf::from("/srv/om")));
        let none = parse("control_tree = \"\"").unwrap();
        assert_eq!(none.control_tree, None);
    }

    #[test]
    fn reads_every_setting_and_resolves_relative_paths() {
        let c = parse(
            r#"
node = 3
map = "cluster.map"
key = "/secrets/k"
port = 9000
listen = "0.0.0.0"
control_socket = "run/omx.sock"
speed = 25000
check_peer_address = false
[gossip]
interval_ms = 500
window = 20
down_after_ms = 8000
[load]
source = "cgroup"
cgroup_dirs = ["/sys/fs/cgroup/cpu/lab/node-3"]
sample_ms = 100
"#,
        )
        .unwrap();
        assert_eq!(c.node, NodeId::new(3));
        assert_eq!(c.map_path, PathBuf::from("/etc/omx/cluster.map"));
        assert_eq!(c.key_path, PathBuf::from("/secrets/k"));
        assert_eq!(c.control_socket, PathBuf::from("/etc/omx/run/omx.sock"));
        assert_eq!(c.listen, Some("0.0.0.0".parse().unwrap()));
        assert_eq!(c.speed, Some(25000));
        assert_eq!(c.gossip.window, 20);
        assert_eq!(c.gossip.down_after, Some(Duration::from_secs(8)));
        assert!(matches!(c.load_source, LoadSource::Cgroup { ref dirs } if dirs.len() == 1));
        assert_eq!(c.load_sample, Duration::from_millis(100));
    }

    #[test]
    fn refuses_bad_values_with_their_line() {
        assert_eq!(invalid("\nnode = 0\n").0, 2);
        assert_eq!(invalid("port = 70000").0, 1);
        assert_eq!(invalid("\n\nlisten = \"here\"").0, 3);
        assert_eq!(invalid("[gossip]\nwindow = 0").0, 2);
        assert_eq!(
            invalid("[gossip]\ninterval_ms = 1000\ndown_after_ms = 1500").0,
            3
        );
        assert_eq!(invalid("[load]\nsource = \"gpu\"").0, 2);
        let (line, reason) = invalid("forward_spin_us = 20000");
        assert_eq!(line, 1);
        assert!(reason.contains("forward_spin_us"), "{reason}");
        assert_eq!(invalid("[load]\nsource = \"cgroup\"").0, 2);
        assert_eq!(invalid("speed = 0").0, 1);
        let (line, reason) = invalid("[mfs]\nexport = \"/srv\"\ntimeout_ms = 5");
        assert_eq!(line, 3);
        assert!(reason.contains("mfs.timeout_ms"), "{reason}");
        assert_eq!(invalid("[mfs]\nthreads = 0").0, 2);
        assert_eq!(invalid("[mfs]\nmountpoint = \"/x\"").0, 2);
    }

    #[test]
    fn mfs_settings_default_to_a_squashing_mount_at_slash_mfs() {
        let c = NodeConfig::parse("", Path::new("/etc/omx/omx.toml")).unwrap();
        assert_eq!(c.mfs.mount, Some(PathBuf::from("/mfs")));
        assert_eq!(c.mfs.export, PathBuf::from("/"));
        assert!(c.mfs.root_squash && !c.mfs.nomfs);
        assert_eq!((c.mfs.squash_uid, c.mfs.squash_gid), (65534, 65534));
        let c = NodeConfig::parse(
            "[mfs]\nmount = \"\"\nexport = \"disk\"\nroot_squash = false",
            Path::new("/lab/node-1/omx.toml"),
        )
        .unwrap();
        assert_eq!(c.mfs.mount, None);
        assert_eq!(c.mfs.export, PathBuf::from("/lab/node-1/disk"));
        assert!(!c.mfs.root_squash);
    }

    #[test]
    fn refuses_unknown_keys_and_bad_syntax() {
        let (line, reason) = invalid("node = 1\nnodes = 2\n");
        assert_eq!(line, 2);
        assert!(reason.contains("unknown field `nodes`"), "{reason}");
        let (line, _) = invalid("node = 1\n[gossip\n");
        assert_eq!(line, 2);
        let (line, reason) = invalid("port = \"seven\"");
        assert_eq!(line, 1);
        assert!(reason.contains("invalid type"), "{reason}");
    }

    #[test]
    fn this_node_must_be_in_the_map() {
        let dir = std::env::temp_dir().join(format!("omx-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("omx.map"), "1 10.9.0.1 2\n").unwrap();
        std::fs::write(dir.join("omx.toml"), "# c\nnode = 5\nmap = \"omx.map\"\n").unwrap();
        let c = NodeConfig::load(&dir.join("omx.toml")).unwrap();
        let e = c.load_map().unwrap_err().to_string();
        assert!(
            e.contains("omx.toml:2: node 5 (this node) is not in the map"),
            "{e}"
        );

        std::fs::write(dir.join("omx.toml"), "node = 2\nmap = \"omx.map\"\n").unwrap();
        let c = NodeConfig::load(&dir.join("omx.toml")).unwrap();
        let (node, map) = c.load_map().unwrap();
        assert_eq!(node.get(), 2);
        assert_eq!(map.len(), 2);

        std::fs::write(dir.join("omx.map"), "1 10.9.0.1 2\n2 10.9.0.8 1\n").unwrap();
        let e = c.load_map().unwrap_err().to_string();
        assert!(e.contains("omx.map:2: ids 2..2 overlap"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_node_setting_the_node_is_found_by_local_address() {
        let map = ClusterMap::parse("7 127.0.0.1 1\n", "m").unwrap();
        let c = parse("").unwrap();
        assert_eq!(c.node_in(&map).unwrap().get(), 7);
        let far = ClusterMap::parse("7 192.0.2.77 1\n", "m").unwrap();
        assert!(matches!(
            c.node_in(&far),
            Err(ConfigError::NodeNotFound { .. })
        ));
    }
}
