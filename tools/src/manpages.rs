//! `omx man DIR` and `omx completions SHELL`: manual pages and shell
//! completions, generated from the argument definitions in `cli.rs`, for
//! `omx` and for each classic openMosix name the binary answers to when
//! called through a link (`mosctl`, `mosmon`, `mps`, ...). See
//! `docs/manpages.md`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Command, CommandFactory};
use clap_complete::Shell;

use crate::cli::Cli;

/// The classic names: a link to `omx` under one of these runs `omx NAME`.
pub const CLASSIC_NAMES: [&str; 7] = [
    "mosctl", "mosmon", "mps", "mtop", "setpe", "mosrun", "migrate",
];

#[derive(Args, Debug)]
pub struct ManArgs {
    /// The directory to write the pages to (made if missing), e.g.
    /// /usr/local/share/man/man1.
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
    /// Instead of printing one script for every command, write one file
    /// per command into DIR, named as the shell looks for it (`omx.bash`,
    /// `_omx`, `omx.fish`, ...).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run_man(args: ManArgs) -> anyhow::Result<ExitCode> {
    for path in write_man_pages(&args.dir)? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
        for (name, mut command) in commands()? {
            let path = clap_complete::generate_to(args.shell, &mut command, name, dir)
                .with_context(|| format!("cannot write into {}", dir.display()))?;
            println!("{}", path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let script = completions(args.shell)?;
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// One script completing `omx` and every classic name.
pub fn completions(shell: Shell) -> anyhow::Result<Vec<u8>> {
    let mut script = Vec::new();
    for (name, mut command) in commands()? {
        clap_complete::generate(shell, &mut command, name, &mut script);
    }
    Ok(script)
}

/// `omx` (without its hidden subcommands, which completions would
/// otherwise offer), then each classic name with its command.
fn commands() -> anyhow::Result<Vec<(&'static str, Command)>> {
    let full = Cli::command();
    let mut omx = Command::new("omx")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(full.is_subcommand_required_set())
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        omx = omx.about(about.clone());
    }
    let mut list = vec![("omx", omx)];
    for name in CLASSIC_NAMES {
        list.push((name, classic(name)?));
    }
    Ok(list)
}

/// The subcommand `name` of `omx`, standing alone as the command a link
/// named `name` runs.
fn classic(name: &'static str) -> anyhow::Result<Command> {
    let command = Cli::command()
        .find_subcommand(name)
        .cloned()
        .with_context(|| format!("omx has no subcommand {name}"))?;
    Ok(command
        .name(name)
        .bin_name(name)
        .display_name(name)
        .disable_help_subcommand(true))
}

/// Writes `omx.1`, `omx-SUB.1` for every visible subcommand (and
/// `omx-SUB-SUBSUB.1` below), and `NAME.1` for every classic name.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut written = Vec::new();
    write_tree(&root, dir, &mut written)?;
    for name in CLASSIC_NAMES {
        written.push(write_page(classic(name)?, name, dir)?);
    }
    Ok(written)
}

/// Pages for `command` (built: its subcommands' display names are
/// `omx-SUB`) and its visible subcommands.
fn write_tree(command: &Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_string();
    written.push(write_page(command.clone(), &name, dir)?);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub, dir, written)?;
    }
    Ok(())
}

fn write_page(command: Command, name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let page = clap_mangen::Man::new(command)
        .title(name.to_uppercase())
        .date(today())
        .source(format!("omx {}", env!("CARGO_PKG_VERSION")))
        .manual("omx manual");
    let mut roff = Vec::new();
    page.render(&mut roff)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The date for the pages' title line, `YYYY-MM-DD`: `$SOURCE_DATE_EPOCH`
/// for a reproducible build, else today. (Left empty, it would shift the
/// title line's other fields.)
fn today() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let (year, month, day) = civil_date(seconds / 86_400);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("omx-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn visible_subcommands() -> Vec<String> {
        Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_string())
            .collect()
    }

    #[test]
    fn a_page_for_omx_each_subcommand_and_each_classic_name() {
        let dir = scratch("man");
        let written = write_man_pages(&dir).unwrap();
        let mut expected = vec!["omx".to_string()];
        expected.extend(visible_subcommands().iter().map(|s| format!("omx-{s}")));
        expected.extend(CLASSIC_NAMES.iter().map(|s| s.to_string()));
        for name in &expected {
            let path = dir.join(format!("{name}.1"));
            assert!(written.contains(&path), "{name}.1 not written");
            let page = std::fs::read_to_string(&path).unwrap();
            let title = page
                .lines()
                .find(|l| l.starts_with(".TH "))
                .unwrap_or_else(|| panic!("{name}.1 has no title: {page}"));
            assert_eq!(
                title,
                format!(
                    ".TH {} 1 {} \"omx {}\" \"omx manual\"",
                    name.to_uppercase(),
                    today(),
                    env!("CARGO_PKG_VERSION")
                ),
                "{name}.1"
            );
            assert!(
                page.contains(".SH NAME") && page.contains(".SH SYNOPSIS"),
                "{page}"
            );
        }
        assert!(
            written.contains(&dir.join("omx-lab-up.1")),
            "nested pages too"
        );
        assert!(!dir.join("omx-__home-keeper.1").exists(), "no hidden ones");
        let omx = std::fs::read_to_string(dir.join("omx.1")).unwrap();
        assert!(
            omx.contains("omx\\-mps(1)"),
            "omx.1 lists its subcommands: {omx}"
        );
        let mps = std::fs::read_to_string(dir.join("mps.1")).unwrap();
        assert!(
            mps.contains("\\fBmps\\fR"),
            "synopsis under its own name: {mps}"
        );
        assert!(mps.contains("\\-\\-away"), "{mps}");
        let mosrun = std::fs::read_to_string(dir.join("mosrun.1")).unwrap();
        assert!(mosrun.contains(".TH MOSRUN"), "{mosrun}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_000), (2024, 10, 4));
        assert_eq!(today().len(), 10);
    }

    #[test]
    fn completions_cover_omx_and_the_classic_names() {
        let bash = String::from_utf8(completions(Shell::Bash).unwrap()).unwrap();
        for name in ["omx"].iter().chain(&CLASSIC_NAMES) {
            assert!(
                bash.contains(&format!("complete -F _{name} ")),
                "no completion for {name}"
            );
        }
        // omx's own completes its subcommands and their options, but
        // not the hidden ones.
        assert!(bash.contains("mosmon"), "{bash}");
        assert!(!bash.contains("__home-keeper"), "{bash}");
        assert!(bash.contains("--guests"), "{bash}");
        for shell in [Shell::Zsh, Shell::Fish, Shell::Elvish, Shell::PowerShell] {
            let script = String::from_utf8(completions(shell).unwrap()).unwrap();
            assert!(script.contains("mtop"), "{shell}");
        }
        let fish = String::from_utf8(completions(Shell::Fish).unwrap()).unwrap();
        assert!(fish.contains("complete -c mps"), "{fish}");
    }

    #[test]
    fn completion_files_are_named_for_their_shell() {
        let dir = scratch("completions");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, mut command) in commands().unwrap() {
            clap_complete::generate_to(Shell::Zsh, &mut command, name, &dir).unwrap();
        }
        for name in ["omx"].iter().chain(&CLASSIC_NAMES) {
            let script = std::fs::read_to_string(dir.join(format!("_{name}"))).unwrap();
            assert!(script.starts_with(&format!("#compdef {name}")), "{script}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
