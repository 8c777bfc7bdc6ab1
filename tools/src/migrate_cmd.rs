//! `migrate PID {NODE | home}` and `omx where PID`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use omx_mfs::wire::link::MoveStats;
use omx_mfs::wire::{ControlReply, ControlRequest, MigrateTarget};

use crate::cli::ConfigArg;
use crate::control_client;

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The process (a pid of this node).
    pub pid: u32,
    /// A node id, or `home`.
    pub to: String,
    /// Return at once instead of waiting for the move.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Print the outcome as JSON (`{"pid", "node", "stats"}`; `node` null
    /// means home).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let to = match args.to.as_str() {
        "home" => MigrateTarget::Home,
        n => match n.parse::<u16>() {
            Ok(n) if n > 0 => MigrateTarget::Node(n),
            _ => bail!("`{n}` is neither a node id (1..65535) nor `home`"),
        },
    };
    let request = ControlRequest::Migrate {
        pid: args.pid,
        to,
        wait: !args.asynchronous,
    };
    let cost = |stats: Option<MoveStats>| {
        stats.map_or(String::new(), |s| {
            format!(
                " ({} MiB moved, frozen {:.1} ms, {:.1} ms in all)",
                s.bytes >> 20,
                s.frozen_us as f64 / 1000.0,
                s.total_us as f64 / 1000.0
            )
        })
    };
    let reply = control_client::request_patiently(&args.config.config, request)?;
    if args.json
        && let ControlReply::Moved { node, stats } = &reply
    {
        let outcome = serde_json::json!({ "pid": args.pid, "node": node, "stats": stats });
        println!("{outcome}");
        return Ok(ExitCode::SUCCESS);
    }
    match reply {
        ControlReply::Moved {
            node: Some(node),
            stats,
        } => {
            println!("process {} runs on node {node}{}", args.pid, cost(stats))
        }
        ControlReply::Moved { node: None, stats } => {
            println!("process {} runs at home{}", args.pid, cost(stats))
        }
        ControlReply::Accepted => println!("process {}: move requested", args.pid),
        ControlReply::Refused { reason } => bail!("process {} cannot move: {reason}", args.pid),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn where_is(pid: u32, config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let ControlReply::Location(location) =
        control_client::request(config, ControlRequest::Where { pid })?
    else {
        bail!("unexpected answer from the daemon");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&location)?);
        return Ok(ExitCode::SUCCESS);
    }
    let place = match (location.migrating, location.node) {
        (true, _) => "migrating".to_string(),
        (false, Some(node)) => format!("node {node}"),
        (false, None) => "home".to_string(),
    };
    println!(
        "process {pid}: runs {}{place}, moved {} time(s)",
        if place == "home" { "at " } else { "on " },
        location.moves
    );
    if let Some(reason) = &location.cannot_move {
        println!("cannot move: {reason}");
    }
    if let Some(reason) = &location.last_failure {
        println!("last move failed: {reason}");
    }
    Ok(ExitCode::SUCCESS)
}
