//! `mps` and `mtop` show the right NODE for a process while it moves:
//! home on node 1, away on node 3 (and a guest there), home again.

use std::process::Stdio;
use std::time::Duration;

use omx_tests::{Lab, stderr, stdout, wait_for};
use serde_json::Value;

const CPU: &str = env!("CARGO_BIN_EXE_omx-test-cpu");

/// `mps --json ARGS` on `node`.
fn mps_json(lab: &Lab, node: u16, args: &[&str]) -> Value {
    let mut all = vec!["mps", "--json"];
    all.extend_from_slice(args);
    let output = lab.omx(node, &all);
    assert!(output.status.success(), "mps: {}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("mps --json is JSON")
}

/// The one process `mps --json PID` on node 1 lists.
fn row(lab: &Lab, pid: u32) -> Value {
    let listing = mps_json(lab, 1, &[&pid.to_string()]);
    assert_eq!(listing["node"], 1, "{listing}");
    let processes = listing["processes"].as_array().expect("processes");
    assert_eq!(processes.len(), 1, "{listing}");
    processes[0].clone()
}

/// The PID and NODE columns of `mps PID`'s table on node 1.
fn table_node(lab: &Lab, pid: u32) -> String {
    let output = lab.omx(1, &["mps", &pid.to_string()]);
    assert!(output.status.success(), "mps: {}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].trim_start().starts_with("PID NODE USER"), "{text}");
    let words: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(words[0], pid.to_string(), "{text}");
    words[1].to_string()
}

/// Home pids of the guests `mps --guests` on `node` lists from node 1.
fn guests_from_node_1(lab: &Lab, node: u16) -> Vec<u64> {
    let listing = mps_json(lab, node, &["--guests"]);
    listing["guests"]
        .as_array()
        .expect("guests")
        .iter()
        .filter(|g| g["home_node"] == 1)
        .map(|g| g["home_pid"].as_u64().unwrap())
        .collect()
}

#[test]
fn mps_shows_the_right_node_for_a_migrated_process() {
    let lab = Lab::up("mps", 46, 3, &["--cpus", "0.5"]);
    wait_for(Duration::from_secs(15), "all nodes up", || {
        lab.all_see_all("up")
    });
    let mut child = lab.spawn(1, &[CPU, "100000000000"], Stdio::null(), Stdio::null());
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));

    // At home: NODE is node 1's own number, and everything is known.
    let home = row(&lab, pid);
    assert_eq!(home["node"], 1, "{home}");
    assert_eq!(home["away"], false, "{home}");
    assert!(home["rss_kib"].as_u64().unwrap() > 0, "{home}");
    assert!(home["command"].as_str().unwrap().contains("omx-test-cpu"));
    assert_eq!(table_node(&lab, pid), "1");

    // Away on node 3: NODE 3; what only node 3 knows is not made up.
    lab.migrate(1, pid, "3").expect("moved to node 3");
    let away = row(&lab, pid);
    assert_eq!(away["node"], 3, "{away}");
    assert_eq!(away["home_node"], 1, "{away}");
    assert_eq!(away["away"], true, "{away}");
    assert!(
        away["rss_kib"].is_null() && away["stat"].is_null(),
        "{away}"
    );
    assert_eq!(table_node(&lab, pid), "3");
    let only_away = mps_json(&lab, 1, &["--away", "--all"]);
    let away_pids: Vec<u64> = only_away["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(away_pids, [u64::from(pid)], "{only_away}");
    // Node 3 lists it as its guest, node 2 does not.
    assert_eq!(guests_from_node_1(&lab, 3), [u64::from(pid)]);
    assert!(guests_from_node_1(&lab, 2).is_empty());
    // mtop, in batch mode, shows it with NODE 3 too.
    let output = lab.omx(1, &["mtop", "-b", "-n", "1", "-d", "0.3"]);
    assert!(output.status.success(), "mtop: {}", stderr(&output));
    let frame = stdout(&output);
    let line: Vec<&str> = frame
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))
        .unwrap_or_else(|| panic!("mtop lists {pid}: {frame}"))
        .split_whitespace()
        .collect();
    assert_eq!(line[1..3], ["1", "3"], "HOME 1, NODE 3: {frame}");

    // Home again: NODE 1, and node 3 no longer hosts it.
    lab.migrate(1, pid, "home").expect("came home");
    let back = row(&lab, pid);
    assert_eq!(back["node"], 1, "{back}");
    assert_eq!(back["away"], false, "{back}");
    assert_eq!(table_node(&lab, pid), "1");
    wait_for(Duration::from_secs(5), "the guest to leave node 3", || {
        guests_from_node_1(&lab, 3).is_empty()
    });

    child.kill().unwrap();
    child.wait().unwrap();
    // A pid asked for that is not there: failure, like ps -p.
    let output = lab.omx(1, &["mps", &pid.to_string()]);
    assert!(!output.status.success(), "{}", stdout(&output));
}
