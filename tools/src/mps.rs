//! `mps` and `mtop`: ps and top with a NODE column.
//!
//! Both read `/proc` themselves and ask the local daemon (`omx status`'s
//! view) which of this node's processes run elsewhere. A process that
//! migrated keeps its pid at home (its *deputy*, stopped, its memory
//! released), so at home only its pid, owner and command are known: its
//! state, CPU time and memory are on the node it runs on, and are shown as
//! `-`. NODE is the node a process runs on: this node's own number for a
//! process at home. Guests (processes of other nodes running here) are the
//! pids the daemon lists with their home node and pid. See `docs/mps.md`.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use omx_mfs::wire::{ClusterView, NodeState};
use serde::Serialize;

use crate::cli::ConfigArg;

#[derive(Args, Debug)]
pub struct MpsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Every user's processes (by default: only the caller's).
    #[arg(short, long)]
    pub all: bool,
    /// Only processes that migrated (run on another node).
    #[arg(long)]
    pub away: bool,
    /// Instead of this node's processes, list the guests: processes of
    /// other nodes running here, with their home node and pid there.
    #[arg(short, long, conflicts_with = "away")]
    pub guests: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only these processes (of any user).
    #[arg(value_name = "PID")]
    pub pids: Vec<u32>,
}

#[derive(Args, Debug)]
pub struct MtopArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Seconds between frames (CPU use is measured over this interval).
    #[arg(short, long, default_value_t = 2.0, value_parser = parse_delay)]
    pub delay: f64,
    /// Stop after COUNT frames (default: run until interrupted).
    #[arg(short = 'n', long = "iterations", value_name = "COUNT")]
    pub iterations: Option<u64>,
    /// Batch mode: print frames one after another, never clearing the
    /// screen (the default when standard output is not a terminal).
    #[arg(short, long)]
    pub batch: bool,
}

fn parse_delay(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(d) if d.is_finite() && (0.1..=86_400.0).contains(&d) => Ok(d),
        _ => Err(format!(
            "{text:?} is not a delay between 0.1 and 86400 seconds"
        )),
    }
}

pub fn run(args: MpsArgs) -> anyhow::Result<ExitCode> {
    let view = fetch_view(&args.config.config)?;
    let system = System::get();
    let listing = scan(Path::new("/proc"), &view, &system, &mut Users::default());
    let caller = nix::unistd::geteuid().as_raw();
    let wanted: HashSet<u32> = args.pids.iter().copied().collect();
    let rows: Vec<Row> = if args.guests {
        listing
            .guests
            .into_iter()
            .filter(|r| wanted.is_empty() || wanted.contains(&r.pid))
            .collect()
    } else {
        listing
            .processes
            .into_iter()
            .filter(|r| {
                if wanted.is_empty() {
                    args.all || r.uid == caller
                } else {
                    wanted.contains(&r.pid)
                }
            })
            .filter(|r| !args.away || r.away)
            .collect()
    };
    let missing = wanted.iter().any(|pid| !rows.iter().any(|r| r.pid == *pid));
    let text = if args.json {
        #[derive(Serialize)]
        struct Out<'a> {
            node: u16,
            #[serde(skip_serializing_if = "Option::is_none")]
            processes: Option<&'a [Row]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            guests: Option<&'a [Row]>,
        }
        let out = Out {
            node: view.this_node,
            processes: (!args.guests).then_some(&rows[..]),
            guests: args.guests.then_some(&rows[..]),
        };
        serde_json::to_string_pretty(&out)? + "\n"
    } else if args.guests {
        render_guests(&rows)
    } else {
        render_mps(&rows)
    };
    if !write_out(&mut std::io::stdout().lock(), &text)? {
        return Ok(ExitCode::SUCCESS);
    }
    // Like ps -p: failure if a process asked for is not there.
    Ok(if missing {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes `text` and flushes; `Ok(false)` if the reader went away (`mps |
/// head`), which is no error.
fn write_out(out: &mut impl Write, text: &str) -> std::io::Result<bool> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn run_top(args: MtopArgs) -> anyhow::Result<ExitCode> {
    let system = System::get();
    let interactive = !args.batch && std::io::stdout().is_terminal();
    let delay = Duration::from_secs_f64(args.delay);
    let mut users = Users::default();
    let mut before = scan(
        Path::new("/proc"),
        &fetch_view(&args.config.config)?,
        &system,
        &mut users,
    );
    let mut taken = Instant::now();
    let mut frame = 0u64;
    let mut stdout = std::io::stdout().lock();
    while args.iterations.is_none_or(|n| frame < n) {
        // The first frame comes soon; the others every `delay`.
        let wait = if frame == 0 {
            delay.min(Duration::from_millis(500))
        } else {
            delay
        };
        std::thread::sleep(wait.saturating_sub(taken.elapsed()));
        let view = fetch_view(&args.config.config)?;
        let now = scan(Path::new("/proc"), &view, &system, &mut users);
        let elapsed = taken.elapsed();
        taken = Instant::now();
        let rows = top_rows(&before, &now, elapsed, system.ticks_per_second);
        let text = render_top(&view, &rows, now.away_count());
        let text = if interactive {
            let (height, width) = terminal_size().unwrap_or((24, 80));
            fit_screen(&text, height, width)
        } else if frame > 0 {
            format!("\n{text}")
        } else {
            text
        };
        if !write_out(&mut stdout, &text)? {
            break;
        }
        before = now;
        frame += 1;
    }
    Ok(ExitCode::SUCCESS)
}

fn fetch_view(config: &Path) -> anyhow::Result<ClusterView> {
    crate::status::fetch(config).context("cannot ask this node's daemon which processes run where")
}

/// One line of `mps` or `mtop`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Row {
    /// The pid on this node (for a process of this node away, its home pid).
    pub pid: u32,
    /// The node it runs on.
    pub node: u16,
    /// Its home node and its pid there (this node and `pid`, unless a guest).
    pub home_node: u16,
    pub home_pid: u32,
    /// A process of this node running on another node.
    pub away: bool,
    /// A process of another node running here.
    pub guest: bool,
    pub uid: u32,
    pub user: String,
    /// ps's STAT; unknown (`None`) for a process away.
    pub stat: Option<String>,
    /// CPU time used, in seconds; unknown for a process away.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, KiB; unknown for a process away.
    pub rss_kib: Option<u64>,
    /// mtop only: CPU use over the last interval, percent of one CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    pub command: String,
    /// Clock ticks used (utime + stime), for mtop's differences.
    #[serde(skip)]
    ticks: u64,
    /// Field 22 of stat: tells a pid's reuse apart.
    #[serde(skip)]
    start_time: u64,
}

/// What one scan of `/proc` found.
#[derive(Debug, Default)]
struct Listing {
    /// This node's processes, at home or away, by pid.
    processes: Vec<Row>,
    /// Processes of other nodes running here, by pid.
    guests: Vec<Row>,
}

impl Listing {
    fn away_count(&self) -> usize {
        self.processes.iter().filter(|r| r.away).count()
    }
}

/// Constants of the running kernel.
struct System {
    ticks_per_second: u64,
    page_kib: u64,
}

impl System {
    fn get() -> System {
        use nix::unistd::{SysconfVar, sysconf};
        let get = |var, default: u64| {
            sysconf(var)
                .ok()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        System {
            ticks_per_second: get(SysconfVar::CLK_TCK, 100),
            page_kib: get(SysconfVar::PAGE_SIZE, 4096) / 1024,
        }
    }
}

/// User names by uid, looked up once each.
#[derive(Default)]
struct Users(HashMap<u32, String>);

impl Users {
    fn name(&mut self, uid: u32) -> String {
        self.0
            .entry(uid)
            .or_insert_with(
                || match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                    Ok(Some(user)) => user.name,
                    _ => uid.to_string(),
                },
            )
            .clone()
    }
}

/// The fields of `/proc/PID/stat` that mps and mtop use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub pgrp: i32,
    pub session: i32,
    pub tpgid: i32,
    pub flags: u64,
    pub utime: u64,
    pub stime: u64,
    pub nice: i64,
    pub threads: i64,
    pub start_time: u64,
    pub rss_pages: i64,
}

/// `PF_KTHREAD`: a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Parses `/proc/PID/stat`. The command (field 2) is in parentheses and
/// may itself hold spaces and parentheses: it ends at the *last* `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_string();
    // Field 3 (state) is the first after the command.
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied();
    let int = |n: usize| field(n)?.parse::<i64>().ok();
    let uint = |n: usize| field(n)?.parse::<u64>().ok();
    Some(ProcStat {
        pid,
        comm,
        state: field(3)?.chars().next()?,
        ppid: u32::try_from(int(4)?).ok()?,
        pgrp: i32::try_from(int(5)?).ok()?,
        session: i32::try_from(int(6)?).ok()?,
        tpgid: i32::try_from(int(8)?).ok()?,
        flags: uint(9)?,
        utime: uint(14)?,
        stime: uint(15)?,
        nice: int(19)?,
        threads: int(20)?,
        start_time: uint(22)?,
        rss_pages: int(24)?,
    })
}

/// The effective uid in `/proc/PID/status` (what ps shows as USER).
pub fn parse_status_euid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `/proc/PID/cmdline` as arguments (empty for kernel threads and for a
/// deputy, whose memory is released).
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// ps's STAT: the state, then `<` (high priority) or `N` (low), `s`
/// (session leader), `l` (threads), `+` (in the terminal's foreground).
pub fn stat_flags(stat: &ProcStat) -> String {
    let mut out = stat.state.to_string();
    if stat.nice < 0 {
        out.push('<');
    } else if stat.nice > 0 {
        out.push('N');
    }
    if i64::from(stat.session) == i64::from(stat.pid) {
        out.push('s');
    }
    if stat.threads > 1 {
        out.push('l');
    }
    if stat.tpgid > 0 && stat.tpgid == stat.pgrp {
        out.push('+');
    }
    out
}

/// ps's TIME: `[DD-]HH:MM:SS`.
pub fn format_time(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let clock = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    if days > 0 {
        format!("{days}-{clock}")
    } else {
        clock
    }
}

/// One process as read from `/proc`.
#[derive(Debug, Clone)]
struct Proc {
    stat: ProcStat,
    uid: u32,
    argv: Vec<String>,
}

impl Proc {
    fn read(dir: &Path) -> Option<Proc> {
        let stat = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
        let uid = parse_status_euid(&std::fs::read_to_string(dir.join("status")).ok()?)?;
        let argv = parse_cmdline(&std::fs::read(dir.join("cmdline")).unwrap_or_default());
        Some(Proc { stat, uid, argv })
    }

    /// The command line, or the command name where there is none: in
    /// brackets for a kernel thread, as ps does.
    fn command(&self) -> String {
        if !self.argv.is_empty() {
            self.argv.join(" ")
        } else if self.stat.flags & PF_KTHREAD != 0 {
            format!("[{}]", self.stat.comm)
        } else {
            self.stat.comm.clone()
        }
    }
}

/// Reads every process under `proc_root` and sorts it out with `view`.
fn scan(proc_root: &Path, view: &ClusterView, system: &System, users: &mut Users) -> Listing {
    let mut procs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(proc_root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.bytes().all(|b| b.is_ascii_digit()) {
                // A process that ended meanwhile is simply left out.
                if let Some(p) = Proc::read(&PathBuf::from(proc_root).join(name)) {
                    procs.push(p);
                }
            }
        }
    }
    classify(procs, view, system, users)
}

/// Sorts processes into this node's (with where each runs) and guests.
fn classify(procs: Vec<Proc>, view: &ClusterView, system: &System, users: &mut Users) -> Listing {
    let here = view.this_node;
    let away: HashMap<u32, u16> = view.away.iter().map(|p| (p.pid, p.node)).collect();
    let guests: HashMap<u32, (u16, u32)> = view
        .guests
        .iter()
        .filter_map(|g| Some((g.pid?, (g.home_node, g.home_pid))))
        .collect();
    let mut listing = Listing::default();
    for p in procs {
        let ticks = p.stat.utime + p.stat.stime;
        let mut row = Row {
            pid: p.stat.pid,
            node: here,
            home_node: here,
            home_pid: p.stat.pid,
            away: false,
            guest: false,
            uid: p.uid,
            user: users.name(p.uid),
            stat: Some(stat_flags(&p.stat)),
            cpu_seconds: Some(ticks as f64 / system.ticks_per_second as f64),
            rss_kib: Some(u64::try_from(p.stat.rss_pages).unwrap_or(0) * system.page_kib),
            cpu_percent: None,
            command: p.command(),
            ticks,
            start_time: p.stat.start_time,
        };
        if let Some(&(home_node, home_pid)) = guests.get(&p.stat.pid) {
            row.guest = true;
            row.home_node = home_node;
            row.home_pid = home_pid;
            listing.guests.push(row);
        } else if let Some(&node) = away.get(&p.stat.pid) {
            // The deputy: what it shows is not the process's.
            row.node = node;
            row.away = true;
            row.stat = None;
            row.cpu_seconds = None;
            row.rss_kib = None;
            listing.processes.push(row);
        } else {
            listing.processes.push(row);
        }
    }
    listing.processes.sort_by_key(|r| r.pid);
    listing.guests.sort_by_key(|r| r.pid);
    listing
}

/// mtop's rows: every process of this node and every guest, with its CPU
/// use between `before` and `now`, busiest first.
fn top_rows(before: &Listing, now: &Listing, elapsed: Duration, ticks_per_second: u64) -> Vec<Row> {
    let previous: HashMap<(u32, u64), u64> = before
        .processes
        .iter()
        .chain(&before.guests)
        .map(|r| ((r.pid, r.start_time), r.ticks))
        .collect();
    let seconds = elapsed.as_secs_f64().max(1e-3);
    let mut rows: Vec<Row> = now
        .processes
        .iter()
        .chain(&now.guests)
        .cloned()
        .map(|mut r| {
            if !r.away {
                // A process new since the last scan used all its ticks since.
                let earlier = previous.get(&(r.pid, r.start_time)).copied().unwrap_or(0);
                let used = r.ticks.saturating_sub(earlier) as f64 / ticks_per_second as f64;
                r.cpu_percent = Some(used / seconds * 100.0);
            }
            r
        })
        .collect();
    rows.sort_by(|a, b| {
        let cpu = |r: &Row| r.cpu_percent.unwrap_or(-1.0);
        cpu(b)
            .total_cmp(&cpu(a))
            .then(b.away.cmp(&a.away))
            .then(a.pid.cmp(&b.pid))
    });
    rows
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// A table with columns as wide as their widest cell; the last column is
/// not padded.
fn render_table(headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, ((_, align), width))) in
            cells.iter().zip(headers.iter().zip(&widths)).enumerate()
        {
            if i > 0 {
                out.push(' ');
            }
            match (align, i == last) {
                (Align::Left, true) => out += cell,
                (Align::Left, false) => out += &format!("{cell:<width$}"),
                (Align::Right, _) => out += &format!("{cell:>width$}"),
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(headers.iter().map(|(h, _)| *h).collect());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

fn dash<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "-".to_string(), show)
}

fn time_cell(row: &Row) -> String {
    dash(row.cpu_seconds, |s| format_time(s as u64))
}

fn rss_cell(row: &Row) -> String {
    dash(row.rss_kib, |k| k.to_string())
}

/// `mps`: PID NODE USER STAT TIME RSS COMMAND.
fn render_mps(rows: &[Row]) -> String {
    use Align::{Left, Right};
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.pid.to_string(),
                r.node.to_string(),
                r.user.clone(),
                dash(r.stat.clone(), |s| s),
                time_cell(r),
                rss_cell(r),
                r.command.clone(),
            ]
        })
        .collect();
    render_table(
        &[
            ("PID", Right),
            ("NODE", Right),
            ("USER", Left),
            ("STAT", Left),
            ("TIME", Right),
            ("RSS", Right),
            ("COMMAND", Left),
        ],
        &cells,
    )
}

/// `mps --guests`: PID HOME HPID USER STAT TIME RSS COMMAND.
fn render_guests(rows: &[Row]) -> String {
    use Align::{Left, Right};
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.pid.to_string(),
                r.home_node.to_string(),
                r.home_pid.to_string(),
                r.user.clone(),
                dash(r.stat.clone(), |s| s),
                time_cell(r),
                rss_cell(r),
                r.command.clone(),
            ]
        })
        .collect();
    render_table(
        &[
            ("PID", Right),
            ("HOME", Right),
            ("HPID", Right),
            ("USER", Left),
            ("STAT", Left),
            ("TIME", Right),
            ("RSS", Right),
            ("COMMAND", Left),
        ],
        &cells,
    )
}

/// One frame of `mtop`: a summary line, then PID HOME NODE USER STAT %CPU
/// TIME RSS COMMAND.
fn render_top(view: &ClusterView, rows: &[Row], away: usize) -> String {
    use Align::{Left, Right};
    let up = view
        .nodes
        .iter()
        .filter(|n| matches!(n.state, NodeState::Local | NodeState::Up))
        .count();
    let load = view
        .nodes
        .iter()
        .find(|n| n.node == view.this_node)
        .and_then(|n| n.load.as_ref())
        .map_or("-".to_string(), |l| l.load.to_string());
    let guests = rows.iter().filter(|r| r.guest).count();
    let mut out = format!(
        "mtop - node {}: {up} of {} nodes up, load {load}; {} processes, {away} away, {guests} guests\n\n",
        view.this_node,
        view.nodes.len(),
        rows.len() - guests,
    );
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.pid.to_string(),
                r.home_node.to_string(),
                r.node.to_string(),
                r.user.clone(),
                dash(r.stat.clone(), |s| s),
                dash(r.cpu_percent, |c| format!("{c:.1}")),
                time_cell(r),
                rss_cell(r),
                r.command.clone(),
            ]
        })
        .collect();
    out += &render_table(
        &[
            ("PID", Right),
            ("HOME", Right),
            ("NODE", Right),
            ("USER", Left),
            ("STAT", Left),
            ("%CPU", Right),
            ("TIME", Right),
            ("RSS", Right),
            ("COMMAND", Left),
        ],
        &cells,
    );
    out
}

/// A frame for the terminal: from the top left corner, each line cut to
/// the width and cleared to its end, as many lines as fit, the rest of
/// the screen cleared.
fn fit_screen(text: &str, height: usize, width: usize) -> String {
    let mut out = String::from("\x1b[H");
    for line in text.lines().take(height.saturating_sub(1).max(1)) {
        out.extend(line.chars().take(width));
        out += "\x1b[K\n";
    }
    out += "\x1b[J";
    out
}

/// The terminal's rows and columns, as `stty size` tells them.
fn terminal_size() -> Option<(usize, usize)> {
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let output = std::process::Command::new("stty")
        .arg("size")
        .stdin(tty)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let mut numbers = text.split_whitespace().map(str::parse::<usize>);
    match (numbers.next()?.ok()?, numbers.next()?.ok()?) {
        (0, _) | (_, 0) => None,
        size => Some(size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omx_mfs::wire::{AwayProcess, GuestProcess, LoadReport, NodeView};

    const STAT: &str = "4242 (we(i)rd) name)) S 1 4242 4242 34816 4250 4194560 \
        120 0 0 0 250 50 0 0 20 -5 3 0 123456 10485760 2560 18446744073709551615 \
        1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";

    #[test]
    fn a_command_with_spaces_and_parentheses_ends_at_the_last_one() {
        let stat = parse_stat(STAT).unwrap();
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.comm, "we(i)rd) name)");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!((stat.pgrp, stat.session, stat.tpgid), (4242, 4242, 4250));
        assert_eq!(stat.flags, 4_194_560);
        assert_eq!((stat.utime, stat.stime), (250, 50));
        assert_eq!(stat.nice, -5);
        assert_eq!(stat.threads, 3);
        assert_eq!(stat.start_time, 123_456);
        assert_eq!(stat.rss_pages, 2560);
        assert_eq!(stat_flags(&stat), "S<sl");
    }

    #[test]
    fn truncated_or_garbled_stat_is_refused() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("12 )x( S 1 2 3 4 5 6"), None);
        assert_eq!(parse_stat(&STAT.replace("4242 (", "x (")), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = Proc::read(Path::new("/proc/self")).unwrap();
        assert_eq!(me.stat.pid, std::process::id());
        assert_eq!(me.uid, nix::unistd::geteuid().as_raw());
        assert!(me.stat.rss_pages > 0);
        assert_eq!(me.argv[0], std::env::args().next().unwrap());
    }

    #[test]
    fn status_gives_the_effective_uid() {
        let status = "Name:\tx\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_status_euid(status), Some(0));
        assert_eq!(parse_status_euid("Name:\tx\n"), None);
    }

    #[test]
    fn cmdline_splits_on_nul_and_may_be_empty() {
        assert_eq!(parse_cmdline(b"sleep\x00600\x00"), ["sleep", "600"]);
        assert_eq!(parse_cmdline(b"a b\x00\x00c\x00"), ["a b", "", "c"]);
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn stat_flags_follow_ps() {
        let mut stat = parse_stat(STAT).unwrap();
        stat.nice = 5;
        stat.session = 1;
        stat.threads = 1;
        stat.tpgid = stat.pgrp;
        stat.state = 'R';
        assert_eq!(stat_flags(&stat), "RN+");
        stat.nice = 0;
        stat.tpgid = -1;
        assert_eq!(stat_flags(&stat), "R");
    }

    #[test]
    fn times_read_like_ps() {
        assert_eq!(format_time(0), "00:00:00");
        assert_eq!(format_time(3725), "01:02:05");
        assert_eq!(format_time(90_061), "1-01:01:01");
    }

    fn proc(pid: u32, ppid: u32, uid: u32, argv: &[&str]) -> Proc {
        let mut stat = parse_stat(STAT).unwrap();
        stat.pid = pid;
        stat.ppid = ppid;
        stat.comm = argv.first().copied().unwrap_or("kthread").to_string();
        Proc {
            stat,
            uid,
            argv: argv.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn view() -> ClusterView {
        ClusterView {
            this_node: 3,
            gossip_interval_ms: 1000,
            down_after_ms: 10_000,
            nodes: vec![NodeView {
                node: 3,
                address: "10.79.46.3".into(),
                state: NodeState::Local,
                age_ms: Some(0),
                load: Some(LoadReport {
                    load: 150,
                    ..LoadReport::default()
                }),
            }],
            away: vec![AwayProcess { pid: 20, node: 2 }],
            guests: vec![GuestProcess {
                home_node: 1,
                home_pid: 777,
                pid: Some(31),
            }],
        }
    }

    const SYSTEM: System = System {
        ticks_per_second: 100,
        page_kib: 4,
    };

    fn listing() -> Listing {
        let procs = vec![
            proc(20, 1, 1000, &["omx-test-cpu", "100"]),
            proc(10, 1, 1000, &["sleep", "600"]),
            proc(30, 1, 0, &["omx", "__remote-keeper"]),
            proc(31, 30, 2_000_000_000, &["omx-test-cpu", "7"]),
        ];
        classify(procs, &view(), &SYSTEM, &mut Users::default())
    }

    #[test]
    fn processes_are_sorted_into_home_away_and_guests() {
        let listing = listing();
        let pids: Vec<u32> = listing.processes.iter().map(|r| r.pid).collect();
        assert_eq!(pids, [10, 20, 30], "no guest among this node's");
        let at_home = &listing.processes[0];
        assert_eq!((at_home.node, at_home.away), (3, false));
        assert_eq!(at_home.rss_kib, Some(2560 * 4));
        assert_eq!(at_home.cpu_seconds, Some(3.0));
        let away = &listing.processes[1];
        assert_eq!((away.node, away.home_node, away.away), (2, 3, true));
        assert_eq!(
            (&away.stat, away.cpu_seconds, away.rss_kib),
            (&None, None, None)
        );
        assert_eq!(away.command, "omx-test-cpu 100");
        assert_eq!(listing.guests.len(), 1);
        let guest = &listing.guests[0];
        assert_eq!((guest.pid, guest.node), (31, 3));
        assert_eq!(
            (guest.home_node, guest.home_pid, guest.guest),
            (1, 777, true)
        );
        assert_eq!(guest.user, "2000000000");
    }

    #[test]
    fn the_table_shows_where_each_runs_and_dashes_what_is_unknown() {
        let listing = listing();
        let text = render_mps(&listing.processes[..2]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("PID NODE USER") && lines[0].ends_with("RSS COMMAND"),
            "{text}"
        );
        let words: Vec<Vec<&str>> = lines
            .iter()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(words[1][..2], ["10", "3"], "{text}");
        assert_eq!(
            words[1][4..],
            ["00:00:03", "10240", "sleep", "600"],
            "{text}"
        );
        assert_eq!(words[2][..2], ["20", "2"], "{text}");
        assert_eq!(words[2][3..6], ["-", "-", "-"], "{text}");
        // Right-aligned numbers, every column lined up with its header.
        let node_end = lines[0].find("NODE").unwrap() + 4;
        assert!(
            lines
                .iter()
                .skip(1)
                .all(|l| l[..node_end].ends_with(['3', '2'])),
            "{text}"
        );
        let command = lines[0].find("COMMAND").unwrap();
        assert_eq!(&lines[2][command..], "omx-test-cpu 100", "{text}");

        let guests = render_guests(&listing.guests);
        assert!(guests.starts_with("PID HOME HPID USER"), "{guests}");
        let guest: Vec<&str> = guests.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(guest[..4], ["31", "1", "777", "2000000000"], "{guests}");
    }

    #[test]
    fn json_says_null_for_what_is_unknown() {
        let listing = listing();
        let json = serde_json::to_value(&listing.processes[1]).unwrap();
        assert_eq!(json["node"], 2);
        assert_eq!(json["away"], true);
        assert!(
            json["rss_kib"].is_null() && json["stat"].is_null(),
            "{json}"
        );
        assert!(json.get("cpu_percent").is_none() && json.get("ticks").is_none());
    }

    #[test]
    fn mtop_ranks_by_cpu_over_the_interval() {
        let before = listing();
        let mut now = listing();
        now.processes[0].ticks += 150; // sleep 600: 1.5 s of CPU in 2 s
        now.guests[0].ticks += 20;
        now.processes[2].start_time += 1; // pid 30 was reused: all its ticks count
        let rows = top_rows(&before, &now, Duration::from_secs(2), 100);
        let order: Vec<u32> = rows.iter().map(|r| r.pid).collect();
        assert_eq!(order, [30, 10, 31, 20], "{rows:?}");
        assert_eq!(rows[0].cpu_percent, Some(150.0));
        assert_eq!(rows[1].cpu_percent, Some(75.0));
        assert_eq!(rows[2].cpu_percent, Some(10.0));
        assert_eq!(rows[3].cpu_percent, None, "away: unknown here, last");

        let frame = render_top(&view(), &rows, now.away_count());
        assert!(
            frame.starts_with(
                "mtop - node 3: 1 of 1 nodes up, load 150; 3 processes, 1 away, 1 guests\n\n"
            ),
            "{frame}"
        );
        let header = frame.lines().nth(2).unwrap();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            [
                "PID", "HOME", "NODE", "USER", "STAT", "%CPU", "TIME", "RSS", "COMMAND"
            ],
            "{frame}"
        );
        let guest: Vec<&str> = frame.lines().nth(5).unwrap().split_whitespace().collect();
        assert_eq!(guest[..3], ["31", "1", "3"], "{frame}");
        assert_eq!(guest[5], "10.0", "{frame}");
    }

    #[test]
    fn a_screen_frame_is_cut_to_the_terminal() {
        let text = "first line is long\nsecond\nthird\nfourth\n";
        let screen = fit_screen(text, 3, 5);
        assert_eq!(screen, "\x1b[Hfirst\x1b[K\nsecon\x1b[K\n\x1b[J");
    }

    #[test]
    fn delays_are_checked() {
        assert_eq!(parse_delay("0.5"), Ok(0.5));
        assert!(parse_delay("0").is_err());
        assert!(parse_delay("NaN").is_err());
        assert!(parse_delay("soon").is_err());
    }
}
