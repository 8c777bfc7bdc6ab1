//! I/O locality: a job that reads 1 GiB held by node 3, started on node 1
//! of a 3-node lab. Measured side by side: run natively on node 3 (the
//! physical limit), on node 3 through /mfs/3 (MFS passthrough), pinned at
//! home (`mosrun -L`: every byte crosses the network), and started at home
//! under omx (placement moves it to node 3 and DFSA reopens its file
//! there). Target: omx at most 1.2x native on node 3. Needs root (a lab).
//!
//! `cargo build --release -p omx-tools -p omx-bench && sudo target/release/io-locality`

use std::time::{Duration, Instant};

use clap::Parser;
use omx_bench::{median, ratio};
use omx_tests::{Lab, stderr};

#[derive(Parser)]
struct Args {
    /// Size of the file, MiB.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// The job: a program that reads the file named after it.
    #[arg(long, default_value = "sha256sum")]
    job: String,
    /// Runs of each kind; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn main() {
    let args = Args::parse();
    let (omx, _) = omx_bench::lab_binaries();
    let lab = Lab::up("bio", 202, 3, &["--balance", "true"]);
    omx_tests::wait_for(Duration::from_secs(30), "nodes up", || {
        lab.all_see_all("up")
    });
    let file = lab.dir().join("node-3/disk/omx-io-data");
    let made = std::process::Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={}", file.display()),
            "bs=1M",
            &format!("count={}", args.mib),
            "status=none",
        ])
        .status()
        .expect("dd");
    assert!(made.success(), "cannot write the data file");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    // Warm the page cache: every run reads from memory, so the runs
    // differ by where the job runs and how its bytes travel.
    let warm = std::process::Command::new("cat")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("cat");
    assert!(warm.success());

    let local = file.to_str().unwrap().to_string();
    let through_mfs = "/mfs/3/omx-io-data".to_string();
    let job = args.job.as_str();
    let run = |node: u16, command: &[&str]| -> f64 {
        let started = Instant::now();
        let output = lab.exec(node, command);
        assert!(output.status.success(), "{command:?}: {}", stderr(&output));
        started.elapsed().as_secs_f64()
    };
    let mut native = Vec::new();
    let mut passthrough = Vec::new();
    let mut pinned = Vec::new();
    let mut placed = Vec::new();
    for round in 0..args.rounds {
        native.push(run(3, &[job, &local]));
        passthrough.push(run(3, &[job, &through_mfs]));
        pinned.push(run(1, &[&omx, "mosrun", "-L", job, &through_mfs]));
        placed.push(run(1, &[&omx, "mosrun", job, &through_mfs]));
        eprintln!(
            "round {round}: native {:.2} s, /mfs/3 {:.2} s, pinned {:.2} s, omx {:.2} s",
            native[round], passthrough[round], pinned[round], placed[round]
        );
    }
    let moves = lab
        .log(1)
        .lines()
        .filter(|l| l.contains("placement: move") && l.contains("of its I/O"))
        .count();
    let native = median(&mut native);
    println!(
        "\n`{job}` of {} MiB held by node 3, started on node 1 (median of {}; {moves} I/O moves logged)",
        args.mib, args.rounds
    );
    println!("{:<40} {:>9} {:>10}", "", "seconds", "x native");
    for (name, mut times) in [
        ("native on node 3", vec![native]),
        ("on node 3 through /mfs/3", passthrough),
        ("pinned at home (mosrun -L)", pinned),
        ("omx: placement + DFSA", placed.clone()),
    ] {
        let t = median(&mut times);
        println!("{name:<40} {t:>9.2} {:>10}", ratio(t, Some(native)));
    }
    let omx_time = median(&mut placed);
    println!(
        "target: at most 1.2x native on node 3: {}",
        if omx_time <= 1.2 * native {
            "met"
        } else {
            "NOT met"
        }
    );
    let _ = std::fs::remove_file(&file);
}
