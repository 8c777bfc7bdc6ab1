//! `mosctl`: the classic openMosix node control, as files of the control
//! tree read and written through the local daemon (so the daemon checks
//! the caller's rights and the values exactly as for the tree itself).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use omx_mfs::wire::{ControlReply, ControlRequest};
use serde_json::json;

use crate::cli::ConfigArg;
use crate::control_client;

#[derive(Args, Debug)]
pub struct MosctlArgs {
    #[command(subcommand)]
    pub command: MosctlCommand,
    /// Print JSON (for the get*, status, isup and whois commands).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Subcommand, Debug, Clone)]
pub enum MosctlCommand {
    /// Keep this node's processes here: no automatic moves away.
    Stay,
    /// Let automatic placement move this node's processes again.
    Nostay,
    /// Keep processes started here from moving automatically (guests may
    /// still move on).
    Lstay,
    /// Undo lstay.
    Nolstay,
    /// Refuse guests: no process of another node comes here.
    Block,
    /// Take guests again.
    Noblock,
    /// Stop telling other nodes this node's load (they soon count it as
    /// down and send nothing here).
    Quiet,
    /// Tell other nodes this node's load again.
    Noquiet,
    /// Let other nodes use this node's files through MFS.
    Mfs,
    /// Refuse other nodes' access to this node's files through MFS.
    Nomfs,
    /// Send every guest home, and block.
    Expel,
    /// Bring every process of this node that runs elsewhere home.
    Bring,
    /// A node's load (default: this node).
    Getload { node: Option<u16> },
    /// A node's speed, 10000 being the reference processor.
    Getspeed { node: Option<u16> },
    /// Set this node's speed.
    Setspeed { speed: String },
    /// A node's memory available to processes, in bytes.
    Getmem { node: Option<u16> },
    /// A node's raw free memory (page cache counted as used), in bytes.
    Getfree { node: Option<u16> },
    /// A node's CPU utilisation, in percent.
    Getutil { node: Option<u16> },
    /// A node's state and figures (this node: also its switches).
    Status { node: Option<u16> },
    /// Succeeds if node N is up (or is this node), fails if not.
    Isup { node: u16 },
    /// This node's number; or the address of node N; or the node at an
    /// address.
    Whois { node_or_address: Option<String> },
    /// Set how often process statistics decay (seconds) and the slow and
    /// fast rates (per mille kept each time).
    Setdecay {
        interval: String,
        slow: String,
        fast: String,
    },
}

/// Talks to the daemon's control tree.
struct Tree<'a> {
    config: &'a std::path::Path,
}

impl Tree<'_> {
    fn read(&self, path: &str) -> anyhow::Result<String> {
        match control_client::request(
            self.config,
            ControlRequest::ReadControl {
                path: path.to_string(),
            },
        )? {
            ControlReply::Value { text } => Ok(text.trim_end().to_string()),
            ControlReply::Refused { reason } => bail!("{reason}"),
            other => bail!("unexpected answer from the daemon: {other:?}"),
        }
    }

    fn write(&self, path: &str, value: &str) -> anyhow::Result<()> {
        match control_client::request(
            self.config,
            ControlRequest::WriteControl {
                path: path.to_string(),
                value: value.to_string(),
            },
        )? {
            ControlReply::Accepted => Ok(()),
            ControlReply::Refused { reason } => bail!("{reason}"),
            other => bail!("unexpected answer from the daemon: {other:?}"),
        }
    }

    fn this_node(&self) -> anyhow::Result<u16> {
        self.read("admin/mospe")?
            .parse()
            .context("the daemon gave a bad node number")
    }

    fn node_or_this(&self, node: Option<u16>) -> anyhow::Result<u16> {
        match node {
            Some(n) => Ok(n),
            None => self.this_node(),
        }
    }

    fn node_file(&self, node: u16, file: &str) -> anyhow::Result<String> {
        self.read(&format!("nodes/{node}/{file}")).map_err(|e| {
            if e.to_string().contains("no such control file") {
                anyhow::anyhow!("node {node} is not in the cluster map")
            } else {
                e
            }
        })
    }
}

pub fn run(args: MosctlArgs) -> anyhow::Result<ExitCode> {
    let tree = Tree {
        config: &args.config.config,
    };
    let set = |file: &str, value: &str| -> anyhow::Result<ExitCode> {
        tree.write(&format!("admin/{file}"), value)?;
        Ok(ExitCode::SUCCESS)
    };
    match &args.command {
        MosctlCommand::Stay => set("stay", "1"),
        MosctlCommand::Nostay => set("stay", "0"),
        MosctlCommand::Lstay => set("lstay", "1"),
        MosctlCommand::Nolstay => set("lstay", "0"),
        MosctlCommand::Block => set("block", "1"),
        MosctlCommand::Noblock => set("block", "0"),
        MosctlCommand::Quiet => set("quiet", "1"),
        MosctlCommand::Noquiet => set("quiet", "0"),
        MosctlCommand::Mfs => set("nomfs", "0"),
        MosctlCommand::Nomfs => set("nomfs", "1"),
        MosctlCommand::Expel => set("expel", "1"),
        MosctlCommand::Bring => set("bring", "1"),
        MosctlCommand::Setspeed { speed } => set("speed", speed),
        MosctlCommand::Getload { node } => get(&tree, *node, "load", args.json),
        MosctlCommand::Getspeed { node } => get(&tree, *node, "speed", args.json),
        MosctlCommand::Getmem { node } => get(&tree, *node, "mem", args.json),
        MosctlCommand::Getfree { node } => get(&tree, *node, "rmem", args.json),
        MosctlCommand::Getutil { node } => get(&tree, *node, "util", args.json),
        MosctlCommand::Status { node } => status(&tree, *node, args.json),
        MosctlCommand::Isup { node } => isup(&tree, *node, args.json),
        MosctlCommand::Whois { node_or_address } => {
            whois(&tree, node_or_address.as_deref(), args.json)
        }
        MosctlCommand::Setdecay {
            interval,
            slow,
            fast,
        } => setdecay(&tree, interval, slow, fast),
    }
}

fn get(tree: &Tree, node: Option<u16>, file: &str, json: bool) -> anyhow::Result<ExitCode> {
    let node = tree.node_or_this(node)?;
    let value = tree.node_file(node, file)?;
    if json {
        let number: Option<u64> = value.parse().ok();
        let shown = number.map_or(json!(value), |n| json!(n));
        println!("{}", json!({ "node": node, file: shown }));
    } else {
        println!("{value}");
    }
    Ok(ExitCode::SUCCESS)
}

const NODE_FIGURES: &[&str] = &[
    "status", "load", "speed", "CPUs", "util", "mem", "rmem", "tmem", "age",
];
const SWITCHES: &[&str] = &["block", "stay", "lstay", "quiet", "nomfs"];

fn status(tree: &Tree, node: Option<u16>, json: bool) -> anyhow::Result<ExitCode> {
    let me = tree.this_node()?;
    let node = node.unwrap_or(me);
    let mut figures = serde_json::Map::new();
    figures.insert("node".into(), json!(node));
    for file in NODE_FIGURES {
        let value = tree.node_file(node, file)?;
        let shown = value.parse::<u64>().map_or(json!(value), |n| json!(n));
        figures.insert((*file).into(), shown);
    }
    if node == me {
        for switch in SWITCHES {
            figures.insert(
                (*switch).into(),
                json!(tree.read(&format!("admin/{switch}"))? == "1"),
            );
        }
    }
    if json {
        println!("{}", serde_json::Value::Object(figures));
        return Ok(ExitCode::SUCCESS);
    }
    let text = |key: &str| {
        figures.get(key).map_or(String::new(), |v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    println!(
        "node {node}: {} (information {} s old)",
        text("status"),
        text("age")
    );
    println!(
        "  load {}  speed {}  CPUs {}  util {}%",
        text("load"),
        text("speed"),
        text("CPUs"),
        text("util")
    );
    println!(
        "  memory: {} available, {} raw free, {} total (bytes)",
        text("mem"),
        text("rmem"),
        text("tmem")
    );
    if node == me {
        let on: Vec<&str> = SWITCHES
            .iter()
            .copied()
            .filter(|s| figures.get(*s) == Some(&json!(true)))
            .collect();
        println!(
            "  switches: {}",
            if on.is_empty() {
                "none on".to_string()
            } else {
                on.join(" ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn isup(tree: &Tree, node: u16, json: bool) -> anyhow::Result<ExitCode> {
    let status = tree.node_file(node, "status")?;
    let up = status == "up" || status == "local";
    if json {
        println!("{}", json!({ "node": node, "up": up, "status": status }));
    } else {
        println!("node {node} is {}", if up { "up" } else { "not up" });
    }
    Ok(if up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn whois(tree: &Tree, query: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let map =
        omx_mfs::cluster_map::ClusterMap::parse(&tree.read("admin/config")?, "the map in force")?;
    let (node, address) = match query {
        None => {
            let me = tree.this_node()?;
            let node = omx_mfs::NodeId::new(me).context("the daemon gave node 0")?;
            (me, map.address(node).map(|a| a.to_string()))
        }
        Some(text) => {
            if let Ok(number) = text.parse::<u16>() {
                let node = omx_mfs::NodeId::new(number)
                    .filter(|n| map.contains(*n))
                    .with_context(|| format!("node {text} is not in the cluster map"))?;
                (number, map.address(node).map(|a| a.to_string()))
            } else {
                let address: std::net::IpAddr = text.parse().with_context(|| {
                    format!("`{text}` is neither a node number nor an IP address")
                })?;
                let node = map
                    .nodes()
                    .find(|(_, a)| *a == address)
                    .map(|(n, _)| n)
                    .with_context(|| format!("no node of the cluster map has address {text}"))?;
                (node.get(), Some(address.to_string()))
            }
        }
    };
    let address = address.unwrap_or_default();
    if json {
        println!("{}", json!({ "node": node, "address": address }));
    } else if query.is_some_and(|q| q.parse::<u16>().is_ok()) {
        println!("{address}");
    } else {
        println!("{node}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Sets the three decay values so that no step in between is refused
/// (fast decay may never be slower than slow decay).
fn setdecay(tree: &Tree, interval: &str, slow: &str, fast: &str) -> anyhow::Result<ExitCode> {
    let number = |name: &str, text: &str| -> anyhow::Result<u32> {
        text.parse()
            .with_context(|| format!("`{text}` is not a {name}: give a whole number"))
    };
    let (new_slow, new_fast) = (number("slow decay", slow)?, number("fast decay", fast)?);
    if new_fast > new_slow {
        bail!(
            "fast decay ({new_fast}) would be slower than slow decay ({new_slow}): keep fast <= slow"
        );
    }
    number("decay interval", interval)?;
    let current_slow: u32 = tree.read("admin/slowdecay")?.parse()?;
    tree.write("admin/decayinterval", interval)?;
    if new_fast <= current_slow {
        tree.write("admin/fastdecay", fast)?;
        tree.write("admin/slowdecay", slow)?;
    } else {
        tree.write("admin/slowdecay", slow)?;
        tree.write("admin/fastdecay", fast)?;
    }
    Ok(ExitCode::SUCCESS)
}
