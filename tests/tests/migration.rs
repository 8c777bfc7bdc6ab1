//! Process migration, end to end: our own small programs moved home -> 2
//! -> 3 -> home while they run, in a real lab.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use omx_tests::{Lab, wait_for};

const CPU: &str = env!("CARGO_BIN_EXE_omx-test-cpu");
const MEMORY: &str = env!("CARGO_BIN_EXE_omx-test-memory");
const SEQUENCE: &str = env!("CARGO_BIN_EXE_omx-test-sequence");
const ECHO: &str = env!("CARGO_BIN_EXE_omx-test-echo");
const SIGNALS: &str = env!("CARGO_BIN_EXE_omx-test-signals");
const EXIT: &str = env!("CARGO_BIN_EXE_omx-test-exit");
const THREADS: &str = env!("CARGO_BIN_EXE_omx-test-threads");
const SHM: &str = env!("CARGO_BIN_EXE_omx-test-shm");

const ROUND_TRIP: [&str; 3] = ["2", "3", "home"];

fn lab(name: &str, net: u8) -> Lab {
    let lab = Lab::up(name, net, 3, &["--cpus", "0.5"]);
    wait_for(Duration::from_secs(15), "all nodes up", || {
        lab.all_see_all("up")
    });
    lab
}

fn native(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_cpu_loop_moved_around_prints_the_same_checksum() {
    let lab = lab("mcpu", 21);
    let iterations = "3000000000";
    let mut child = lab.spawn(1, &[CPU, iterations], Stdio::null(), Stdio::piped());
    lab.bounce(1, child.id(), &ROUND_TRIP, Duration::from_millis(700));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out, native(CPU, &[iterations]));
    assert_eq!(
        lab.where_is(1, child.id())["moves"],
        0,
        "a finished process is forgotten"
    );
}

/// The nice value of `pid`, field 19 of its stat line.
fn nice_of(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    after_name
        .split_whitespace()
        .nth(16)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_process_keeps_its_nice_value_through_its_moves() {
    // The home keeper raises a frozen process to its own priority while
    // it captures or restores it, and must give its own value back.
    let lab = lab("mnice", 60);
    let mut child = lab.spawn(
        1,
        &["nice", "-n", "7", CPU, "1000000000000"],
        Stdio::null(),
        Stdio::null(),
    );
    let pid = child.id();
    wait_for(Duration::from_secs(10), "nice to start the program", || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("omx-test-cpu"))
    });
    assert_eq!(nice_of(pid), 7);
    for to in ROUND_TRIP {
        lab.migrate(1, pid, to)
            .unwrap_or_else(|e| panic!("migrate to {to}: {e}"));
        assert_eq!(nice_of(pid), 7, "after the move to {to}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn half_a_gigabyte_of_memory_survives_every_move() {
    let lab = lab("mmem", 22);
    let mut child = lab.spawn(1, &[MEMORY, "512", "60"], Stdio::null(), Stdio::piped());
    std::thread::sleep(Duration::from_secs(2));
    lab.bounce(1, child.id(), &ROUND_TRIP, Duration::from_millis(1500));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{out}");
    assert!(out.starts_with("verified 512 MiB over 60 rounds"), "{out}");
}

#[test]
fn a_writer_of_numbers_writes_each_once_in_order() {
    let lab = lab("mseq", 23);
    let mut child = lab.spawn(1, &[SEQUENCE, "300", "10"], Stdio::null(), Stdio::piped());
    lab.bounce(1, child.id(), &ROUND_TRIP, Duration::from_millis(600));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let expected: String = (1..=300).map(|i| format!("{i}\n")).collect();
    assert_eq!(out, expected);
}

#[test]
fn an_echo_through_pipes_keeps_echoing_while_it_moves() {
    let lab = lab("mecho", 24);
    let mut child = lab.spawn(1, &[ECHO], Stdio::piped(), Stdio::piped());
    let pid = child.id();
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..60 {
            writeln!(input, "line {i}").unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // Moves happen while the echo waits in a forwarded read.
    lab.bounce(1, pid, &ROUND_TRIP, Duration::from_millis(600));
    writer.join().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let expected: String = (0..60).map(|i| format!("line {i}\n")).collect();
    assert_eq!(out, expected);
}

#[test]
fn signals_to_the_home_pid_reach_the_handler_wherever_it_runs() {
    let lab = lab("msig", 25);
    let mut child = lab.spawn(1, &[SIGNALS, "6", "60"], Stdio::null(), Stdio::piped());
    let pid = child.id() as i32;
    let signal = |_: ()| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    for to in ROUND_TRIP {
        assert!(lab.migrate(1, pid as u32, to).is_ok());
        signal(());
        std::thread::sleep(Duration::from_millis(200));
        signal(());
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{out}");
    assert!(out.contains("received 6"), "{out}");
}

/// Runs `program` migrated to node 2 and returns its exit status.
fn ends_away(lab: &Lab, program: &[&str]) -> std::process::ExitStatus {
    let mut child = lab.spawn(1, program, Stdio::null(), Stdio::null());
    std::thread::sleep(Duration::from_millis(300));
    lab.migrate(1, child.id(), "2").expect("moved");
    child.wait().unwrap()
}

#[test]
fn exit_codes_and_deaths_by_signal_reach_the_parent_unchanged() {
    let lab = lab("mexit", 26);
    assert_eq!(ends_away(&lab, &[EXIT, "37", "2"]).code(), Some(37));
    assert_eq!(
        ends_away(&lab, &[EXIT, "segv", "2"]).signal(),
        Some(libc::SIGSEGV)
    );
    assert_eq!(
        ends_away(&lab, &[EXIT, "abort", "2"]).signal(),
        Some(libc::SIGABRT)
    );

    // Default SIGTERM: 143 as a shell reports it.
    let script = format!("{CPU} 100000000000 & p=$!; echo $p; wait $p; echo status=$?");
    let mut shell = lab.spawn(1, &["sh", "-c", &script], Stdio::null(), Stdio::piped());
    let mut out = shell.stdout.take().unwrap();
    let mut first = [0u8; 16];
    let n = out.read(&mut first).unwrap();
    let pid: u32 = std::str::from_utf8(&first[..n])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.migrate(1, pid, "3").expect("moved");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    shell.wait().unwrap();
    assert_eq!(rest.trim(), "status=143");
}

/// A process that ends while its remote keeper stops it for a move (here:
/// its last call, a write home blocked on a full pipe, is cut short by
/// the move and returns, and the process exits at once) ends as it
/// ended: its exit code reaches the parent, and the move is answered.
#[test]
fn a_process_ending_while_it_is_stopped_for_a_move_keeps_its_exit_code() {
    let lab = lab("mendmove", 76);
    let script = "import os, time\ntime.sleep(1)\nn = os.write(1, b'x' * (1 << 20))\nos._exit(37 if n > 0 else 1)";
    for round in 0..6 {
        let mut child = lab.spawn(1, &["python3", "-c", script], Stdio::null(), Stdio::piped());
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(300));
        lab.migrate(1, pid, "2").expect("moved to node 2");
        // The write fills the pipe at home and waits there for a reader.
        let wchan = format!("/proc/{pid}/wchan");
        wait_for(Duration::from_secs(10), "the write to wait at home", || {
            std::fs::read_to_string(&wchan).is_ok_and(|w| w.contains("pipe_write"))
        });
        match lab.migrate(1, pid, "3") {
            Ok(_) => {}
            Err(e) => assert!(e.contains("the process ended"), "round {round}: {e}"),
        }
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(37), "round {round}: {status:?}");
        assert!(
            !out.is_empty() && out.len() < 1 << 20,
            "round {round}: {} bytes: the cut write was not run twice",
            out.len()
        );
    }
}

#[test]
// The child is reaped by waitpid, which also sees its stop.
#[allow(clippy::zombie_processes)]
fn a_stop_and_a_continue_reach_the_remote_and_the_parent_sees_them() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let lab = lab("mstop", 27);
    let mut child = lab.spawn(1, &[SEQUENCE, "100", "20"], Stdio::null(), Stdio::piped());
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::sleep(Duration::from_millis(300));
    lab.migrate(1, child.id(), "2").expect("moved");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTSTP).unwrap();
    let stopped = waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap();
    assert_eq!(
        stopped,
        WaitStatus::Stopped(pid, nix::sys::signal::Signal::SIGTSTP)
    );
    // Stopped over there too: no output while stopped.
    let mut out = child.stdout.take().unwrap();
    let mut seen = vec![0u8; 4096];
    let before = read_available(&mut out, &mut seen);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        read_available(&mut out, &mut seen),
        0,
        "output while stopped ({before} bytes before)"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGWINCH).unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 0));
    assert!(rest.ends_with("100\n"), "{rest}");
}

/// Reads what is there without blocking.
fn read_available(pipe: &mut std::process::ChildStdout, buffer: &mut [u8]) -> usize {
    use std::os::fd::AsFd;
    let mut total = 0;
    loop {
        let ready = {
            let mut fds = [nix::poll::PollFd::new(
                pipe.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap() > 0
        };
        if !ready {
            break;
        }
        let n = pipe.read(buffer).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    total
}

#[test]
fn threads_and_shared_memory_keep_a_process_home_with_the_reason() {
    let lab = lab("mstay", 28);
    for (program, reason) in [(THREADS, "2 threads"), (SHM, "SysV shared memory")] {
        let mut child = lab.spawn(1, &[program, "10"], Stdio::null(), Stdio::null());
        std::thread::sleep(Duration::from_millis(300));
        let refused = lab.migrate(1, child.id(), "2").unwrap_err();
        assert!(refused.contains(reason), "{refused}");
        let location = lab.where_is(1, child.id());
        assert_eq!(location["node"], serde_json::Value::Null);
        assert!(
            location["cannot_move"].as_str().unwrap().contains(reason),
            "{location}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn a_call_that_needs_home_brings_the_process_home_and_it_carries_on() {
    let lab = lab("mhome", 29);
    // The shell forks for /bin/echo: fork must happen at home.
    let script =
        "i=0; while [ $i -lt 600000 ]; do i=$((i+1)); done; /bin/echo forked; echo after; exit 5";
    let mut child = lab.spawn(1, &["sh", "-c", script], Stdio::null(), Stdio::piped());
    std::thread::sleep(Duration::from_millis(200));
    lab.migrate(1, child.id(), "2").expect("moved");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(5));
    assert_eq!(out, "forked\nafter\n");
    // The keeper's report reaches the daemon's log on its own time: the
    // process may have ended first.
    let home_again = format!("process {} is home again (it called", child.id());
    let waited = std::panic::catch_unwind(|| {
        wait_for(
            Duration::from_secs(10),
            "the daemon to log the return",
            || lab.log(1).contains(&home_again),
        )
    });
    assert!(waited.is_ok(), "{}", lab.log(1));
}

#[test]
fn killing_the_daemon_of_the_hosting_node_ends_the_home_pid_promptly() {
    let lab = lab("mkill", 30);
    let mut child = lab.spawn(1, &[CPU, "100000000000"], Stdio::null(), Stdio::null());
    std::thread::sleep(Duration::from_millis(300));
    lab.migrate(1, child.id(), "3").expect("moved");
    let killed = Instant::now();
    lab.stop(3, true);
    let status = child.wait().unwrap();
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "took {:?}",
        killed.elapsed()
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the documented status: killed"
    );
    wait_for(Duration::from_secs(3), "the log line", || {
        lab.log(1)
            .contains(&format!("process {}: lost its link to node 3", child.id()))
    });
}

#[test]
fn the_remote_runs_unprivileged_and_confined() {
    let lab = lab("mconf", 31);
    let mut child = lab.spawn(1, &[CPU, "100000000000"], Stdio::null(), Stdio::null());
    std::thread::sleep(Duration::from_millis(300));
    lab.migrate(1, child.id(), "2").expect("moved");
    // The remote is the only process of the guest uid on node 2.
    let status_of =
        |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let remote = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .find(|pid| {
            status_of(pid)
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains("2000000000"))
        })
        .expect("a process of the guest uid");
    let status = status_of(&remote);
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{remote}/root")).unwrap(),
        std::path::Path::new("/run/omx/empty")
    );
    // A local user of node 2 can neither signal nor trace it.
    let output = lab.exec(
        2,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "kill",
            "-0",
            &remote,
        ],
    );
    assert!(
        !output.status.success(),
        "a local user could signal the guest"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn mosrun_starts_a_program_as_the_callers_child_and_sends_it_away() {
    let lab = lab("mrun", 32);
    let omx = omx_tests::omx_bin();
    let mut child = lab.spawn(
        1,
        &[
            omx.to_str().unwrap(),
            "mosrun",
            "-2",
            "-L",
            CPU,
            "4000000000",
        ],
        Stdio::null(),
        Stdio::piped(),
    );
    wait_for(Duration::from_secs(10), "the program on node 2", || {
        lab.where_is(1, child.id())["node"] == 2
    });
    let location = lab.where_is(1, child.id());
    assert_eq!(location["locked"], true);
    assert_eq!(location["moves"], 1);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out, native(CPU, &["4000000000"]));
}

#[test]
fn migrate_refuses_unknown_nodes_and_other_peoples_processes() {
    let lab = lab("mperm", 33);
    let mut child = lab.spawn(1, &[CPU, "100000000000"], Stdio::null(), Stdio::null());
    let pid = child.id().to_string();
    std::thread::sleep(Duration::from_millis(200));
    let refused = lab.migrate(1, child.id(), "9").unwrap_err();
    assert!(
        refused.contains("node 9 is not in the cluster map"),
        "{refused}"
    );
    let omx = omx_tests::omx_bin();
    let output = lab.exec(
        1,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            omx.to_str().unwrap(),
            "migrate",
            &pid,
            "2",
        ],
    );
    assert!(!output.status.success());
    assert!(
        omx_tests::stderr(&output).contains("you may move only processes you could kill"),
        "{}",
        omx_tests::stderr(&output)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Field `name` of `/proc/PID/status`, trimmed.
fn status_field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {name}"))
        .trim()
        .to_string()
}

/// How many times `pid` gave up the CPU of its own accord: a sleeping
/// process's count grows only when something wakes it (a ptrace stop
/// does).
fn voluntary_switches(pid: u32) -> u64 {
    status_field(pid, "voluntary_ctxt_switches")
        .parse()
        .unwrap()
}

/// The link to the destination is set up before the process is stopped:
/// a destination that refuses it (here a blocked node) never stops it.
#[test]
fn a_move_the_destination_refuses_leaves_the_process_untouched() {
    let lab = lab("mrefuse", 77);
    let mut child = lab.spawn(1, &["sleep", "1000"], Stdio::null(), Stdio::null());
    let pid = child.id();
    wait_for(Duration::from_secs(10), "sleep to be asleep", || {
        status_field(pid, "Name") == "sleep" && status_field(pid, "State").starts_with('S')
    });
    let blocked = lab.omx(2, &["mosctl", "block"]);
    assert!(blocked.status.success(), "{}", omx_tests::stderr(&blocked));
    let before = voluntary_switches(pid);
    for _ in 0..3 {
        let refused = lab.migrate(1, pid, "2").unwrap_err();
        assert!(refused.contains("node 2 is blocked"), "{refused}");
    }
    assert_eq!(
        voluntary_switches(pid),
        before,
        "the sleeping process was woken (stopped) for moves node 2 refused"
    );
    // Away, the same: refused by node 2, it sleeps on at node 3, and
    // moves on once node 2 takes guests again.
    lab.migrate(1, pid, "3").expect("moved to node 3");
    let refused = lab.migrate(1, pid, "2").unwrap_err();
    assert!(refused.contains("node 2 is blocked"), "{refused}");
    assert_eq!(lab.where_is(1, pid)["node"].as_u64(), Some(3));
    let unblocked = lab.omx(2, &["mosctl", "noblock"]);
    assert!(
        unblocked.status.success(),
        "{}",
        omx_tests::stderr(&unblocked)
    );
    lab.migrate(1, pid, "2").expect("moved on to node 2");
    assert_eq!(lab.where_is(1, pid)["node"].as_u64(), Some(2));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn every_move_reports_its_cost_and_status_shows_who_is_where() {
    let lab = lab("mwhere", 34);
    let mut child = lab.spawn(1, &[CPU, "100000000000"], Stdio::null(), Stdio::null());
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));
    let affinity = || status_field(pid, "Cpus_allowed_list");
    let before = affinity();
    let status = |node: u16| lab.status(node).expect("the daemon answers");
    let pids = |view: &serde_json::Value, list: &str, field: &str| -> Vec<u64> {
        view[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[field].as_u64().unwrap())
            .collect()
    };
    for (to, node) in [("2", Some(2u16)), ("3", Some(3)), ("home", None)] {
        let output = lab.omx(1, &["migrate", "--json", &pid.to_string(), to]);
        assert!(output.status.success(), "{}", omx_tests::stderr(&output));
        let moved: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(moved["node"].as_u64(), node.map(u64::from), "{moved}");
        // Home to 2, 2 to 3 directly, 3 to home: each says what it cost.
        let stats = &moved["stats"];
        let (bytes, frozen, total) = (
            stats["bytes"].as_u64().unwrap(),
            stats["frozen_us"].as_u64().unwrap(),
            stats["total_us"].as_u64().unwrap(),
        );
        assert!(bytes > 0 && frozen > 0, "{moved}");
        assert!(total >= frozen / 2 && total > 0, "{moved}");
        let home_view = status(1);
        match node {
            Some(n) => {
                assert_eq!(pids(&home_view, "away", "pid"), vec![u64::from(pid)]);
                assert_eq!(pids(&home_view, "away", "node"), vec![u64::from(n)]);
                let host = status(n);
                assert_eq!(pids(&host, "guests", "home_pid"), vec![u64::from(pid)]);
                assert_eq!(pids(&host, "guests", "home_node"), vec![1]);
            }
            None => {
                assert!(pids(&home_view, "away", "pid").is_empty(), "{home_view}");
                wait_for(Duration::from_secs(5), "guests to leave", || {
                    pids(&status(3), "guests", "home_pid").is_empty()
                        && pids(&status(2), "guests", "home_pid").is_empty()
                });
            }
        }
    }
    // The deputy was pinned beside its keeper while away; home, it has
    // its own affinity back.
    assert_eq!(affinity(), before);
    child.kill().unwrap();
    child.wait().unwrap();
}
