//! DFSA (direct file system access): a migrated process's files, reopened
//! on the node where it runs, so that their I/O runs there.
//!
//! Without it every call on a descriptor goes to the deputy, which holds
//! the process's files at home: a network round trip per `read`. But a
//! regular file that every node reaches through MFS (`/mfs/<node>/...`)
//! can be opened again where the process runs, with the same flags and
//! offset; its reads, writes and seeks then run in the process itself (for
//! a file of that node at native speed: MFS hands it to the kernel).
//!
//! - At home, and at a remote that passes the process on, [`files_of`] /
//!   [`Dfsa::handover`] list those files; the list travels before the
//!   image.
//! - Where the process runs, [`Dfsa`] reopens its files before it runs
//!   again, as the process's user, installs each in the process at the
//!   same descriptor number and keeps a copy of it: the copy's offset is
//!   the process's. The seccomp filter lets the process's reads, writes
//!   and seeks on those descriptors run in the kernel: a call that went
//!   through the keeper cost a notification round trip (15-20 us here,
//!   half a second per GiB read 32 KiB at a time).
//! - A file the process opens while away is reopened as soon as home has
//!   opened it ([`Dfsa::adopt`]); the filter cannot take it in, so its
//!   calls go through the keeper, which lets them run.
//! - [`uses`] says what a call does with such a descriptor: run in the
//!   process, or at home after home's offset has been brought up to date,
//!   and whether the descriptor is forwarded from then on.
//! - Since the filter cannot be changed once installed, a call that would
//!   make such a descriptor name anything but its reopened file (a `dup`
//!   sharing it at home, a new file taking the number of one closed) brings
//!   the process home instead ([`Dfsa::needs_home`]).
//!
//! Locks are never taken on the reopened file: they are forwarded to the
//! deputy's open file description (MFS takes them at the file's owner), so
//! they hold while the process moves.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, Whence};
use omx_mfs::NodeId;
use omx_mfs::wire::link::{DfsaFile, DfsaList};

use crate::sys::seccomp;
use crate::syscalls::ON_DFSA_DESCRIPTOR;
use crate::usage::{FileHolder, holder_of};

/// The `open` flags a file is reopened with: its access mode and the
/// status flags that change how its I/O behaves. Creation flags are gone
/// once a file is open, and the close-on-exec flag belongs to the
/// descriptor.
const REOPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_LARGEFILE;

const AT_EMPTY_PATH: u64 = libc::AT_EMPTY_PATH as u64;
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

/// The flags to reopen a file with, and whether its descriptor is
/// close-on-exec, from the `flags:` of its fdinfo; `None` for an `O_PATH`
/// descriptor, which has no file to do I/O on.
pub fn reopen_flags(fdinfo_flags: i32) -> Option<(i32, bool)> {
    if fdinfo_flags & libc::O_PATH != 0 {
        return None;
    }
    Some((
        fdinfo_flags & REOPEN_FLAGS,
        fdinfo_flags & libc::O_CLOEXEC != 0,
    ))
}

/// The name, relative to the MFS mount, under which every node reaches the
/// file an fd link of the home node names: a file under `/mfs/<node>/`
/// keeps its name; a file of the home node is `<home>/<path beneath its
/// export root>`. `None` for what MFS cannot reach (pipes, sockets,
/// devices, /proc, deleted files, files outside the export). The flag says
/// whether the file was already under MFS at home.
pub fn cluster_path(
    target: &Path,
    mfs: &Path,
    export: &Path,
    home: NodeId,
) -> Option<(String, bool)> {
    let (relative, on_mfs) = match holder_of(target, mfs)? {
        FileHolder::Node(_) => (target.strip_prefix(mfs).ok()?.to_path_buf(), true),
        FileHolder::Local => {
            let beneath = target.strip_prefix(export).ok()?;
            if beneath.as_os_str().is_empty() {
                return None;
            }
            (Path::new(&home.get().to_string()).join(beneath), false)
        }
    };
    Some((relative.to_str()?.to_string(), on_mfs))
}

/// `pos:` and `flags:` of an fdinfo file.
fn parse_fdinfo(text: &str) -> Option<(u64, i32)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let pos = field("pos:")?.parse().ok()?;
    let flags = i32::from_str_radix(field("flags:")?, 8).ok()?;
    Some((pos, flags))
}

/// The file system uid and gid (the fourth of `Uid:` and `Gid:`) and the
/// supplementary groups of a `/proc/PID/status`.
fn parse_fs_ids(status: &str) -> Option<(u32, u32, Vec<u32>)> {
    let line = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    let fourth =
        |name: &str| -> Option<u32> { line(name)?.split_whitespace().nth(3)?.parse().ok() };
    let groups = line("Groups:")?
        .split_whitespace()
        .map(|g| g.parse().ok())
        .collect::<Option<Vec<u32>>>()?;
    Some((fourth("Uid:")?, fourth("Gid:")?, groups))
}

/// The files of process `pid` (about to leave home) that another node can
/// reopen through its MFS. `export` is the root of what this node exports
/// as `/mfs/<home>`, `mfs` where MFS is mounted.
pub fn files_of(pid: i32, home: NodeId, export: &Path, mfs: &Path) -> DfsaList {
    let Some((uid, gid, groups)) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(parse_fs_ids)
    else {
        return DfsaList::default();
    };
    // The fd links name files by their real path, so the export root must
    // be one too.
    let export = std::fs::canonicalize(export).unwrap_or_else(|_| export.to_path_buf());
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return DfsaList::default();
    };
    let mut files: Vec<DfsaFile> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(|fd| file_of(pid, fd, home, &export, mfs))
        .collect();
    files.sort_by_key(|f| f.fd);
    DfsaList {
        uid,
        gid,
        groups,
        files,
    }
}

/// Descriptor `fd` of `pid` as a DFSA file, if it is a regular file MFS
/// reaches.
/// Descriptor `fd` of process `pid` as a DFSA file, if every node reaches
/// it through MFS.
pub fn file_of(pid: i32, fd: i32, home: NodeId, export: &Path, mfs: &Path) -> Option<DfsaFile> {
    let link = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
    let target = std::fs::read_link(&link).ok()?;
    let (path, on_mfs) = cluster_path(&target, mfs, export, home)?;
    // Follows the descriptor itself, not the path it had.
    let meta = std::fs::metadata(&link).ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let (offset, fdinfo_flags) = parse_fdinfo(&info)?;
    let (flags, cloexec) = reopen_flags(fdinfo_flags)?;
    // The inode number every node's MFS shows for this file.
    let ino = if on_mfs {
        meta.ino()
    } else {
        omx_mfs::fs::inode_number(home, meta.dev(), meta.ino())
    };
    Some(DfsaFile {
        fd,
        path,
        flags,
        cloexec,
        offset,
        ino,
    })
}

/// Sets the deputy's offsets to those the process reached where it runs
/// (`pidfd` is the deputy's). A copy of each descriptor is taken and
/// moved: it shares the deputy's open file description, so the deputy
/// itself need not stop.
pub fn set_offsets(pidfd: Option<BorrowedFd<'_>>, offsets: &[(i32, u64)]) {
    for &(fd, offset) in offsets {
        let set = pidfd
            .ok_or_else(|| io::Error::other("no pidfd for the deputy"))
            .and_then(|pidfd| seccomp::pidfd_getfd(pidfd, fd))
            .and_then(|file| {
                nix::unistd::lseek(&file, offset as i64, Whence::SeekSet).map_err(io::Error::from)
            });
        if let Err(e) = set {
            tracing::warn!(
                "cannot move descriptor {fd} of the deputy to offset {offset} ({e}): \
                 the process will find it at an old offset when it comes home"
            );
        }
    }
}

/// What a call does with a DFSA descriptor it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Runs in the process, on its reopened file.
    Native,
    /// Runs at home on the deputy's descriptor, which must have the
    /// process's offset first (a lock relative to `SEEK_CUR`).
    AtHome,
    /// Runs at home after the offset is brought up to date, and may change
    /// or share the deputy's open file description (dup, `F_SETFL`,
    /// ioctl, sendfile, ...): from then on the descriptor is forwarded.
    Release,
    /// `close`: runs at home (after the offset, for whoever shares the
    /// description there); if it succeeds, the process's copy is closed
    /// too.
    Close,
    /// `F_SETFL`: runs at home; the descriptor stays DFSA if the flags do
    /// not change (programs set back the flags they found), else it is
    /// released.
    SetFlags,
}

/// The DFSA descriptors (among `dfsa`) that call `nr` with `args` names,
/// and what it does with each. Calls on a descriptor not listed here
/// neither read nor change its offset or status flags (`ftruncate`,
/// `fchmod`, `fstatfs`, ...): they run at home as before, and the
/// descriptor stays DFSA. `empty_path` tells whether the path argument at
/// an address is empty (for `AT_EMPTY_PATH`).
pub fn uses(
    nr: i64,
    args: &[u64; 6],
    dfsa: &[i32],
    empty_path: impl Fn(u64) -> bool,
) -> Vec<(i32, Use)> {
    let fd = |index: usize| args[index] as u32 as i32;
    let on_itself = |flags: u64| flags & AT_EMPTY_PATH != 0 && empty_path(args[1]);
    let named: Vec<(i32, Use)> = match nr {
        libc::SYS_newfstatat if on_itself(args[3]) => vec![(fd(0), Use::Native)],
        libc::SYS_statx if on_itself(args[2]) => vec![(fd(0), Use::Native)],
        libc::SYS_newfstatat | libc::SYS_statx => Vec::new(),
        nr if ON_DFSA_DESCRIPTOR.contains(&nr) => vec![(fd(0), Use::Native)],
        libc::SYS_close => vec![(fd(0), Use::Close)],
        libc::SYS_fcntl => fcntl_use(args[1] as i32)
            .map(|u| vec![(fd(0), u)])
            .unwrap_or_default(),
        // An ioctl of a regular file changes neither its offset nor a
        // status flag that matters to its I/O (FIONBIO, FIOASYNC).
        libc::SYS_ioctl => vec![(fd(0), Use::AtHome)],
        libc::SYS_dup | libc::SYS_vmsplice => vec![(fd(0), Use::Release)],
        libc::SYS_dup2 | libc::SYS_dup3 | libc::SYS_sendfile | libc::SYS_tee => {
            vec![(fd(0), Use::Release), (fd(1), Use::Release)]
        }
        libc::SYS_splice | libc::SYS_copy_file_range => {
            vec![(fd(0), Use::Release), (fd(2), Use::Release)]
        }
        libc::SYS_close_range if args[2] & CLOSE_RANGE_CLOEXEC == 0 => {
            let (first, last) = (args[0] as u32, args[1] as u32);
            dfsa.iter()
                .filter(|fd| (first..=last).contains(&(**fd as u32)))
                .map(|fd| (*fd, Use::Release))
                .collect()
        }
        _ => Vec::new(),
    };
    named
        .into_iter()
        .filter(|(fd, _)| dfsa.contains(fd))
        .collect()
}

/// What an fcntl command does with a DFSA descriptor; `None`: nothing
/// that matters (it reads or sets the descriptor's own flags).
fn fcntl_use(command: i32) -> Option<Use> {
    match command {
        libc::F_GETLK
        | libc::F_SETLK
        | libc::F_SETLKW
        | libc::F_OFD_GETLK
        | libc::F_OFD_SETLK
        | libc::F_OFD_SETLKW => Some(Use::AtHome),
        libc::F_GETFD | libc::F_SETFD | libc::F_GETFL => None,
        libc::F_SETFL => Some(Use::SetFlags),
        _ => Some(Use::Release),
    }
}

/// A DFSA file where the process runs.
struct Entry {
    file: DfsaFile,
    /// Once reopened and installed: our copy of the process's file (one
    /// open file description), and the offset home last heard of.
    open: Option<Open>,
}

struct Open {
    own: OwnedFd,
    synced: u64,
}

/// The process's DFSA files on the node where it runs.
pub struct Dfsa {
    mfs: PathBuf,
    /// Who opens them.
    user: User,
    files: BTreeMap<i32, Entry>,
    /// Descriptors of the process that hold a file we installed, DFSA or
    /// released since (released ones are never used: every call on them
    /// is forwarded).
    copies: BTreeSet<i32>,
    /// The descriptors whose calls the filter lets run in the kernel.
    fast: BTreeSet<i32>,
    /// Fast descriptors the process closed: the filter still lets calls
    /// on their numbers run here (and fail with EBADF, as at home), so no
    /// new file may take one of those numbers at home while the process
    /// is here.
    vacated: BTreeSet<i32>,
}

impl Dfsa {
    /// The files of `list`, to reopen under `mfs`.
    pub fn new(mfs: PathBuf, list: DfsaList) -> Dfsa {
        Dfsa {
            mfs,
            user: User {
                uid: list.uid,
                gid: list.gid,
                groups: list.groups,
            },
            files: list
                .files
                .into_iter()
                .map(|file| (file.fd, Entry { file, open: None }))
                .collect(),
            copies: BTreeSet::new(),
            fast: BTreeSet::new(),
            vacated: BTreeSet::new(),
        }
    }

    /// Reopens every file now, before the process runs, and returns the
    /// descriptors its filter is to let run in the kernel (at most
    /// [`seccomp::MAX_FAST_DESCRIPTORS`]; calls on the others reach the
    /// keeper, which lets them run). A file that cannot be reopened is
    /// forwarded from now on, and so is one at or above `fd_limit`, the
    /// process's soft `RLIMIT_NOFILE` (the kernel would not install it).
    pub fn reopen_all(&mut self, fd_limit: Option<u64>) -> Vec<i32> {
        let (mfs, user) = (&self.mfs, &self.user);
        self.files.retain(|fd, entry| {
            if entry.open.is_some() {
                return true;
            }
            if fd_limit.is_some_and(|limit| *fd as u64 >= limit) {
                tracing::debug!("descriptor {fd} stays forwarded: at or above the process's limit");
                return false;
            }
            match reopen(mfs, user, &entry.file) {
                Ok(own) => {
                    entry.open = Some(Open {
                        own,
                        synced: entry.file.offset,
                    });
                    true
                }
                Err(e) => {
                    tracing::debug!("descriptor {fd} ({}) stays forwarded: {e}", entry.file.path);
                    false
                }
            }
        });
        self.fast = self
            .files
            .keys()
            .copied()
            .take(seccomp::MAX_FAST_DESCRIPTORS)
            .collect();
        self.fast.iter().copied().collect()
    }

    /// Installs every reopened file in the process, which waits in
    /// notification `id`, at its descriptor number.
    pub fn install_all(&mut self, listener: BorrowedFd<'_>, id: u64) -> io::Result<()> {
        for (fd, entry) in &self.files {
            if let Some(open) = &entry.open {
                seccomp::add_fd(listener, id, open.own.as_fd(), *fd, entry.file.cloexec)?;
                self.copies.insert(*fd);
            }
        }
        Ok(())
    }

    /// Reopens here a file the process opened at home while here, and
    /// installs it at its descriptor while the process waits in
    /// notification `id` for that open's result. Calls on it then run here
    /// as the keeper lets them (the filter was made before); `false` if it
    /// cannot be reopened: it stays forwarded.
    pub fn adopt(&mut self, file: DfsaFile, listener: BorrowedFd<'_>, id: u64) -> bool {
        let fd = file.fd;
        let installed = reopen(&self.mfs, &self.user, &file).and_then(|own| {
            seccomp::add_fd(listener, id, own.as_fd(), fd, file.cloexec)?;
            Ok(own)
        });
        match installed {
            Ok(own) => {
                let open = Some(Open {
                    own,
                    synced: file.offset,
                });
                self.files.insert(fd, Entry { file, open });
                self.copies.insert(fd);
                true
            }
            Err(e) => {
                tracing::debug!("descriptor {fd} ({}) stays forwarded: {e}", file.path);
                false
            }
        }
    }

    /// Why call `nr` (naming the DFSA descriptors as `uses` says) must run
    /// with the process at home, if it must: it would leave a fast
    /// descriptor naming something other than its reopened file here (a
    /// description shared at home by `dup`, changed flags), or a new
    /// descriptor could take the number of a fast one the process closed.
    pub fn needs_home(&self, nr: i64, args: &[u64; 6], uses: &[(i32, Use)]) -> Option<String> {
        let call = crate::syscalls::lookup(nr).name;
        for (fd, u) in uses {
            // A close is followed: the number is vacated below.
            if *u != Use::Close && self.released_by(*fd, *u, args) && self.fast.contains(fd) {
                return Some(format!(
                    "{call} on descriptor {fd}, whose I/O runs here in the kernel"
                ));
            }
        }
        match self.vacated.first() {
            Some(fd) if may_create_descriptor(nr, args) => Some(format!(
                "{call} may give a new file descriptor {fd}, whose I/O ran here in the kernel \
                 before the process closed it"
            )),
            _ => None,
        }
    }

    /// Whether use `u` of DFSA descriptor `fd` (by a call with `args`)
    /// leaves it forwarded from then on.
    pub fn released_by(&self, fd: i32, u: Use, args: &[u64; 6]) -> bool {
        match u {
            Use::Release | Use::Close => true,
            Use::SetFlags => self.changes_flags(fd, args[2]),
            Use::Native | Use::AtHome => false,
        }
    }

    /// Whether `F_SETFL` with `flags` changes the status flags of the
    /// process's copy at `fd` (unknown: yes).
    fn changes_flags(&self, fd: i32, flags: u64) -> bool {
        const SETTABLE: i32 =
            libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME | libc::O_NONBLOCK;
        let Some(Entry {
            open: Some(open), ..
        }) = self.files.get(&fd)
        else {
            return true;
        };
        match nix::fcntl::fcntl(&open.own, nix::fcntl::FcntlArg::F_GETFL) {
            Ok(now) => (now ^ flags as i32) & SETTABLE != 0,
            Err(_) => true,
        }
    }

    /// The descriptors that are DFSA now.
    pub fn fds(&self) -> Vec<i32> {
        self.files.keys().copied().collect()
    }

    /// The offsets among `fds` that moved since home last heard of them;
    /// home is assumed to hear of them now.
    pub fn offsets_to_sync(&mut self, fds: &[i32]) -> Vec<(i32, u64)> {
        let mut moved = Vec::new();
        for fd in fds {
            let Some(Entry {
                open: Some(open), ..
            }) = self.files.get_mut(fd)
            else {
                continue;
            };
            if let Some(offset) = offset_of(&open.own)
                && offset != open.synced
            {
                open.synced = offset;
                moved.push((*fd, offset));
            }
        }
        moved
    }

    /// Every offset that moved since home last heard of it.
    pub fn all_offsets_to_sync(&mut self) -> Vec<(i32, u64)> {
        self.offsets_to_sync(&self.fds())
    }

    /// Forwards `fd` from now on.
    pub fn release(&mut self, fd: i32) {
        self.files.remove(&fd);
    }

    /// Whether the process holds a copy we installed at `fd`.
    pub fn has_copy(&self, fd: i32) -> bool {
        self.copies.contains(&fd)
    }

    /// The process closed its copy at `fd`.
    pub fn closed_copy(&mut self, fd: i32) {
        self.copies.remove(&fd);
        if self.fast.remove(&fd) {
            self.vacated.insert(fd);
        }
    }

    /// Whether the filter lets calls on `fd` run in the kernel.
    pub fn is_fast(&self, fd: i32) -> bool {
        self.fast.contains(&fd)
    }

    /// The list for the node the process moves on to, with the offsets it
    /// has now.
    pub fn handover(&self) -> DfsaList {
        let files = self
            .files
            .values()
            .map(|entry| DfsaFile {
                offset: entry
                    .open
                    .as_ref()
                    .and_then(|open| offset_of(&open.own))
                    .unwrap_or(entry.file.offset),
                ..entry.file.clone()
            })
            .collect();
        DfsaList {
            uid: self.user.uid,
            gid: self.user.gid,
            groups: self.user.groups.clone(),
            files,
        }
    }
}

/// Calls that give the process new descriptors (by name, as in the table).
const CREATE_DESCRIPTORS: &[&str] = &[
    "open",
    "creat",
    "openat",
    "openat2",
    "open_by_handle_at",
    "open_tree",
    "open_tree_attr",
    "fsopen",
    "fsmount",
    "fspick",
    "dup",
    "dup2",
    "dup3",
    "socket",
    "socketpair",
    "accept",
    "accept4",
    "pipe",
    "pipe2",
    "recvmsg",
    "recvmmsg",
    "eventfd",
    "eventfd2",
    "epoll_create",
    "epoll_create1",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "inotify_init",
    "inotify_init1",
    "fanotify_init",
    "memfd_create",
    "memfd_secret",
    "userfaultfd",
    "perf_event_open",
    "bpf",
    "pidfd_open",
    "pidfd_getfd",
    "mq_open",
    "io_uring_setup",
    "io_uring_enter",
    "landlock_create_ruleset",
    "seccomp",
    "clone",
    "clone3",
];

/// Whether call `nr` with `args`, run at home, may give the process a new
/// descriptor (in its result, in memory, or at a number it names). Unknown
/// ioctls may: some return descriptors.
pub fn may_create_descriptor(nr: i64, args: &[u64; 6]) -> bool {
    /// `getsockopt` of a pidfd for the peer of a Unix socket.
    const SO_PEERPIDFD: u64 = 77;
    match nr {
        libc::SYS_fcntl => matches!(args[1] as i32, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC),
        libc::SYS_getsockopt => args[1] == libc::SOL_SOCKET as u64 && args[2] == SO_PEERPIDFD,
        // The ioctls the keeper forwards (terminal ones, `marshal::ioctl`)
        // make none; any other brings the process home anyway.
        libc::SYS_ioctl => false,
        _ => CREATE_DESCRIPTORS.contains(&crate::syscalls::lookup(nr).name),
    }
}

fn offset_of(file: &OwnedFd) -> Option<u64> {
    nix::unistd::lseek(file, 0, Whence::SeekCur)
        .ok()
        .map(|o| o as u64)
}

/// Whom the process's files are opened as.
struct User {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

/// Opens `file` through the MFS mounted at `mfs` as `user` (MFS checks the
/// caller's fsuid, fsgid and groups at the file's owner), checks that it
/// is the same file, and moves to its offset.
fn reopen(mfs: &Path, user: &User, file: &DfsaFile) -> io::Result<OwnedFd> {
    let path = mfs.join(&file.path);
    let flags = OFlag::from_bits_truncate(file.flags) | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let own = as_user(user, || nix::fcntl::open(&path, flags, Mode::empty()))??;
    let stat = nix::sys::stat::fstat(&own)?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG || stat.st_ino != file.ino {
        return Err(io::Error::other(format!(
            "{} is not the file the process has open any more",
            path.display()
        )));
    }
    nix::unistd::lseek(&own, file.offset as i64, Whence::SeekSet)?;
    Ok(own)
}

/// Runs `f` with the keeper's file system identity and groups set to
/// `user`'s (the keeper is single-threaded), then takes its own back.
fn as_user<T>(user: &User, f: impl FnOnce() -> T) -> io::Result<T> {
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let old_groups = nix::unistd::getgroups()?;
    nix::unistd::setgroups(&groups)?;
    let old_gid = nix::unistd::setfsgid(gid);
    let old_uid = nix::unistd::setfsuid(uid);
    // setfsuid tells no errors: a second call returns what is in force.
    let taken = nix::unistd::setfsuid(uid) == uid && nix::unistd::setfsgid(gid) == gid;
    let result = taken.then(f);
    nix::unistd::setfsuid(old_uid);
    nix::unistd::setfsgid(old_gid);
    nix::unistd::setgroups(&old_groups)?;
    result.ok_or_else(|| io::Error::other(format!("cannot act as uid {uid}, gid {gid}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u16) -> NodeId {
        NodeId::new(n).unwrap()
    }

    #[test]
    fn files_are_named_for_every_node() {
        let (mfs, root) = (Path::new("/mfs"), Path::new("/"));
        assert_eq!(
            cluster_path(Path::new("/mfs/2/data/x"), mfs, root, node(1)),
            Some(("2/data/x".into(), true))
        );
        assert_eq!(
            cluster_path(Path::new("/home/u/x"), mfs, root, node(1)),
            Some(("1/home/u/x".into(), false))
        );
        let export = Path::new("/srv/export");
        assert_eq!(
            cluster_path(Path::new("/srv/export/a/b"), mfs, export, node(3)),
            Some(("3/a/b".into(), false))
        );
        // Outside the export, the export itself, and what is no file.
        assert_eq!(
            cluster_path(Path::new("/tmp/x"), mfs, export, node(3)),
            None
        );
        assert_eq!(cluster_path(export, mfs, export, node(3)), None);
        for target in [
            "/proc/1/status",
            "/sys/kernel/x",
            "/dev/null",
            "/tmp/x (deleted)",
            "pipe:[77]",
            "anon_inode:[eventfd]",
            "/mfs/here",
        ] {
            assert_eq!(
                cluster_path(Path::new(target), mfs, root, node(1)),
                None,
                "{target}"
            );
        }
    }

    #[test]
    fn files_are_reopened_with_their_status_flags_only() {
        let open = libc::O_RDWR | libc::O_APPEND | libc::O_LARGEFILE;
        assert_eq!(
            reopen_flags(open | libc::O_CLOEXEC | libc::O_CREAT | libc::O_TRUNC),
            Some((open, true))
        );
        assert_eq!(
            reopen_flags(libc::O_WRONLY | libc::O_EXCL | libc::O_NOCTTY),
            Some((libc::O_WRONLY, false))
        );
        // __FMODE_EXEC and FMODE_NONOTIFY are the kernel's, not open's.
        assert_eq!(
            reopen_flags(libc::O_RDONLY | 0x20 | 0x400_0000),
            Some((0, false))
        );
        assert_eq!(reopen_flags(libc::O_PATH | libc::O_CLOEXEC), None);
    }

    #[test]
    fn fdinfo_and_status_are_parsed() {
        let info = "pos:\t4096\nflags:\t0102002\nmnt_id:\t31\nino:\t1234\n";
        assert_eq!(parse_fdinfo(info), Some((4096, 0o102002)));
        assert_eq!(parse_fdinfo("flags:\t02\n"), None);
        let status =
            "Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\nGroups:\t4 24 \n";
        assert_eq!(parse_fs_ids(status), Some((1003, 53, vec![4, 24])));
        let status = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\n";
        assert_eq!(parse_fs_ids(status), Some((0, 0, vec![])));
        assert_eq!(parse_fs_ids("Uid:\t1\n"), None);
    }

    #[test]
    fn calls_on_dfsa_descriptors_run_where_they_can() {
        let dfsa = [3, 5];
        let no_path = |_| false;
        let call = |nr: i64, args: [u64; 6]| uses(nr, &args, &dfsa, no_path);
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_lseek,
            libc::SYS_pread64,
            libc::SYS_pwritev2,
            libc::SYS_fstat,
            libc::SYS_fsync,
        ] {
            assert_eq!(call(nr, [3, 0, 0, 0, 0, 0]), vec![(3, Use::Native)]);
            assert_eq!(call(nr, [4, 0, 0, 0, 0, 0]), vec![], "not DFSA");
        }
        assert_eq!(
            call(libc::SYS_close, [5, 0, 0, 0, 0, 0]),
            vec![(5, Use::Close)]
        );
        let lock = [3, libc::F_SETLKW as u64, 0, 0, 0, 0];
        assert_eq!(call(libc::SYS_fcntl, lock), vec![(3, Use::AtHome)]);
        let getfd = [3, libc::F_GETFD as u64, 0, 0, 0, 0];
        assert_eq!(call(libc::SYS_fcntl, getfd), vec![]);
        let setfl = [3, libc::F_SETFL as u64, 0, 0, 0, 0];
        assert_eq!(call(libc::SYS_fcntl, setfl), vec![(3, Use::SetFlags)]);
        let tcgets = [3, libc::TCGETS, 0, 0, 0, 0];
        assert_eq!(call(libc::SYS_ioctl, tcgets), vec![(3, Use::AtHome)]);
        assert_eq!(
            call(libc::SYS_dup2, [4, 5, 0, 0, 0, 0]),
            vec![(5, Use::Release)],
            "replaced at home"
        );
        assert_eq!(
            call(libc::SYS_sendfile, [5, 3, 0, 9, 0, 0]),
            vec![(5, Use::Release), (3, Use::Release)]
        );
        assert_eq!(call(libc::SYS_ftruncate, [3, 0, 0, 0, 0, 0]), vec![]);
        assert_eq!(
            call(libc::SYS_close_range, [4, u32::MAX as u64, 0, 0, 0, 0]),
            vec![(5, Use::Release)]
        );
        let cloexec = [0, u32::MAX as u64, CLOSE_RANGE_CLOEXEC, 0, 0, 0];
        assert_eq!(call(libc::SYS_close_range, cloexec), vec![]);
    }

    #[test]
    fn calls_that_may_make_a_descriptor_are_known() {
        for name in CREATE_DESCRIPTORS {
            assert!(
                crate::syscalls::TABLE.iter().any(|s| s.name == *name),
                "{name} is not in the table"
            );
        }
        let no_args = [0; 6];
        for nr in [
            libc::SYS_openat,
            libc::SYS_pipe2,
            libc::SYS_recvmsg,
            libc::SYS_dup2,
        ] {
            assert!(may_create_descriptor(nr, &no_args), "{nr}");
        }
        for nr in [libc::SYS_write, libc::SYS_close, libc::SYS_getppid] {
            assert!(!may_create_descriptor(nr, &no_args), "{nr}");
        }
        let peer_pidfd = [3, libc::SOL_SOCKET as u64, 77, 0, 0, 0];
        assert!(may_create_descriptor(libc::SYS_getsockopt, &peer_pidfd));
        let peer_creds = [
            3,
            libc::SOL_SOCKET as u64,
            libc::SO_PEERCRED as u64,
            0,
            0,
            0,
        ];
        assert!(!may_create_descriptor(libc::SYS_getsockopt, &peer_creds));
        let fcntl =
            |command: i32| may_create_descriptor(libc::SYS_fcntl, &[3, command as u64, 0, 0, 0, 0]);
        assert!(fcntl(libc::F_DUPFD_CLOEXEC));
        assert!(!fcntl(libc::F_SETFL));
    }

    #[test]
    fn a_stat_of_the_descriptor_itself_runs_where_the_process_is() {
        let dfsa = [3];
        let empty = AT_EMPTY_PATH;
        let at = |nr, args: [u64; 6], empty_path: bool| uses(nr, &args, &dfsa, |_| empty_path);
        assert_eq!(
            at(libc::SYS_newfstatat, [3, 0x1000, 0x2000, empty, 0, 0], true),
            vec![(3, Use::Native)]
        );
        assert_eq!(
            at(libc::SYS_statx, [3, 0x1000, empty, 0x7ff, 0x2000, 0], true),
            vec![(3, Use::Native)]
        );
        // A path of its own, or no AT_EMPTY_PATH: a path call, at home.
        assert_eq!(
            at(
                libc::SYS_newfstatat,
                [3, 0x1000, 0x2000, empty, 0, 0],
                false
            ),
            vec![]
        );
        assert_eq!(
            at(libc::SYS_statx, [3, 0x1000, 0, 0x7ff, 0x2000, 0], true),
            vec![]
        );
    }
}
