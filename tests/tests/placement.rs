//! The placement engine in real labs: processes started on one node end
//! where CPU, memory and their data are, and the controls hold them back.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use omx_tests::{Lab, stderr, stdout, wait_for};

const CPU: &str = env!("CARGO_BIN_EXE_omx-test-cpu");
const HOLD: &str = env!("CARGO_BIN_EXE_omx-test-hold");
const READER: &str = env!("CARGO_BIN_EXE_omx-test-reader");

/// A lab whose nodes move processes on their own.
fn balancing_lab(name: &str, net: u8, nodes: u16, extra: &[&str]) -> Lab {
    let mut args = vec!["--balance", "true"];
    args.extend_from_slice(extra);
    let lab = Lab::up(name, net, nodes, &args);
    wait_for(Duration::from_secs(20), "all nodes up", || {
        lab.all_see_all("up")
    });
    lab
}

/// Starts `command` on `node` under `mosrun` with `options`.
fn mosrun(lab: &Lab, node: u16, options: &[&str], command: &[&str]) -> Child {
    let omx = omx_tests::omx_bin();
    let mut all = vec![omx.to_str().unwrap(), "mosrun"];
    all.extend_from_slice(options);
    all.extend_from_slice(command);
    lab.spawn(node, &all, Stdio::null(), Stdio::piped())
}

/// Where each of `pids` (of `home`) runs: `home` or the node away.
fn sites(lab: &Lab, home: u16, pids: &[u32]) -> BTreeMap<u32, u16> {
    let away: BTreeMap<u32, u16> = lab
        .status(home)
        .and_then(|s| s.get("away").cloned())
        .and_then(|a| a.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| Some((p["pid"].as_u64()? as u32, p["node"].as_u64()? as u16)))
        .collect();
    pids.iter()
        .map(|pid| (*pid, away.get(pid).copied().unwrap_or(home)))
        .collect()
}

/// Every process of `home` that runs elsewhere.
fn away_pids(lab: &Lab, home: u16) -> Vec<u32> {
    lab.status(home)
        .and_then(|s| s.get("away").cloned())
        .and_then(|a| a.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
        .collect()
}

/// How many of `pids` run on each node 1..=nodes.
fn spread(lab: &Lab, home: u16, pids: &[u32]) -> Vec<usize> {
    let sites = sites(lab, home, pids);
    (1..=lab.nodes)
        .map(|n| sites.values().filter(|s| **s == n).count())
        .collect()
}

fn moves_of(lab: &Lab, home: u16, pid: u32) -> u64 {
    lab.where_is(home, pid)["moves"].as_u64().unwrap_or(0)
}

fn end(children: &mut [Child]) {
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn cpu_jobs_started_on_one_node_spread_in_proportion_to_speed() {
    // One CPU each, at speeds 1x, 1x, 2x, 4x (a quota of 0.2 CPU is one
    // CPU at a fifth of the machine's speed).
    let lab = balancing_lab("pspeed", 54, 4, &["--cpus", "0.2,0.2,0.4,0.8"]);
    let mut jobs: Vec<Child> = (0..8)
        .map(|_| mosrun(&lab, 1, &[], &[CPU, "1000000000000"]))
        .collect();
    let pids: Vec<u32> = jobs.iter().map(Child::id).collect();
    let target = vec![1, 1, 2, 4];
    let mut held_since: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = spread(&lab, 1, &pids);
        if last == target {
            let since = *held_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(10) {
                break;
            }
        } else {
            held_since = None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = lab.log(1);
    end(&mut jobs);
    assert!(
        held_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(10)),
        "8 jobs on speeds 1,1,2,4 should settle at {target:?} and stay; last spread {last:?}\n{}",
        placement_lines(&log)
    );
    assert!(log.contains("placement: move"), "node 1 logs its decisions");
}

/// Waits up to `timeout` for the spread of `pids` (of node 1) to satisfy
/// `settled`; on a timeout, fails with the last spread seen and node 1's
/// last placement decisions, so that a failure in CI says what the
/// balancer was doing.
fn wait_for_spread(
    lab: &Lab,
    pids: &[u32],
    timeout: Duration,
    what: &str,
    settled: impl Fn(&[usize]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = spread(lab, 1, pids);
        if settled(&last) {
            return;
        }
        if Instant::now() >= deadline {
            let lines = placement_lines(&lab.log(1));
            let tail: Vec<&str> = lines.lines().rev().take(80).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; last spread {last:?}\n\
                 node 1's last placement lines:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn placement_lines(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("placement"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn locked_jobs_never_move_and_expel_empties_a_node() {
    let lab = balancing_lab("plock", 55, 3, &["--cpus", "0.3"]);
    // The second locked job is a shell whose child computes: the child
    // is locked with it.
    let mut locked: Vec<Child> = vec![
        mosrun(&lab, 1, &["-L"], &[CPU, "1000000000000"]),
        mosrun(
            &lab,
            1,
            &["-L"],
            &["sh", "-c", &format!("{CPU} 1000000000000; true")],
        ),
    ];
    // One free job, the child of an unlocked shell (its descendants are
    // followed and moved too): once it left, a node stays idle, which
    // would draw the locked shell's child if the lock did not hold for it.
    let mut free: Vec<Child> = vec![mosrun(
        &lab,
        1,
        &[],
        &["sh", "-c", &format!("{CPU} 1000000000000; true")],
    )];
    let locked_pids: Vec<u32> = locked.iter().map(Child::id).collect();
    let shell = free[0].id();
    let mut free_pids: Vec<u32> = Vec::new();
    wait_for(Duration::from_secs(10), "the free shell's child", || {
        free_pids = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        !free_pids.is_empty()
    });
    wait_for(
        Duration::from_secs(60),
        "the unlocked shell's child to leave node 1",
        || sites(&lab, 1, &free_pids).values().all(|n| *n != 1),
    );
    // Three jobs on three equal nodes: the locked two make node 1 the
    // busiest, yet they stay.
    let watch_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < watch_until {
        for pid in &locked_pids {
            assert_eq!(moves_of(&lab, 1, *pid), 0, "locked process {pid} moved");
        }
        // The unlocked shell may move too (on a node with a small CPU
        // share, one still starting its child looks busy); nothing locked
        // may, nor the locked shell's child.
        for away in away_pids(&lab, 1) {
            assert!(
                free_pids.contains(&away) || away == shell,
                "process {away} moved, but only the free shell {shell} and its child \
                 {free_pids:?} may (locked: {locked_pids:?})"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // expel on a node with a guest: it goes home or elsewhere, and no
    // process comes back while the node is blocked.
    let sites_now = sites(&lab, 1, &free_pids);
    let host = *sites_now.values().next().unwrap();
    let output = lab.omx(host, &["mosctl", "expel"]);
    assert!(output.status.success(), "mosctl expel: {}", stderr(&output));
    let guests = |lab: &Lab| {
        lab.status(host)
            .and_then(|s| s.get("guests").cloned())
            .and_then(|g| g.as_array().map(Vec::len))
            .unwrap_or(usize::MAX)
    };
    wait_for(
        Duration::from_secs(30),
        "node to be empty of guests",
        || guests(&lab) == 0,
    );
    let watch_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < watch_until {
        assert_eq!(guests(&lab), 0, "a guest came back to expelled node {host}");
        std::thread::sleep(Duration::from_millis(500));
    }
    for pid in &locked_pids {
        assert_eq!(moves_of(&lab, 1, *pid), 0, "locked process {pid} moved");
    }
    end(&mut locked);
    end(&mut free);
}

#[test]
fn a_node_short_of_memory_sends_a_process_away_before_it_runs_out() {
    let lab = balancing_lab("pmem", 56, 3, &["--cpus", "0.3", "--mem", "1G"]);
    // Locked while it fills its memory: that takes CPU, and on a slow
    // machine a placement round between its "ready" and the clear below
    // would rightly move a process that computed all its life.
    let mut victim = mosrun(&lab, 1, &["-L"], &[HOLD, "300", "600"]);
    wait_ready(&mut victim);
    // From now on it only holds its memory. Its statistics start over, as
    // a user clears them with the decay control, and the lock comes off
    // once the engine has measured it afresh: wanting next to no CPU.
    let control = |file: &str, value: &str| {
        let write = format!("echo {value} > /run/openMosix/pid/{}/{file}", victim.id());
        let written = lab.exec(1, &["sh", "-c", &write]);
        assert!(written.status.success(), "{write}: {}", stderr(&written));
    };
    control("decay", "clear");
    wait_for(
        Duration::from_secs(20),
        "the engine to measure the holder afresh",
        || cpu_demand(&lab, 1, victim.id()).is_some_and(|d| d < 0.1),
    );
    control("lock", "0");
    // With equal nodes, a process that uses memory but no CPU has no
    // reason to move.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        sites(&lab, 1, &[victim.id()])[&victim.id()],
        1,
        "the process moved before memory ran short:\n{}",
        placement_lines(&lab.log(1))
    );
    // The hog is locked: the other process has to make room.
    let mut hog = mosrun(&lab, 1, &["-L"], &[HOLD, "600", "600"]);
    wait_ready(&mut hog);
    wait_for(
        Duration::from_secs(30),
        "the process to be ushered away",
        || sites(&lab, 1, &[victim.id()])[&victim.id()] != 1,
    );
    let log = lab.log(1);
    assert!(
        log.lines()
            .any(|l| l.contains("placement") && l.contains("ushers")),
        "the move was memory ushering:\n{}",
        placement_lines(&log)
    );
    // Both still run: nothing was killed for lack of memory.
    for child in [&mut victim, &mut hog] {
        assert!(
            child.try_wait().unwrap().is_none(),
            "a process of node 1 died"
        );
    }
    end(&mut [victim, hog]);
}

/// Waits for a `HOLD` program's "ready".
fn wait_ready(child: &mut Child) {
    let out = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready", "the program did not start");
}

#[test]
fn a_job_reading_a_file_of_node_3_moves_to_node_3() {
    let lab = balancing_lab("pio", 57, 3, &["--cpus", "0.5"]);
    let disk = lab.dir().join("node-3").join("disk");
    let data = disk.join("omx-placement-data");
    let made = std::process::Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={}", data.display()),
            "bs=1M",
            "count=256",
            "status=none",
        ])
        .status()
        .expect("dd");
    assert!(made.success());
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let native = lab.exec(3, &[READER, data.to_str().unwrap(), "1"]);
    let native = stdout(&native);
    let checksum = native.split("checksum ").nth(1).unwrap().trim().to_string();

    let job = mosrun(&lab, 1, &[], &[READER, "/mfs/3/omx-placement-data", "16"]);
    let pid = job.id();
    wait_for(
        Duration::from_secs(60),
        "the reader to move to node 3",
        || sites(&lab, 1, &[pid])[&pid] == 3,
    );
    let log = lab.log(1);
    // Straight to its files, for them: judged at first sight over its
    // life, I/O included (not from no I/O at all, which once sent it to
    // an idle node 2 for CPU first).
    let first_move = log
        .lines()
        .find(|l| l.contains(&format!("placement: move {pid} ")));
    assert!(
        first_move.is_some_and(|l| l.contains("to node 3") && l.contains("of its I/O")),
        "its first move is to node 3 for its I/O:\n{}",
        placement_lines(&log)
    );
    let output = job.wait_with_output().expect("the reader ends");
    let said = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "the reader failed: {said}");
    assert_eq!(
        said.trim(),
        format!(
            "read {} bytes, checksum {checksum}",
            16u64 * 256 * 1024 * 1024
        ),
        "the data read while moving is the file's"
    );
    let _ = std::fs::remove_file(&data);
}

#[test]
fn a_node_leaving_sends_its_guests_elsewhere_and_a_node_joining_takes_its_share() {
    let lab = balancing_lab("pjoin", 58, 4, &["--cpus", "0.25"]);
    let mut jobs: Vec<Child> = (0..8)
        .map(|_| mosrun(&lab, 1, &[], &[CPU, "1000000000000"]))
        .collect();
    let pids: Vec<u32> = jobs.iter().map(Child::id).collect();
    let even = |counts: &[usize], nodes: &[usize]| {
        let on: Vec<usize> = nodes.iter().map(|n| counts[*n - 1]).collect();
        on.iter().max().unwrap() - on.iter().min().unwrap() <= 1
    };
    wait_for_spread(
        &lab,
        &pids,
        Duration::from_secs(90),
        "8 jobs spread 2 per node",
        |counts| counts == [2, 2, 2, 2],
    );

    // Node 4 leaves: its guests go home, and node 1 places them on the
    // nodes that remain.
    let output = lab.omx(4, &["setpe", "-off"]);
    assert!(output.status.success(), "setpe -off: {}", stderr(&output));
    wait_for_spread(
        &lab,
        &pids,
        Duration::from_secs(90),
        "the jobs spread over nodes 1-3",
        |counts| counts[3] == 0 && even(counts, &[1, 2, 3]),
    );
    for job in jobs.iter_mut() {
        assert!(
            job.try_wait().unwrap().is_none(),
            "a job died when node 4 left"
        );
    }

    // It comes back: the load spreads to it again.
    lab.start(4);
    wait_for_spread(
        &lab,
        &pids,
        Duration::from_secs(90),
        "node 4 to take its share again",
        |counts| counts == [2, 2, 2, 2],
    );
    end(&mut jobs);
}

/// `mosrun -b` starts a job on the best node: at home when home is as good
/// as any (starting there needs no move), else on an idle node, and two in
/// a row on two different idle nodes (the first counts where it went
/// before the figures show it). Balancing is off, so every move here is a
/// start placement.
#[test]
fn jobs_asking_for_the_best_node_start_on_idle_nodes_and_an_idle_home_keeps_its_own() {
    let lab = Lab::up("pbest", 67, 3, &["--cpus", "0.5", "--balance", "false"]);
    wait_for(Duration::from_secs(20), "all nodes up", || {
        lab.all_see_all("up")
    });
    // An idle cluster: node 1 sees every node, itself included, quiet.
    // Nodes that just started (and the commands that asked whether they
    // are up) show in the figures smoothed over 2 s; on a busy host they
    // took half a process on one node and a whole one at home.
    wait_for(
        Duration::from_secs(30),
        "node 1 to see every node idle",
        || (1..=3).all(|n| lab.runnable_seen(1, n).is_some_and(|r| r < 200)),
    );
    let mut jobs = vec![mosrun(&lab, 1, &["-b"], &[CPU, "1000000000000"])];
    let first = jobs[0].id();
    // The placement round comes a fifth of a second after the start; give
    // it ten times that.
    std::thread::sleep(Duration::from_secs(2));
    let at = sites(&lab, 1, &[first]);
    let first_moves = moves_of(&lab, 1, first);
    if at[&first] != 1 || first_moves != 0 {
        end(&mut jobs);
        panic!(
            "in an idle cluster a -b job stays home; it is at {at:?} after {first_moves} moves\n{}",
            placement_lines(&lab.log(1))
        );
    }

    // Node 1 now computes: the next two go to nodes 2 and 3, one each.
    wait_for(Duration::from_secs(20), "node 1 to show its job", || {
        lab.runnable_seen(1, 1).is_some_and(|r| r >= 600)
    });
    jobs.push(mosrun(&lab, 1, &["-b"], &[CPU, "1000000000000"]));
    std::thread::sleep(Duration::from_millis(300));
    jobs.push(mosrun(&lab, 1, &["-b"], &[CPU, "1000000000000"]));
    let pids: Vec<u32> = jobs.iter().map(Child::id).collect();
    let placed = wait_for_value(Duration::from_secs(10), || {
        let at = sites(&lab, 1, &pids[1..]);
        let mut nodes: Vec<u16> = at.values().copied().collect();
        nodes.sort();
        (nodes == [2, 3]).then_some(at)
    });
    let log = lab.log(1);
    let moves: Vec<u64> = pids.iter().map(|p| moves_of(&lab, 1, *p)).collect();
    end(&mut jobs);
    assert!(
        placed.is_some(),
        "the two jobs started while node 1 computes should be on nodes 2 and 3, one each; they are at {:?}\n{}",
        sites(&lab, 1, &pids[1..]),
        placement_lines(&log)
    );
    assert_eq!(
        moves,
        [0, 1, 1],
        "each job moved at most once, at its start"
    );
    assert_eq!(
        log.matches("asked for the best node").count(),
        2,
        "node 1 logs each start placement with its reason:\n{}",
        placement_lines(&log)
    );
}

/// Two homes that see the same idle node send it their new jobs at the
/// same moment: it takes the first and refuses the second (it has one CPU
/// and took a guest within the second), which stays home instead of
/// sharing that CPU. Balancing is off, so nothing moves it later.
#[test]
fn a_node_refuses_a_second_placement_within_a_second_for_its_one_cpu() {
    let lab = Lab::up("padmit", 68, 3, &["--cpus", "0.5", "--balance", "false"]);
    wait_for(Duration::from_secs(20), "all nodes up", || {
        lab.all_see_all("up")
    });
    // Nodes 1 and 2 compute (plain processes: no daemon moves them).
    let mut hogs: Vec<Child> = [1, 2]
        .iter()
        .map(|n| lab.spawn(*n, &[CPU, "1000000000000"], Stdio::null(), Stdio::null()))
        .collect();
    wait_for(
        Duration::from_secs(30),
        "nodes 1 and 2 to look busy to each other and node 3 idle",
        || {
            [1u16, 2].iter().all(|viewer| {
                [1u16, 2]
                    .iter()
                    .all(|n| lab.runnable_seen(*viewer, *n).is_some_and(|r| r >= 600))
                    && lab.runnable_seen(*viewer, 3).is_some_and(|r| r < 200)
            })
        },
    );
    let mut jobs = vec![
        mosrun(&lab, 1, &["-b"], &[CPU, "1000000000000"]),
        mosrun(&lab, 2, &["-b"], &[CPU, "1000000000000"]),
    ];
    let (one, two) = (jobs[0].id(), jobs[1].id());
    // Both homes decide within half a second; give the moves time to end.
    std::thread::sleep(Duration::from_secs(3));
    let at = [sites(&lab, 1, &[one])[&one], sites(&lab, 2, &[two])[&two]];
    let logs = format!("{}\n{}", lab.log(1), lab.log(3));
    end(&mut jobs);
    end(&mut hogs);
    let mut sorted = at;
    sorted.sort();
    assert!(
        sorted == [1, 3] || sorted == [2, 3],
        "one job on node 3 and the other at its home; they are at {at:?}\n{}\n{}",
        placement_lines(&logs),
        lab.log(2)
    );
    let refused_home = if at[0] == 3 { 2 } else { 1 };
    assert!(
        lab.log(refused_home)
            .contains("took 1 guest(s) in the last"),
        "node {refused_home} logs why node 3 refused:\n{}",
        lab.log(refused_home)
    );
}

/// Polls `probe` every 200 ms until it gives a value or `limit` passes.
fn wait_for_value<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cpu_demand` of `pid` in `home`'s control tree, once it is measured.
fn cpu_demand(lab: &Lab, home: u16, pid: u32) -> Option<f64> {
    let out = lab.exec(home, &["cat", &format!("/run/openMosix/pid/{pid}/stats")]);
    stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("cpu_demand "))
        .and_then(|v| v.trim().parse().ok())
}

/// A process busy a third of the time wants a third of a CPU, at home and
/// away: its demand is the time it ran or waited to run, measured by the
/// kernel where it runs, not its state at the instants it was sampled
/// (which, caught awake, says it wants a whole CPU for a while).
#[test]
fn a_process_busy_a_third_of_the_time_wants_a_third_of_a_cpu_at_home_and_away() {
    let lab = balancing_lab("pduty", 62, 2, &["--cpus", "0.5"]);
    let duty = "import time\n\
                while True:\n\
                \x20   t = time.monotonic()\n\
                \x20   while time.monotonic() - t < 0.01: pass\n\
                \x20   time.sleep(0.02)\n";
    let job = mosrun(&lab, 1, &["-L"], &["python3", "-c", duty]);
    let pid = job.id();
    // Each clear makes the next measurement count in full: a sample of
    // its state caught awake would read as a whole CPU.
    let first_measurements = |place: &str| {
        let mut seen = Vec::new();
        for _ in 0..5 {
            let cleared = lab.exec(
                1,
                &[
                    "sh",
                    "-c",
                    &format!("echo {pid} > /run/openMosix/decay/clear"),
                ],
            );
            assert!(cleared.status.success(), "clear: {}", stderr(&cleared));
            let mut demand = None;
            wait_for(Duration::from_secs(10), "a measurement", || {
                demand = cpu_demand(&lab, 1, pid);
                demand.is_some()
            });
            seen.push(demand.unwrap());
        }
        assert!(
            seen.iter().all(|d| (0.15..=0.6).contains(d)),
            "busy a third of the time {place}, it wanted {seen:?} of a CPU"
        );
    };
    wait_for(Duration::from_secs(10), "a measurement", || {
        cpu_demand(&lab, 1, pid).is_some()
    });
    first_measurements("at home");
    lab.migrate(1, pid, "2").expect("it moves to node 2");
    assert_eq!(sites(&lab, 1, &[pid])[&pid], 2);
    first_measurements("on node 2");
    end(&mut [job]);
}

/// A placement move the destination refuses (here node 3's admission: it
/// took a guest within its last second) goes to the next best node at
/// once: the refusal neither holds the job where it is for the minimum
/// residency, as if it had just arrived, nor sends it to the same full
/// node round after round.
#[test]
fn a_job_a_full_node_refuses_goes_to_the_next_best_at_once() {
    // Speeds 1x, 3x, 8x, 4x: a lone job of node 1 is worth moving to
    // node 3, and next to node 4 (the rules against reversal move a lone
    // job only to a node at least 3x as fast). Node 2 takes no guests:
    // its CPU is the sleeper's, below.
    let lab = balancing_lab("prefuse", 78, 4, &["--cpus", "0.1,0.3,0.8,0.4"]);
    // Held for a minute where it lands: a refused move taken for an
    // arrival would keep the job home for that minute.
    lab.stop(1, false);
    let config = lab.dir().join("node-1/omx.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    assert!(text.trim_end().ends_with("balance = true"), "{text}");
    text.push_str("min_residency_ms = 60000\n");
    std::fs::write(&config, text).unwrap();
    lab.start(1);
    let blocked = lab.omx(2, &["mosctl", "block"]);
    assert!(blocked.status.success(), "{}", stderr(&blocked));
    wait_for(Duration::from_secs(20), "node 1 back up", || {
        lab.all_see_all("up")
    });
    wait_for(
        Duration::from_secs(20),
        "node 1 to see node 2 blocked",
        || {
            lab.status(1).is_some_and(|s| {
                s["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|n| n["node"] == 2 && n["load"]["accepts_guests"] == false)
            })
        },
    );
    // The sleeper's home is node 2, whose CPU no job uses: its trips
    // stay quick however busy node 1 gets.
    let mut sleeper = lab.spawn(2, &["sleep", "1000"], Stdio::null(), Stdio::null());
    let sleeper_pid = sleeper.id();
    let keep_full = std::sync::atomic::AtomicBool::new(true);
    let (mut job, (site, waited)) = std::thread::scope(|scope| {
        // Node 3 stays full: a sleeper moved to it and back, again and
        // again, is a guest it took within its last second.
        scope.spawn(|| {
            while keep_full.load(std::sync::atomic::Ordering::Relaxed) {
                let trip = Instant::now();
                lab.migrate(2, sleeper_pid, "3")
                    .expect("the sleeper moves to node 3");
                lab.migrate(2, sleeper_pid, "home")
                    .expect("the sleeper comes home");
                if trip.elapsed() > Duration::from_millis(900) {
                    eprintln!(
                        "a trip of the sleeper took {:?}: node 3 may have taken the job in the gap",
                        trip.elapsed()
                    );
                }
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let job = mosrun(&lab, 1, &[], &[CPU, "1000000000000"]);
        let pid = job.id();
        let started = Instant::now();
        let mut site = 1;
        while started.elapsed() < Duration::from_secs(30) {
            site = sites(&lab, 1, &[pid])[&pid];
            if site == 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        keep_full.store(false, std::sync::atomic::Ordering::Relaxed);
        (job, (site, started.elapsed()))
    });
    let log = lab.log(1);
    let refused = format!("process {} stays home: node 3 cannot take it", job.id());
    end(std::slice::from_mut(&mut job));
    end(std::slice::from_mut(&mut sleeper));
    assert!(
        log.contains(&refused),
        "node 3 never refused the job (the test did not test): {}",
        placement_lines(&log)
    );
    assert_eq!(
        site,
        4,
        "refused by node 3, the job should have gone to node 4 at once; after {waited:?} it runs on node {site}:\n{}",
        placement_lines(&log)
    );
}
