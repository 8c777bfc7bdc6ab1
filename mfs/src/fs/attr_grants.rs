//! Owner-granted attribute caching: a node may let its kernel keep a
//! remote file's attributes, because the owner tells it, before any
//! change through MFS proceeds, that they changed.
//!
//! Without it every `stat` of another node's file costs two round trips
//! (the kernel's lookup, then its getattr). With a grant, the lookup's
//! answer serves the getattr too, and an `fstat` of an open file costs
//! nothing until the file changes.
//!
//! A grant covers one regular file, or (for a look-ahead, see
//! `look_ahead`) one directory, for one connection, for at most
//! [`GRANT_TIME`]. While it lasts the owner:
//! - takes it back, and waits for the holder to confirm, before any
//!   operation through MFS that changes the file's attributes (a
//!   `setattr`, an open for writing or truncating, an unlink, rename or
//!   link of it, a change of its extended attributes); the holder that
//!   asked for the change itself is told in the change's answer
//!   (`FsReply::changed`), which it reads before the result;
//! - gives none while the file is open for writing through MFS (its
//!   writes may not come through this daemon: passthrough);
//! - watches the file with inotify, for changes made directly on its
//!   disk, not through MFS, and takes grants back as soon as it reads one.
//!   That is the one case where a holder may for a moment (the time this
//!   daemon takes to read the event and send word: tens of microseconds)
//!   still answer an `fstat` with the attributes from before, or a
//!   lookup of a name it looked ahead for with the entry from before. Any
//!   other path-based `stat` starts with a lookup at the owner, which
//!   answers afresh.
//!
//! Every grant and every take-back carries a number from one counter. A
//! holder keeps a grant only if no take-back of the file numbered above
//! it reached it, whichever of the two arrived first.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tracing::{debug, warn};

use crate::wire::fs::Attr;

/// How long a grant lasts at most. The holder trusts it for less: it
/// counts from before it asked. It also bounds how long a change waits
/// for a holder that does not confirm (a stalled or cut-off node), since
/// after it the holder's kernel keeps nothing.
pub const GRANT_TIME: Duration = Duration::from_secs(5);

/// How many files may be granted at once at most. Each takes an inotify
/// watch (and keeps its inode in memory); the user's watches are shared
/// with every other program of root, so a quarter of them at most.
const MAX_WATCHED: usize = 65536;

/// The files that may be watched: [`MAX_WATCHED`], or a quarter of what
/// the kernel allows root.
fn watch_budget() -> usize {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map_or(MAX_WATCHED, |allowed| (allowed / 4).min(MAX_WATCHED))
}

/// How often expired grants are forgotten and their watches removed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// What is watched of a file: every change of data, attributes, links
/// and names. Of a directory (see `look_ahead`): changes of its
/// attributes (who may look in it) and of its name. A directory's watch
/// also hears of what happens to its entries; writes, which would wake
/// the watch thread for every block written in it, are left out.
fn watch_flags(directory: bool) -> AddWatchFlags {
    let own =
        AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_DELETE_SELF;
    if directory {
        own
    } else {
        own | AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE
    }
}

/// A file, as the owner's file system names it: device and inode.
pub type FileId = (u64, u64);

/// How a holder is told that a file's attributes changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tell {
    /// Told, and waited for until it confirms it dropped them, or until
    /// its grant runs out (the instant given), whichever comes first.
    AndWait(Instant),
    /// Told as soon as may be, never waited for (a change already made,
    /// on the owner's disk). Never blocks: a holder whose queue is full
    /// keeps its grant until it runs out.
    Soon,
}

/// A connection that may hold grants.
pub trait AttrHolder: Send + Sync {
    /// Which connection (unique in this daemon's life).
    fn id(&self) -> u64;
    /// Tells the holder that `file`'s attributes changed (take-back
    /// `number`).
    fn attrs_changed(&self, file: FileId, number: u64, tell: Tell);
}

/// A holder of a grant, and when the grant runs out.
type Held = (Arc<dyn AttrHolder>, Instant);

#[derive(Default)]
struct Granted {
    watch: Option<WatchDescriptor>,
    /// The take-back number of the last change seen, or of the watch's
    /// start: a grant counts from a number read before its attributes.
    changed_at: u64,
    holders: HashMap<u64, Held>,
    /// Operations changing the file now: no grants meanwhile.
    changing: u32,
    /// Open for writing through MFS: no grants.
    write_opens: u32,
}

impl Granted {
    fn idle(&self) -> bool {
        self.holders.is_empty() && self.changing == 0 && self.write_opens == 0
    }
}

#[derive(Default)]
struct State {
    counter: u64,
    files: HashMap<FileId, Granted>,
    watches: HashMap<WatchDescriptor, FileId>,
}

impl State {
    /// Takes back every grant of `file`: gives the holders to tell and
    /// the take-back's number.
    fn take_back(&mut self, file: FileId) -> (Vec<Held>, u64) {
        self.counter += 1;
        let number = self.counter;
        let holders = match self.files.get_mut(&file) {
            Some(granted) => {
                granted.changed_at = number;
                granted.holders.drain().map(|(_, held)| held).collect()
            }
            None => Vec::new(),
        };
        (holders, number)
    }
}

/// What [`AttrGrants::try_grant`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    /// Granted under this number.
    Granted(u64),
    /// The file is not watched yet: watch it, read its attributes again,
    /// and try again.
    NeedsWatch,
    /// Not now (it is changing, open for writing, or too many files are).
    Refused,
}

/// This node's grants, and the thread that reads inotify's events.
pub struct AttrGrants {
    state: Mutex<State>,
    /// None when inotify could not be had: then nothing is granted.
    inotify: Option<Inotify>,
    /// How many files may be watched at once.
    budget: usize,
}

impl AttrGrants {
    /// Starts the grants' inotify thread. Without inotify (out of
    /// instances), nothing is ever granted.
    pub fn start() -> Arc<AttrGrants> {
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(inotify) => inotify,
            Err(e) => {
                warn!(
                    "MFS grants no attribute caching to other nodes: inotify: {e} \
                     (raise fs.inotify.max_user_instances)"
                );
                return Arc::new(AttrGrants {
                    state: Mutex::new(State::default()),
                    inotify: None,
                    budget: 0,
                });
            }
        };
        let grants = Arc::new(AttrGrants {
            state: Mutex::new(State::default()),
            inotify: Some(inotify),
            budget: watch_budget(),
        });
        let weak = Arc::downgrade(&grants);
        let spawned = std::thread::Builder::new()
            .name("mfs-attr-watch".into())
            .spawn(move || watch_events(weak));
        if let Err(e) = spawned {
            warn!("MFS cannot start its attribute watch thread ({e}): it grants nothing");
            return Arc::new(AttrGrants {
                state: Mutex::new(State::default()),
                inotify: None,
                budget: 0,
            });
        }
        grants
    }

    /// The current take-back number: read it before reading attributes
    /// that may be granted.
    pub fn now(&self) -> u64 {
        self.state.lock().expect("grants lock").counter
    }

    /// Grants `holder` the attributes of `file`, read after take-back
    /// number `read_after`, if nothing changed it since.
    pub fn try_grant(&self, file: FileId, holder: &Arc<dyn AttrHolder>, read_after: u64) -> Grant {
        if self.inotify.is_none() {
            return Grant::Refused;
        }
        let mut state = self.state.lock().expect("grants lock");
        let watched = state.watches.len();
        let Some(granted) = state.files.get_mut(&file) else {
            return if watched < self.budget {
                Grant::NeedsWatch
            } else {
                Grant::Refused
            };
        };
        if granted.changing > 0 || granted.write_opens > 0 || granted.changed_at > read_after {
            return Grant::Refused;
        }
        if granted.watch.is_none() {
            return if watched < self.budget {
                Grant::NeedsWatch
            } else {
                Grant::Refused
            };
        }
        granted
            .holders
            .insert(holder.id(), (holder.clone(), Instant::now() + GRANT_TIME));
        Grant::Granted(read_after)
    }

    /// How many more files a look-ahead may have watched: it leaves half
    /// of the budget to the grants of single lookups and stats.
    pub fn look_ahead_room(&self) -> usize {
        if self.inotify.is_none() {
            return 0;
        }
        let watched = self.state.lock().expect("grants lock").watches.len();
        (self.budget / 2).saturating_sub(watched)
    }

    /// Watches `file`, open as `fd` (any kind of descriptor of it), a
    /// `directory` or not.
    pub fn watch(&self, file: FileId, fd: &OwnedFd, directory: bool) -> Result<(), nix::Error> {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let inotify = self.inotify.as_ref().ok_or(nix::Error::ENOSYS)?;
        // Under the lock: inotify gives an inode already watched the same
        // watch, which another thread could be removing meanwhile (the
        // file is found through the descriptor, not a path walk: quick).
        let mut state = self.state.lock().expect("grants lock");
        let wd = inotify.add_watch(path.as_str(), watch_flags(directory))?;
        state.counter += 1;
        let number = state.counter;
        state.watches.insert(wd, file);
        let granted = state.files.entry(file).or_default();
        granted.watch = Some(wd);
        granted.changed_at = number;
        Ok(())
    }

    /// Takes back `file`'s grants before an operation changes it, and
    /// gives none until the returned guard is dropped. `asker`, the
    /// connection asking for the change, is told but not waited for: its
    /// answer follows on the same connection, and carries the take-backs
    /// the guard lists ([`ChangeGuard::asker_told`]).
    pub fn change(self: &Arc<Self>, files: &[FileId], asker: Option<u64>) -> ChangeGuard {
        let mut told = Vec::new();
        {
            let mut state = self.state.lock().expect("grants lock");
            for &file in files {
                state.files.entry(file).or_default().changing += 1;
                let (holders, number) = state.take_back(file);
                told.extend(holders.into_iter().map(|h| (h, file, number)));
                // Nobody holds it now: the watch goes before the change,
                // whose own events (an unlink's, several) would each wake
                // the watch thread for nothing. A grant after the change
                // watches it afresh.
                self.unwatch(&mut state, file);
            }
        }
        let mut asker_told = Vec::new();
        for ((holder, until), file, number) in told {
            if Some(holder.id()) == asker {
                asker_told.push((file, number));
            } else {
                holder.attrs_changed(file, number, Tell::AndWait(until));
            }
        }
        ChangeGuard {
            grants: self.clone(),
            files: files.to_vec(),
            asker_told,
        }
    }

    /// Counts an open of `file` for writing through MFS. A
    /// [`change`](Self::change) took its grants back before an open of an
    /// existing file; a file just made may have been granted since, and
    /// those grants are taken back here.
    pub fn opened_for_writing(&self, file: FileId) {
        let (holders, number) = {
            let mut state = self.state.lock().expect("grants lock");
            state.files.entry(file).or_default().write_opens += 1;
            state.take_back(file)
        };
        for (holder, until) in holders {
            holder.attrs_changed(file, number, Tell::AndWait(until));
        }
    }

    /// Counts the close of an open for writing.
    pub fn closed_for_writing(&self, file: FileId) {
        let mut state = self.state.lock().expect("grants lock");
        if let Some(granted) = state.files.get_mut(&file) {
            granted.write_opens = granted.write_opens.saturating_sub(1);
        }
        self.forget_if_idle(&mut state, file);
    }

    /// Forgets every grant of connection `holder` (it ended).
    pub fn forget_holder(&self, holder: u64) {
        let mut state = self.state.lock().expect("grants lock");
        let files: Vec<FileId> = state
            .files
            .iter_mut()
            .filter_map(|(file, granted)| granted.holders.remove(&holder).map(|_| *file))
            .collect();
        for file in files {
            self.forget_if_idle(&mut state, file);
        }
    }

    /// Stops watching `file`, if no grant of it can be held.
    fn unwatch(&self, state: &mut State, file: FileId) {
        let Some(granted) = state.files.get_mut(&file) else {
            return;
        };
        if !granted.holders.is_empty() {
            return;
        }
        if let Some(wd) = granted.watch.take() {
            state.watches.remove(&wd);
            if let Some(inotify) = &self.inotify {
                let _ = inotify.rm_watch(wd);
            }
        }
    }

    fn forget_if_idle(&self, state: &mut State, file: FileId) {
        if state.files.get(&file).is_some_and(Granted::idle) {
            let granted = state.files.remove(&file).expect("present");
            if let Some(wd) = granted.watch {
                state.watches.remove(&wd);
                if let Some(inotify) = &self.inotify {
                    let _ = inotify.rm_watch(wd);
                }
            }
        }
    }

    /// A change seen by inotify (or the watch's end): takes the grants
    /// back without waiting.
    fn changed_on_disk(&self, wd: WatchDescriptor, ended: bool) {
        let (told, file) = {
            let mut state = self.state.lock().expect("grants lock");
            let Some(&file) = state.watches.get(&wd) else {
                return;
            };
            let (holders, number) = state.take_back(file);
            if ended {
                state.watches.remove(&wd);
                if let Some(granted) = state.files.get_mut(&file) {
                    granted.watch = None;
                }
                self.forget_if_idle(&mut state, file);
            }
            (
                holders.into_iter().map(|h| (h, number)).collect::<Vec<_>>(),
                file,
            )
        };
        for ((holder, _), number) in told {
            holder.attrs_changed(file, number, Tell::Soon);
        }
    }

    /// Inotify lost events: every grant is taken back.
    fn changed_everywhere(&self) {
        let told: Vec<_> = {
            let mut state = self.state.lock().expect("grants lock");
            let files: Vec<FileId> = state.files.keys().copied().collect();
            files
                .into_iter()
                .flat_map(|file| {
                    let (holders, number) = state.take_back(file);
                    holders.into_iter().map(move |h| (h, file, number))
                })
                .collect()
        };
        for ((holder, _), file, number) in told {
            holder.attrs_changed(file, number, Tell::Soon);
        }
    }

    /// Forgets expired grants, and the watches of files left idle.
    fn sweep(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("grants lock");
        let files: Vec<FileId> = state
            .files
            .iter_mut()
            .map(|(file, granted)| {
                granted.holders.retain(|_, (_, until)| *until > now);
                *file
            })
            .collect();
        for file in files {
            self.forget_if_idle(&mut state, file);
        }
    }

    /// How many files have grants or watches.
    #[cfg(test)]
    fn files(&self) -> usize {
        self.state.lock().expect("grants lock").files.len()
    }
}

/// Ends a change: grants may be given again.
pub struct ChangeGuard {
    grants: Arc<AttrGrants>,
    files: Vec<FileId>,
    asker_told: Vec<(FileId, u64)>,
}

impl ChangeGuard {
    /// The take-backs of grants the asker held, which its answer carries.
    pub fn asker_told(&self) -> &[(FileId, u64)] {
        &self.asker_told
    }
}

impl Drop for ChangeGuard {
    fn drop(&mut self) {
        let mut state = self.grants.state.lock().expect("grants lock");
        for &file in &self.files {
            if let Some(granted) = state.files.get_mut(&file) {
                granted.changing = granted.changing.saturating_sub(1);
            }
            self.grants.forget_if_idle(&mut state, file);
        }
    }
}

/// Reads inotify's events until the grants are dropped.
fn watch_events(grants: std::sync::Weak<AttrGrants>) {
    let mut last_sweep = Instant::now();
    loop {
        let Some(grants) = grants.upgrade() else {
            return;
        };
        let Some(inotify) = &grants.inotify else {
            return;
        };
        let ready = {
            let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(1000u16))
        };
        match ready {
            Ok(0) | Err(nix::Error::EINTR) => {}
            Ok(_) => match inotify.read_events() {
                Ok(events) => {
                    for event in events {
                        if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                            debug!("inotify lost events: every attribute grant taken back");
                            grants.changed_everywhere();
                            continue;
                        }
                        // A watched directory (see `look_ahead`) also hears
                        // of its entries' changes, each with the entry's
                        // name: those are its entries' own business.
                        if event.name.is_some() {
                            continue;
                        }
                        let ended = event.mask.contains(AddWatchFlags::IN_IGNORED);
                        grants.changed_on_disk(event.wd, ended);
                    }
                }
                Err(nix::Error::EAGAIN) => {}
                Err(e) => {
                    warn!("reading inotify failed ({e}): every attribute grant taken back");
                    grants.changed_everywhere();
                    std::thread::sleep(Duration::from_secs(1));
                }
            },
            Err(e) => {
                warn!("waiting for inotify failed ({e})");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            grants.sweep();
            last_sweep = Instant::now();
        }
    }
}

/// Whether `attr` is of a kind that may be granted: a regular file
/// (directories change with every entry made in them).
pub fn grantable(attr: &Attr) -> bool {
    attr.mode & libc::S_IFMT == libc::S_IFREG
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    /// A holder that records what it was told.
    struct Recorder {
        id: u64,
        told: Mutex<Vec<(FileId, u64, Tell)>>,
    }

    impl AttrHolder for Recorder {
        fn id(&self) -> u64 {
            self.id
        }
        fn attrs_changed(&self, file: FileId, number: u64, tell: Tell) {
            self.told.lock().unwrap().push((file, number, tell));
        }
    }

    fn holder(id: u64) -> (Arc<Recorder>, Arc<dyn AttrHolder>) {
        let recorder = Arc::new(Recorder {
            id,
            told: Mutex::new(Vec::new()),
        });
        let holder: Arc<dyn AttrHolder> = recorder.clone();
        (recorder, holder)
    }

    /// A directory of its own for one test, removed after it.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch() -> Scratch {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("omx-grants-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A file to watch, and its id.
    fn file(dir: &Scratch, name: &str) -> (FileId, OwnedFd) {
        let path = dir.path().join(name);
        std::fs::write(&path, b"x").unwrap();
        let fd = OwnedFd::from(std::fs::File::open(&path).unwrap());
        let st = nix::sys::stat::fstat(fd.as_fd()).unwrap();
        ((st.st_dev, st.st_ino), fd)
    }

    /// A file watched and granted to holder 1.
    fn granted_file() -> (
        Scratch,
        Arc<AttrGrants>,
        FileId,
        Arc<Recorder>,
        Arc<dyn AttrHolder>,
    ) {
        let dir = scratch();
        let grants = AttrGrants::start();
        let (id, fd) = file(&dir, "f");
        grants.watch(id, &fd, false).unwrap();
        let (told, one) = holder(1);
        assert!(matches!(
            grants.try_grant(id, &one, grants.now()),
            Grant::Granted(_)
        ));
        (dir, grants, id, told, one)
    }

    #[test]
    fn a_grant_needs_a_watch_and_no_change_since_the_attributes_were_read() {
        let dir = scratch();
        let grants = AttrGrants::start();
        let (id, fd) = file(&dir, "f");
        let (_, one) = holder(1);
        assert_eq!(grants.try_grant(id, &one, grants.now()), Grant::NeedsWatch);
        let before_watch = grants.now();
        grants.watch(id, &fd, false).unwrap();
        // Read before the watch: what changed before it is not known.
        assert_eq!(grants.try_grant(id, &one, before_watch), Grant::Refused);
        let read_after = grants.now();
        assert_eq!(
            grants.try_grant(id, &one, read_after),
            Grant::Granted(read_after)
        );
        // A change between the read and the grant: not granted. The file
        // had no other use, so it is forgotten, and read again once
        // watched afresh.
        let stale = grants.now();
        let changing = grants.change(&[id], None);
        assert_eq!(grants.try_grant(id, &one, stale), Grant::Refused);
        drop(changing);
        assert_eq!(grants.try_grant(id, &one, stale), Grant::NeedsWatch);
    }

    #[test]
    fn a_change_waits_for_every_holder_but_the_asker_whose_answer_tells_it_and_stops_grants_while_it_runs()
     {
        let dir = scratch();
        let grants = AttrGrants::start();
        let (id, fd) = file(&dir, "f");
        grants.watch(id, &fd, false).unwrap();
        let (one_told, one) = holder(1);
        let (two_told, two) = holder(2);
        let read_after = grants.now();
        assert!(matches!(
            grants.try_grant(id, &one, read_after),
            Grant::Granted(_)
        ));
        assert!(matches!(
            grants.try_grant(id, &two, read_after),
            Grant::Granted(_)
        ));

        let changing = grants.change(&[id], Some(2));
        let one_heard = one_told.told.lock().unwrap().clone();
        let two_heard = two_told.told.lock().unwrap().clone();
        assert_eq!(one_heard.len(), 1);
        assert!(
            two_heard.is_empty(),
            "the asker is told with its answer, not apart"
        );
        assert_eq!(changing.asker_told(), &[(id, one_heard[0].1)]);
        let (file, number, tell) = one_heard[0];
        assert_eq!(file, id);
        let Tell::AndWait(until) = tell else {
            panic!("another holder must be waited for, was told {tell:?}");
        };
        assert!(
            until > Instant::now() && until <= Instant::now() + GRANT_TIME,
            "waited for until its grant runs out, at most"
        );
        assert!(
            number > read_after,
            "a take-back voids the grants before it"
        );
        // While the change runs, nothing is granted, read when it may.
        assert_eq!(grants.try_grant(id, &one, grants.now()), Grant::Refused);
        drop(changing);
        assert_eq!(grants.try_grant(id, &one, grants.now()), Grant::NeedsWatch);
    }

    #[test]
    fn nothing_is_granted_while_the_file_is_open_for_writing() {
        let (_dir, grants, id, told, one) = granted_file();
        // A file just made may have been granted before its opener counts
        // its open: the open takes that back, and waits for it.
        grants.opened_for_writing(id);
        assert!(
            matches!(told.told.lock().unwrap()[0].2, Tell::AndWait(_)),
            "the opener waits"
        );
        assert_eq!(grants.try_grant(id, &one, grants.now()), Grant::Refused);
        grants.closed_for_writing(id);
        // Closed and forgotten (no holder, no watch): watched afresh.
        assert_eq!(grants.try_grant(id, &one, grants.now()), Grant::NeedsWatch);
    }

    #[test]
    fn a_change_on_disk_takes_grants_back_without_waiting() {
        let (dir, _grants, id, told, _one) = granted_file();
        std::fs::write(dir.path().join("f"), b"changed").unwrap();
        let started = Instant::now();
        while told.told.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the watch thread never took the grant back"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (file, _, tell) = told.told.lock().unwrap()[0];
        assert_eq!((file, tell), (id, Tell::Soon));
    }

    #[test]
    fn a_holder_that_ends_holds_nothing() {
        let (_dir, grants, id, told, _one) = granted_file();
        grants.forget_holder(1);
        assert_eq!(
            grants.files(),
            0,
            "the file's watch went with its last holder"
        );
        drop(grants.change(&[id], None));
        assert!(told.told.lock().unwrap().is_empty());
    }
}
