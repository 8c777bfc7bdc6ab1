//! The command line: every subcommand's arguments, and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use omx_mfs::config::DEFAULT_CONFIG_PATH;

use crate::{
    daemon, demo, keeper_cmd, lab, migrate_cmd, mosctl, mosmon, mosrun, mps, setpe, status,
};

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

#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node daemon (in the foreground).
    Daemon(DaemonArgs),
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
    /// Move a process of this node to another node, or home.
    Migrate(migrate_cmd::MigrateArgs),
    /// Where a process runs, how often it moved, and why it cannot move.
    Where {
        pid: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run a program as a migratable process (the classic `mosrun`; its
    /// options are openMosix's: see `mosrun -?`).
    #[command(disable_help_flag = true)]
    Mosrun {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Steer this node: stay, block, expel, bring, speed, decay, and read
    /// any node's load, speed, memory and state (the classic `mosctl`).
    Mosctl(mosctl::MosctlArgs),
    /// Live bar charts of every node's load, speed, memory or utilisation
    /// (the classic `mosmon`).
    Mosmon(mosmon::MosmonArgs),
    /// ps with a NODE column: where each process of this node runs (the
    /// classic `mps`).
    Mps(mps::MpsArgs),
    /// top with a NODE column (the classic `mtop`).
    Mtop(mps::MtopArgs),
    /// Write the manual pages (omx.1, omx-SUBCOMMAND.1, and one per
    /// classic name: mosctl.1, mps.1, ...) into DIR.
    Man(crate::manpages::ManArgs),
    /// Print shell completions for omx and the classic names (or, with
    /// --dir, write one file per command).
    Completions(crate::manpages::CompletionsArgs),
    /// Write a new random cluster key to FILE (readable by its owner only).
    Keygen { file: PathBuf },
    /// A cluster of nodes on this machine, for trying and testing omx.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// The main demonstration: a lab of 12 small nodes, a dozen
    /// compressions started on one node spreading over them, and the
    /// makespan against one alone and against all at home.
    Demo(demo::DemoArgs),
    #[command(hide = true, name = "__hold-mount-namespace")]
    HoldMountNamespace,
    #[command(hide = true, name = "__home-keeper")]
    HomeKeeper(keeper_cmd::HomeKeeperArgs),
    #[command(hide = true, name = "__remote-keeper")]
    RemoteKeeper(keeper_cmd::RemoteKeeperArgs),
    /// Print docs/syscalls.md from the system call table.
    #[command(hide = true, name = "__syscall-table")]
    SyscallTable,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Daemon(args) => {
            daemon::run(&args.config.config, args.metrics_addr).map(|()| ExitCode::SUCCESS)
        }
        Command::Status { config, json } => status::run(&config.config, json),
        Command::Setpe(args) => setpe::run(args),
        Command::Keygen { file } => {
            omx_mfs::cluster_key::ClusterKey::generate()?.save(&file)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab { command } => lab::run(command),
        Command::Demo(args) => demo::run(args),
        Command::HoldMountNamespace => lab::mount_namespace::hold().map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => migrate_cmd::migrate(args),
        Command::Where { pid, json, config } => migrate_cmd::where_is(pid, &config.config, json),
        Command::Mosrun { config, args } => mosrun::run(&args, &config.config),
        Command::Mosctl(args) => mosctl::run(args),
        Command::Mosmon(args) => mosmon::run(args),
        Command::Mps(args) => mps::run(args),
        Command::Mtop(args) => mps::run_top(args),
        Command::Man(args) => crate::manpages::run_man(args),
        Command::Completions(args) => crate::manpages::run_completions(args),
        Command::HomeKeeper(args) => keeper_cmd::run_home(args),
        Command::RemoteKeeper(args) => keeper_cmd::run_remote(args),
        Command::SyscallTable => {
            print!("{}", omx_migrate::syscalls::markdown());
            Ok(ExitCode::SUCCESS)
        }
    }
}
