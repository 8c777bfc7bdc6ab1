//! A discrete-event simulator for running the cluster's protocols at scale.
//!
//! The protocol code is the daemon's own ([`crate::gossip::GossipNode`]);
//! only time and the network are simulated: time is a number, and the
//! network is an in-memory transport that delivers after a latency, may
//! lose messages, and knows which nodes have crashed.

pub mod gossip;
pub mod placement;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::gossip::Millis;

/// Events ordered by time, first-scheduled first among equals.
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<Scheduled<E>>>,
    next_sequence: u64,
}

struct Scheduled<E> {
    at: Millis,
    sequence: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            next_sequence: 0,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn new() -> EventQueue<E> {
        EventQueue::default()
    }

    pub fn schedule(&mut self, at: Millis, event: E) {
        self.heap.push(Reverse(Scheduled {
            at,
            sequence: self.next_sequence,
            event,
        }));
        self.next_sequence += 1;
    }

    /// The earliest event due at or before `until`.
    pub fn pop_until(&mut self, until: Millis) -> Option<(Millis, E)> {
        if self.heap.peek()?.0.at > until {
            return None;
        }
        self.heap.pop().map(|Reverse(s)| (s.at, s.event))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_in_time_then_schedule_order() {
        let mut queue = EventQueue::new();
        queue.schedule(5, "c");
        queue.schedule(1, "a");
        queue.schedule(5, "d");
        queue.schedule(2, "b");
        assert_eq!(queue.pop_until(4), Some((1, "a")));
        assert_eq!(queue.pop_until(4), Some((2, "b")));
        assert_eq!(queue.pop_until(4), None);
        assert_eq!(queue.pop_until(10), Some((5, "c")));
        assert_eq!(queue.pop_until(10), Some((5, "d")));
        assert!(queue.is_empty());
    }
}
