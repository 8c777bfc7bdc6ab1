//! `mosmon` as a person uses it: in a real terminal (tmux, 80x24) against a
//! 4-node lab, reading the screen, loading a node, pressing keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use omx_tests::{Lab, omx, omx_bin, stderr, wait_for};

/// A tmux server of our own (its own socket, no user configuration, no
/// status line) running one program in an 80x24 window; killed when
/// dropped, whatever happened.
struct Tmux {
    socket: String,
    config: PathBuf,
}

const SESSION: &str = "mosmon";

impl Tmux {
    fn start(command: &str) -> Tmux {
        let socket = format!("omx-mosmon-test-{}", std::process::id());
        let config = std::env::temp_dir().join(format!("{socket}.conf"));
        std::fs::write(&config, "set -g status off\n").expect("write the tmux config");
        let tmux = Tmux { socket, config };
        let output = tmux
            .command()
            .args(["new-session", "-d", "-s", SESSION, "-x", "80", "-y", "24"])
            .arg(command)
            .output()
            .expect("run tmux (scripts/setup --for-tests installs it)");
        assert!(
            output.status.success(),
            "tmux new-session failed: {}",
            stderr(&output)
        );
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command
            .arg("-L")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.config);
        command
    }

    /// What the terminal shows now.
    fn screen(&self) -> String {
        let output = self
            .command()
            .args(["capture-pane", "-p", "-t", SESSION])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn press(&self, key: &str) {
        let status = self
            .command()
            .args(["send-keys", "-t", SESSION, key])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .command()
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Busy loops in a lab node, killed when dropped.
struct Burners(Vec<Child>);

impl Drop for Burners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The bars on a captured screen: each node number found under the x axis
/// (`*` marks the viewing node), with the height of the bar above it in
/// eighths of a row.
fn bars(screen: &str) -> BTreeMap<String, u32> {
    let lines: Vec<Vec<char>> = screen.lines().map(|l| l.chars().collect()).collect();
    let Some(axis) = lines.iter().position(|l| l.contains(&'\u{2514}')) else {
        return BTreeMap::new();
    };
    let Some(labels) = lines.get(axis + 1) else {
        return BTreeMap::new();
    };
    let mut bars = BTreeMap::new();
    let mut column = 0;
    while column < labels.len() {
        if labels[column] == ' ' {
            column += 1;
            continue;
        }
        let start = column;
        while column < labels.len() && labels[column] != ' ' {
            column += 1;
        }
        let label: String = labels[start..column].iter().collect();
        let height = lines[..axis]
            .iter()
            .map(|line| match line.get(start) {
                Some('\u{2588}') => 8,
                Some(c @ '\u{2581}'..='\u{2587}') => *c as u32 - 0x2580,
                _ => 0,
            })
            .sum();
        bars.insert(label, height);
    }
    bars
}

fn height(bars: &BTreeMap<String, u32>, node: &str) -> u32 {
    bars.get(node)
        .or_else(|| bars.get(&format!("{node}*")))
        .copied()
        .unwrap_or(0)
}

fn first_line(screen: &str) -> &str {
    screen.lines().next().unwrap_or("")
}

/// Reads the screen every 100 ms until `condition` holds of it, and returns
/// it; panics with the last screen after `timeout`.
fn watch(tmux: &Tmux, timeout: Duration, what: &str, condition: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let screen = tmux.screen();
        if condition(&screen) {
            eprintln!("{what} (after {:?}):\n{screen}", start.elapsed());
            return screen;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; the screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mosmon_in_a_terminal_shows_every_node_and_follows_the_load() {
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux is needed: scripts/setup --for-tests installs it"
    );
    let lab = Lab::up("mosmon", 45, 4, &["--gossip-ms", "250"]);
    wait_for(Duration::from_secs(15), "all nodes up", || {
        lab.all_see_all("up")
    });
    let omx = omx_bin();
    let omx = omx.display();
    let tmux = Tmux::start(&format!(
        "{omx} lab exec --name mosmon 1 -- {omx} mosmon -l; echo mosmon exited $?; sleep 60"
    ));

    // The load of every node, by number, the viewing node marked, on an
    // 80x24 screen with the keys at the bottom.
    let screen = watch(
        &tmux,
        Duration::from_secs(10),
        "the load of nodes 1-4",
        |screen| {
            let bars = bars(screen);
            first_line(screen).contains("Load")
                && first_line(screen).contains("4 nodes, 4 up")
                && ["1*", "2", "3", "4"].iter().all(|n| bars.contains_key(*n))
        },
    );
    assert_eq!(screen.lines().count(), 24, "{screen}");
    assert!(screen.contains("q quit"), "{screen}");

    // A node shows load for its first seconds (its daemon starting and
    // calibrating its speed): wait for a quiet lab, the scale at its least
    // (100) and no bar above two rows.
    let screen = watch(&tmux, Duration::from_secs(20), "a quiet lab", |screen| {
        let bars = bars(screen);
        screen.contains("   100\u{2524}") && bars.len() == 4 && bars.values().all(|h| *h <= 16)
    });
    let idle = height(&bars(&screen), "3");

    // Two busy processes on node 3: its bar grows well past everyone else's.
    let burners = Burners(
        (0..2)
            .map(|_| {
                lab.spawn(
                    3,
                    &["sh", "-c", "while :; do :; done"],
                    Stdio::null(),
                    Stdio::null(),
                )
            })
            .collect(),
    );
    watch(&tmux, Duration::from_secs(20), "node 3 loaded", |screen| {
        let bars = bars(screen);
        let three = height(&bars, "3");
        let others = ["1", "2", "4"].iter().map(|n| height(&bars, n)).max();
        three >= idle + 32 && others.is_some_and(|o| three > o + 16)
    });
    drop(burners);

    // `s`: the speed of every node, all of them with a bar.
    tmux.press("s");
    watch(&tmux, Duration::from_secs(5), "the speed chart", |screen| {
        let bars = bars(screen);
        first_line(screen).contains("Speed")
            && ["1", "2", "3", "4"].iter().all(|n| height(&bars, n) > 0)
    });

    // `q`: mosmon ends, successfully, and gives the terminal back.
    tmux.press("q");
    let screen = watch(&tmux, Duration::from_secs(5), "mosmon to quit", |screen| {
        screen.contains("mosmon exited 0")
    });
    assert!(
        !screen.contains("omx mosmon"),
        "screen not restored:\n{screen}"
    );
}

#[test]
fn mosmon_without_a_terminal_points_to_omx_status() {
    let output = omx(&["mosmon"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("omx status"),
        "{}",
        stderr(&output)
    );
}
