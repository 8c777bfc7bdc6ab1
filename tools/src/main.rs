//! `omx`: one binary for the node daemon and every user command.
//!
//! Called as `omx SUBCOMMAND`, or under a classic openMosix name (a link
//! named `setpe`, `mosrun`, `migrate`, `mosctl`, `mosmon`, `mps`, `mtop`),
//! in which case the name chooses the command.

mod cli;
mod control_client;
mod daemon;
mod demo;
mod keeper_cmd;
mod lab;
mod manpages;
mod migrate_cmd;
mod mosctl;
mod mosmon;
mod mosrun;
mod mps;
mod setpe;
mod status;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("omx")
        .to_string();
    // The original `setpe -off` had a single dash.
    let is_setpe = invoked_as == "setpe" || args.get(1).is_some_and(|a| a == "setpe");
    if is_setpe {
        for arg in args.iter_mut().skip(1) {
            if arg == "-off" {
                *arg = OsString::from("--off");
            }
        }
    }
    let command = match invoked_as.as_str() {
        name @ ("setpe" | "migrate" | "mosrun" | "mosctl" | "mosmon" | "mps" | "mtop") => {
            let mut rewritten = vec![OsString::from("omx"), OsString::from(name)];
            rewritten.extend(args.into_iter().skip(1));
            cli::Cli::parse_from(rewritten)
        }
        _ => cli::Cli::parse_from(args),
    };
    init_logging(&command);
    match cli::run(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{invoked_as}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(command: &cli::Cli) {
    let default = match command.command {
        cli::Command::Daemon(_) | cli::Command::HomeKeeper(_) | cli::Command::RemoteKeeper(_) => {
            "info"
        }
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OMX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
