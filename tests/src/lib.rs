//! Helpers for end-to-end tests: a real lab of real daemons, driven through
//! the `omx` binary exactly as a user would.
//!
//! These tests need root (namespaces, cgroups, mounts). They fail, never
//! skip, without it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `omx` binary under test: `$OMX_BIN`, or the one built beside the
/// running executable (a test in `target/PROFILE/deps/`, or a benchmark in
/// `target/PROFILE/`; `cargo build -p omx-tools` first).
pub fn omx_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("OMX_BIN") {
        return PathBuf::from(path);
    }
    sibling_binary("omx")
}

/// A binary of this workspace built with the same profile as the running
/// executable.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [
        dir.join(name),
        dir.parent().map_or(dir.join(name), |p| p.join(name)),
    ];
    candidates
        .iter()
        .find(|c| c.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is not built beside {}: build it first with the same profile",
                exe.display()
            )
        })
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests need root (they build labs of network namespaces and cgroups): run them as root"
    );
}

/// Runs `omx ARGS` on the host.
pub fn omx(args: &[&str]) -> Output {
    Command::new(omx_bin())
        .args(args)
        .output()
        .expect("run omx")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Polls `condition` every 100 ms until it holds; panics naming `what`
/// after `timeout`. Returns how long it took.
pub fn wait_for(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if condition() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A lab for one test, removed when dropped.
pub struct Lab {
    pub name: String,
    pub nodes: u16,
    subnet: String,
}

impl Lab {
    /// Brings up lab `name` with `nodes` nodes on 10.79.`net`.0/24.
    /// Leftovers of an earlier run under the same name are removed first.
    /// The placement engine is off unless `extra` says `--balance true`:
    /// tests of the mechanisms move processes themselves and check where
    /// they are.
    pub fn up(name: &str, net: u8, nodes: u16, extra: &[&str]) -> Lab {
        require_root();
        let _ = omx(&["lab", "down", "--name", name]);
        let subnet = format!("10.79.{net}.0");
        let nodes_arg = nodes.to_string();
        let mut args = vec![
            "lab", "up", "--name", name, "--nodes", &nodes_arg, "--subnet", &subnet,
        ];
        args.extend_from_slice(extra);
        if !extra.contains(&"--balance") {
            args.extend_from_slice(&["--balance", "false"]);
        }
        let output = omx(&args);
        assert!(
            output.status.success(),
            "lab up failed: {}",
            stderr(&output)
        );
        Lab {
            name: name.to_string(),
            nodes,
            subnet,
        }
    }

    /// `GET PATH` from node `node`'s metrics endpoint (inside the node,
    /// with bash's /dev/tcp): the whole response.
    pub fn http_get(&self, node: u16, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/{}/9464; printf 'GET {path} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3",
            self.address(node)
        );
        let output = self.exec(node, &["bash", "-c", &script]);
        assert!(
            output.status.success(),
            "metrics of node {node}: {}",
            stderr(&output)
        );
        stdout(&output)
    }

    pub fn address(&self, node: u16) -> String {
        let prefix = self.subnet.trim_end_matches(".0");
        format!("{prefix}.{node}")
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from("/run/omx-lab").join(&self.name)
    }

    /// Runs a command inside `node`.
    pub fn exec(&self, node: u16, command: &[&str]) -> Output {
        let node = node.to_string();
        let mut args = vec!["lab", "exec", "--name", &self.name, &node, "--"];
        args.extend_from_slice(command);
        omx(&args)
    }

    /// Runs `omx ARGS` inside `node`.
    pub fn omx(&self, node: u16, args: &[&str]) -> Output {
        let bin = omx_bin();
        let mut command = vec![bin.to_str().expect("utf-8 path")];
        command.extend_from_slice(args);
        self.exec(node, &command)
    }

    /// `omx status --json` on `node`, or `None` if its daemon does not answer.
    pub fn status(&self, node: u16) -> Option<Value> {
        let output = self.omx(node, &["status", "--json"]);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).expect("status --json is JSON"))
    }

    /// The state `viewer` sees `node` in ("up", "down", "unknown", "local").
    pub fn state_seen(&self, viewer: u16, node: u16) -> Option<String> {
        let view = self.status(viewer)?;
        Some(
            Self::node_field(&view, node, "state")?
                .as_str()?
                .to_string(),
        )
    }

    /// The load `viewer` sees for `node`.
    pub fn load_seen(&self, viewer: u16, node: u16) -> Option<u64> {
        let view = self.status(viewer)?;
        Self::node_field(&view, node, "load")?.get("load")?.as_u64()
    }

    /// The smoothed runnable count (x 1000) `viewer` sees for `node`.
    pub fn runnable_seen(&self, viewer: u16, node: u16) -> Option<u64> {
        let view = self.status(viewer)?;
        Self::node_field(&view, node, "load")?
            .get("runnable_milli")?
            .as_u64()
    }

    fn node_field(view: &Value, node: u16, field: &str) -> Option<Value> {
        view.get("nodes")?
            .as_array()?
            .iter()
            .find(|n| n.get("node").and_then(Value::as_u64) == Some(u64::from(node)))?
            .get(field)
            .cloned()
    }

    /// Whether every node sees every other node in `state`.
    pub fn all_see_all(&self, state: &str) -> bool {
        (1..=self.nodes).all(|viewer| {
            (1..=self.nodes)
                .filter(|n| *n != viewer)
                .all(|n| self.state_seen(viewer, n).as_deref() == Some(state))
        })
    }

    pub fn log(&self, node: u16) -> String {
        std::fs::read_to_string(self.dir().join(format!("node-{node}")).join("daemon.log"))
            .unwrap_or_default()
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir().join("cluster.key")
    }

    /// Starts `command` inside `node` as a child of the test. The child's
    /// pid is the program's pid (`lab exec` and `mosrun` exec into it).
    pub fn spawn(&self, node: u16, command: &[&str], stdin: Stdio, stdout: Stdio) -> Child {
        let node = node.to_string();
        let mut args = vec!["lab", "exec", "--name", &self.name, &node, "--"];
        args.extend_from_slice(command);
        Command::new(omx_bin())
            .args(&args)
            .stdin(stdin)
            .stdout(stdout)
            .spawn()
            .expect("spawn in the lab")
    }

    /// `omx migrate PID TO` run on `home`: `Ok(output)` or `Err(error)`.
    pub fn migrate(&self, home: u16, pid: u32, to: &str) -> Result<String, String> {
        let output = self.omx(home, &["migrate", &pid.to_string(), to]);
        if output.status.success() {
            Ok(stdout(&output))
        } else {
            Err(stderr(&output))
        }
    }

    /// `omx where PID --json` on `home`.
    pub fn where_is(&self, home: u16, pid: u32) -> Value {
        let output = self.omx(home, &["where", &pid.to_string(), "--json"]);
        assert!(output.status.success(), "where: {}", stderr(&output));
        serde_json::from_slice(&output.stdout).expect("where --json is JSON")
    }

    /// Moves `pid` (of node `home`) along `path`, waiting `pause` before
    /// each move; panics if a move fails or the process ended too early.
    pub fn bounce(&self, home: u16, pid: u32, path: &[&str], pause: Duration) {
        for to in path {
            std::thread::sleep(pause);
            match self.migrate(home, pid, to) {
                Ok(said) => eprintln!("{said}"),
                Err(e) => panic!("moving process {pid} to {to} failed: {e}"),
            }
        }
    }

    pub fn stop(&self, node: u16, kill: bool) {
        let node = node.to_string();
        let mut args = vec!["lab", "stop", "--name", &self.name, &node];
        if kill {
            args.push("--kill");
        }
        let output = omx(&args);
        assert!(
            output.status.success(),
            "lab stop failed: {}",
            stderr(&output)
        );
    }

    pub fn start(&self, node: u16) {
        let output = omx(&["lab", "start", "--name", &self.name, &node.to_string()]);
        assert!(
            output.status.success(),
            "lab start failed: {}",
            stderr(&output)
        );
    }
}

impl Drop for Lab {
    /// Removes the lab, unless `OMX_KEEP_LAB` is set (to read its logs
    /// after a failure; `omx lab down --name NAME` removes it then).
    fn drop(&mut self) {
        if std::env::var_os("OMX_KEEP_LAB").is_some() {
            eprintln!("keeping lab {} (OMX_KEEP_LAB is set)", self.name);
            return;
        }
        let output = omx(&["lab", "down", "--name", &self.name]);
        if !output.status.success() && !std::thread::panicking() {
            panic!("lab down failed: {}", stderr(&output));
        }
    }
}

/// The value of the sample `name` (with its labels, as printed) in a
/// metrics page.
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}
