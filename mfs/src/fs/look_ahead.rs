//! Looking ahead in another node's directory (Lustre calls it statahead):
//! when a program looks up names of a directory in order, as `ls -l`,
//! `find`, `du` or a build checking its files do, this node asks the
//! owner once for the entries that follow ([`FsOp::LookAhead`]), with
//! their attributes granted, and answers the kernel's next lookups of
//! them without a round trip each.
//!
//! What makes that coherent is the owner's grants ([`super::attr_grants`]):
//! an entry is used only while the grant of its file and those of its
//! directory and every directory above it hold. A change of the entry's
//! file (its attributes, or a link, unlink or rename of it, each of which
//! changes its link count or moves it) takes its grant back; a rename or
//! removal of a directory above, or a change of who may look in it, takes
//! back the directory's, and with it every entry below. Entries are kept
//! per caller identity: what root was shown is never another user's
//! answer.
//!
//! [`FsOp::LookAhead`]: crate::wire::fs::FsOp::LookAhead

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::attr_grants::FileId;
use super::fuse::inode_number;
use crate::NodeId;
use crate::wire::fs::{AheadXattr, Attr, Caller, FsResult};

/// How long a directory that had no names after one is taken to have
/// none after it (see `Dir::end`).
const END_HEARD_FOR: Duration = Duration::from_secs(1);

/// How long a directory the owner answered nothing for is not looked
/// ahead in again.
const QUIET_AFTER_NOTHING: Duration = Duration::from_secs(5);

/// Lookups of names in increasing order, missed one after the other,
/// that make a pattern worth a look-ahead (the first of them counts too).
const IN_ORDER_TO_START: u32 = 3;

/// Entries asked for by a directory's first look-ahead; each next one
/// asks for twice as many, up to [`MAX_COUNT`].
const FIRST_COUNT: u32 = 32;

/// Most entries one look-ahead asks for (the owner's limit).
const MAX_COUNT: u32 = super::export::MAX_LOOK_AHEAD;

/// The next look-ahead is asked for when fewer entries than this are left
/// after the one just used, so that it comes before they run out.
const REFILL_BELOW: usize = 32;

/// Directories looked ahead in at once (the least recently used go).
const MAX_DIRS: usize = 64;

/// Entries kept of one directory (the lowest names, passed, go first).
const MAX_ENTRIES: usize = 2048;

/// Whose lookups of which directory: the node, the directory's FUSE
/// inode, and the caller's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirKey {
    node: NodeId,
    dir: u64,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl DirKey {
    pub fn new(node: NodeId, dir: u64, caller: &Caller) -> DirKey {
        DirKey {
            node,
            dir,
            uid: caller.uid,
            gid: caller.gid,
            groups: caller.groups.clone(),
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }
}

/// What one look-ahead's entries share: the grants of the directories
/// above them, the connection that brought them, and when they were
/// asked for (grants count from then).
#[derive(Debug)]
struct Batch {
    dirs: Vec<(FileId, u64)>,
    /// The directory's path the owner granted them for.
    path: Vec<u8>,
    generation: u64,
    asked: Instant,
}

struct Ahead {
    attr: Attr,
    number: u64,
    /// What reading a few of its extended attributes gave.
    xattrs: Vec<AheadXattr>,
    batch: Arc<Batch>,
}

/// An entry to answer a lookup with: its attributes, granted under
/// `number` on connection `generation`, asked for at `asked`.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub attr: Attr,
    pub number: u64,
    pub generation: u64,
    pub asked: Instant,
}

/// A look-ahead to ask the owner for: `count` entries after `after`
/// (`id` tells its answer from another's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub id: u64,
    pub after: Vec<u8>,
    pub count: u32,
}

impl Ahead {
    /// Whether the entry may answer for its name in the directory at
    /// `path` of `node`: it was granted for that path, and its file's
    /// and directories' grants hold.
    fn holds(&self, node: NodeId, path: &[u8], grants: &dyn StillGranted) -> bool {
        // The directory's inode is now known under another path (renamed,
        // or another way to it): what was granted for the old one says
        // nothing of the ancestors of the new.
        if self.batch.path != path {
            return false;
        }
        let mut all = self.batch.dirs.clone();
        all.push(((self.attr.dev, self.attr.ino), self.number));
        grants.still_granted(node, self.batch.generation, self.batch.asked, &all)
    }
}

struct Dir {
    entries: BTreeMap<Vec<u8>, Ahead>,
    /// The last name the latest look-ahead covered, and whether the
    /// owner had names after it: where the next one starts.
    frontier: Option<(Vec<u8>, bool)>,
    /// The names each look-ahead covered, from after its first name to
    /// its last, and when it was asked for: a name in them that is not
    /// kept is not a regular file, or was not grantable then.
    covered: BTreeMap<Vec<u8>, (Vec<u8>, Instant)>,
    /// The last name missed, and how many misses in increasing order
    /// led to it.
    last_miss: Option<(Vec<u8>, u32)>,
    /// The look-ahead on its way: its id and the name after which it
    /// looks.
    asking: Option<(u64, Vec<u8>)>,
    /// The owner answered nothing (the caller may not list the
    /// directory, or it is too large, or cannot be granted): no
    /// look-ahead is asked for until then.
    quiet_until: Option<Instant>,
    /// A name after which the owner had no names, and when it said so:
    /// a program making files one after the other misses each name
    /// after it, which no look-ahead would find.
    end: Option<(Vec<u8>, Instant)>,
    /// Entries the next look-ahead asks for.
    count: u32,
    used: Instant,
}

impl Dir {
    fn new(now: Instant) -> Dir {
        Dir {
            entries: BTreeMap::new(),
            frontier: None,
            covered: BTreeMap::new(),
            last_miss: None,
            asking: None,
            quiet_until: None,
            end: None,
            count: FIRST_COUNT,
            used: now,
        }
    }

    fn ask(&mut self, id: u64, after: Vec<u8>) -> Ask {
        self.asking = Some((id, after.clone()));
        let count = self.count;
        self.count = (self.count * 2).min(MAX_COUNT);
        Ask { id, after, count }
    }

    /// Whether a look-ahead may be asked for now.
    fn may_ask(&self, now: Instant) -> bool {
        self.asking.is_none() && self.quiet_until.is_none_or(|until| now >= until)
    }
}

/// See the module documentation.
#[derive(Default)]
pub struct LookAhead {
    dirs: Mutex<HashMap<DirKey, Dir>>,
    next_id: AtomicU64,
}

/// Whether every grant of an entry still holds: its file's and its
/// directories' (file and number), on the connection of `generation`,
/// asked for at `asked`.
pub trait StillGranted {
    fn still_granted(
        &self,
        node: NodeId,
        generation: u64,
        asked: Instant,
        grants: &[(FileId, u64)],
    ) -> bool;
}

impl LookAhead {
    /// A lookup of `name` in the directory of `key`, at `path` now: the
    /// entry to answer it with, if a look-ahead of that path brought it
    /// and its grants hold (per `grants`), and the look-ahead to ask for
    /// now, if one is due.
    pub fn lookup(
        &self,
        key: &DirKey,
        (path, name): (&[u8], &[u8]),
        grants: &dyn StillGranted,
    ) -> (Option<Hit>, Option<Ask>) {
        let now = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut dirs = self.dirs.lock().expect("look-ahead lock");
        if !dirs.contains_key(key) && dirs.len() >= MAX_DIRS {
            let oldest = dirs
                .iter()
                .min_by_key(|(_, dir)| dir.used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                dirs.remove(&oldest);
            }
        }
        let dir = dirs.entry(key.clone()).or_insert_with(|| Dir::new(now));
        dir.used = now;
        let hit = dir
            .entries
            .get(name)
            .filter(|ahead| ahead.holds(key.node, path, grants))
            .map(|ahead| Hit {
                attr: ahead.attr,
                number: ahead.number,
                generation: ahead.batch.generation,
                asked: ahead.batch.asked,
            });
        let Some(hit) = hit else {
            // An entry whose grants broke: what the look-aheads covered is
            // to be asked for again.
            if dir.entries.remove(name).is_some() {
                dir.covered.clear();
            }
            // A name missed again (`ls -l` stats a file, then reads two
            // of its extended attributes, each by path) neither breaks a
            // run nor adds to it, nor asks again.
            let again = dir
                .last_miss
                .as_ref()
                .is_some_and(|(last, _)| last.as_slice() == name);
            let in_order = match &dir.last_miss {
                Some((last, run)) if last.as_slice() < name => run + 1,
                Some((_, run)) if again => *run,
                _ => 1,
            };
            dir.last_miss = Some((name.to_vec(), in_order));
            let past_end = dir.end.as_ref().is_some_and(|(end, when)| {
                end.as_slice() <= name && now.duration_since(*when) < END_HEARD_FOR
            });
            // A name the look-aheads covered, not kept: not a regular
            // file, or not grantable now. Asking again would bring the
            // same.
            let usable = super::kept_attrs::usable_for();
            let covered = dir
                .covered
                .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(name)))
                .next_back()
                .is_some_and(|(_, (last, asked))| {
                    name <= last.as_slice() && now.duration_since(*asked) < usable
                });
            let due = in_order >= IN_ORDER_TO_START
                && !again
                && !covered
                && !past_end
                && dir.may_ask(now);
            let ask = due.then(|| dir.ask(id, name.to_vec()));
            return (None, ask);
        };
        let ask = match &dir.frontier {
            Some((last, true)) if dir.may_ask(now) => {
                let left = dir
                    .entries
                    .range::<[u8], _>((Bound::Excluded(name), Bound::Unbounded))
                    .take(REFILL_BELOW)
                    .count();
                let last = last.clone();
                (left < REFILL_BELOW).then(|| dir.ask(id, last))
            }
            _ => None,
        };
        (Some(hit), ask)
    }

    /// What reading the extended attribute `xattr` of the file `name` in
    /// the directory of `key`, at `path`, gave at the owner, if a
    /// look-ahead whose grants hold read it, and the file is that of
    /// inode `ino`: its value, or the errno.
    pub fn xattr(
        &self,
        key: &DirKey,
        (path, name): (&[u8], &[u8]),
        (ino, xattr): (u64, &[u8]),
        grants: &dyn StillGranted,
    ) -> Option<Result<Vec<u8>, i32>> {
        let dirs = self.dirs.lock().expect("look-ahead lock");
        let ahead = dirs.get(key)?.entries.get(name)?;
        if inode_number(key.node, ahead.attr.dev, ahead.attr.ino) != ino {
            return None;
        }
        let read = ahead.xattrs.iter().find(|read| read.name == xattr)?;
        ahead
            .holds(key.node, path, grants)
            .then(|| read.answer.clone())
    }

    /// The owner's answer to look-ahead `id` of `key`'s directory, at
    /// `path`, asked for at `asked`, which came on the connection of
    /// `generation`.
    pub fn answered(
        &self,
        (key, id, path): (&DirKey, u64, Vec<u8>),
        asked: Instant,
        generation: u64,
        answer: FsResult,
    ) {
        let now = Instant::now();
        let mut dirs = self.dirs.lock().expect("look-ahead lock");
        let Some(dir) = dirs.get_mut(key) else {
            return;
        };
        let after = match dir.asking.take() {
            Some((asked_id, after)) if asked_id == id => after,
            other => {
                dir.asking = other;
                return;
            }
        };
        // Entries whose grants ran out are of no more use.
        let usable = super::kept_attrs::usable_for();
        dir.entries
            .retain(|_, ahead| now.duration_since(ahead.batch.asked) < usable);
        let (granted_dirs, entries, last, more) = match answer {
            FsResult::LookedAhead {
                dirs: granted_dirs,
                entries,
                last,
                more,
            } if granted_dirs.last().is_some_and(|d| {
                // The directory the path named at the owner must be the
                // one whose lookups these are.
                inode_number(key.node, d.dev, d.ino) == key.dir
            }) =>
            {
                (granted_dirs, entries, last, more)
            }
            // Gone, or the connection failed: the next may do better.
            FsResult::Errno(e) if e != libc::EACCES && e != libc::EPERM => return,
            // What would be answered again: the caller may not list the
            // directory, it is too large or cannot be granted, or its
            // path names another directory at the owner now.
            _ => {
                dir.quiet_until = Some(now + QUIET_AFTER_NOTHING);
                return;
            }
        };
        let batch = Arc::new(Batch {
            dirs: granted_dirs
                .iter()
                .map(|d| ((d.dev, d.ino), d.number))
                .collect(),
            path,
            generation,
            asked,
        });
        for entry in entries {
            let ahead = Ahead {
                attr: entry.attr,
                number: entry.number,
                xattrs: entry.xattrs,
                batch: batch.clone(),
            };
            dir.entries.insert(entry.name, ahead);
        }
        while dir.entries.len() > MAX_ENTRIES {
            dir.entries.pop_first();
        }
        if last.is_empty() {
            dir.end = Some((after, now));
        } else {
            dir.covered
                .retain(|_, (_, asked)| now.duration_since(*asked) < usable);
            dir.covered.insert(after, (last.clone(), asked));
            dir.frontier = Some((last, more));
        }
    }

    /// How many entries of `key`'s directory are kept.
    #[cfg(test)]
    fn kept(&self, key: &DirKey) -> usize {
        let dirs = self.dirs.lock().expect("look-ahead lock");
        dirs.get(key).map_or(0, |dir| dir.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fs::{AheadEntry, AttrsChange};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Grants that hold unless told otherwise.
    struct Grants(AtomicBool);

    impl StillGranted for Grants {
        fn still_granted(&self, _: NodeId, _: u64, _: Instant, grants: &[(FileId, u64)]) -> bool {
            assert_eq!(grants.len(), 3, "two directories and the entry's file");
            self.0.load(Ordering::Relaxed)
        }
    }

    fn key(uid: u32) -> DirKey {
        let caller = Caller {
            uid,
            gid: uid,
            groups: Vec::new(),
            pid: 1,
        };
        // The directory the owner's answers name last.
        let node = NodeId::new(2).unwrap();
        DirKey::new(node, inode_number(node, 1, 2), &caller)
    }

    fn name(i: u32) -> Vec<u8> {
        format!("f{i:03}").into_bytes()
    }

    /// The owner's answer: entries `from..to`, and whether more follow.
    fn looked_ahead(from: u32, to: u32, more: bool) -> FsResult {
        let entries: Vec<AheadEntry> = (from..to)
            .map(|i| AheadEntry {
                name: name(i),
                attr: Attr {
                    ino: u64::from(i),
                    ..Attr::default()
                },
                number: 1,
                xattrs: vec![
                    AheadXattr {
                        name: b"user.none".to_vec(),
                        answer: Err(libc::ENODATA),
                    },
                    AheadXattr {
                        name: b"user.kept".to_vec(),
                        answer: Ok(b"v".to_vec()),
                    },
                ],
            })
            .collect();
        let dir = |ino| AttrsChange {
            dev: 1,
            ino,
            number: 1,
        };
        FsResult::LookedAhead {
            dirs: vec![dir(1), dir(2)],
            last: entries.last().map(|e| e.name.clone()).unwrap_or_default(),
            entries,
            more,
        }
    }

    /// Misses f000, f001 and f002 of `key`'s directory: the look-ahead
    /// they ask for.
    fn three_misses(ahead: &LookAhead, key: &DirKey, grants: &Grants) -> Ask {
        for i in 0..2 {
            ahead.lookup(key, (b"d", &name(i)), grants);
        }
        let (hit, ask) = ahead.lookup(key, (b"d", &name(2)), grants);
        assert!(hit.is_none());
        ask.expect("three misses in order ask ahead")
    }

    #[test]
    fn misses_in_order_ask_ahead_and_its_entries_answer_while_granted() {
        let ahead = LookAhead::default();
        let grants = Grants(AtomicBool::new(true));
        let key = key(0);
        assert!(matches!(
            ahead.lookup(&key, (b"d", &name(0)), &grants),
            (None, None)
        ));
        assert!(ahead.lookup(&key, (b"d", &name(1)), &grants).1.is_none());
        let (hit, ask) = ahead.lookup(&key, (b"d", &name(2)), &grants);
        assert!(hit.is_none());
        let ask = ask.expect("three misses in order ask ahead");
        assert_eq!((ask.after.clone(), ask.count), (name(2), FIRST_COUNT));
        // One at a time.
        assert!(ahead.lookup(&key, (b"d", &name(3)), &grants).1.is_none());
        ahead.answered(
            (&key, ask.id, b"d".to_vec()),
            Instant::now(),
            9,
            looked_ahead(4, 36, true),
        );
        assert_eq!(ahead.kept(&key), 32);

        let (hit, ask) = ahead.lookup(&key, (b"d", &name(4)), &grants);
        let hit = hit.expect("an entry looked ahead for");
        assert_eq!((hit.attr.ino, hit.number, hit.generation), (4, 1, 9));
        // Fewer than REFILL_BELOW left after it: the next, twice as many,
        // after the last name covered.
        let ask = ask.expect("a refill");
        assert_eq!((ask.after.clone(), ask.count), (name(35), 2 * FIRST_COUNT));

        // The directory known under another path: not from this batch.
        assert!(ahead.lookup(&key, (b"e", &name(7)), &grants).0.is_none());
        assert!(ahead.lookup(&key, (b"d", &name(8)), &grants).0.is_some());

        // What the owner said of its extended attributes.
        let ino = inode_number(key.node, 0, 4);
        let read = |xattr: &[u8]| ahead.xattr(&key, (b"d", &name(4)), (ino, xattr), &grants);
        assert_eq!(read(b"user.none"), Some(Err(libc::ENODATA)));
        assert_eq!(read(b"user.kept"), Some(Ok(b"v".to_vec())));
        assert_eq!(read(b"user.other"), None, "not read ahead");
        assert_eq!(
            ahead.xattr(&key, (b"e", &name(4)), (ino, b"user.none"), &grants),
            None
        );
        assert_eq!(
            ahead.xattr(&key, (b"d", &name(4)), (ino + 1, b"user.none"), &grants),
            None
        );

        // Another caller is shown nothing of it.
        assert!(
            ahead
                .lookup(&self::key(1000), (b"d", &name(5)), &grants)
                .0
                .is_none()
        );

        // A take-back: the entry is not used, and forgotten.
        grants.0.store(false, Ordering::Relaxed);
        assert_eq!(
            read(b"user.none"),
            None,
            "a file whose grant was taken back"
        );
        assert!(ahead.lookup(&key, (b"d", &name(6)), &grants).0.is_none());
        assert_eq!(ahead.kept(&key), 30);

        // An answer to another request than the one on its way is not
        // taken.
        ahead.answered(
            (&key, ask.id + 100, b"d".to_vec()),
            Instant::now(),
            9,
            looked_ahead(40, 60, true),
        );
        assert_eq!(ahead.kept(&key), 30);
    }

    #[test]
    fn a_directory_the_owner_answers_nothing_for_or_another_directory_for_asks_no_more_for_a_while()
    {
        let ahead = LookAhead::default();
        let grants = Grants(AtomicBool::new(true));
        let key = key(0);
        let ask = three_misses(&ahead, &key, &grants);
        // The path named another directory at the owner by then.
        let mut elsewhere = looked_ahead(3, 10, true);
        if let FsResult::LookedAhead { dirs, .. } = &mut elsewhere {
            dirs.last_mut().unwrap().ino = 99;
        }
        ahead.answered((&key, ask.id, b"d".to_vec()), Instant::now(), 9, elsewhere);
        assert_eq!(ahead.kept(&key), 0, "entries of another directory");
        for i in 3..10 {
            let (hit, ask) = ahead.lookup(&key, (b"d", &name(i)), &grants);
            assert!(hit.is_none() && ask.is_none(), "f{i:03}");
        }
        // An error (the caller may not list it): the same.
        let key = self::key(1000);
        let ask = three_misses(&ahead, &key, &grants);
        ahead.answered(
            (&key, ask.id, b"d".to_vec()),
            Instant::now(),
            9,
            FsResult::Errno(libc::EACCES),
        );
        for i in 3..10 {
            assert!(
                ahead.lookup(&key, (b"d", &name(i)), &grants).1.is_none(),
                "f{i:03}"
            );
        }
    }

    #[test]
    fn names_a_look_ahead_covered_but_did_not_keep_ask_for_none() {
        let ahead = LookAhead::default();
        let grants = Grants(AtomicBool::new(true));
        let key = key(0);
        let ask = three_misses(&ahead, &key, &grants);
        // f003 to f030 looked at, of which only f003 to f005 kept (the
        // others are, say, symbolic links).
        let mut answer = looked_ahead(3, 6, true);
        if let FsResult::LookedAhead { last, .. } = &mut answer {
            *last = name(30);
        }
        ahead.answered((&key, ask.id, b"d".to_vec()), Instant::now(), 9, answer);
        for i in 10..13 {
            let (hit, ask) = ahead.lookup(&key, (b"d", &name(i)), &grants);
            assert!(hit.is_none() && ask.is_none(), "f{i:03}, covered");
        }
        let ask = ahead.lookup(&key, (b"d", &name(31)), &grants).1;
        assert_eq!(
            ask.map(|ask| ask.after),
            Some(name(31)),
            "past what was covered"
        );
    }

    #[test]
    fn misses_out_of_order_or_past_the_end_ask_nothing() {
        let ahead = LookAhead::default();
        let grants = Grants(AtomicBool::new(true));
        let key = key(0);
        for i in [5, 3, 9, 1, 7, 2] {
            assert!(
                ahead.lookup(&key, (b"d", &name(i)), &grants).1.is_none(),
                "f{i:03}"
            );
        }
        // A program making files one after the other: after one answer
        // that nothing follows, its next misses ask nothing for a while.
        // (2, then 10, then 11: three in order.)
        assert!(ahead.lookup(&key, (b"d", &name(10)), &grants).1.is_none());
        let ask = ahead
            .lookup(&key, (b"d", &name(11)), &grants)
            .1
            .expect("in order");
        ahead.answered(
            (&key, ask.id, b"d".to_vec()),
            Instant::now(),
            9,
            looked_ahead(0, 0, false),
        );
        assert_eq!(ask.after, name(11));
        for i in 12..20 {
            assert!(
                ahead.lookup(&key, (b"d", &name(i)), &grants).1.is_none(),
                "f{i:03}"
            );
        }
    }
}
