//! The client's side of attribute grants (see [`super::attr_grants`]):
//! which other nodes' files the kernel keeps the attributes of, and for
//! how long, and dropping them when their owner says they changed or
//! the connection to it ends.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fuser::{INodeNo, Notifier};

use super::attr_grants::{FileId, GRANT_TIME};
use super::fuse::inode_number;
use super::look_ahead::StillGranted;
use crate::NodeId;

/// How much sooner than its owner the kernel stops trusting a grant: the
/// two count from different moments on different clocks.
const MARGIN: Duration = Duration::from_secs(1);

/// How long an inode whose lookup was answered may take to be made.
const ABOUT_TO_BE: Duration = Duration::from_secs(1);

/// Take-backs heard are remembered this long: a grant asked for before
/// one of them and answered after it must not count, and after this long
/// such a grant would have run out anyway.
const REMEMBER: Duration = GRANT_TIME;

/// How long after asking a client may count on a grant.
pub fn usable_for() -> Duration {
    GRANT_TIME.saturating_sub(MARGIN)
}

#[derive(Default)]
struct State {
    /// The highest take-back number heard of each file, and when.
    changed: HashMap<(NodeId, FileId), (u64, Instant)>,
    /// The kernel inodes whose attributes the kernel keeps, by owner, and
    /// until when.
    kept: HashMap<NodeId, HashMap<u64, Instant>>,
    /// Take-backs and grants recorded since the maps were last pruned.
    since_prune: usize,
    /// The generation of each owner's live connection: a grant that came
    /// on a connection since lost is not kept (nothing would take it
    /// back).
    live: HashMap<NodeId, u64>,
}

impl State {
    /// Forgets take-backs older than any grant still kept, and grants run
    /// out, every so often.
    fn prune(&mut self, now: Instant) {
        self.since_prune += 1;
        if self.since_prune < 4096 {
            return;
        }
        self.since_prune = 0;
        self.changed
            .retain(|_, (_, when)| now.duration_since(*when) < REMEMBER);
        for kept in self.kept.values_mut() {
            kept.retain(|_, until| *until > now);
        }
    }
}

/// Whether the kernel holds (or is about to hold, its lookup answered)
/// a FUSE inode: it has looked it up and not forgotten it.
pub type KernelKnows = Box<dyn Fn(u64) -> bool + Send + Sync>;

/// What this node's kernel keeps of other nodes' attributes.
#[derive(Default)]
pub struct KeptAttrs {
    state: Mutex<State>,
    notifier: OnceLock<(Notifier, KernelKnows)>,
}

impl KeptAttrs {
    /// Gives the means of telling the kernel (once mounted), and of
    /// knowing which inodes it holds. Until then nothing is kept.
    pub fn set_notifier(&self, notifier: Notifier, knows: KernelKnows) {
        let _ = self.notifier.set((notifier, knows));
    }

    /// The connection of `generation` to `node` is open: grants may come
    /// on it.
    pub fn connected(&self, node: NodeId, generation: u64) {
        let mut state = self.state.lock().expect("kept attributes lock");
        state.live.insert(node, generation);
    }

    /// Answers the kernel through `reply`, which takes how long the
    /// kernel may keep the attributes of `file` of `node` (its inode
    /// `ino`), granted under `number`, on connection `generation`, to a
    /// request sent at `asked`. The answer is given under the lock that
    /// take-backs take, so that none falls between the check and the
    /// kernel having the attributes.
    pub fn answer<R>(
        &self,
        node: NodeId,
        (file, number, generation): (FileId, u64, u64),
        asked: Instant,
        ino: u64,
        reply: impl FnOnce(Duration) -> R,
    ) -> R {
        let mut state = self.state.lock().expect("kept attributes lock");
        let taken_back = state
            .changed
            .get(&(node, file))
            .is_some_and(|(heard, _)| *heard > number);
        let lost = state.live.get(&node) != Some(&generation);
        let now = Instant::now();
        state.prune(now);
        let keep = if taken_back || lost || self.notifier.get().is_none() {
            Duration::ZERO
        } else {
            (asked + GRANT_TIME)
                .saturating_duration_since(now)
                .saturating_sub(MARGIN)
        };
        if !keep.is_zero() {
            state.kept.entry(node).or_default().insert(ino, now + keep);
        }
        reply(keep)
    }

    /// `node` says the attributes of its `file` changed (take-back
    /// `number`): the kernel drops them if it keeps them.
    pub fn changed(&self, node: NodeId, file: FileId, number: u64) {
        let mut state = self.state.lock().expect("kept attributes lock");
        let now = Instant::now();
        let heard = state.changed.entry((node, file)).or_insert((number, now));
        *heard = (heard.0.max(number), now);
        state.prune(now);
        let ino = inode_number(node, file.0, file.1);
        let kept = state
            .kept
            .get_mut(&node)
            .and_then(|kept| kept.remove(&ino))
            .is_some_and(|until| until > now);
        if kept {
            self.drop_in_kernel(ino);
        }
    }

    /// The connection of `generation` to `node` ended: no take-back can
    /// come, so the kernel drops everything it keeps of that node.
    pub fn connection_lost(&self, node: NodeId, generation: u64) {
        let mut state = self.state.lock().expect("kept attributes lock");
        if state.live.get(&node) == Some(&generation) {
            state.live.remove(&node);
        }
        let now = Instant::now();
        if let Some(kept) = state.kept.remove(&node) {
            for (ino, until) in kept {
                if until > now {
                    self.drop_in_kernel(ino);
                }
            }
        }
    }

    /// Makes the kernel drop the attributes of inode `ino`. The kernel
    /// makes an inode when the process that looked it up runs again,
    /// after its answer was written: one not there yet (ENOENT) while it
    /// is known is about to be, with the attributes this would drop, so
    /// this tries again until it is there or forgotten.
    fn drop_in_kernel(&self, ino: u64) {
        let Some((notifier, knows)) = self.notifier.get() else {
            return;
        };
        let deadline = Instant::now() + ABOUT_TO_BE;
        loop {
            // A negative offset: the attributes only (no data is cached).
            match notifier.inval_inode(INodeNo(ino), -1, 0) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if !knows(ino) {
                        return;
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            "the kernel did not make inode {ino} within {ABOUT_TO_BE:?} of its \
                             lookup's answer: it may keep attributes that changed"
                        );
                        return;
                    }
                    std::thread::yield_now();
                }
                Err(e) => {
                    tracing::warn!(
                        "the kernel refused to drop the attributes it keeps of inode {ino}: {e}"
                    );
                    return;
                }
            }
        }
    }
}

/// None of the grants was taken back or ran out, and the connection
/// they came on is still the owner's.
impl StillGranted for KeptAttrs {
    fn still_granted(
        &self,
        node: NodeId,
        generation: u64,
        asked: Instant,
        grants: &[(FileId, u64)],
    ) -> bool {
        if asked.elapsed() >= usable_for() || self.notifier.get().is_none() {
            return false;
        }
        let state = self.state.lock().expect("kept attributes lock");
        if state.live.get(&node) != Some(&generation) {
            return false;
        }
        let taken_back = |(file, number): (FileId, u64)| {
            state
                .changed
                .get(&(node, file))
                .is_some_and(|(heard, _)| *heard > number)
        };
        !grants.iter().copied().any(taken_back)
    }
}
