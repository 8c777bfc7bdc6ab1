//! `mosrun`: run a program as a migratable process of this node.
//!
//! `mosrun [-h | -b | -NODE | -jLIST] [-l | -L] [-c | -i] [-n | -s | -f] CMD ARGS...`
//! registers the options with the local daemon and then *becomes* CMD (it
//! execs it), so the program is the caller's child in every way: same pid,
//! terminal, environment, cwd; its exit status is the caller's to see.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use omx_mfs::wire::{ControlReply, ControlRequest, DecayHint, JobHint, RunOptions};

use crate::control_client;

const USAGE: &str =
    "usage: mosrun [-h | -b | -NODE | -jLIST] [-l | -L] [-c | -i] [-n | -s | -f] CMD ARGS...";

/// Parses mosrun's options (openMosix style: single dashes, node numbers
/// as options) up to the command.
pub fn parse(args: &[OsString]) -> anyhow::Result<(RunOptions, Vec<OsString>)> {
    let mut options = RunOptions::default();
    let mut rest = args.iter();
    let mut command = Vec::new();
    for arg in rest.by_ref() {
        let Some(text) = arg.to_str().filter(|t| t.starts_with('-') && t.len() > 1) else {
            command.push(arg.clone());
            break;
        };
        let flag = &text[1..];
        match flag {
            "-" => break,
            "h" => options.stay_home = true,
            "b" => options.start_at_best = true,
            "l" => options.lock = Some(false),
            "L" => options.lock = Some(true),
            "c" => options.job = JobHint::Cpu,
            "i" => options.job = JobHint::Io,
            "n" => options.decay = DecayHint::None,
            "s" => options.decay = DecayHint::Slow,
            "f" => options.decay = DecayHint::Fast,
            _ if flag.starts_with('j') => options.send_to = parse_nodes(&flag[1..])?,
            _ if flag.chars().all(|c| c.is_ascii_digit()) => options.send_to = parse_nodes(flag)?,
            _ => bail!("unknown option {text}\n{USAGE}"),
        }
    }
    command.extend(rest.cloned());
    if command.is_empty() {
        bail!("no command to run\n{USAGE}");
    }
    let starts = [
        (options.stay_home, "-h (start at home)"),
        (options.start_at_best, "-b (start on the best node)"),
        (!options.send_to.is_empty(), "a node to send to"),
    ];
    let chosen: Vec<&str> = starts.iter().filter(|s| s.0).map(|s| s.1).collect();
    if chosen.len() > 1 {
        bail!(
            "{} contradict each other: choose one place to start\n{USAGE}",
            chosen.join(" and ")
        );
    }
    Ok((options, command))
}

fn parse_nodes(list: &str) -> anyhow::Result<Vec<u16>> {
    list.split(',')
        .map(|n| {
            n.parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| anyhow::anyhow!("`{n}` is not a node id (1..65535)"))
        })
        .collect()
}

pub fn run(args: &[OsString], config: &Path) -> anyhow::Result<ExitCode> {
    let (options, command) = parse(args)?;
    let pid = std::process::id();
    match control_client::request(config, ControlRequest::Register { pid, options }) {
        Ok(ControlReply::Accepted) => {}
        Ok(ControlReply::Refused { reason }) => {
            eprintln!("mosrun: the daemon refused: {reason}; running at home")
        }
        Ok(other) => eprintln!("mosrun: unexpected answer {other:?}; running at home"),
        // No daemon: the program still runs, as a plain process.
        Err(e) => eprintln!("mosrun: {e:#}; running as a plain process"),
    }
    let error = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    eprintln!("mosrun: cannot run {:?}: {error}", command[0]);
    Ok(ExitCode::from(127))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_classic_options() {
        let (o, c) = parse(&os(&["-3", "-L", "-c", "-f", "gzip", "-9"])).unwrap();
        assert_eq!(o.send_to, vec![3]);
        assert_eq!(o.lock, Some(true));
        assert_eq!(o.job, JobHint::Cpu);
        assert_eq!(o.decay, DecayHint::Fast);
        assert_eq!(c, os(&["gzip", "-9"]));
        let (o, _) = parse(&os(&["-j2,4,5", "-i", "-s", "prog"])).unwrap();
        assert_eq!(o.send_to, vec![2, 4, 5]);
        assert_eq!(o.job, JobHint::Io);
        let (o, c) = parse(&os(&["-h", "--", "-weird-name"])).unwrap();
        assert!(o.stay_home);
        assert_eq!(c, os(&["-weird-name"]));
        let (o, c) = parse(&os(&["-b", "-c", "xz"])).unwrap();
        assert!(o.start_at_best && o.send_to.is_empty());
        assert_eq!(c, os(&["xz"]));
    }

    #[test]
    fn refuses_what_makes_no_sense() {
        assert!(parse(&os(&["-L"])).is_err());
        assert!(parse(&os(&["-x", "prog"])).is_err());
        assert!(parse(&os(&["-0", "prog"])).is_err());
        assert!(parse(&os(&["-h", "-2", "prog"])).is_err());
        assert!(parse(&os(&["-b", "-2", "prog"])).is_err());
        assert!(parse(&os(&["-h", "-b", "prog"])).is_err());
    }
}
