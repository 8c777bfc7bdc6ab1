//! `omx status`: this node's view of the cluster, as a table or JSON.

use std::path::Path;
use std::process::ExitCode;

use omx_mfs::wire::{ClusterView, ControlReply, ControlRequest, NodeState};

use crate::control_client;

pub fn run(config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let view = fetch(config)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render(&view));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn fetch(config: &Path) -> anyhow::Result<ClusterView> {
    match control_client::request(config, ControlRequest::Status)? {
        ControlReply::Status(view) => Ok(view),
        ControlReply::Refused { reason } => anyhow::bail!("the daemon refused: {reason}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// The table `omx status` prints.
pub fn render(view: &ClusterView) -> String {
    let mut out = format!(
        "node {}'s view of the cluster (gossip every {:.1} s, down after {:.1} s without news)\n",
        view.this_node,
        f64::from(view.gossip_interval_ms) / 1000.0,
        view.down_after_ms as f64 / 1000.0
    );
    out += &format!(
        "{:>5}  {:<16} {:<7} {:>6} {:>7} {:>4} {:>17} {:>5} {:>7}\n",
        "NODE", "ADDRESS", "STATE", "LOAD", "SPEED", "CPUS", "MEM FREE/TOTAL", "UTIL", "AGE"
    );
    for node in &view.nodes {
        let state = match node.state {
            NodeState::Local => "local",
            NodeState::Up => "up",
            NodeState::Down => "DOWN",
            NodeState::Unknown => "unknown",
        };
        let age = node
            .age_ms
            .map_or("-".to_string(), |a| format!("{:.1}s", a as f64 / 1000.0));
        let figures = match &node.load {
            Some(l) => format!(
                "{:>6} {:>7} {:>4} {:>17} {:>4}%",
                l.load,
                l.speed,
                l.cpus,
                format!("{}/{}", human_bytes(l.mem_free), human_bytes(l.mem_total)),
                l.util_permille / 10
            ),
            None => format!("{:>6} {:>7} {:>4} {:>17} {:>5}", "-", "-", "-", "-", "-"),
        };
        out += &format!(
            "{:>5}  {:<16} {:<7} {} {:>7}\n",
            node.node, node.address, state, figures, age
        );
    }
    if !view.away.is_empty() {
        let away: Vec<String> = view
            .away
            .iter()
            .map(|p| format!("{} on node {}", p.pid, p.node))
            .collect();
        out += &format!("processes away: {}\n", away.join(", "));
    }
    if !view.guests.is_empty() {
        let guests: Vec<String> = view
            .guests
            .iter()
            .map(|g| format!("{} of node {}", g.home_pid, g.home_node))
            .collect();
        out += &format!("guests: {}\n", guests.join(", "));
    }
    out
}

fn human_bytes(bytes: u64) -> String {
    bytes_in_units(bytes as f64, 100.0)
}

/// Bytes in at most three characters and a unit (for narrow columns).
pub fn human_bytes_short(bytes: f64) -> String {
    bytes_in_units(bytes, 10.0)
}

/// Bytes in binary units, with one decimal below `decimals_below`.
fn bytes_in_units(bytes: f64, decimals_below: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= decimals_below {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omx_mfs::wire::{AwayProcess, GuestProcess, LoadReport, NodeView};

    #[test]
    fn renders_every_node_with_its_state() {
        let view = ClusterView {
            this_node: 1,
            gossip_interval_ms: 1000,
            down_after_ms: 10_000,
            nodes: vec![
                NodeView {
                    node: 1,
                    address: "10.77.0.1".into(),
                    state: NodeState::Local,
                    age_ms: Some(0),
                    load: Some(LoadReport {
                        load: 150,
                        speed: 27000,
                        cpus: 1,
                        mem_total: 512 << 20,
                        mem_free: 300 << 20,
                        mem_raw_free: 200 << 20,
                        util_permille: 423,
                        ..LoadReport::default()
                    }),
                },
                NodeView {
                    node: 2,
                    address: "10.77.0.2".into(),
                    state: NodeState::Down,
                    age_ms: Some(12_300),
                    load: None,
                },
            ],
            away: vec![AwayProcess { pid: 4242, node: 2 }],
            guests: vec![GuestProcess {
                pid: Some(42),
                home_node: 2,
                home_pid: 77,
            }],
        };
        let text = render(&view);
        assert!(text.contains("node 1's view"), "{text}");
        assert!(text.lines().nth(2).unwrap().contains("local"), "{text}");
        assert!(text.contains("300M/512M"), "{text}");
        assert!(text.contains("42%"), "{text}");
        assert!(text.lines().nth(3).unwrap().contains("DOWN"), "{text}");
        assert!(text.contains("12.3s"), "{text}");
        assert!(text.contains("away: 4242 on node 2"), "{text}");
        assert!(text.contains("guests: 77 of node 2"), "{text}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(24 << 30), "24.0G");
        assert_eq!(human_bytes(200 << 20), "200M");
    }
}
