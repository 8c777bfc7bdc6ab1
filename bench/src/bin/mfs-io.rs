//! MFS against what a user has without it, as issue 4's acceptance asks:
//! file I/O (fio: 1 MiB sequential write and read, 4 KiB random reads) and
//! metadata rates (create, stat, unlink) measured from inside lab node 1 on
//! node 1's own disk (native), on MFS's view of it (`/mfs/1`), on MFS's
//! view of node 2's disk (`/mfs/2`) and on an sshfs mount of node 2's disk,
//! side by side with plain TCP between the two nodes. Prints the figures,
//! their ratios and the targets, passed or not. Needs root (it
//! builds a lab) and fio, sshfs and sshd (`scripts/setup --for-bench`).
//!
//! `cargo build --release -p omx-tools -p omx-bench && sudo target/release/mfs-io`
//! (`--targets native,sshfs` without MFS).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use omx_bench::{figure, median};
use omx_tests::Lab;
use serde_json::{Value, json};

const LAB: &str = "bmfs";
const NET: u8 = 204;
const TCP_ROUNDS: usize = 3;

#[derive(Parser)]
struct Args {
    /// What to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "native,mfs-local,mfs-remote,sshfs"
    )]
    targets: Vec<Target>,
    /// Size of the file written and read sequentially, in MiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    file_mib: u64,
    /// Seconds of 4 KiB random reads (over the same file).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    rand_seconds: u64,
    /// Files created, stat'ed and unlinked in each metadata pass.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    files: u64,
    /// Metadata passes per target in each round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    meta_rounds: u64,
    /// Rounds: each runs every job on every target in turn (all the
    /// metadata passes, then all the writes, ...), starting one target
    /// further on each time, so that a slow spell of the disk or the VM,
    /// or the work of the target before, falls on all of them alike; each
    /// figure is the median over the rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// MiB pushed over plain TCP from node 1 to node 2 in each of 3 rounds.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    tcp_mib: u64,
    /// Print all figures as JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// Node 1's own disk, a plain directory.
    Native,
    /// `/mfs/1`: node 1's MFS view of its own disk.
    MfsLocal,
    /// `/mfs/2`: node 1's MFS view of node 2's disk.
    MfsRemote,
    /// An sshfs mount of node 2's disk, served by sshd in node 2.
    Sshfs,
}

const TARGETS: [Target; 4] = [
    Target::Native,
    Target::MfsLocal,
    Target::MfsRemote,
    Target::Sshfs,
];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Native => "native",
            Target::MfsLocal => "mfs-local",
            Target::MfsRemote => "mfs-remote",
            Target::Sshfs => "sshfs",
        }
    }
}

/// One target's figures.
#[derive(Clone, Copy)]
struct Figures {
    seq_write_mib_s: f64,
    seq_read_mib_s: f64,
    /// Sequential read with the file in the owner's page cache and not in
    /// the reader's: what the file system itself costs, without the disk.
    cached_read_mib_s: f64,
    randread_iops: f64,
    randread_mib_s: f64,
    create_per_s: f64,
    stat_per_s: f64,
    unlink_per_s: f64,
}

impl Figures {
    /// Each figure's median over `rounds`.
    fn median(rounds: &[Figures]) -> Figures {
        let of =
            |field: fn(&Figures) -> f64| median(&mut rounds.iter().map(field).collect::<Vec<_>>());
        Figures {
            seq_write_mib_s: of(|f| f.seq_write_mib_s),
            seq_read_mib_s: of(|f| f.seq_read_mib_s),
            cached_read_mib_s: of(|f| f.cached_read_mib_s),
            randread_iops: of(|f| f.randread_iops),
            randread_mib_s: of(|f| f.randread_mib_s),
            create_per_s: of(|f| f.create_per_s),
            stat_per_s: of(|f| f.stat_per_s),
            unlink_per_s: of(|f| f.unlink_per_s),
        }
    }
}

/// A row of the table: its label, its figure, whether it is a throughput
/// (compared with plain TCP).
type Row = (&'static str, fn(&Figures) -> f64, bool);

const ROWS: [Row; 7] = [
    ("seq write MiB/s", |f| f.seq_write_mib_s, true),
    ("seq read MiB/s", |f| f.seq_read_mib_s, true),
    ("cached read MiB/s", |f| f.cached_read_mib_s, true),
    ("4k randread IOPS", |f| f.randread_iops, false),
    ("create/s", |f| f.create_per_s, false),
    ("stat/s", |f| f.stat_per_s, false),
    ("unlink/s", |f| f.unlink_per_s, false),
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        nix::unistd::geteuid().is_root(),
        "mfs-io needs root (it builds a lab of namespaces and cgroups): run it with sudo"
    );
    check_tools(&args.targets)?;
    let (omx, helper) = omx_bench::lab_binaries();

    eprintln!("mfs-io: bringing up lab `{LAB}` (2 nodes)");
    // sshfs logs in as root at node 2: MFS acts as root there too, for a
    // like-for-like comparison (by default root of another node is nobody).
    let lab = Lab::up(LAB, NET, 2, &["--mfs-root-squash", "false"]);
    omx_tests::wait_for(Duration::from_secs(30), "nodes up", || {
        lab.all_see_all("up")
    });
    let disk = |node: u16| lab.dir().join(format!("node-{node}/disk/bench"));
    for node in [1, 2] {
        std::fs::create_dir_all(disk(node))
            .with_context(|| format!("cannot create {}", disk(node).display()))?;
    }
    if args
        .targets
        .iter()
        .any(|t| matches!(t, Target::MfsLocal | Target::MfsRemote))
    {
        check_mfs(&lab)?;
    }

    eprintln!(
        "mfs-io: plain TCP, node 1 -> node 2, {TCP_ROUNDS} x {} MiB",
        args.tcp_mib
    );
    let mut tcp = Vec::new();
    for _ in 0..TCP_ROUNDS {
        tcp.push(tcp_mib_s(&lab, &helper, args.tcp_mib)?);
    }
    let tcp = median(&mut tcp);

    // Guards, dropped in reverse order, also on an error or a panic: the
    // mount goes first, then sshd, the work directory, and last the lab.
    let work = WorkDir::create()?;
    let mut _sshd = None;
    let mut _mount = None;
    if args.targets.contains(&Target::Sshfs) {
        eprintln!("mfs-io: starting sshd in node 2 and mounting sshfs in node 1");
        let sshd = Sshd::start(&lab, &omx, &helper, &work.0)?;
        _mount = Some(SshfsMount::mount(&lab, &omx, &sshd, &work.0, &disk(2))?);
        _sshd = Some(sshd);
    }

    let chosen: Vec<Target> = TARGETS
        .into_iter()
        .filter(|t| args.targets.contains(t))
        .collect();
    let mut rounds: Vec<Vec<Figures>> = vec![Vec::new(); chosen.len()];
    for round in 1..=args.rounds {
        // Each round starts one target further on: the host disk reads a
        // file just written at speeds that depend on what ran before it
        // (fio alone on one target read 411-558 MiB/s; the same target
        // first in a round after the others, up to 2599), so no target
        // keeps the same place.
        let first = (round as usize - 1) % chosen.len();
        let order: Vec<usize> = (first..chosen.len()).chain(0..first).collect();
        let places: Vec<Place> = order
            .iter()
            .map(|&i| {
                let target = chosen[i];
                let dir = match target {
                    Target::Native => disk(1),
                    Target::MfsLocal => PathBuf::from("/mfs/1/bench"),
                    Target::MfsRemote => PathBuf::from("/mfs/2/bench"),
                    Target::Sshfs => work.0.join("mnt"),
                };
                Place { target, dir }
            })
            .collect();
        eprintln!(
            "mfs-io: round {round}/{}: {}",
            args.rounds,
            places
                .iter()
                .map(|p| format!("{} ({})", p.target.name(), p.dir.display()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let measured = measure_round(&lab, &helper, &places, &args)?;
        for (&i, (place, measured)) in order.iter().zip(places.iter().zip(measured)) {
            // Each round's figures too: the medians hide how much a slow
            // spell of the host moved them.
            eprintln!(
                "mfs-io: round {round}/{}: {}: write {:.1} MiB/s, read {:.1} MiB/s (cached at the owner {:.1}), {:.0} random reads/s, {:.0} creates/s, {:.0} stats/s, {:.0} unlinks/s",
                args.rounds,
                place.target.name(),
                measured.seq_write_mib_s,
                measured.seq_read_mib_s,
                measured.cached_read_mib_s,
                measured.randread_iops,
                measured.create_per_s,
                measured.stat_per_s,
                measured.unlink_per_s
            );
            rounds[i].push(measured);
        }
    }
    let measured: Vec<(Target, Figures)> = chosen
        .into_iter()
        .zip(rounds)
        .map(|(target, figures)| (target, Figures::median(&figures)))
        .collect();

    let get = |target: Target| measured.iter().find(|(t, _)| *t == target).map(|(_, f)| *f);
    let checks = checks(&get, tcp);
    if args.json {
        let targets: serde_json::Map<String, Value> = measured
            .iter()
            .map(|(t, f)| (t.name().to_string(), figures_json(f)))
            .collect();
        let checks: Vec<Value> = checks
            .iter()
            .map(|c| json!({ "target": c.name, "ratio": c.ratio, "min": c.min, "pass": c.ratio.map(|r| r >= c.min) }))
            .collect();
        let all = json!({
            "file_mib": args.file_mib,
            "rand_seconds": args.rand_seconds,
            "files": args.files,
            "meta_rounds": args.meta_rounds,
            "rounds": args.rounds,
            "tcp_mib_s": tcp,
            "limits": limits(&get, tcp)
                .iter()
                .map(|(metric, limit, remote)| json!({ "metric": metric, "limit": limit, "mfs_remote": remote }))
                .collect::<Vec<_>>(),
            "targets": targets,
            "checks": checks,
        });
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print_table(&args, &get, tcp, &checks);
    }
    Ok(())
}

/// Fails, naming the command that installs them, if tools are missing.
fn check_tools(targets: &[Target]) -> anyhow::Result<()> {
    let mut needed = vec!["fio"];
    if targets.contains(&Target::Sshfs) {
        needed.extend([
            "sshfs",
            "fusermount3",
            "ssh-keygen",
            "/usr/sbin/sshd",
            "/usr/lib/openssh/sftp-server",
        ]);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = |tool: &str| {
        if tool.starts_with('/') {
            Path::new(tool).is_file()
        } else {
            std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
        }
    };
    let missing: Vec<&str> = needed.into_iter().filter(|t| !found(t)).collect();
    if !missing.is_empty() {
        bail!(
            "mfs-io needs {} (not found): install them with `sudo scripts/setup --for-bench`",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Fails clearly unless MFS is mounted inside node 1 and shows both disks.
fn check_mfs(lab: &Lab) -> anyhow::Result<()> {
    let mountinfo = lab.exec(1, &["cat", "/proc/self/mountinfo"]);
    ensure!(
        mountinfo.status.success(),
        "cannot read node 1's mounts: {}",
        omx_tests::stderr(&mountinfo)
    );
    let mounted = omx_tests::stdout(&mountinfo).lines().any(|line| {
        let mount_point = line.split(' ').nth(4).unwrap_or("");
        mount_point == "/mfs" || mount_point == "/mfs/1"
    });
    ensure!(
        mounted,
        "/mfs/1 is not a mount inside lab node 1: MFS does not run in this lab yet \
         (measure without it with `--targets native,sshfs`)"
    );
    for node in [1, 2] {
        let dir = format!("/mfs/{node}/bench");
        let seen = lab.exec(1, &["test", "-d", &dir]);
        ensure!(
            seen.status.success(),
            "MFS is mounted in node 1 but {dir} is not a directory there, although {} exists",
            lab.dir().join(format!("node-{node}/disk/bench")).display()
        );
    }
    Ok(())
}

/// A target and the directory it is measured in.
struct Place {
    target: Target,
    dir: PathBuf,
}

impl Place {
    /// The target's big file: its own name, as two targets share each
    /// disk (native and mfs-local node 1's, mfs-remote and sshfs node 2's).
    fn file(&self) -> anyhow::Result<String> {
        let file = self.dir.join(format!("mfs-io.{}.fio", self.target.name()));
        Ok(file.to_str().context("a UTF-8 path")?.to_string())
    }
}

/// One round's figures of each of `places`, in their order, all measured
/// inside node 1. Each kind of job runs on every target before the next
/// kind (all metadata passes, all writes, all reads, ...): the targets a
/// ratio compares are measured seconds apart, not a whole target's jobs
/// apart, and the host disk, whose speed drifts over tens of seconds
/// here, moves them alike. Metadata goes first: freeing a big file's
/// blocks can slow the disk for a while after.
fn measure_round(
    lab: &Lab,
    helper: &str,
    places: &[Place],
    args: &Args,
) -> anyhow::Result<Vec<Figures>> {
    let size = format!("--size={}M", args.file_mib);
    let runtime = format!("--runtime={}", args.rand_seconds);
    let within = |place: &Place| {
        format!(
            "measuring {} in {}",
            place.target.name(),
            place.dir.display()
        )
    };

    let mut metas = Vec::new();
    for place in places {
        metas.push(meta_rates(lab, helper, place, args).with_context(|| within(place))?);
    }
    let mut writes = Vec::new();
    for place in places {
        let file = place.file()?;
        remove_in_node_1(lab, &file)?;
        drop_caches()?;
        let write = fio(
            lab,
            &file,
            &["--rw=write", "--bs=1M", &size, "--end_fsync=1"],
        )
        .with_context(|| within(place))?;
        writes.push(write);
    }
    let mut reads = Vec::new();
    for place in places {
        let file = place.file()?;
        drop_caches()?;
        let read =
            fio(lab, &file, &["--rw=read", "--bs=1M", &size]).with_context(|| within(place))?;
        // The cold read left the file in the owner's page cache. Reading
        // it again from there takes the host disk, whose speed swings 3x
        // from one minute to the next here, out of the comparison. fio
        // drops the reader's cached pages of the file first
        // (`invalidate`): for the remote targets that is node 1's copy
        // (sshfs keeps one; MFS reads other nodes' files directly), and
        // the owner's stays. For the local targets reader and owner are
        // one, and their cache is kept: MFS passes fio's fadvise to its
        // own inode, not to the disk's file below. From memory the local
        // targets take tens of milliseconds for the file, which fio times
        // to the millisecond: they read it 8 times.
        let (invalidate, loops) = match place.target {
            Target::Native | Target::MfsLocal => ("--invalidate=0", "--loops=8"),
            Target::MfsRemote | Target::Sshfs => ("--invalidate=1", "--loops=1"),
        };
        let cached_read = fio(
            lab,
            &file,
            &["--rw=read", "--bs=1M", &size, invalidate, loops],
        )
        .with_context(|| within(place))?;
        reads.push((read, cached_read));
    }
    let mut randoms = Vec::new();
    for place in places {
        drop_caches()?;
        let random = fio(
            lab,
            &place.file()?,
            &["--rw=randread", "--bs=4k", &size, "--time_based", &runtime],
        )
        .with_context(|| within(place))?;
        randoms.push(random);
    }
    for place in places {
        remove_in_node_1(lab, &place.file()?)?;
    }
    drop_caches()?;

    let mib_s = |job: &Value, dir: &str| bw(job, dir).map(|b| b / f64::from(1 << 20));
    let mut figures = Vec::new();
    for (((meta, write), (read, cached_read)), random) in
        metas.into_iter().zip(writes).zip(reads).zip(randoms)
    {
        let (create_per_s, stat_per_s, unlink_per_s) = meta;
        figures.push(Figures {
            seq_write_mib_s: mib_s(&write, "write")?,
            seq_read_mib_s: mib_s(&read, "read")?,
            cached_read_mib_s: mib_s(&cached_read, "read")?,
            randread_iops: random["read"]["iops"]
                .as_f64()
                .context("fio printed no iops")?,
            randread_mib_s: mib_s(&random, "read")?,
            create_per_s,
            stat_per_s,
            unlink_per_s,
        });
    }
    Ok(figures)
}

/// `place`'s create, stat and unlink rates: medians of `meta_rounds`
/// passes.
fn meta_rates(
    lab: &Lab,
    helper: &str,
    place: &Place,
    args: &Args,
) -> anyhow::Result<(f64, f64, f64)> {
    let meta_dir = place.dir.join("mfs-io.meta");
    let meta_dir = meta_dir.to_str().context("a UTF-8 path")?;
    let (mut create, mut stat, mut unlink) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.meta_rounds {
        let meta = lab.exec(1, &[helper, "meta", meta_dir, &args.files.to_string()]);
        ensure!(
            meta.status.success(),
            "the metadata pass failed: {}",
            omx_tests::stderr(&meta)
        );
        let meta: Value = serde_json::from_slice(&meta.stdout).context("meta prints JSON")?;
        let rate = |field: &str| {
            meta[field]
                .as_f64()
                .with_context(|| format!("meta printed no {field}"))
        };
        create.push(rate("create_per_s")?);
        stat.push(rate("stat_per_s")?);
        unlink.push(rate("unlink_per_s")?);
    }
    Ok((median(&mut create), median(&mut stat), median(&mut unlink)))
}

fn bw(job: &Value, direction: &str) -> anyhow::Result<f64> {
    job[direction]["bw_bytes"]
        .as_f64()
        .with_context(|| format!("fio printed no {direction} bandwidth"))
}

/// Runs one fio job on `file` inside node 1 (buffered I/O, as programs
/// do; fio drops the file's cached pages before it starts); returns the
/// job's figures.
fn fio(lab: &Lab, file: &str, job: &[&str]) -> anyhow::Result<Value> {
    let filename = format!("--filename={file}");
    let mut command = vec![
        "fio",
        "--name=mfs-io",
        &filename,
        "--ioengine=psync",
        "--direct=0",
        "--fallocate=none",
        "--output-format=json",
    ];
    command.extend_from_slice(job);
    let output = lab.exec(1, &command);
    let stdout = omx_tests::stdout(&output);
    // fio may print notes before its JSON.
    let json_start = stdout.find('{');
    ensure!(
        output.status.success(),
        "fio {} failed: {}{}",
        job.join(" "),
        omx_tests::stderr(&output),
        &stdout[..json_start.unwrap_or(stdout.len())]
    );
    let start = json_start.context("fio printed no JSON")?;
    let report: Value = serde_json::from_str(&stdout[start..]).context("fio's JSON")?;
    let job_report = report["jobs"][0].clone();
    ensure!(
        job_report["error"].as_i64() == Some(0),
        "fio {} reported error {}",
        job.join(" "),
        job_report["error"]
    );
    Ok(job_report)
}

fn remove_in_node_1(lab: &Lab, file: &str) -> anyhow::Result<()> {
    let removed = lab.exec(1, &["rm", "-f", file]);
    ensure!(
        removed.status.success(),
        "cannot remove {file}: {}",
        omx_tests::stderr(&removed)
    );
    Ok(())
}

/// Writes back and drops the kernel's page, dentry and inode caches (on
/// both ends: the lab's nodes share this kernel), so reads reach the disk.
fn drop_caches() -> anyhow::Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("cannot drop the kernel's caches")
}

/// Pushes `mib` MiB from node 1 to node 2 over plain TCP; MiB/s.
fn tcp_mib_s(lab: &Lab, helper: &str, mib: u64) -> anyhow::Result<f64> {
    let port = free_port(lab, helper, 2)?;
    let mut sink = lab.spawn(
        2,
        &[helper, "tcp-sink", &port],
        Stdio::null(),
        Stdio::null(),
    );
    let to = format!("{}:{port}", lab.address(2));
    let pushed = lab.exec(1, &[helper, "tcp-push", &to, &mib.to_string()]);
    let sunk = sink.wait().context("the tcp sink")?;
    ensure!(
        pushed.status.success() && sunk.success(),
        "the tcp push failed: {}",
        omx_tests::stderr(&pushed)
    );
    let us: f64 = omx_tests::stdout(&pushed)
        .trim()
        .parse()
        .context("tcp-push prints microseconds")?;
    Ok(mib as f64 / (us / 1e6))
}

/// A TCP port free on `node`'s address.
fn free_port(lab: &Lab, helper: &str, node: u16) -> anyhow::Result<String> {
    let output = lab.exec(node, &[helper, "free-port", &lab.address(node)]);
    ensure!(
        output.status.success(),
        "cannot find a free port in node {node}: {}",
        omx_tests::stderr(&output)
    );
    Ok(omx_tests::stdout(&output).trim().to_string())
}

/// A private directory for keys, configuration, logs and the sshfs mount
/// point; removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("omx-mfs-io.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::create_dir(dir.join("mnt"))?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("mfs-io: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// sshd running inside node 2 with fresh keys; killed when dropped.
struct Sshd {
    child: Child,
    address: String,
    port: String,
}

impl Sshd {
    fn start(lab: &Lab, omx: &str, helper: &str, work: &Path) -> anyhow::Result<Sshd> {
        for key in ["host_key", "client_key"] {
            keygen(&work.join(key))?;
        }
        std::fs::copy(work.join("client_key.pub"), work.join("authorized_keys"))?;
        let address = lab.address(2);
        let port = free_port(lab, helper, 2)?;
        let host_key = std::fs::read_to_string(work.join("host_key.pub"))?;
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        std::fs::write(
            work.join("known_hosts"),
            format!("[{address}]:{port} {}\n", host_key.join(" ")),
        )?;
        // StrictModes no: the keys live in a private directory under /tmp,
        // which sshd would otherwise refuse for being world-writable.
        let config = work.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {address}:{port}\n\
                 HostKey {work}/host_key\n\
                 AuthorizedKeysFile {work}/authorized_keys\n\
                 PidFile none\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n",
                work = work.display()
            ),
        )?;
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").context("cannot create /run/sshd")?;
        let log_path = work.join("sshd.log");
        let log = File::create(&log_path)?;
        let config = config.to_str().context("a UTF-8 path")?;
        let child = Command::new(omx)
            .args(["lab", "exec", "--name", LAB, "2", "--"])
            .args(["/usr/sbin/sshd", "-D", "-e", "-f", config])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start sshd in node 2")?;
        let mut sshd = Sshd {
            child,
            address,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("Server listening on") {
                return Ok(sshd);
            }
            if sshd.child.try_wait()?.is_some() || Instant::now() > deadline {
                bail!("sshd did not start in node 2; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let path = path.to_str().context("a UTF-8 path")?;
    let output = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "omx-mfs-io",
            "-f",
            path,
        ])
        .output()
        .context("cannot run ssh-keygen")?;
    ensure!(
        output.status.success(),
        "ssh-keygen failed: {}",
        omx_tests::stderr(&output)
    );
    Ok(())
}

/// An sshfs mount inside node 1's mount namespace; unmounted when dropped.
struct SshfsMount<'a> {
    lab: &'a Lab,
    mount_point: String,
}

impl<'a> SshfsMount<'a> {
    fn mount(
        lab: &'a Lab,
        omx: &str,
        sshd: &Sshd,
        work: &Path,
        remote_dir: &Path,
    ) -> anyhow::Result<SshfsMount<'a>> {
        let mount_point = work
            .join("mnt")
            .to_str()
            .context("a UTF-8 path")?
            .to_string();
        let work = work.display();
        let source = format!("root@{}:{}", sshd.address, remote_dir.display());
        // Defaults, but for the fastest cipher a user would pick; no
        // compression.
        let options = format!(
            "IdentityFile={work}/client_key,UserKnownHostsFile={work}/known_hosts,\
             GlobalKnownHostsFile=/dev/null,StrictHostKeyChecking=yes,BatchMode=yes,\
             Ciphers=aes128-gcm@openssh.com"
        );
        let log_path = format!("{work}/sshfs.log");
        // sshfs goes to the background once mounted; its ssh keeps the
        // stderr it was given, so that goes to a file, not to a pipe.
        let status = Command::new(omx)
            .args(["lab", "exec", "--name", LAB, "1", "--"])
            .args(["sshfs", &source, &mount_point, "-F", "/dev/null"])
            .args(["-p", &sshd.port, "-o", &options])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log_path)?)
            .status()
            .context("cannot run sshfs in node 1")?;
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            let sshd_log = std::fs::read_to_string(format!("{work}/sshd.log")).unwrap_or_default();
            bail!("sshfs failed: {log}\nsshd's log:\n{sshd_log}");
        }
        let mounted = SshfsMount { lab, mount_point };
        let check = lab.exec(1, &["mountpoint", "-q", &mounted.mount_point]);
        ensure!(
            check.status.success(),
            "sshfs exited but {} is not a mount in node 1: {log}",
            mounted.mount_point
        );
        Ok(mounted)
    }
}

impl Drop for SshfsMount<'_> {
    fn drop(&mut self) {
        let unmounted = self
            .lab
            .exec(1, &["fusermount3", "-u", &self.mount_point])
            .status
            .success()
            || self
                .lab
                .exec(1, &["umount", "-l", &self.mount_point])
                .status
                .success();
        if !unmounted {
            eprintln!("mfs-io: cannot unmount {} in node 1", self.mount_point);
        }
    }
}

/// One of the targets: `name`'s ratio must be at least `min`.
struct Check {
    name: String,
    ratio: Option<f64>,
    min: f64,
}

fn checks(get: &dyn Fn(Target) -> Option<Figures>, tcp: f64) -> Vec<Check> {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    let of = |target: Target, row: &Row| get(target).map(|f| row.1(&f));
    let mut checks = Vec::new();
    for row in ROWS.iter().filter(|r| r.2) {
        let metric = row.0;
        checks.push(Check {
            name: format!("(b) mfs-local >= 0.95 x native, {metric}"),
            ratio: ratio(of(Target::MfsLocal, row), of(Target::Native, row)),
            min: 0.95,
        });
        checks.push(Check {
            name: format!("(c) mfs-remote >= 1.5 x sshfs, {metric}"),
            ratio: ratio(of(Target::MfsRemote, row), of(Target::Sshfs, row)),
            min: 1.5,
        });
        checks.push(Check {
            name: format!("(c) mfs-remote >= 0.5 x plain TCP, {metric}"),
            ratio: ratio(of(Target::MfsRemote, row), Some(tcp)),
            min: 0.5,
        });
    }
    let stat = ROWS.iter().find(|r| r.0 == "stat/s").expect("a stat row");
    checks.push(Check {
        name: "(c) mfs-remote >= 2 x sshfs, stat/s".into(),
        ratio: ratio(of(Target::MfsRemote, stat), of(Target::Sshfs, stat)),
        min: 2.0,
    });
    checks
}

fn print_table(args: &Args, get: &dyn Fn(Target) -> Option<Figures>, tcp: f64, checks: &[Check]) {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => omx_bench::ratio(a, Some(b)),
        _ => "-".into(),
    };
    println!(
        "{:<17} {:>10} {:>10} {:>10} {:>10} | {:>12} {:>12} {:>10}",
        "",
        "native",
        "mfs-local",
        "mfs-remote",
        "sshfs",
        "local/native",
        "remote/sshfs",
        "remote/TCP"
    );
    for row in &ROWS {
        let of = |target: Target| get(target).map(|f| row.1(&f));
        let remote_tcp = if row.2 {
            ratio(of(Target::MfsRemote), Some(tcp))
        } else {
            "".into()
        };
        println!(
            "{:<17} {:>10} {:>10} {:>10} {:>10} | {:>12} {:>12} {:>10}",
            row.0,
            figure(of(Target::Native)),
            figure(of(Target::MfsLocal)),
            figure(of(Target::MfsRemote)),
            figure(of(Target::Sshfs)),
            ratio(of(Target::MfsLocal), of(Target::Native)),
            ratio(of(Target::MfsRemote), of(Target::Sshfs)),
            remote_tcp,
        );
    }
    println!("{:<17} {:>10.1}", "plain TCP MiB/s", tcp);
    println!(
        "\nall from inside lab node 1. native = node 1's disk; mfs-local = /mfs/1; mfs-remote = /mfs/2\n\
         (node 2's disk); sshfs = node 2's disk over sshfs (sshd in node 2, aes128-gcm).\n\
         fio, buffered: {} MiB written (with a final fsync) and read in 1 MiB blocks, each after\n\
         dropping the kernel's caches; read again with the file cached at the owner only (node 2's\n\
         page cache for mfs-remote and sshfs, node 1's for native and mfs-local, 8 times over);\n\
         then {} s of 4 KiB random reads over it, after dropping the caches (through /mfs/1 they read ahead:\n\
         fio's POSIX_FADV_RANDOM reaches the FUSE file, not the disk file; see docs/mfs.md).\n\
         {} files of 1 KiB created, stat'ed (after dropping the kernel's caches) and unlinked, {} pass(es) a round.\n\
         every figure: the median of {} rounds; each round runs every job on all targets in turn\n\
         (metadata passes, then writes, then reads, then random reads; from a different target\n\
         each round), so the figures a ratio compares are taken seconds apart.\n\
         plain TCP: node 1 -> node 2, median of {TCP_ROUNDS} x {} MiB.\n\ntargets (issue 4):",
        args.file_mib, args.rand_seconds, args.files, args.meta_rounds, args.rounds, args.tcp_mib
    );
    for check in checks {
        let (mark, ratio) = match check.ratio {
            Some(r) if r >= check.min => ("PASS", format!("{r:.2}")),
            Some(r) => ("FAIL", format!("{r:.2}")),
            None => ("----", "not measured".into()),
        };
        println!("  [{mark}] {}: {ratio}", check.name);
    }
    let limits = limits(get, tcp);
    if !limits.is_empty() {
        println!(
            "\nphysical limit: the owner's disk is the same as node 1's (one host file system), so\n\
             mfs-remote can go no faster than the slower of plain TCP and native:"
        );
    }
    for (metric, limit, remote) in limits {
        println!(
            "  {metric}: limit {limit:.1}, mfs-remote {}",
            omx_bench::ratio(remote, Some(limit))
        );
    }
}

/// For each throughput row: the physical limit of mfs-remote (the slower
/// of plain TCP and the native disk, which node 2's disk shares) and
/// mfs-remote's figure.
fn limits(get: &dyn Fn(Target) -> Option<Figures>, tcp: f64) -> Vec<(&'static str, f64, f64)> {
    ROWS.iter()
        .filter(|row| row.2)
        .filter_map(|row| {
            let native = row.1(&get(Target::Native)?);
            let remote = row.1(&get(Target::MfsRemote)?);
            Some((row.0, native.min(tcp), remote))
        })
        .collect()
}

fn figures_json(f: &Figures) -> Value {
    json!({
        "seq_write_mib_s": f.seq_write_mib_s,
        "seq_read_mib_s": f.seq_read_mib_s,
        "cached_read_mib_s": f.cached_read_mib_s,
        "randread_iops": f.randread_iops,
        "randread_mib_s": f.randread_mib_s,
        "create_per_s": f.create_per_s,
        "stat_per_s": f.stat_per_s,
        "unlink_per_s": f.unlink_per_s,
    })
}
