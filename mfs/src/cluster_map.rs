//! The cluster map: which node ids exist and at which address each listens.
//!
//! The text format is openMosix's: one range per line, `FIRST_ID ADDRESS
//! COUNT`, meaning nodes `FIRST_ID..FIRST_ID+COUNT-1` at consecutive
//! addresses starting with `ADDRESS`; `#` starts a comment. A map is either
//! wholly valid or refused with the file, the line and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::NodeId;

/// One line of a map: `count` nodes from `first` at consecutive addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRange {
    pub first: NodeId,
    pub address: IpAddr,
    pub count: u16,
    /// 1-based line in the source text, for messages.
    pub line: usize,
}

impl MapRange {
    fn last_id(&self) -> u16 {
        self.first.get() + (self.count - 1)
    }
}

/// A validated cluster map. Two maps are equal when they define the same
/// nodes at the same addresses, however the text was laid out.
#[derive(Clone, Debug)]
pub struct ClusterMap {
    ranges: Vec<MapRange>,
    nodes: BTreeMap<NodeId, IpAddr>,
}

impl PartialEq for ClusterMap {
    fn eq(&self, other: &ClusterMap) -> bool {
        self.nodes == other.nodes
    }
}

impl Eq for ClusterMap {}

/// A map was refused: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}: {reason}")]
pub struct MapError {
    /// The file name (or other origin) of the text.
    pub origin: String,
    /// 1-based line number; 0 when the problem is the map as a whole.
    pub line: usize,
    pub reason: MapErrorReason,
}

/// What is wrong with a map line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapErrorReason {
    #[error("expected `FIRST_ID ADDRESS COUNT`, found {found} field(s)")]
    FieldCount { found: usize },
    #[error("`{text}` is not a node id: node ids are whole numbers from 1 to 65535")]
    BadId { text: String },
    #[error("`{text}` is not an IPv4 or IPv6 address")]
    BadAddress { text: String },
    #[error("`{text}` is not a node count: it must be a whole number from 1 to 65535")]
    BadCount { text: String },
    #[error("ids {first}..{end} run past the largest node id, 65535")]
    IdsPastMax { first: u16, end: u32 },
    #[error("{count} addresses from {address} run past the end of the address space")]
    AddressesPastEnd { address: IpAddr, count: u16 },
    #[error(
        "ids {first}..{last} overlap ids {other_first}..{other_last} given on line {other_line}"
    )]
    OverlappingIds {
        first: u16,
        last: u16,
        other_first: u16,
        other_last: u16,
        other_line: usize,
    },
    #[error(
        "address {address} of node {node} is already node {other_node}, given on line {other_line}"
    )]
    DuplicateAddress {
        address: IpAddr,
        node: NodeId,
        other_node: NodeId,
        other_line: usize,
    },
    #[error("the map names no nodes: give at least one `FIRST_ID ADDRESS COUNT` line")]
    Empty,
    #[error("cannot read the map: {message}")]
    Unreadable { message: String },
}

impl ClusterMap {
    /// Parses and validates map text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ClusterMap, MapError> {
        let error = |line: usize, reason: MapErrorReason| MapError {
            origin: origin.to_string(),
            line,
            reason,
        };
        let mut ranges: Vec<MapRange> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("");
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            let range = parse_range(&fields, line).map_err(|reason| error(line, reason))?;
            if let Some(other) = ranges
                .iter()
                .find(|o| o.first.get() <= range.last_id() && range.first.get() <= o.last_id())
            {
                return Err(error(
                    line,
                    MapErrorReason::OverlappingIds {
                        first: range.first.get(),
                        last: range.last_id(),
                        other_first: other.first.get(),
                        other_last: other.last_id(),
                        other_line: other.line,
                    },
                ));
            }
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err(error(0, MapErrorReason::Empty));
        }
        let mut nodes = BTreeMap::new();
        let mut owner_of_address: BTreeMap<IpAddr, (NodeId, usize)> = BTreeMap::new();
        for range in &ranges {
            for offset in 0..range.count {
                let node = NodeId::new(range.first.get() + offset).expect("ids in range are >= 1");
                let address = nth_address(range.address, offset).expect("checked when parsed");
                if let Some(&(other_node, other_line)) = owner_of_address.get(&address) {
                    return Err(error(
                        range.line,
                        MapErrorReason::DuplicateAddress {
                            address,
                            node,
                            other_node,
                            other_line,
                        },
                    ));
                }
                owner_of_address.insert(address, (node, range.line));
                nodes.insert(node, address);
            }
        }
        Ok(ClusterMap { ranges, nodes })
    }

    /// Reads and validates a map file.
    pub fn load(path: &Path) -> Result<ClusterMap, MapError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| MapError {
            origin: origin.clone(),
            line: 0,
            reason: MapErrorReason::Unreadable {
                message: e.to_string(),
            },
        })?;
        ClusterMap::parse(&text, &origin)
    }

    /// The address of `node`, if the map has it.
    pub fn address(&self, node: NodeId) -> Option<IpAddr> {
        self.nodes.get(&node).copied()
    }

    /// The node at `address`, if any.
    pub fn node_at(&self, address: IpAddr) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, a)| **a == address)
            .map(|(n, _)| *n)
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }

    /// All nodes in id order with their addresses.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, IpAddr)> + '_ {
        self.nodes.iter().map(|(n, a)| (*n, *a))
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn ranges(&self) -> &[MapRange] {
        &self.ranges
    }
}

impl fmt::Display for ClusterMap {
    /// The map in its file format, one range per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for range in &self.ranges {
            writeln!(f, "{} {} {}", range.first, range.address, range.count)?;
        }
        Ok(())
    }
}

fn parse_range(fields: &[&str], line: usize) -> Result<MapRange, MapErrorReason> {
    let [id_text, address_text, count_text] = fields else {
        return Err(MapErrorReason::FieldCount {
            found: fields.len(),
        });
    };
    let first: NodeId = id_text.parse().map_err(|_| MapErrorReason::BadId {
        text: id_text.to_string(),
    })?;
    let address: IpAddr = address_text
        .parse()
        .map_err(|_| MapErrorReason::BadAddress {
            text: address_text.to_string(),
        })?;
    let count = count_text
        .parse::<u16>()
        .ok()
        .filter(|c| *c >= 1)
        .ok_or_else(|| MapErrorReason::BadCount {
            text: count_text.to_string(),
        })?;
    let end = u32::from(first.get()) + u32::from(count) - 1;
    if end > u32::from(NodeId::MAX) {
        return Err(MapErrorReason::IdsPastMax {
            first: first.get(),
            end,
        });
    }
    if nth_address(address, count - 1).is_none() {
        return Err(MapErrorReason::AddressesPastEnd { address, count });
    }
    Ok(MapRange {
        first,
        address,
        count,
        line,
    })
}

/// The address `offset` places after `base`, or `None` past the end.
fn nth_address(base: IpAddr, offset: u16) -> Option<IpAddr> {
    match base {
        IpAddr::V4(v4) => u32::from(v4)
            .checked_add(u32::from(offset))
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        IpAddr::V6(v6) => u128::from(v6)
            .checked_add(u128::from(offset))
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> NodeId {
        NodeId::new(n).unwrap()
    }

    #[test]
    fn expands_ranges_to_consecutive_addresses() {
        let map = ClusterMap::parse(
            "# lab\n1 10.0.0.1 3   # three nodes\n\n10 192.168.1.254 2\n",
            "m",
        )
        .unwrap();
        assert_eq!(map.len(), 5);
        assert_eq!(map.address(id(3)), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(map.address(id(11)), Some("192.168.1.255".parse().unwrap()));
        assert_eq!(map.node_at("10.0.0.2".parse().unwrap()), Some(id(2)));
        assert!(!map.contains(id(4)));
        assert_eq!(map.to_string(), "1 10.0.0.1 3\n10 192.168.1.254 2\n");
    }

    #[test]
    fn accepts_ipv6_and_the_extreme_ids() {
        let map = ClusterMap::parse("65535 fd00::1 1\n1 fd00::ffff 2\n", "m").unwrap();
        assert_eq!(map.address(id(2)), Some("fd00::1:0".parse().unwrap()));
        assert!(map.contains(id(65535)));
    }

    fn reason(text: &str) -> (usize, MapErrorReason) {
        let e = ClusterMap::parse(text, "omx.map").unwrap_err();
        assert_eq!(e.origin, "omx.map");
        (e.line, e.reason)
    }

    #[test]
    fn refuses_each_malformed_line_with_its_line_number() {
        assert_eq!(
            reason("1 10.0.0.1 2\n3 10.0.0.9\n"),
            (2, MapErrorReason::FieldCount { found: 2 })
        );
        assert_eq!(
            reason("0 10.0.0.1 1"),
            (1, MapErrorReason::BadId { text: "0".into() })
        );
        assert_eq!(
            reason("\n\n70000 10.0.0.1 1"),
            (
                3,
                MapErrorReason::BadId {
                    text: "70000".into()
                }
            )
        );
        assert_eq!(
            reason("1 10.0.0.300 1"),
            (
                1,
                MapErrorReason::BadAddress {
                    text: "10.0.0.300".into()
                }
            )
        );
        assert_eq!(
            reason("1 node1 1"),
            (
                1,
                MapErrorReason::BadAddress {
                    text: "node1".into()
                }
            )
        );
        assert_eq!(
            reason("1 10.0.0.1 0"),
            (1, MapErrorReason::BadCount { text: "0".into() })
        );
        assert_eq!(
            reason("65530 10.0.0.1 10"),
            (
                1,
                MapErrorReason::IdsPastMax {
                    first: 65530,
                    end: 65539
                }
            )
        );
        assert!(matches!(
            reason("1 255.255.255.254 3"),
            (1, MapErrorReason::AddressesPastEnd { count: 3, .. })
        ));
    }

    #[test]
    fn refuses_overlapping_ranges_and_duplicate_ids() {
        let (line, r) = reason("1 10.0.0.1 4\n# gap\n3 10.0.1.1 2\n");
        assert_eq!(line, 3);
        assert_eq!(
            r,
            MapErrorReason::OverlappingIds {
                first: 3,
                last: 4,
                other_first: 1,
                other_last: 4,
                other_line: 1
            }
        );
        let (line, _) = reason("5 10.0.0.1 1\n5 10.0.0.2 1\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn refuses_one_address_for_two_nodes() {
        let (line, r) = reason("1 10.0.0.1 4\n9 10.0.0.3 1\n");
        assert_eq!(line, 2);
        assert_eq!(
            r,
            MapErrorReason::DuplicateAddress {
                address: "10.0.0.3".parse().unwrap(),
                node: id(9),
                other_node: id(3),
                other_line: 1
            }
        );
    }

    #[test]
    fn refuses_an_empty_map() {
        assert_eq!(reason("# nothing\n\n"), (0, MapErrorReason::Empty));
    }

    #[test]
    fn error_message_names_file_line_and_reason() {
        let e = ClusterMap::parse("1 10.0.0.1 2\n2 10.0.0.7 1\n", "/etc/omx/omx.map").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/omx/omx.map:2: ids 2..2 overlap ids 1..2 given on line 1"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in "\\PC{0,200}") {
            let _ = ClusterMap::parse(&text, "fuzz");
        }

        #[test]
        fn printed_map_parses_back_to_the_same_map(
            starts in proptest::collection::btree_set(1u16..60000, 1..6),
        ) {
            let text: String = starts
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{} 10.{}.0.1 1\n", s, i))
                .collect();
            let map = ClusterMap::parse(&text, "p").unwrap();
            let again = ClusterMap::parse(&map.to_string(), "p").unwrap();
            proptest::prop_assert_eq!(map, again);
        }
    }
}
