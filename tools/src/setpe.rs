//! `setpe`: install or print the cluster map of the local daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use omx_mfs::cluster_map::ClusterMap;
use omx_mfs::wire::{ControlReply, ControlRequest};

use crate::cli::ConfigArg;
use crate::control_client;

#[derive(Args, Debug)]
pub struct SetpeArgs {
    /// Install the map given with -f.
    #[arg(short = 'w', conflicts_with = "read", requires = "file")]
    pub write: bool,
    /// Print the map in force.
    #[arg(short = 'r')]
    pub read: bool,
    /// Leave the cluster: send the guests home, bring this node's
    /// processes home, then stop the daemon.
    /// (`-off`, as the original spelled it, is taken too.)
    #[arg(long = "off", conflicts_with_all = ["read", "write"])]
    pub off: bool,
    /// The map file (openMosix format: `FIRST_ID ADDRESS COUNT` per line).
    #[arg(short = 'f', value_name = "MAP")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: SetpeArgs) -> anyhow::Result<ExitCode> {
    if args.off {
        return match control_client::request_patiently(&args.config.config, ControlRequest::Leave)?
        {
            ControlReply::Accepted => {
                println!(
                    "left the cluster: guests sent home, processes brought home, daemon stopping"
                );
                Ok(ExitCode::SUCCESS)
            }
            ControlReply::Refused { reason } => anyhow::bail!("cannot leave: {reason}"),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        };
    }
    if args.read {
        return match control_client::request(&args.config.config, ControlRequest::GetMap)? {
            ControlReply::Map { text } => {
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        };
    }
    if !args.write {
        anyhow::bail!(
            "say what to do: `setpe -w -f MAP` installs a map, `setpe -r` prints it, `setpe -off` leaves the cluster"
        );
    }
    let path = args.file.expect("clap requires -f with -w");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the map {}", path.display()))?;
    let origin = path.display().to_string();
    // Check here first, so a bad map is reported even if no daemon runs.
    ClusterMap::parse(&text, &origin)?;
    match control_client::request(&args.config.config, ControlRequest::SetMap { text, origin })? {
        ControlReply::MapInstalled { nodes } => {
            println!("installed {} ({nodes} nodes)", path.display());
            Ok(ExitCode::SUCCESS)
        }
        ControlReply::Refused { reason } => anyhow::bail!("map refused: {reason}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}
