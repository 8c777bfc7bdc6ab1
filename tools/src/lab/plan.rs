//! Planning a lab: what each node gets, before anything is created.

use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One planned node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PlannedNode {
    pub id: u16,
    pub address: Ipv4Addr,
    /// CPU capacity (the cgroup quota), possibly fractional.
    pub cpus: f64,
    pub mem_bytes: u64,
    /// Speed of each of its CPUs, in openMosix units.
    pub speed: u32,
}

/// The host facts a plan is made from.
pub struct Host {
    pub cpus: f64,
    pub mem_bytes: u64,
    /// The speed of one host CPU (calibrated).
    pub speed: u32,
}

/// `LIST` options: one value for every node, or one per node.
pub fn expand<T: Clone>(list: &[T], nodes: usize, what: &str) -> anyhow::Result<Option<Vec<T>>> {
    match list.len() {
        0 => Ok(None),
        1 => Ok(Some(vec![list[0].clone(); nodes])),
        n if n == nodes => Ok(Some(list.to_vec())),
        n => bail!("--{what} has {n} values for {nodes} nodes: give one value, or one per node"),
    }
}

/// A memory size: bytes, or a number with K, M, G or T (powers of 1024).
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let multiplier: u64 = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => bail!("`{text}` is not a size: use bytes or a number with K, M, G or T"),
    };
    let value: f64 = number.parse().with_context(|| {
        format!("`{text}` is not a size: use bytes or a number with K, M, G or T")
    })?;
    if value.is_nan() || value <= 0.0 {
        bail!("`{text}`: a size must be positive");
    }
    Ok((value * multiplier as f64) as u64)
}

/// Parses a CPU count like `2`, `0.5` or `1/6`.
pub fn parse_cpus(text: &str) -> anyhow::Result<f64> {
    let value = match text.split_once('/') {
        Some((a, b)) => {
            let a: f64 = a.trim().parse().ok().context("")?;
            let b: f64 = b.trim().parse().ok().context("")?;
            a / b
        }
        None => text.trim().parse().ok().context("")?,
    };
    if !(value >= 0.01 && value.is_finite()) {
        bail!("at least 0.01");
    }
    Ok(value)
}

/// Node `i` (1-based) of a /24 starting at `base`.
pub fn address(base: Ipv4Addr, id: u16) -> Ipv4Addr {
    let [a, b, c, _] = base.octets();
    Ipv4Addr::new(a, b, c, id as u8)
}

/// The plan: CPUs default to an equal share of the host, memory likewise;
/// a node of `c` CPUs has `ceil(c)` CPUs each at `c / ceil(c)` of the
/// host's speed (a quota of half a CPU is one CPU at half speed).
pub fn plan(
    nodes: usize,
    subnet: Ipv4Addr,
    cpus: Option<Vec<f64>>,
    mem: Option<Vec<u64>>,
    speed: Option<Vec<u32>>,
    host: &Host,
) -> anyhow::Result<Vec<PlannedNode>> {
    if !(1..=250).contains(&nodes) {
        bail!("--nodes {nodes}: a lab has 1 to 250 nodes");
    }
    let cpus = cpus.unwrap_or_else(|| vec![(host.cpus / nodes as f64).max(0.01); nodes]);
    let mem = mem.unwrap_or_else(|| vec![host.mem_bytes / nodes as u64; nodes]);
    (0..nodes)
        .map(|i| {
            let id = (i + 1) as u16;
            let c = cpus[i];
            if c > host.cpus {
                bail!(
                    "node {id}: {c} CPUs is more than this machine's {}",
                    host.cpus
                );
            }
            let speed = match &speed {
                Some(s) => s[i],
                None => (host.speed as f64 * c / c.ceil()).round() as u32,
            };
            Ok(PlannedNode {
                id,
                address: address(subnet, id),
                cpus: c,
                mem_bytes: mem[i],
                speed: speed.max(1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host {
        cpus: 2.0,
        mem_bytes: 24 << 30,
        speed: 30_000,
    };

    #[test]
    fn sizes_and_cpus_parse() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1G").is_err());
        assert_eq!(parse_cpus("1/6").unwrap(), 1.0 / 6.0);
        assert_eq!(parse_cpus("1.5").unwrap(), 1.5);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn lists_expand_or_are_refused() {
        assert_eq!(expand(&[1, 2, 3], 3, "cpus").unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(expand(&[7], 3, "cpus").unwrap(), Some(vec![7, 7, 7]));
        assert_eq!(expand::<u8>(&[], 3, "cpus").unwrap(), None);
        let e = expand(&[1, 2], 3, "mem").unwrap_err().to_string();
        assert!(e.contains("--mem has 2 values for 3 nodes"), "{e}");
    }

    #[test]
    fn default_plan_shares_the_host() {
        let nodes = plan(4, Ipv4Addr::new(10, 77, 0, 0), None, None, None, &HOST).unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[3].address, Ipv4Addr::new(10, 77, 0, 4));
        assert_eq!(nodes[0].cpus, 0.5);
        assert_eq!(nodes[0].mem_bytes, 6 << 30);
        assert_eq!(
            nodes[0].speed, 15_000,
            "half a CPU is one CPU at half speed"
        );
    }

    #[test]
    fn explicit_values_win_and_impossible_ones_are_refused() {
        let nodes = plan(
            2,
            Ipv4Addr::new(10, 9, 9, 0),
            Some(vec![1.5, 2.0]),
            Some(vec![1 << 30, 2 << 30]),
            None,
            &HOST,
        )
        .unwrap();
        assert_eq!(nodes[0].speed, 22_500);
        assert_eq!(nodes[1].speed, 30_000);
        let speeds = plan(
            2,
            Ipv4Addr::new(10, 9, 9, 0),
            None,
            None,
            Some(vec![5, 6]),
            &HOST,
        )
        .unwrap();
        assert_eq!(speeds[1].speed, 6);
        assert!(
            plan(
                1,
                Ipv4Addr::new(10, 9, 9, 0),
                Some(vec![3.0]),
                None,
                None,
                &HOST
            )
            .is_err()
        );
        assert!(plan(0, Ipv4Addr::new(10, 9, 9, 0), None, None, None, &HOST).is_err());
        assert!(plan(251, Ipv4Addr::new(10, 9, 9, 0), None, None, None, &HOST).is_err());
    }
}
