//! The window: the slots of the `w` freshest entries a node holds.
//!
//! Stamps only ever grow, so the window's oldest member is cached and only
//! recomputed when it changes; offering an entry older than the window is
//! O(1), which keeps the simulator fast at 10,000 nodes.

/// Slots of the freshest entries, at most `capacity` of them.
pub struct Window {
    slots: Vec<usize>,
    capacity: usize,
    /// Index in `slots` of the oldest member, when full.
    oldest: Option<usize>,
}

impl Window {
    pub fn new(capacity: usize) -> Window {
        Window {
            slots: Vec::with_capacity(capacity),
            capacity,
            oldest: None,
        }
    }

    pub fn slots(&self) -> &[usize] {
        &self.slots
    }

    /// `slot`'s stamp just grew (or it is newly known): keep it if it is
    /// now among the freshest.
    pub fn offer(&mut self, slot: usize, stamps: &[i64]) {
        if self.capacity == 0 {
            return;
        }
        if let Some(at) = self.slots.iter().position(|s| *s == slot) {
            if self.oldest == Some(at) {
                self.oldest = self.find_oldest(stamps);
            }
            return;
        }
        if self.slots.len() < self.capacity {
            self.slots.push(slot);
            if self.slots.len() == self.capacity {
                self.oldest = self.find_oldest(stamps);
            }
            return;
        }
        let oldest = self.oldest.expect("a full window knows its oldest");
        if stamps[slot] > stamps[self.slots[oldest]] {
            self.slots[oldest] = slot;
            self.oldest = self.find_oldest(stamps);
        }
    }

    fn find_oldest(&self, stamps: &[i64]) -> Option<usize> {
        if self.slots.len() < self.capacity {
            return None;
        }
        (0..self.slots.len()).min_by_key(|i| stamps[self.slots[*i]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_freshest_slots() {
        let mut stamps = vec![0i64; 6];
        let mut window = Window::new(3);
        for (slot, stamp) in [(0, 5), (1, 1), (2, 9), (3, 7), (4, 2)] {
            stamps[slot] = stamp;
            window.offer(slot, &stamps);
        }
        let mut held = window.slots().to_vec();
        held.sort();
        assert_eq!(held, vec![0, 2, 3]);
        // Slot 0 (the oldest held) refreshes: now slot 4 at 6 still loses to it.
        stamps[0] = 10;
        window.offer(0, &stamps);
        stamps[4] = 6;
        window.offer(4, &stamps);
        let mut held = window.slots().to_vec();
        held.sort();
        assert_eq!(held, vec![0, 2, 3]);
        stamps[4] = 8;
        window.offer(4, &stamps);
        let mut held = window.slots().to_vec();
        held.sort();
        assert_eq!(held, vec![0, 2, 4]);
    }

    proptest::proptest! {
        #[test]
        fn always_equals_the_top_w_by_stamp(
            updates in proptest::collection::vec((0usize..20, 1i64..1000), 1..200),
            capacity in 1usize..6,
        ) {
            let mut stamps = vec![0i64; 20];
            let mut window = Window::new(capacity);
            for (slot, bump) in updates {
                stamps[slot] += bump;
                window.offer(slot, &stamps);
                let mut expected: Vec<i64> = stamps.iter().copied().filter(|s| *s > 0).collect();
                expected.sort_unstable_by(|a, b| b.cmp(a));
                expected.truncate(capacity);
                let mut held: Vec<i64> = window.slots().iter().map(|s| stamps[*s]).collect();
                held.sort_unstable_by(|a, b| b.cmp(a));
                proptest::prop_assert_eq!(held, expected);
            }
        }
    }
}
