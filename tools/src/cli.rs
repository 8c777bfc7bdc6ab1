//! The command line: every subcommand's arguments, and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use omx_mfs::config::DEFAULT_CONFIG_PATH;

use crate::{daemon, demo, lab, setpe, status};

#[derive(Parser, Debug)]
#[command(
    name = "omx",
    version,
    about = "omx: a single-system-image cluster on stock Linux (openMosix, rebuilt)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where to find this node's configuration.
#[derive(Args, Debug, Clone)]
pub struct ConfigArg {
    /// The node's config file.
    #[arg(long, env = "OMX_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node daemon (in the foreground).
    Daemon(ConfigArg),
    /// Show this node's view of the cluster.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Install (-w -f MAP) or print (-r) the cluster map in force.
    Setpe(setpe::SetpeArgs),
    /// Write a new random cluster key to FILE (readable by its owner only).
    Keygen { file: PathBuf },
    /// A cluster of nodes on this machine, for trying and testing omx.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// The main demonstration: bring up a lab, show every node learning the
    /// others' load, and tear it down.
    Demo(demo::DemoArgs),
    #[command(hide = true, name = "__hold-mount-namespace")]
    HoldMountNamespace,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Daemon(config) => daemon::run(&config.config).map(|()| ExitCode::SUCCESS),
        Command::Status { config, json } => status::run(&config.config, json),
        Command::Setpe(args) => setpe::run(args),
        Command::Keygen { file } => {
            omx_mfs::cluster_key::ClusterKey::generate()?.save(&file)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab { command } => lab::run(command),
        Command::Demo(args) => demo::run(args),
        Command::HoldMountNamespace => lab::mount_namespace::hold().map(|()| ExitCode::SUCCESS),
    }
}
