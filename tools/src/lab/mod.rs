//! `omx lab`: a cluster of N nodes on one Linux machine.
//!
//! Each node is a network namespace (with its own address on a private
//! bridge), a mount namespace, and cgroups whose CPU quota and memory limit
//! stand for its CPUs and RAM; a daemon runs inside each. Everything `up`
//! creates is journaled first, so `down` removes it all, also after a crash
//! or a half-finished `up`.

pub mod cgroups;
mod journal;
pub mod mount_namespace;
mod network;
pub mod plan;

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use nix::sched::{CloneFlags, setns};
use omx_mfs::cluster_key::ClusterKey;
use omx_mfs::wire::{ClusterView, NodeState};
use serde::{Deserialize, Serialize};

use self::cgroups::CgroupLayout;
use self::journal::{Journal, Resource};
use self::plan::{Host, PlannedNode};
use crate::status;

/// Where labs keep their files.
pub const LABS_DIR: &str = "/run/omx-lab";
/// The port lab nodes serve metrics on (Prometheus's node-exporter range).
pub const DEFAULT_LAB_METRICS_PORT: u16 = 9464;
/// How long a freshly started daemon may take to answer.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build the lab's nodes and start a daemon in each.
    Up(UpArgs),
    /// Remove everything the lab created (works after a crash, too).
    Down(NameArg),
    /// Run a command inside a node (its namespaces and cgroups).
    Exec {
        #[command(flatten)]
        name: NameArg,
        node: u16,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// Show the lab's nodes and what each daemon sees.
    Status {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        json: bool,
    },
    /// Start a node's daemon again (after `stop`, or a crash).
    Start {
        #[command(flatten)]
        name: NameArg,
        node: u16,
    },
    /// Stop a node's daemon (SIGTERM; --kill for SIGKILL).
    Stop {
        #[command(flatten)]
        name: NameArg,
        node: u16,
        #[arg(long)]
        kill: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct NameArg {
    /// The lab's name (labs with different names can run side by side).
    #[arg(long, default_value = "omx", value_parser = parse_lab_name)]
    pub name: String,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Number of nodes (1..250).
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// CPUs of each node: one value for all or one per node, e.g. `1,1,0.5,1/6`
    /// (default: an equal share of this machine).
    #[arg(long, value_delimiter = ',', value_parser = parse_cpus_arg)]
    pub cpus: Vec<f64>,
    /// RAM of each node: one value or one per node, e.g. `512M,1G`
    /// (default: an equal share of this machine).
    #[arg(long, value_delimiter = ',', value_parser = parse_size_arg)]
    pub mem: Vec<u64>,
    /// Speed of each node's CPUs in openMosix units (default: this machine's
    /// calibrated speed, scaled by the node's CPU share).
    #[arg(long, value_delimiter = ',')]
    pub speed: Vec<u32>,
    #[command(flatten)]
    pub name: NameArg,
    /// The nodes' /24 network; node N gets address .N.
    #[arg(long, default_value = "10.77.0.0")]
    pub subnet: Ipv4Addr,
    /// The cluster port.
    #[arg(long, default_value_t = omx_mfs::config::DEFAULT_PORT)]
    pub port: u16,
    /// Each node's daemon serves Prometheus metrics at its address and
    /// this port (0: no metrics).
    #[arg(long, default_value_t = DEFAULT_LAB_METRICS_PORT)]
    pub metrics_port: u16,
    /// Gossip step in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub gossip_ms: u64,
    /// Gossip window.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Whether root of one node is squashed to `nobody` on the others'
    /// files through MFS (`false` to run file system test suites as root).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub mfs_root_squash: bool,
    /// Whether the nodes move processes on their own (the placement
    /// engine); `false` leaves every move to the user.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub balance: bool,
}

fn parse_lab_name(text: &str) -> Result<String, String> {
    let ok = (1..=8).contains(&text.len())
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}`: a lab name is 1 to 8 lowercase letters and digits, starting with a letter (it prefixes interface names)"
        ))
    }
}

fn parse_cpus_arg(text: &str) -> Result<f64, String> {
    plan::parse_cpus(text).map_err(|_| {
        format!("`{text}` is not a CPU count: use a number of at least 0.01, like 2, 0.5 or 1/6")
    })
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    plan::parse_size(text).map_err(|e| e.to_string())
}

/// A built lab, as recorded in its directory.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LabState {
    pub name: String,
    pub port: u16,
    /// Where each node serves its metrics (0: nowhere).
    #[serde(default)]
    pub metrics_port: u16,
    pub nodes: Vec<LabNode>,
}

/// One node of a built lab.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LabNode {
    #[serde(flatten)]
    pub plan: PlannedNode,
    pub netns: String,
    pub mount_namespace: PathBuf,
    pub cgroups: Vec<PathBuf>,
    /// The node's own directory: config, log, control socket, pid file.
    pub dir: PathBuf,
}

impl LabNode {
    pub fn config(&self) -> PathBuf {
        self.dir.join("omx.toml")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }
}

pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LABS_DIR).join(name)
}

impl LabState {
    pub fn load(name: &str) -> anyhow::Result<LabState> {
        let path = lab_dir(name).join("lab.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "lab `{name}` is not up (no {}): start it with `omx lab up --name {name}`",
                    path.display()
                )
            } else {
                anyhow::anyhow!("cannot read {}: {e}", path.display())
            }
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    pub fn node(&self, id: u16) -> anyhow::Result<&LabNode> {
        self.nodes
            .iter()
            .find(|n| n.plan.id == id)
            .with_context(|| {
                format!(
                    "lab `{}` has no node {id}: its nodes are 1..{}",
                    self.name,
                    self.nodes.len()
                )
            })
    }
}

pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Up(args) => {
            let lab = up(&args)?;
            println!(
                "lab `{}` is up: {} nodes on {}/24, port {}",
                lab.name,
                lab.nodes.len(),
                args.subnet,
                lab.port
            );
            println!(
                "  run a command in a node:  omx lab exec --name {} 1 -- omx status",
                lab.name
            );
            println!(
                "  remove it:                omx lab down --name {}",
                lab.name
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down(NameArg { name }) => down(&name),
        LabCommand::Exec {
            name,
            node,
            command,
        } => exec(&name.name, node, &command),
        LabCommand::Status { name, json } => print_status(&name.name, json),
        LabCommand::Start { name, node } => {
            let lab = LabState::load(&name.name)?;
            let node = lab.node(node)?;
            if let Some(pid) = running_daemon(&lab, node) {
                bail!(
                    "node {}'s daemon is already running (pid {pid})",
                    node.plan.id
                );
            }
            let pid = start_daemon(&lab, node)?;
            wait_until_answering(node, pid)?;
            println!("node {}: daemon started (pid {pid})", node.plan.id);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Stop { name, node, kill } => {
            let lab = LabState::load(&name.name)?;
            let node = lab.node(node)?;
            stop_daemon(&lab, node, kill)?;
            println!("node {}: daemon stopped", node.plan.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} needs root: it creates network namespaces, mounts and cgroups");
    }
    Ok(())
}

/// Builds a lab; on any failure removes what it built and reports why.
pub fn up(args: &UpArgs) -> anyhow::Result<LabState> {
    require_root("omx lab up")?;
    let name = &args.name.name;
    let dir = lab_dir(name);
    if dir.exists() {
        bail!(
            "lab `{name}` is already up (or a previous `up` did not finish): see `omx lab status --name {name}`, or remove it with `omx lab down --name {name}`"
        );
    }
    let (netns, links) = network::leftovers(name);
    if !netns.is_empty() || !links.is_empty() {
        bail!(
            "leftovers of a lab `{name}` exist ({}): remove them with `omx lab down --name {name}`",
            netns
                .iter()
                .chain(links.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let host = Host {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        mem_bytes: host_memory()?,
        speed: if args.speed.is_empty() {
            omx_dfsa::load::speed::calibrate(Duration::from_millis(300))
        } else {
            0
        },
    };
    let nodes = plan::plan(
        args.nodes,
        args.subnet,
        plan::expand(&args.cpus, args.nodes, "cpus")?,
        plan::expand(&args.mem, args.nodes, "mem")?,
        plan::expand(&args.speed, args.nodes, "speed")?,
        &host,
    )?;
    let layout = CgroupLayout::detect()?;

    std::fs::create_dir_all(LABS_DIR)?;
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let built = Journal::create(&dir.join("journal")).and_then(|mut journal| {
        journal.record(&Resource::Dir { path: dir.clone() })?;
        build(args, &nodes, &layout, &dir, &mut journal)
    });
    match built {
        Ok(lab) => Ok(lab),
        Err(e) => {
            let _ = remove(name);
            Err(e.context(format!(
                "lab `{name}` could not be built and was removed again"
            )))
        }
    }
}

fn build(
    args: &UpArgs,
    planned: &[PlannedNode],
    layout: &CgroupLayout,
    dir: &Path,
    journal: &mut Journal,
) -> anyhow::Result<LabState> {
    let name = &args.name.name;
    ClusterKey::generate()?.save(&dir.join("cluster.key"))?;
    let map_text = format!(
        "# lab `{name}`: {} nodes\n1 {} {}\n",
        planned.len(),
        planned[0].address,
        planned.len()
    );
    std::fs::write(dir.join("omx.map"), map_text)?;

    network::create_bridge(name, journal)?;
    layout.create_lab(name, journal)?;
    let holder = dir.join("ns");
    mount_namespace::prepare_holder_dir(&holder, journal)?;

    let mut nodes = Vec::new();
    for node in planned {
        let id = node.id;
        network::create_node(name, id, node.address, 24, journal)?;
        let cgroups = layout.create_node(name, id, node.cpus, node.mem_bytes, journal)?;
        let mount_namespace = mount_namespace::create(&holder, &format!("node-{id}.mnt"), journal)?;
        let node_dir = dir.join(format!("node-{id}"));
        std::fs::create_dir(&node_dir)?;
        // The node's own disk: what it exports as /mfs/<id>.
        std::fs::create_dir(node_dir.join("disk"))?;
        let lab_node = LabNode {
            plan: node.clone(),
            netns: network::netns_name(name, id),
            mount_namespace,
            cgroups: cgroups.dirs,
            dir: node_dir,
        };
        std::fs::write(lab_node.config(), node_config(args, &lab_node))?;
        nodes.push(lab_node);
    }
    let lab = LabState {
        name: name.clone(),
        port: args.port,
        metrics_port: args.metrics_port,
        nodes,
    };
    std::fs::write(dir.join("lab.json"), serde_json::to_string_pretty(&lab)?)?;
    let pids: Vec<u32> = lab
        .nodes
        .iter()
        .map(|node| start_daemon(&lab, node))
        .collect::<anyhow::Result<_>>()?;
    for (node, pid) in lab.nodes.iter().zip(pids) {
        wait_until_answering(node, pid)?;
    }
    Ok(lab)
}

fn node_config(args: &UpArgs, node: &LabNode) -> String {
    let dirs: Vec<String> = node
        .cgroups
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    format!(
        "# node {id} of lab `{lab}` (generated by `omx lab up`)\n\
         node = {id}\n\
         map = \"../omx.map\"\n\
         key = \"../cluster.key\"\n\
         port = {port}\n\
         control_socket = \"omx.sock\"\n\
         speed = {speed}\n\
         \n\
         [gossip]\n\
         interval_ms = {gossip}\n\
         window = {window}\n\
         \n\
         [load]\n\
         source = \"cgroup\"\n\
         cgroup_dirs = [{dirs}]\n\
         \n\
         [mfs]\n\
         export = \"disk\"\n\
         root_squash = {squash}\n\
         \n\
         [placement]\n\
         balance = {balance}\n",
        id = node.plan.id,
        lab = args.name.name,
        port = args.port,
        speed = node.plan.speed,
        gossip = args.gossip_ms,
        window = args.window,
        dirs = dirs.join(", "),
        squash = args.mfs_root_squash,
        balance = args.balance,
    )
}

fn host_memory() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .context("/proc/meminfo has no MemTotal")
}

/// Starts `node`'s daemon inside the node, logging to its log file.
fn start_daemon(lab: &LabState, node: &LabNode) -> anyhow::Result<u32> {
    let exe = std::env::current_exe()?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.log())
        .with_context(|| format!("cannot open {}", node.log().display()))?;
    let child = Command::new(&exe)
        .args([
            "lab",
            "exec",
            "--name",
            &lab.name,
            &node.plan.id.to_string(),
            "--",
        ])
        .arg(&exe)
        .arg("daemon")
        .args(
            (lab.metrics_port != 0)
                .then(|| format!("--metrics-addr={}:{}", node.plan.address, lab.metrics_port)),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C on the terminal that ran `up` does
        // not reach the daemons.
        .process_group(0)
        .spawn()
        .context("cannot start a daemon")?;
    std::fs::write(node.pid_file(), child.id().to_string())?;
    Ok(child.id())
}

/// Waits for a daemon to answer on its control socket.
fn wait_until_answering(node: &LabNode, pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + DAEMON_START_TIMEOUT;
    loop {
        if status::fetch(&node.config()).is_ok() {
            return Ok(());
        }
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        if !alive || Instant::now() > deadline {
            let log = std::fs::read_to_string(node.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "node {}'s daemon {} ({}); its log ends with:\n{}",
                node.plan.id,
                if alive { "does not answer" } else { "exited" },
                node.log().display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of `node`'s running daemon, if it runs.
fn running_daemon(lab: &LabState, node: &LabNode) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(node.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let in_node = cgroups::process_in(
        pid,
        &format!("{}/node-{}", cgroups::lab_dir_name(&lab.name), node.plan.id),
    );
    (in_node && !stat.contains(") Z ")).then_some(pid)
}

fn stop_daemon(lab: &LabState, node: &LabNode, kill: bool) -> anyhow::Result<()> {
    let Some(pid) = running_daemon(lab, node) else {
        bail!("node {}'s daemon is not running", node.plan.id);
    };
    let signal = if kill {
        nix::sys::signal::Signal::SIGKILL
    } else {
        nix::sys::signal::Signal::SIGTERM
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while running_daemon(lab, node).is_some() {
        if Instant::now() > deadline {
            bail!("node {}'s daemon (pid {pid}) did not stop", node.plan.id);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Replaces this process with `command` running inside `node`.
fn exec(name: &str, node: u16, command: &[OsString]) -> anyhow::Result<ExitCode> {
    require_root("omx lab exec")?;
    let lab = LabState::load(name)?;
    let node = lab.node(node)?;
    let netns_path = Path::new("/run/netns").join(&node.netns);
    let netns = std::fs::File::open(&netns_path)
        .with_context(|| format!("cannot open {}: is the lab intact?", netns_path.display()))?;
    let mount_ns = std::fs::File::open(&node.mount_namespace).with_context(|| {
        format!(
            "cannot open {}: is the lab intact?",
            node.mount_namespace.display()
        )
    })?;
    let cwd = std::env::current_dir().ok();
    cgroups::join(&node.cgroups)?;
    // Entering a mount namespace needs a single-threaded process: this
    // command starts no threads.
    setns(&netns, CloneFlags::CLONE_NEWNET).context("cannot enter the node's network namespace")?;
    setns(&mount_ns, CloneFlags::CLONE_NEWNS).context("cannot enter the node's mount namespace")?;
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    let error = Command::new(&command[0])
        .args(&command[1..])
        .env("OMX_CONFIG", node.config())
        .env("OMX_LAB_NODE", node.plan.id.to_string())
        .exec();
    eprintln!("omx lab exec: cannot run {:?}: {error}", command[0]);
    Ok(ExitCode::from(127))
}

fn print_status(name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let lab = LabState::load(name)?;
    let rows: Vec<(LabNode, Option<i32>, Option<ClusterView>)> = lab
        .nodes
        .iter()
        .map(|node| {
            let pid = running_daemon(&lab, node);
            let view = pid.and_then(|_| status::fetch(&node.config()).ok());
            (node.clone(), pid, view)
        })
        .collect();
    if json {
        let value: Vec<serde_json::Value> = rows
            .iter()
            .map(|(node, pid, view)| {
                serde_json::json!({ "node": node, "daemon_pid": pid, "view": view })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "lab `{}`: {} nodes, port {}",
        lab.name,
        lab.nodes.len(),
        lab.port
    );
    println!(
        "{:>5}  {:<15} {:>6} {:>8} {:>7}  {:<15} SEES",
        "NODE", "ADDRESS", "CPUS", "MEM", "SPEED", "DAEMON"
    );
    for (node, pid, view) in rows {
        let daemon = pid.map_or("stopped".to_string(), |p| format!("pid {p}"));
        let sees = view.map_or("-".to_string(), |v| {
            let others = v
                .nodes
                .iter()
                .filter(|n| n.state != NodeState::Local)
                .count();
            let up = v.nodes.iter().filter(|n| n.state == NodeState::Up).count();
            format!("{up}/{others} others up")
        });
        println!(
            "{:>5}  {:<15} {:>6.2} {:>7}M {:>7}  {:<15} {}",
            node.plan.id,
            node.plan.address,
            node.plan.cpus,
            node.plan.mem_bytes >> 20,
            node.plan.speed,
            daemon,
            sees
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn down(name: &str) -> anyhow::Result<ExitCode> {
    require_root("omx lab down")?;
    let report = remove(name)?;
    if report.removed == 0 && report.problems.is_empty() {
        println!("lab `{name}` is not up: nothing to remove");
        return Ok(ExitCode::SUCCESS);
    }
    if report.problems.is_empty() {
        println!("lab `{name}` removed ({} resources)", report.removed);
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &report.problems {
            eprintln!("omx lab down: {problem}");
        }
        bail!(
            "lab `{name}` was only partly removed: fix the above and run `omx lab down --name {name}` again"
        )
    }
}

struct RemovalReport {
    removed: usize,
    problems: Vec<String>,
}

/// Removes everything of lab `name`: what its journal lists, then anything
/// still named like its resources.
fn remove(name: &str) -> anyhow::Result<RemovalReport> {
    let dir = lab_dir(name);
    let mut resources = Journal::read(&dir.join("journal"))?;
    let (netns, links) = network::leftovers(name);
    resources.extend(netns.into_iter().map(|name| Resource::Netns { name }));
    resources.extend(links.into_iter().map(|name| Resource::Link { name }));
    if let Ok(layout) = CgroupLayout::detect() {
        for lab_cgroup in layout.lab_dirs(name) {
            resources.push(Resource::Cgroup { path: lab_cgroup });
        }
    }
    if dir.exists() {
        resources.push(Resource::Dir { path: dir.clone() });
    }

    let mut report = RemovalReport {
        removed: 0,
        problems: Vec::new(),
    };
    let mut outcome = |result: Result<bool, String>| match result {
        Ok(true) => report.removed += 1,
        Ok(false) => {}
        Err(problem) => report.problems.push(problem),
    };
    // Processes first (killing everything in the node cgroups), then what
    // they used, then the cgroups and files.
    for resource in resources.iter().rev() {
        if let Resource::Cgroup { path } = resource {
            outcome(cgroups::kill_all(path).map(|()| false));
        }
    }
    for resource in resources.iter().rev() {
        match resource {
            Resource::Mount { path } => outcome(mount_namespace::unmount(path)),
            Resource::Netns { name } => outcome(network::delete_netns(name)),
            Resource::Link { name } => outcome(network::delete_link(name)),
            _ => {}
        }
    }
    for resource in resources.iter().rev() {
        match resource {
            Resource::Cgroup { path } => outcome(cgroups::remove_tree(path)),
            Resource::Dir { path } => outcome(match std::fs::remove_dir_all(path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
            }),
            _ => {}
        }
    }
    Ok(report)
}
