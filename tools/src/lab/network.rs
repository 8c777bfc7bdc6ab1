//! The lab's network: a namespace per node, veth pairs into one bridge.
//!
//! Addresses exist only inside the nodes' namespaces; the bridge in the host
//! namespace has none, so lab traffic never leaves this machine. Done with
//! iproute2's `ip`, which every Linux machine has.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

use super::journal::{Journal, Resource};

pub fn netns_name(lab: &str, node: u16) -> String {
    format!("{lab}-{node}")
}

pub fn bridge_name(lab: &str) -> String {
    format!("{lab}-br")
}

pub fn veth_name(lab: &str, node: u16) -> String {
    format!("{lab}-v{node}")
}

/// Runs `ip ARGS`, failing with its error output.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2): install it")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn create_bridge(lab: &str, journal: &mut Journal) -> anyhow::Result<()> {
    let bridge = bridge_name(lab);
    journal.record(&Resource::Link {
        name: bridge.clone(),
    })?;
    ip(&["link", "add", &bridge, "type", "bridge"])?;
    ip(&["link", "set", &bridge, "up"])?;
    Ok(())
}

/// A namespace for `node` with `eth0` at `address/prefix` on the bridge.
pub fn create_node(
    lab: &str,
    node: u16,
    address: Ipv4Addr,
    prefix: u8,
    journal: &mut Journal,
) -> anyhow::Result<()> {
    let netns = netns_name(lab, node);
    let veth = veth_name(lab, node);
    journal.record(&Resource::Netns {
        name: netns.clone(),
    })?;
    ip(&["netns", "add", &netns])?;
    journal.record(&Resource::Link { name: veth.clone() })?;
    ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
    ])?;
    ip(&["link", "set", &veth, "master", &bridge_name(lab), "up"])?;
    let cidr = format!("{address}/{prefix}");
    ip(&["-n", &netns, "addr", "add", &cidr, "dev", "eth0"])?;
    ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &netns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a namespace; returns whether it existed.
pub fn delete_netns(name: &str) -> Result<bool, String> {
    if !std::path::Path::new("/run/netns").join(name).exists() {
        return Ok(false);
    }
    ip(&["netns", "del", name])
        .map(|_| true)
        .map_err(|e| e.to_string())
}

/// Deletes a link; returns whether it existed. (A veth goes away with its
/// peer's namespace, so it is often gone already.)
pub fn delete_link(name: &str) -> Result<bool, String> {
    if !link_exists(name) {
        return Ok(false);
    }
    ip(&["link", "del", name])
        .map(|_| true)
        .map_err(|e| e.to_string())
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Namespaces and links named like those of lab `lab`, for cleaning up
/// after a lab whose journal is gone.
pub fn leftovers(lab: &str) -> (Vec<String>, Vec<String>) {
    let numbered = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()))
    };
    let netns = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| numbered(n, &format!("{lab}-")))
                .collect()
        })
        .unwrap_or_default();
    let links = std::fs::read_dir("/sys/class/net")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| *n == bridge_name(lab) || numbered(n, &format!("{lab}-v")))
                .collect()
        })
        .unwrap_or_default();
    (netns, links)
}
