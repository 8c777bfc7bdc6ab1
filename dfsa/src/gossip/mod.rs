//! Dissemination of load information, as MOSIX's information daemon does it.
//!
//! Every time step a node sends its own fresh entry plus the `w` freshest
//! entries it holds (its window) to one node chosen at random. A node that
//! starts announces itself to a few members at once, and a node that hears
//! from a member it did not hold as up answers it at once: a (re)joining
//! node is known, and knows its peers, after one exchange instead of after
//! the others' random steps happen to reach it. Entries
//! carry their age, never a clock reading; a receiver keeps an entry if it
//! is fresher than what it holds. A node whose freshest entry grows older
//! than a timeout is down; a fresh entry brings it back up.
//!
//! [`GossipNode`] is pure: time comes in as a number, messages leave
//! through a [`GossipTransport`]. The daemon drives it with a clock and TCP,
//! the simulator with an event queue and an in-memory transport.

pub mod closed_form;
mod membership;
mod window;

use std::sync::Arc;

pub use membership::Membership;
use omx_mfs::NodeId;
use rand::{Rng, RngExt};
use window::Window;

/// Time and durations in milliseconds, on the local clock of one node.
pub type Millis = u64;

/// When an entry was fresh, on the local clock. Signed: an entry older than
/// the local clock itself (a node that just started hears of a node dead
/// for an hour) has a negative stamp, and keeps its true age.
type Stamp = i64;

/// How many members a starting node announces itself to: all of a small
/// cluster; in a large one, enough that their answers (each with its
/// window) tell it of many peers while a whole cluster starting at once
/// sends no more than this many messages per node.
pub const ANNOUNCE_TO: usize = 8;

/// A stamp for an entry never received.
const NEVER: Stamp = Stamp::MIN;

fn stamp_of(now: Millis, age: Millis) -> Stamp {
    now as Stamp - age.min(Stamp::MAX as Millis / 2) as Stamp
}

fn age_of(now: Millis, stamp: Stamp) -> Millis {
    (now as Stamp).saturating_sub(stamp).max(0) as Millis
}

/// What a node holds about another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    /// In the map, but never heard of.
    Unknown,
    Up,
    /// Heard of, but not for longer than the timeout.
    Down,
}

/// One entry as sent: whose it is, how old, and what it says.
#[derive(Clone, Debug, PartialEq)]
pub struct Rumor<P> {
    pub node: NodeId,
    pub age: Millis,
    pub payload: P,
}

/// Where a gossip step's message goes.
pub trait GossipTransport<P> {
    fn send(&mut self, from: NodeId, to: NodeId, rumors: Vec<Rumor<P>>);
}

/// Gossip settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GossipParams {
    /// How many held entries go with each message.
    pub window: usize,
    /// An entry older than this means its node is down.
    pub down_after: Millis,
}

/// One node's gossip state: what it knows of every member.
pub struct GossipNode<P> {
    me: NodeId,
    members: Arc<Membership>,
    /// Local time at which each member's entry was fresh (by slot).
    stamps: Vec<Stamp>,
    payloads: Vec<P>,
    window: Window,
    params: GossipParams,
}

impl<P: Clone + Default> GossipNode<P> {
    /// A node that knows nothing yet. `me` must be a member.
    pub fn new(me: NodeId, members: Arc<Membership>, params: GossipParams) -> GossipNode<P> {
        assert!(members.slot(me).is_some(), "node {me} is not a member");
        let n = members.len();
        GossipNode {
            me,
            stamps: vec![NEVER; n],
            payloads: vec![P::default(); n],
            window: Window::new(params.window),
            members,
            params,
        }
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn params(&self) -> GossipParams {
        self.params
    }

    pub fn members(&self) -> &Arc<Membership> {
        &self.members
    }

    /// Installs a new member list (a new map): entries of nodes that stay
    /// are kept, nodes that left are forgotten, new nodes start unknown.
    pub fn set_members(&mut self, members: Arc<Membership>) {
        assert!(
            members.slot(self.me).is_some(),
            "node {} is not a member",
            self.me
        );
        let mut stamps = vec![NEVER; members.len()];
        let mut payloads = vec![P::default(); members.len()];
        for (slot, node) in members.ids().iter().enumerate() {
            if let Some(old) = self.members.slot(*node) {
                stamps[slot] = self.stamps[old];
                payloads[slot] = self.payloads[old].clone();
            }
        }
        self.stamps = stamps;
        self.payloads = payloads;
        self.members = members;
        self.rebuild_window();
    }

    /// Changes the window size or the timeout (the default timeout depends
    /// on the cluster's size, so it changes with the map).
    pub fn set_params(&mut self, params: GossipParams) {
        self.params = params;
        self.rebuild_window();
    }

    fn rebuild_window(&mut self) {
        self.window = Window::new(self.params.window);
        let me = self.my_slot();
        for slot in 0..self.stamps.len() {
            if slot != me && self.stamps[slot] != NEVER {
                self.window.offer(slot, &self.stamps);
            }
        }
    }

    /// Records this node's own current figures.
    pub fn set_own(&mut self, now: Millis, own: P) {
        let me = self.my_slot();
        self.stamps[me] = now as Stamp;
        self.payloads[me] = own;
    }

    /// One time step: refresh our own entry and send it with the window to
    /// a member chosen uniformly at random. Returns the chosen member.
    pub fn step<R: Rng, T: GossipTransport<P>>(
        &mut self,
        now: Millis,
        own: P,
        rng: &mut R,
        transport: &mut T,
    ) -> Option<NodeId> {
        self.set_own(now, own);
        let n = self.members.len();
        if n < 2 {
            return None;
        }
        let me = self.my_slot();
        // Uniform over the others: draw from n-1 slots and skip our own.
        let mut target = rng.random_range(0..n - 1);
        if target >= me {
            target += 1;
        }
        let to = self.members.ids()[target];
        let rumors = self.outgoing(now, me);
        transport.send(self.me, to, rumors);
        Some(to)
    }

    /// Refreshes our own entry and sends it with the window to
    /// [`ANNOUNCE_TO`] members chosen at random (every other member if
    /// there are fewer): what a node does when it starts. Returns them.
    pub fn announce<R: Rng, T: GossipTransport<P>>(
        &mut self,
        now: Millis,
        own: P,
        rng: &mut R,
        transport: &mut T,
    ) -> Vec<NodeId> {
        self.set_own(now, own);
        let me = self.my_slot();
        let others: Vec<usize> = (0..self.members.len()).filter(|s| *s != me).collect();
        let chosen: Vec<NodeId> = rand::seq::IndexedRandom::sample(&others[..], rng, ANNOUNCE_TO)
            .map(|slot| self.members.ids()[*slot])
            .collect();
        for to in &chosen {
            transport.send(self.me, *to, self.outgoing(now, me));
        }
        chosen
    }

    /// Takes in a message from member `from` (see [`GossipNode::receive`])
    /// and, if `from` was not up here before it (it just started, or came
    /// back), answers it at once with our own entry and the window.
    /// Returns whether it answered. Two nodes that did not know each other
    /// exchange three messages at most: the answer to an answer finds the
    /// other side up.
    pub fn receive_and_welcome<T: GossipTransport<P>>(
        &mut self,
        now: Millis,
        from: NodeId,
        rumors: Vec<Rumor<P>>,
        own: P,
        transport: &mut T,
    ) -> bool {
        let was_up = self.status(now, from) == Some(NodeStatus::Up);
        self.receive(now, rumors);
        let member = from != self.me && self.members.slot(from).is_some();
        if was_up || !member {
            return false;
        }
        self.set_own(now, own);
        transport.send(self.me, from, self.outgoing(now, self.my_slot()));
        true
    }

    /// Our own entry followed by the window, with ages as of `now`.
    fn outgoing(&self, now: Millis, me: usize) -> Vec<Rumor<P>> {
        std::iter::once(me)
            .chain(self.window.slots().iter().copied())
            .map(|slot| Rumor {
                node: self.members.ids()[slot],
                age: age_of(now, self.stamps[slot]),
                payload: self.payloads[slot].clone(),
            })
            .collect()
    }

    /// Takes in a message: every entry fresher than ours replaces it.
    /// Entries about ourselves and about non-members are ignored.
    pub fn receive(&mut self, now: Millis, rumors: Vec<Rumor<P>>) {
        let me = self.my_slot();
        for rumor in rumors {
            let Some(slot) = self.members.slot(rumor.node) else {
                continue;
            };
            if slot == me {
                continue;
            }
            let stamp = stamp_of(now, rumor.age);
            let held = self.stamps[slot];
            if held == NEVER || stamp > held {
                self.stamps[slot] = stamp;
                self.payloads[slot] = rumor.payload;
                self.window.offer(slot, &self.stamps);
            }
        }
    }

    /// What we hold about `node`: its age and figures, if we ever heard.
    pub fn entry(&self, now: Millis, node: NodeId) -> Option<(Millis, &P)> {
        let slot = self.members.slot(node)?;
        let stamp = self.stamps[slot];
        (stamp != NEVER).then(|| (age_of(now, stamp), &self.payloads[slot]))
    }

    /// Up, down or unknown, by the age of the freshest entry.
    pub fn status(&self, now: Millis, node: NodeId) -> Option<NodeStatus> {
        let slot = self.members.slot(node)?;
        Some(self.status_of_slot(now, slot))
    }

    fn status_of_slot(&self, now: Millis, slot: usize) -> NodeStatus {
        match self.stamps[slot] {
            NEVER => NodeStatus::Unknown,
            stamp if age_of(now, stamp) > self.params.down_after => NodeStatus::Down,
            _ => NodeStatus::Up,
        }
    }

    /// Ages of all entries about other nodes (never-heard ones excluded):
    /// for measuring the protocol.
    pub fn ages(&self, now: Millis) -> impl Iterator<Item = Millis> + '_ {
        let me = self.my_slot();
        self.stamps
            .iter()
            .enumerate()
            .filter(move |(slot, stamp)| *slot != me && **stamp != NEVER)
            .map(move |(_, stamp)| age_of(now, *stamp))
    }

    fn my_slot(&self) -> usize {
        self.members.slot(self.me).expect("this node is a member")
    }
}

/// The default down timeout: ten steps, or twice the expected maximum age
/// of information in a cluster of this size (closed form), if longer. A
/// timeout shorter than the usual age of information would mark live nodes
/// down.
pub fn default_down_after(nodes: usize, window: usize, interval: Millis) -> Millis {
    let expected_max_steps = closed_form::expected_max_age(nodes, window).unwrap_or(0.0);
    let steps = (2.0 * expected_max_steps).ceil().max(10.0);
    (steps as Millis).saturating_mul(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn id(n: u16) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn members(ids: &[u16]) -> Arc<Membership> {
        Arc::new(Membership::new(ids.iter().map(|n| id(*n)).collect()))
    }

    #[derive(Default)]
    struct Captured(Vec<(NodeId, NodeId, Vec<Rumor<u32>>)>);

    impl GossipTransport<u32> for Captured {
        fn send(&mut self, from: NodeId, to: NodeId, rumors: Vec<Rumor<u32>>) {
            self.0.push((from, to, rumors));
        }
    }

    const PARAMS: GossipParams = GossipParams {
        window: 2,
        down_after: 5000,
    };

    #[test]
    fn a_step_sends_own_entry_and_the_freshest_window_to_another_member() {
        let all = members(&[1, 2, 3, 4, 5]);
        let mut node: GossipNode<u32> = GossipNode::new(id(1), all, PARAMS);
        node.receive(
            1000,
            vec![
                Rumor {
                    node: id(2),
                    age: 900,
                    payload: 20,
                },
                Rumor {
                    node: id(3),
                    age: 100,
                    payload: 30,
                },
                Rumor {
                    node: id(4),
                    age: 500,
                    payload: 40,
                },
            ],
        );
        let mut rng = SmallRng::seed_from_u64(7);
        let mut sent = Captured::default();
        for t in 0..50 {
            node.step(1000 + t, 11, &mut rng, &mut sent);
        }
        for (from, to, rumors) in &sent.0 {
            assert_eq!(*from, id(1));
            assert_ne!(*to, id(1), "never sends to itself");
            assert_eq!(rumors[0].node, id(1));
            assert_eq!(rumors[0].age, 0);
            assert_eq!(rumors[0].payload, 11);
            let mut window: Vec<u16> = rumors[1..].iter().map(|r| r.node.get()).collect();
            window.sort();
            assert_eq!(window, vec![3, 4], "the two freshest entries");
        }
        let targets: std::collections::BTreeSet<u16> = sent.0.iter().map(|s| s.1.get()).collect();
        assert_eq!(targets.len(), 4, "all other members get picked");
    }

    #[test]
    fn a_starting_node_announces_itself_to_every_member_of_a_small_cluster_and_a_few_of_a_large_one()
     {
        let mut small: GossipNode<u32> = GossipNode::new(id(2), members(&[1, 2, 3, 4]), PARAMS);
        let mut sent = Captured::default();
        let mut rng = SmallRng::seed_from_u64(5);
        let mut chosen = small.announce(100, 22, &mut rng, &mut sent);
        chosen.sort();
        assert_eq!(chosen, vec![id(1), id(3), id(4)]);
        assert_eq!(sent.0.len(), 3);
        for (from, _, rumors) in &sent.0 {
            assert_eq!(*from, id(2));
            assert_eq!(
                (rumors[0].node, rumors[0].age, rumors[0].payload),
                (id(2), 0, 22)
            );
        }
        let all: Vec<u16> = (1..=1000).collect();
        let mut large: GossipNode<u32> = GossipNode::new(id(7), members(&all), PARAMS);
        let mut sent = Captured::default();
        let chosen = large.announce(100, 7, &mut rng, &mut sent);
        let distinct: std::collections::BTreeSet<NodeId> = chosen.iter().copied().collect();
        assert_eq!(distinct.len(), ANNOUNCE_TO, "{chosen:?}");
        assert!(!distinct.contains(&id(7)), "never to itself");
        assert_eq!(sent.0.len(), ANNOUNCE_TO);
    }

    #[test]
    fn a_node_not_up_here_is_answered_at_once_and_the_exchange_ends() {
        let all = members(&[1, 2, 3]);
        let mut old: GossipNode<u32> = GossipNode::new(id(1), all.clone(), PARAMS);
        old.receive(
            1000,
            vec![Rumor {
                node: id(3),
                age: 0,
                payload: 30,
            }],
        );
        let mut new: GossipNode<u32> = GossipNode::new(id(2), all, PARAMS);
        // Node 2 starts and announces itself to node 1.
        let mut to_old = Captured::default();
        new.announce(0, 20, &mut SmallRng::seed_from_u64(1), &mut to_old);
        let (_, _, hello) = to_old.0.into_iter().find(|s| s.1 == id(1)).unwrap();
        let mut to_new = Captured::default();
        assert!(old.receive_and_welcome(1000, id(2), hello.clone(), 10, &mut to_new));
        assert_eq!(old.status(1000, id(2)), Some(NodeStatus::Up));
        // The answer tells node 2 of node 1 and of what node 1 knows.
        let (from, to, answer) = to_new.0.pop().unwrap();
        assert_eq!((from, to), (id(1), id(2)));
        let mut back = Captured::default();
        assert!(new.receive_and_welcome(50, id(1), answer.clone(), 20, &mut back));
        assert_eq!(new.status(50, id(1)), Some(NodeStatus::Up));
        assert_eq!(new.entry(50, id(3)), Some((0, &30)));
        // Node 1 holds node 2 up now: node 2's answer to the answer ends it.
        let mut none = Captured::default();
        let (_, _, last) = back.0.pop().unwrap();
        assert!(!old.receive_and_welcome(1001, id(2), last, 10, &mut none));
        assert!(!new.receive_and_welcome(51, id(1), answer, 20, &mut none));
        assert!(none.0.is_empty());
        // A node come back from down is answered too; a stranger is not.
        assert!(old.receive_and_welcome(9000, id(2), hello.clone(), 10, &mut none));
        let mut stranger = hello;
        stranger[0].node = id(42);
        assert!(!old.receive_and_welcome(9001, id(42), stranger, 10, &mut none));
        assert_eq!(none.0.len(), 1);
    }

    #[test]
    fn keeps_only_fresher_entries_and_ignores_itself_and_strangers() {
        let mut node: GossipNode<u32> = GossipNode::new(id(1), members(&[1, 2, 3]), PARAMS);
        node.set_own(0, 1);
        node.receive(
            10_000,
            vec![Rumor {
                node: id(2),
                age: 1000,
                payload: 7,
            }],
        );
        node.receive(
            10_000,
            vec![Rumor {
                node: id(2),
                age: 3000,
                payload: 99,
            }],
        );
        assert_eq!(node.entry(10_000, id(2)), Some((1000, &7)));
        node.receive(
            10_500,
            vec![Rumor {
                node: id(2),
                age: 0,
                payload: 8,
            }],
        );
        assert_eq!(node.entry(11_000, id(2)), Some((500, &8)));
        node.receive(
            11_000,
            vec![Rumor {
                node: id(1),
                age: 0,
                payload: 555,
            }],
        );
        assert_eq!(node.entry(11_000, id(1)), Some((11_000, &1)));
        node.receive(
            11_000,
            vec![Rumor {
                node: id(42),
                age: 0,
                payload: 5,
            }],
        );
        assert_eq!(node.entry(11_000, id(42)), None);
    }

    #[test]
    fn a_silent_node_goes_down_and_comes_back_up() {
        let mut node: GossipNode<u32> = GossipNode::new(id(1), members(&[1, 2]), PARAMS);
        assert_eq!(node.status(0, id(2)), Some(NodeStatus::Unknown));
        node.receive(
            1000,
            vec![Rumor {
                node: id(2),
                age: 0,
                payload: 1,
            }],
        );
        assert_eq!(node.status(6000, id(2)), Some(NodeStatus::Up));
        assert_eq!(node.status(6001, id(2)), Some(NodeStatus::Down));
        node.receive(
            9000,
            vec![Rumor {
                node: id(2),
                age: 10,
                payload: 2,
            }],
        );
        assert_eq!(node.status(9000, id(2)), Some(NodeStatus::Up));
        assert_eq!(node.status(9000, id(3)), None);
    }

    #[test]
    fn entries_older_than_the_local_clock_keep_their_age() {
        // A daemon up for 2 s hears of a node silent for 30 minutes.
        let mut young: GossipNode<u32> = GossipNode::new(id(2), members(&[1, 2, 3]), PARAMS);
        young.receive(
            2000,
            vec![Rumor {
                node: id(3),
                age: 1_800_000,
                payload: 0,
            }],
        );
        assert_eq!(young.entry(2000, id(3)), Some((1_800_000, &0)));
        assert_eq!(young.status(2000, id(3)), Some(NodeStatus::Down));
        // ... and passes it on with its true age, so nobody resurrects it.
        let mut sent = Captured::default();
        young.step(3000, 2, &mut SmallRng::seed_from_u64(3), &mut sent);
        let relayed = sent.0[0].2.iter().find(|r| r.node == id(3)).unwrap();
        assert_eq!(relayed.age, 1_801_000);
    }

    #[test]
    fn a_new_map_keeps_entries_of_staying_nodes() {
        let mut node: GossipNode<u32> = GossipNode::new(id(2), members(&[1, 2, 3]), PARAMS);
        node.receive(
            100,
            vec![
                Rumor {
                    node: id(1),
                    age: 0,
                    payload: 1,
                },
                Rumor {
                    node: id(3),
                    age: 0,
                    payload: 3,
                },
            ],
        );
        node.set_members(members(&[2, 3, 4]));
        assert_eq!(node.entry(100, id(1)), None);
        assert_eq!(node.entry(100, id(3)), Some((0, &3)));
        assert_eq!(node.status(100, id(4)), Some(NodeStatus::Unknown));
        let mut sent = Captured::default();
        let mut rng = SmallRng::seed_from_u64(1);
        node.step(200, 2, &mut rng, &mut sent);
        let nodes: Vec<u16> = sent.0[0].2.iter().map(|r| r.node.get()).collect();
        assert_eq!(nodes, vec![2, 3], "window rebuilt from what stayed");
    }

    #[test]
    fn a_lone_node_sends_nothing() {
        let mut node: GossipNode<u32> = GossipNode::new(id(1), members(&[1]), PARAMS);
        let mut sent = Captured::default();
        assert_eq!(
            node.step(0, 0, &mut SmallRng::seed_from_u64(1), &mut sent),
            None
        );
        assert!(sent.0.is_empty());
    }

    #[test]
    fn default_timeout_grows_with_the_cluster() {
        assert_eq!(default_down_after(4, 16, 1000), 10_000);
        let thousand = default_down_after(1000, 16, 1000);
        assert!(thousand > 800_000, "{thousand}");
    }
}
