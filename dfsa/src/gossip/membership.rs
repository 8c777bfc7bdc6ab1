//! The members of the cluster as gossip sees them: ids in a fixed order.
//!
//! Each node keeps its knowledge in arrays indexed by a member's slot; the
//! membership (shared by all nodes of a simulation) maps ids to slots.

use omx_mfs::NodeId;

const NO_SLOT: u32 = u32::MAX;

/// The current members, sorted by id.
#[derive(Debug, PartialEq, Eq)]
pub struct Membership {
    ids: Vec<NodeId>,
    slot_of: Vec<u32>,
}

impl Membership {
    pub fn new(mut ids: Vec<NodeId>) -> Membership {
        ids.sort();
        ids.dedup();
        let top = ids.last().map_or(0, |n| n.get() as usize);
        let mut slot_of = vec![NO_SLOT; top + 1];
        for (slot, id) in ids.iter().enumerate() {
            slot_of[id.get() as usize] = slot as u32;
        }
        Membership { ids, slot_of }
    }

    pub fn slot(&self, node: NodeId) -> Option<usize> {
        match self.slot_of.get(node.get() as usize) {
            Some(&slot) if slot != NO_SLOT => Some(slot as usize),
            _ => None,
        }
    }

    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_id_order() {
        let m = Membership::new(
            [9, 2, 5, 2]
                .iter()
                .map(|n| NodeId::new(*n).unwrap())
                .collect(),
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m.slot(NodeId::new(2).unwrap()), Some(0));
        assert_eq!(m.slot(NodeId::new(9).unwrap()), Some(2));
        assert_eq!(m.slot(NodeId::new(3).unwrap()), None);
        assert_eq!(m.slot(NodeId::new(60000).unwrap()), None);
    }
}
