//! The control tree (`/run/openMosix` in each lab node) and `mosctl`, end
//! to end: every file is read, every writable one written, and each write
//! is checked by its effect; every refused write leaves the value as it
//! was.

use std::process::{Child, Stdio};
use std::time::Duration;

use omx_tests::{Lab, sample, stderr, stdout, wait_for};

const CPU: &str = env!("CARGO_BIN_EXE_omx-test-cpu");
const SEQUENCE: &str = env!("CARGO_BIN_EXE_omx-test-sequence");
const TREE: &str = "/run/openMosix";
const NOBODY: &str = "65534";

fn lab(name: &str, net: u8) -> Lab {
    let lab = Lab::up(name, net, 3, &["--cpus", "0.5", "--gossip-ms", "250"]);
    wait_for(Duration::from_secs(15), "all nodes up", || {
        lab.all_see_all("up")
    });
    lab
}

/// The text of a control file of `node`, without its newline.
fn read(lab: &Lab, node: u16, path: &str) -> String {
    let output = lab.exec(node, &["cat", &format!("{TREE}/{path}")]);
    assert!(
        output.status.success(),
        "reading {path} on node {node}: {}",
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(text.ends_with('\n'), "{path} does not end with a newline");
    text.trim_end().to_string()
}

/// Writes `value` and a newline to a control file of `node` as root
/// (`uid` None) or as `uid`, with `cat` (which reports a failed close, as
/// a refused map is reported); `Err` holds the complaint.
fn write_as(
    lab: &Lab,
    node: u16,
    uid: Option<&str>,
    path: &str,
    value: &str,
) -> Result<(), String> {
    let file = format!("{TREE}/{path}");
    let script = [
        "bash",
        "-c",
        "printf '%s\\n' \"$1\" | cat > \"$2\"",
        "bash",
        value,
        &file,
    ];
    let mut command: Vec<&str> = Vec::new();
    let reuid;
    let regid;
    if let Some(uid) = uid {
        reuid = format!("--reuid={uid}");
        regid = format!("--regid={uid}");
        command.extend(["setpriv", &reuid, &regid, "--clear-groups"]);
    }
    command.extend(script);
    let output = lab.exec(node, &command);
    if output.status.success() {
        Ok(())
    } else {
        Err(stderr(&output))
    }
}

fn write(lab: &Lab, node: u16, path: &str, value: &str) -> Result<(), String> {
    write_as(lab, node, None, path, value)
}

/// Checks that writing `value` fails with `errno_text` and changes nothing.
fn refused(lab: &Lab, node: u16, uid: Option<&str>, path: &str, value: &str, errno_text: &str) {
    let before = read(lab, node, path);
    let error = write_as(lab, node, uid, path, value)
        .expect_err(&format!("writing {value:?} to {path} was taken"));
    assert!(
        error.contains(errno_text),
        "writing {value:?} to {path}: expected {errno_text}, got {error}"
    );
    assert_eq!(
        read(lab, node, path),
        before,
        "a refused write of {value:?} changed {path}"
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cpu_job(lab: &Lab, node: u16) -> Killed {
    Killed(lab.spawn(node, &[CPU, "900000000000"], Stdio::null(), Stdio::null()))
}

fn mosctl(lab: &Lab, node: u16, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["mosctl"];
    all.extend_from_slice(args);
    let output = lab.omx(node, &all);
    if output.status.success() {
        Ok(stdout(&output).trim_end().to_string())
    } else {
        Err(stderr(&output))
    }
}

#[test]
fn every_control_file_reads_and_every_write_takes_effect_or_changes_nothing() {
    let lab = lab("ctl", 47);

    // Reading: the whole tree has values.
    assert_eq!(read(&lab, 1, "admin/mospe"), "1");
    assert_eq!(read(&lab, 2, "admin/mospe"), "2");
    assert!(read(&lab, 1, "admin/version").starts_with("omx "));
    let map = stdout(&lab.omx(1, &["setpe", "-r"]));
    assert_eq!(read(&lab, 1, "admin/config"), map.trim_end());
    for file in ["block", "stay", "lstay", "quiet", "nomfs", "bring", "expel"] {
        assert_eq!(read(&lab, 1, &format!("admin/{file}")), "0", "admin/{file}");
    }
    assert_eq!(read(&lab, 1, "admin/slowdecay"), "975");
    assert_eq!(read(&lab, 1, "admin/fastdecay"), "926");
    for node in 1..=3 {
        for file in ["CPUs", "load", "mem", "rmem", "tmem", "speed", "util"] {
            let value = read(&lab, 1, &format!("nodes/{node}/{file}"));
            assert!(
                value.parse::<u64>().is_ok(),
                "nodes/{node}/{file}: {value:?}"
            );
        }
        let status = read(&lab, 1, &format!("nodes/{node}/status"));
        assert_eq!(status, if node == 1 { "local" } else { "up" });
        let age: f64 = read(&lab, 1, &format!("nodes/{node}/age")).parse().unwrap();
        assert!(age < 5.0, "node {node}'s information is {age} s old");
    }
    assert_eq!(read(&lab, 1, "self/where"), "home");
    assert!(read(&lab, 1, "self/stats").contains("cpu_ms "));
    let missing = lab.exec(1, &["cat", &format!("{TREE}/nodes/9/load")]);
    assert!(!missing.status.success(), "node 9 is not in the map");

    // As a person would: echo.
    let echo = |value: &str| {
        lab.exec(
            1,
            &["bash", "-c", &format!("echo {value} > {TREE}/admin/stay")],
        )
    };
    assert!(echo("1").status.success());
    assert_eq!(read(&lab, 1, "admin/stay"), "1");
    let refused_echo = echo("7");
    assert!(stderr(&refused_echo).contains("Invalid argument"));
    assert_eq!(read(&lab, 1, "admin/stay"), "1");
    assert!(echo("0").status.success());

    // Admin writes: root only, checked values.
    refused(
        &lab,
        1,
        Some(NOBODY),
        "admin/block",
        "1",
        "Permission denied",
    );
    for (file, bad) in [
        ("block", "2"),
        ("stay", "yes"),
        ("lstay", ""),
        ("quiet", "-1"),
        ("nomfs", "on"),
        ("bring", "0"),
        ("expel", "x"),
        ("speed", "0"),
        ("speed", "fast"),
        ("decayinterval", "0"),
        ("slowdecay", "1001"),
        ("fastdecay", "990"),
        ("config", "1 10.0.0.1"),
        ("config", "1 10.79.47.9 1"),
    ] {
        refused(
            &lab,
            1,
            None,
            &format!("admin/{file}"),
            bad,
            "Invalid argument",
        );
    }
    refused(&lab, 1, None, "admin/mospe", "5", "Permission denied");
    // Another node's figures are read-only. Its speed, since its load
    // may change between two reads on its own.
    refused(&lab, 1, None, "nodes/2/speed", "5", "Permission denied");
    for (file, value) in [("stay", "1"), ("lstay", "1"), ("decayinterval", "5")] {
        write(&lab, 1, &format!("admin/{file}"), value).unwrap();
        assert_eq!(read(&lab, 1, &format!("admin/{file}")), value);
    }
    write(&lab, 1, "admin/slowdecay", "990").unwrap();
    write(&lab, 1, "admin/fastdecay", "950").unwrap();
    assert_eq!(read(&lab, 1, "admin/fastdecay"), "950");

    // speed: the value other nodes see changes.
    write(&lab, 2, "admin/speed", "23456").unwrap();
    wait_for(
        Duration::from_secs(10),
        "node 1 to see node 2's new speed",
        || read(&lab, 1, "nodes/2/speed") == "23456",
    );
    wait_for(
        Duration::from_secs(10),
        "mosctl on node 3 to report it",
        || mosctl(&lab, 3, &["getspeed", "2"]).unwrap() == "23456",
    );

    // block: no guests; where: a write moves the process.
    let job = cpu_job(&lab, 1);
    let pid = job.0.id().to_string();
    std::thread::sleep(Duration::from_millis(500));
    write(&lab, 2, "admin/block", "1").unwrap();
    let blocked = lab
        .migrate(1, job.0.id(), "2")
        .expect_err("node 2 is blocked");
    assert!(blocked.contains("blocked"), "{blocked}");
    assert_eq!(read(&lab, 1, &format!("pid/{pid}/where")), "home");
    write(&lab, 2, "admin/block", "0").unwrap();
    refused(
        &lab,
        1,
        None,
        &format!("pid/{pid}/where"),
        "9",
        "Invalid argument",
    );
    refused(
        &lab,
        1,
        None,
        &format!("pid/{pid}/where"),
        "there",
        "Invalid argument",
    );
    refused(
        &lab,
        1,
        Some(NOBODY),
        &format!("pid/{pid}/where"),
        "2",
        "Permission denied",
    );
    write(&lab, 1, &format!("pid/{pid}/where"), "2").unwrap();
    wait_for(
        Duration::from_secs(20),
        "the process to run on node 2",
        || read(&lab, 1, &format!("pid/{pid}/where")) == "2",
    );
    assert_eq!(lab.where_is(1, job.0.id())["node"], 2);
    assert_eq!(read(&lab, 1, &format!("pid/{pid}/nmigs")), "1");
    assert!(read(&lab, 1, &format!("pid/{pid}/stats")).starts_with("node 2"));

    // remote/ on the host lists the guest.
    let listing = stdout(&lab.exec(2, &["ls", &format!("{TREE}/remote")]));
    let guest = listing
        .split_whitespace()
        .next()
        .expect("node 2 lists its guest");
    assert_eq!(read(&lab, 2, &format!("remote/{guest}/home")), "1");
    assert_eq!(read(&lab, 2, &format!("remote/{guest}/pid")), pid);
    assert!(
        read(&lab, 2, &format!("remote/{guest}/mem"))
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(
        read(&lab, 2, &format!("remote/{guest}/cpu"))
            .parse::<u64>()
            .is_ok()
    );
    assert_eq!(read(&lab, 2, "admin/expel"), "1", "one guest");

    // expel: the guest goes home and node 2 is blocked.
    write(&lab, 2, "admin/expel", "1").unwrap();
    wait_for(
        Duration::from_secs(20),
        "the expelled process to be home",
        || read(&lab, 1, &format!("pid/{pid}/where")) == "home",
    );
    assert_eq!(read(&lab, 2, "admin/block"), "1");
    wait_for(Duration::from_secs(5), "node 2 to forget its guest", || {
        read(&lab, 2, "admin/expel") == "0"
    });
    write(&lab, 2, "admin/block", "0").unwrap();

    // bring: the home node calls its processes back.
    lab.migrate(1, job.0.id(), "3").unwrap();
    assert_eq!(read(&lab, 1, "admin/bring"), "1", "one process away");
    write(&lab, 1, "admin/bring", "1").unwrap();
    wait_for(
        Duration::from_secs(20),
        "the process to be brought home",
        || read(&lab, 1, &format!("pid/{pid}/where")) == "home",
    );

    // Per-process controls.
    write(&lab, 1, &format!("pid/{pid}/lock"), "1").unwrap();
    assert_eq!(read(&lab, 1, &format!("pid/{pid}/lock")), "1");
    assert!(read(&lab, 1, &format!("pid/{pid}/cantmove")).contains("locked"));
    refused(
        &lab,
        1,
        None,
        &format!("pid/{pid}/lock"),
        "maybe",
        "Invalid argument",
    );
    write(&lab, 1, &format!("pid/{pid}/lock"), "0").unwrap();
    assert_eq!(read(&lab, 1, &format!("pid/{pid}/cantmove")), "");
    write(&lab, 1, &format!("pid/{pid}/selected"), "3").unwrap();
    assert_eq!(read(&lab, 1, &format!("pid/{pid}/selected")), "3");
    refused(
        &lab,
        1,
        None,
        &format!("pid/{pid}/selected"),
        "7",
        "Invalid argument",
    );
    refused(
        &lab,
        1,
        None,
        &format!("pid/{pid}/cantmove"),
        "x",
        "Permission denied",
    );
    refused(
        &lab,
        1,
        None,
        &format!("pid/{pid}/nmigs"),
        "0",
        "Permission denied",
    );
    write(&lab, 1, "decay/cpujob", &pid).unwrap();
    write(&lab, 1, &format!("pid/{pid}/decay"), "slow").unwrap();
    assert_eq!(read(&lab, 1, &format!("pid/{pid}/decay")), "slow cpujob");
    assert_eq!(read(&lab, 1, "decay/cpujob"), pid);
    assert_eq!(read(&lab, 1, "decay/slow"), pid);
    refused(
        &lab,
        1,
        None,
        &format!("pid/{pid}/decay"),
        "sideways",
        "Invalid argument",
    );
    refused(
        &lab,
        1,
        None,
        "decay/iojob",
        "999999999",
        "Invalid argument",
    );
    write(&lab, 1, "decay/clear", &pid).unwrap();
    let cpu_after_clear: u64 = read(&lab, 1, &format!("pid/{pid}/stats"))
        .lines()
        .find_map(|l| l.strip_prefix("cpu_ms "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        cpu_after_clear < 1000,
        "cleared statistics show {cpu_after_clear} ms"
    );

    // nomfs: other nodes lose access to this node's files.
    lab.exec(
        2,
        &[
            "sh",
            "-c",
            "echo hello > /run/omx-lab/ctl/node-2/disk/hello",
        ],
    );
    let through_mfs = || lab.exec(1, &["cat", "/mfs/2/hello"]);
    assert_eq!(stdout(&through_mfs()), "hello\n");
    write(&lab, 2, "admin/nomfs", "1").unwrap();
    assert!(!through_mfs().status.success(), "nomfs must refuse node 1");
    write(&lab, 2, "admin/nomfs", "0").unwrap();
    assert_eq!(stdout(&through_mfs()), "hello\n");

    // quiet: the others stop hearing of the node, then hear again.
    write(&lab, 3, "admin/quiet", "1").unwrap();
    wait_for(
        Duration::from_secs(30),
        "node 1 to count quiet node 3 down",
        || read(&lab, 1, "nodes/3/status") == "down",
    );
    write(&lab, 3, "admin/quiet", "0").unwrap();
    wait_for(Duration::from_secs(15), "node 3 to be up again", || {
        read(&lab, 1, "nodes/3/status") == "up"
    });

    // A new map through admin/config.
    let grown = "1 10.79.47.1 4\n";
    write(&lab, 1, "admin/config", grown).unwrap();
    assert_eq!(read(&lab, 1, "admin/config"), grown.trim_end());
    assert_eq!(read(&lab, 1, "nodes/4/status"), "unknown");
}

#[test]
fn mosctl_steers_and_reports_like_the_original() {
    let lab = lab("mctl", 48);
    assert_eq!(mosctl(&lab, 1, &["whois"]).unwrap(), "1");
    assert_eq!(mosctl(&lab, 1, &["whois", "2"]).unwrap(), "10.79.48.2");
    assert_eq!(mosctl(&lab, 1, &["whois", "10.79.48.3"]).unwrap(), "3");
    assert!(
        mosctl(&lab, 1, &["whois", "7"])
            .unwrap_err()
            .contains("not in the cluster map")
    );
    for node in ["1", "2", "3"] {
        assert!(
            mosctl(&lab, 1, &["getload", node])
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
        assert!(
            mosctl(&lab, 1, &["getmem", node])
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
        assert!(
            mosctl(&lab, 1, &["getfree", node])
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
        assert!(
            mosctl(&lab, 1, &["getutil", node])
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
        mosctl(&lab, 1, &["isup", node]).unwrap();
    }
    let error = mosctl(&lab, 1, &["getload", "9"]).unwrap_err();
    assert!(
        error.contains("node 9 is not in the cluster map"),
        "{error}"
    );

    for (on, off, file) in [
        ("block", "noblock", "block"),
        ("stay", "nostay", "stay"),
        ("lstay", "nolstay", "lstay"),
        ("quiet", "noquiet", "quiet"),
        ("nomfs", "mfs", "nomfs"),
    ] {
        mosctl(&lab, 2, &[on]).unwrap();
        assert_eq!(read(&lab, 2, &format!("admin/{file}")), "1", "after {on}");
        let status: serde_json::Value =
            serde_json::from_str(&mosctl(&lab, 2, &["status", "--json"]).unwrap()).unwrap();
        assert_eq!(status[file], true, "status after {on}: {status}");
        mosctl(&lab, 2, &[off]).unwrap();
        assert_eq!(read(&lab, 2, &format!("admin/{file}")), "0", "after {off}");
    }
    let text = mosctl(&lab, 2, &["status"]).unwrap();
    assert!(text.starts_with("node 2: local"), "{text}");

    mosctl(&lab, 1, &["setspeed", "31000"]).unwrap();
    let error = mosctl(&lab, 1, &["setspeed", "-4"]).unwrap_err();
    assert!(error.contains("-4"), "{error}");
    assert_eq!(read(&lab, 1, "admin/speed"), "31000");
    let seen: serde_json::Value =
        serde_json::from_str(&mosctl(&lab, 1, &["getspeed", "--json"]).unwrap()).unwrap();
    assert_eq!(seen["speed"], 31000);

    // setdecay in either direction, and a refused one changes nothing.
    mosctl(&lab, 1, &["setdecay", "3", "500", "400"]).unwrap();
    mosctl(&lab, 1, &["setdecay", "2", "999", "998"]).unwrap();
    assert_eq!(read(&lab, 1, "admin/slowdecay"), "999");
    assert_eq!(read(&lab, 1, "admin/fastdecay"), "998");
    assert!(mosctl(&lab, 1, &["setdecay", "2", "100", "200"]).is_err());
    assert_eq!(read(&lab, 1, "admin/decayinterval"), "2");

    // Only root steers a node.
    let output = lab.exec(
        1,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            omx_tests::omx_bin().to_str().unwrap(),
            "mosctl",
            "block",
        ],
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("only root"), "{}", stderr(&output));
    assert_eq!(read(&lab, 1, "admin/block"), "0");

    // A node that is down fails isup.
    lab.stop(3, false);
    wait_for(Duration::from_secs(30), "node 3 to be seen down", || {
        mosctl(&lab, 1, &["isup", "3"]).is_err()
    });
}

#[test]
fn setpe_off_sends_guests_home_brings_processes_home_and_stops() {
    let lab = lab("leave", 49);
    let from_one = cpu_job(&lab, 1);
    std::thread::sleep(Duration::from_millis(500));
    // Node 2 hosts a guest of node 1; node 2's own process runs on 3.
    lab.migrate(1, from_one.0.id(), "2").unwrap();
    let own = cpu_job(&lab, 2);
    std::thread::sleep(Duration::from_millis(500));
    lab.migrate(2, own.0.id(), "3").unwrap();

    let output = lab.omx(2, &["setpe", "-off"]);
    assert!(output.status.success(), "setpe -off: {}", stderr(&output));
    wait_for(Duration::from_secs(10), "node 2's guest to be home", || {
        lab.where_is(1, from_one.0.id())["node"].is_null()
    });
    wait_for(Duration::from_secs(10), "node 2's daemon to stop", || {
        lab.status(2).is_none()
    });
    // Node 2's own process is home and still runs there.
    let alive = lab.exec(2, &["kill", "-0", &own.0.id().to_string()]);
    assert!(
        alive.status.success(),
        "node 2's process must run on at home"
    );
    let state = std::fs::read_to_string(format!("/proc/{}/stat", own.0.id())).unwrap();
    let state = state[state.rfind(')').unwrap() + 2..]
        .chars()
        .next()
        .unwrap();
    assert!(
        matches!(state, 'R' | 'S'),
        "state {state}: it runs at home again"
    );
}

#[test]
fn metrics_count_moves_forwarded_calls_and_mfs_traffic() {
    let lab = lab("metrics", 50);
    let before = lab.http_get(1, "/metrics");
    assert!(before.starts_with("HTTP/1.1 200 OK"), "{before}");
    assert_eq!(sample(&before, "omx_node_up{node=\"2\"}"), 1.0);
    assert!(sample(&before, "omx_node_speed{node=\"1\"}") > 0.0);
    assert!(sample(&before, "omx_node_memory_total_bytes{node=\"3\"}") > 0.0);
    assert!(sample(&before, "omx_gossip_age_seconds{node=\"2\"}") < 5.0);
    assert_eq!(sample(&before, "omx_migrations_out_total"), 0.0);
    assert!(lab.http_get(1, "/other").starts_with("HTTP/1.1 404"));

    // A writer moved to node 2: its writes are forwarded home.
    let mut writer = Killed(lab.spawn(1, &[SEQUENCE, "100000", "5"], Stdio::null(), Stdio::null()));
    std::thread::sleep(Duration::from_millis(300));
    lab.migrate(1, writer.0.id(), "2").unwrap();
    wait_for(
        Duration::from_secs(10),
        "forwarded calls to be counted",
        || sample(&lab.http_get(1, "/metrics"), "omx_forwarded_calls_total") > 10.0,
    );
    lab.migrate(1, writer.0.id(), "home").unwrap();
    let after = lab.http_get(1, "/metrics");
    assert_eq!(sample(&after, "omx_migrations_out_total"), 1.0);
    assert_eq!(sample(&after, "omx_migrations_home_total"), 1.0);
    assert_eq!(
        sample(&lab.http_get(2, "/metrics"), "omx_migrations_in_total"),
        1.0
    );
    let _ = writer.0.kill();

    // MFS: a remote read is counted, with its bytes.
    lab.exec(
        3,
        &[
            "sh",
            "-c",
            "echo hello-metrics > /run/omx-lab/metrics/node-3/disk/m",
        ],
    );
    assert_eq!(
        stdout(&lab.exec(1, &["cat", "/mfs/3/m"])),
        "hello-metrics\n"
    );
    let mfs = lab.http_get(1, "/metrics");
    assert!(sample(&mfs, "omx_mfs_operations_total{owner=\"remote\"}") >= 2.0);
    assert!(sample(&mfs, "omx_mfs_read_bytes_total") >= 14.0);
}
