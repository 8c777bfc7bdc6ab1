//! The identity of a node: a number 1..=65535, as in openMosix.

use std::fmt;
use std::num::NonZeroU16;
use std::str::FromStr;

/// A node's number in the cluster map (openMosix IDs are 1..65535).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(NonZeroU16);

impl NodeId {
    pub const MIN: u16 = 1;
    pub const MAX: u16 = u16::MAX;

    /// The node with number `n`, or `None` for 0 (not a node id).
    pub fn new(n: u16) -> Option<NodeId> {
        NonZeroU16::new(n).map(NodeId)
    }

    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a text is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a node id: node ids are whole numbers from 1 to 65535")]
pub struct BadNodeId {
    pub text: String,
}

impl FromStr for NodeId {
    type Err = BadNodeId;

    fn from_str(s: &str) -> Result<NodeId, BadNodeId> {
        s.trim()
            .parse::<u16>()
            .ok()
            .and_then(NodeId::new)
            .ok_or_else(|| BadNodeId {
                text: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_refuses_out_of_range_ids() {
        assert_eq!("1".parse::<NodeId>().unwrap().get(), 1);
        assert_eq!("65535".parse::<NodeId>().unwrap().get(), 65535);
        assert!("0".parse::<NodeId>().is_err());
        assert!("65536".parse::<NodeId>().is_err());
        assert!("-3".parse::<NodeId>().is_err());
        assert!("x".parse::<NodeId>().is_err());
    }
}
