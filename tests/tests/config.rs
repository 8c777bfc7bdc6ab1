//! Malformed maps, configs and keys: the daemon refuses to start, naming the
//! file, the line and the reason, and starts nothing.

use std::path::{Path, PathBuf};
use std::process::Output;

use omx_tests::{omx, stderr};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("omx-config-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("cluster.key");
        let output = omx(&["keygen", key.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn daemon(&self, config: &Path) -> Output {
        omx(&["daemon", "--config", config.to_str().unwrap()])
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn refused(output: &Output, expected: &str) {
    assert!(!output.status.success(), "the daemon started");
    assert!(
        stderr(output).contains(expected),
        "expected {expected:?} in:\n{}",
        stderr(output)
    );
}

const GOOD_CONFIG: &str = "node = 1\nmap = \"omx.map\"\nkey = \"cluster.key\"\ncontrol_socket = \"omx.sock\"\nport = 17999\n";

#[test]
fn malformed_maps_are_refused_with_file_line_and_reason() {
    let s = Scratch::new("map");
    let config = s.write("omx.toml", GOOD_CONFIG);
    let cases = [
        (
            "1 127.0.0.1 2\n2 127.0.0.9 1\n",
            "omx.map:2: ids 2..2 overlap ids 1..2 given on line 1",
        ),
        (
            "# c\n1 127.0.0.1 1\n1 127.0.0.2 1\n",
            "omx.map:3: ids 1..1 overlap",
        ),
        (
            "1 127.0.0.1 1\n2 127.0.0.1 1\n",
            "omx.map:2: address 127.0.0.1 of node 2 is already node 1, given on line 1",
        ),
        (
            "1 127.0.0.256 1\n",
            "omx.map:1: `127.0.0.256` is not an IPv4 or IPv6 address",
        ),
        ("0 127.0.0.1 1\n", "omx.map:1: `0` is not a node id"),
        (
            "1 127.0.0.1\n",
            "omx.map:1: expected `FIRST_ID ADDRESS COUNT`, found 2 field(s)",
        ),
        ("1 127.0.0.1 0\n", "omx.map:1: `0` is not a node count"),
        (
            "65534 127.0.0.1 5\n",
            "omx.map:1: ids 65534..65538 run past the largest node id",
        ),
        ("# nothing\n", "omx.map:0: the map names no nodes"),
        (
            "2 127.0.0.1 3\n",
            "omx.toml:1: node 1 (this node) is not in the map",
        ),
    ];
    for (map, expected) in cases {
        s.write("omx.map", map);
        refused(&s.daemon(&config), expected);
    }
}

#[test]
fn malformed_configs_are_refused_with_file_line_and_reason() {
    let s = Scratch::new("config");
    s.write("omx.map", "1 127.0.0.1 1\n");
    let cases = [
        (
            "node = 1\nmap = \"omx.map\"\nnod = 3\n",
            "omx.toml:3: unknown field `nod`",
        ),
        (
            "node = 1\nport = 0\n",
            "omx.toml:2: port = 0: a port is 1..65535",
        ),
        (
            "node = 1\n[gossip]\nwindow = 0\n",
            "omx.toml:3: gossip.window must be 1..4096",
        ),
        ("node = 1\n[gossip\n", "omx.toml:2:"),
        ("node = \"one\"\n", "omx.toml:1: invalid type"),
        (
            "node = 1\n[load]\nsource = \"moon\"\n",
            "omx.toml:3: load.source = \"moon\"",
        ),
    ];
    for (text, expected) in cases {
        let config = s.write("omx.toml", text);
        refused(&s.daemon(&config), expected);
    }
    refused(&s.daemon(&s.0.join("missing.toml")), "cannot read config");
}

#[test]
fn a_readable_or_malformed_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("key");
    s.write("omx.map", "1 127.0.0.1 1\n");
    let config = s.write("omx.toml", GOOD_CONFIG);
    let key = s.0.join("cluster.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &s.daemon(&config),
        "is readable by group or others (mode 644): run `chmod 600",
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key, "not a key\n").unwrap();
    refused(&s.daemon(&config), "expected 64 hexadecimal digits");
}
