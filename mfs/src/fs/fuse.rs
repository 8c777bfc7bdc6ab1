//! The `/mfs` tree the kernel sees: `/mfs/<N>/...` is node N's exported
//! tree, and `here`, `home`, `magic`, `lastexec`, `selected` are symbolic
//! links that name a node for the process that reads them.
//!
//! Every operation runs at the node that owns the file, as the calling
//! process: this node's own files through [`Exporter`] in this process
//! (and opened files are handed to the kernel for passthrough, so their
//! reads and writes never come here), other nodes' files over an MFS
//! connection. Other nodes' files are opened for direct I/O, and every
//! path a program names is looked up at the owner, so every stat, read and
//! write sees the owner's file as it is now. The kernel keeps a regular
//! file's attributes only when its owner granted them
//! ([`super::attr_grants`]): the owner takes them back before any change
//! through MFS, and as soon as it sees one made on its disk. It may keep
//! the entries of directories (see [`DIRECTORY_ENTRY_TTL`]): every
//! operation names its file by its whole path from the exported root, and
//! the owner walks that path again, as the caller, each time.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::sync::watch;
use tracing::{debug, info};

use super::client::{FsClient, RemoteFile, Wait};
use super::creds::{CallerGroups, Credentials, Squash};
use super::export::Exporter;
use super::kept_attrs::KeptAttrs;
use super::look_ahead::{Ask, DirKey, LookAhead};
use super::stats::FsStats;
use crate::NodeId;
use crate::cluster_map::ClusterMap;
use crate::wire::fs::{
    Attr, Caller, FsOp, FsResult, LockSpec, MAX_FS_IO, SetAttrs, SetTime, Timespec, child_path,
};

/// Not kept by the kernel (see the module documentation).
const NO_CACHE: Duration = Duration::ZERO;

/// How long the kernel may keep a directory's entry (its name and inode)
/// without asking again. Nothing a process sees depends on it, because
/// MFS resolves paths, not inodes: an operation below a kept directory
/// is sent as the whole path, which the owner walks again with the
/// caller's credentials (so a directory renamed or removed at the owner
/// gives ENOENT at once, and a new one of the same name is the one
/// used), and a directory that turns up under another name carries what
/// is below it along (`Inode::parent`). A stat of a kept directory that
/// now names another file answers ESTALE, which makes the kernel walk
/// the path afresh. What it saves is a round trip to the owner for
/// every directory of every path a program names.
const DIRECTORY_ENTRY_TTL: Duration = Duration::from_secs(60);

/// Deepest chain of directories a path is built from; deeper means a
/// loop in what was found (a bind mount of a directory into itself).
const MAX_DEPTH: usize = 4096;
const ROOT: u64 = 1;

/// The magic links, in their inode order (2..).
const MAGIC: [&str; 5] = ["here", "home", "magic", "lastexec", "selected"];

/// Where a process is, as the magic links need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The node it runs on now.
    pub here: NodeId,
    /// Its home node.
    pub home: NodeId,
    /// Where its last successful execve ran.
    pub lastexec: NodeId,
    /// The node it selected through the control interface.
    pub selected: NodeId,
    /// Where its last create through `magic` went.
    pub magic: NodeId,
}

/// Tells MFS where this node's processes are (the migration layer knows).
pub trait Whereabouts: Send + Sync {
    fn place(&self, pid: u32) -> Place;
}

/// Whereabouts of a node whose processes never move.
pub struct Stationary(pub NodeId);

impl Whereabouts for Stationary {
    fn place(&self, _pid: u32) -> Place {
        Place {
            here: self.0,
            home: self.0,
            lastexec: self.0,
            selected: self.0,
            magic: self.0,
        }
    }
}

/// An inode the kernel holds: a file at a node.
struct Inode {
    node: NodeId,
    /// The directory it was last found in ([`ROOT`] for a node's
    /// exported root) and its name there. Its path is built from these
    /// when it is used, so that when a directory is found under a new
    /// name (renamed at its owner), everything below it follows.
    parent: u64,
    name: Vec<u8>,
    dev: u64,
    /// Its type (`S_IFMT` bits): the owner's file system may give a
    /// removed file's inode number to a new file of another type.
    kind: u32,
    /// Told to the kernel with the inode number. The owner's file system
    /// gives a removed file's number to the next file it makes; a
    /// directory, node or link made (mkdir, mknod, symlink) under a number
    /// this mount still knows, or a file of another type found under it,
    /// gets a new generation, so the kernel does not take it for the
    /// removed one (a removed directory's inode it still holds refuses
    /// new entries with ENOENT).
    generation: u64,
    lookups: u64,
}

/// The path of inode `ino` relative to its node's exported root ("" is
/// the root), built from the directories it was found in.
fn path_of(inodes: &HashMap<u64, Inode>, ino: u64) -> Result<Vec<u8>, Errno> {
    let mut names: Vec<&[u8]> = Vec::new();
    let mut at = ino;
    for _ in 0..MAX_DEPTH {
        let inode = inodes.get(&at).ok_or(Errno::ENOENT)?;
        if inode.parent == ROOT {
            names.reverse();
            return Ok(names.join(&b'/'));
        }
        names.push(&inode.name);
        at = inode.parent;
    }
    Err(Errno::ELOOP)
}

/// An open file.
enum Open {
    Here {
        handle: u64,
        /// Keeps the kernel's passthrough registration alive while open.
        _backing: Option<Arc<BackingId>>,
    },
    Away {
        node: NodeId,
        handle: u64,
        generation: u64,
    },
}

/// A directory's entries (name, inode, type), read at opendir.
type Listing = Vec<(Vec<u8>, u64, FileType)>;

/// Records that `name` in directory `parent` ([`ROOT`] for a node's
/// exported root) is the file `attr` at `node`, just `made` by the
/// operation or found; gives its inode number and generation.
fn remember(
    inodes: &Mutex<HashMap<u64, Inode>>,
    node: NodeId,
    parent: u64,
    name: &[u8],
    attr: &Attr,
    made: bool,
) -> (u64, Generation) {
    let ino = inode_number(node, attr.dev, attr.ino);
    let kind = attr.mode & libc::S_IFMT;
    let mut inodes = inodes.lock().expect("inodes lock");
    let known = inodes.contains_key(&ino);
    let inode = inodes.entry(ino).or_insert(Inode {
        node,
        parent,
        name: Vec::new(),
        dev: attr.dev,
        kind,
        generation: 0,
        lookups: 0,
    });
    if known && (made || inode.kind != kind) {
        inode.generation += 1;
    }
    inode.kind = kind;
    inode.parent = parent;
    inode.name = name.to_vec();
    inode.lookups += 1;
    (ino, Generation(inode.generation))
}

/// After a rename of `from` to `to` (each a directory and a name) at
/// `node`, the file found under the old name is under the new one, and
/// what is below it follows; an exchange swaps the two.
fn renamed(
    inodes: &Mutex<HashMap<u64, Inode>>,
    node: NodeId,
    from: (u64, &[u8]),
    to: (u64, &[u8]),
    exchange: bool,
) {
    let mut inodes = inodes.lock().expect("inodes lock");
    for inode in inodes.values_mut() {
        if inode.node != node {
            continue;
        }
        let at = (inode.parent, inode.name.as_slice());
        let moved = if at == from {
            to
        } else if exchange && at == to {
            from
        } else {
            continue;
        };
        inode.parent = moved.0;
        inode.name = moved.1.to_vec();
    }
}

/// Answers with the entry of `name` in `parent`: the file `attr` at
/// `node`, its attributes not kept by the kernel.
fn entry(
    inodes: &Mutex<HashMap<u64, Inode>>,
    node: NodeId,
    parent: u64,
    name: &[u8],
    attr: &Attr,
    made: bool,
    reply: ReplyEntry,
) {
    let (ino, generation) = remember(inodes, node, parent, name, attr, made);
    let ttl = if attr.mode & libc::S_IFMT == libc::S_IFDIR {
        DIRECTORY_ENTRY_TTL
    } else {
        NO_CACHE
    };
    reply.entry_with_ttls(&NO_CACHE, &ttl, &file_attr(ino, attr), generation);
}

/// Answers with the entry an operation on `name` in `parent` at `node`
/// gave, letting the kernel keep its attributes if the owner granted
/// them.
fn reply_entry(
    inodes: &Mutex<HashMap<u64, Inode>>,
    attrs: &KeptAttrs,
    Answered {
        result,
        asked,
        connection,
    }: Answered,
    node: NodeId,
    (parent, name): (u64, &[u8]),
    made: bool,
    reply: ReplyEntry,
) {
    match result {
        Ok(FsResult::Attr(attr)) => entry(inodes, node, parent, name, &attr, made, reply),
        // The owner lets the kernel keep the attributes (of a regular
        // file: its entry is still asked for every time).
        Ok(FsResult::Granted { attr, number }) => {
            let (ino, generation) = remember(inodes, node, parent, name, &attr, made);
            attrs.answer(
                node,
                ((attr.dev, attr.ino), number, connection),
                asked,
                ino,
                |keep| reply.entry_with_ttls(&keep, &NO_CACHE, &file_attr(ino, &attr), generation),
            )
        }
        Ok(other) => reply.error(unexpected(&other)),
        Err(e) => reply.error(e),
    }
}

/// The /mfs file system.
pub struct Mfs {
    me: NodeId,
    exporter: Arc<Exporter>,
    client: Arc<FsClient>,
    map: watch::Receiver<Arc<ClusterMap>>,
    whereabouts: Arc<dyn Whereabouts>,
    squash: Squash,
    inodes: Arc<Mutex<HashMap<u64, Inode>>>,
    /// Open files by handle, with their inode.
    opens: Mutex<HashMap<u64, (u64, Open)>>,
    listings: Mutex<HashMap<u64, Listing>>,
    backing: Mutex<HashMap<u64, Weak<BackingId>>>,
    next_handle: AtomicU64,
    passthrough: AtomicBool,
    stats: Arc<FsStats>,
    caller_groups: CallerGroups,
    look_ahead: Arc<LookAhead>,
}

/// An owner's answer, with what keeping the attributes it may grant
/// needs: when it was asked for, and on which connection it came.
struct Answered {
    result: Result<FsResult, Errno>,
    asked: Instant,
    connection: u64,
}

/// A FUSE inode number for file `ino` of device `dev` at `node`: the same
/// every time and at every node (hard links share it, readdir can give it,
/// a migrated process's keepers check a reopened file with it), and clear
/// of the fixed inodes.
pub fn inode_number(node: NodeId, dev: u64, ino: u64) -> u64 {
    let mut x = (node.get() as u64) << 48 ^ dev.rotate_left(24) ^ ino;
    // splitmix64 finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    if x < 16 { x + 16 } else { x }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dirent_type(kind: u8) -> FileType {
    match kind {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn system_time((secs, nanos): (i64, u32)) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}

fn file_attr(ino: u64, attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: attr.size,
        blocks: attr.blocks,
        atime: system_time(attr.atime),
        mtime: system_time(attr.mtime),
        ctime: system_time(attr.ctime),
        crtime: system_time(attr.ctime),
        kind: file_type(attr.mode),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink as u32,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev as u32,
        blksize: attr.blksize,
        flags: 0,
    }
}

fn synthetic_attr(ino: u64, kind: FileType, perm: u16, size: u64) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn set_time(time: Option<TimeOrNow>) -> Option<SetTime> {
    time.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(Timespec {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            }),
            Err(e) => {
                let d = e.duration();
                let (secs, nanos) = if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                };
                SetTime::At(Timespec { secs, nanos })
            }
        },
    })
}

fn errno(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn unexpected(result: &FsResult) -> Errno {
    debug!("unexpected MFS answer {result:?}");
    Errno::EIO
}

impl Mfs {
    pub fn new(
        me: NodeId,
        exporter: Arc<Exporter>,
        client: Arc<FsClient>,
        map: watch::Receiver<Arc<ClusterMap>>,
        whereabouts: Arc<dyn Whereabouts>,
        squash: Squash,
    ) -> Mfs {
        Mfs {
            me,
            exporter,
            client,
            map,
            whereabouts,
            squash,
            inodes: Arc::new(Mutex::new(HashMap::new())),
            opens: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            backing: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            passthrough: AtomicBool::new(false),
            stats: Arc::new(FsStats::default()),
            caller_groups: CallerGroups::default(),
            look_ahead: Arc::default(),
        }
    }

    /// What this mount does, counted (shared: it keeps counting after the
    /// mount takes the `Mfs`).
    pub fn stats(&self) -> Arc<FsStats> {
        self.stats.clone()
    }

    fn caller(&self, req: &Request) -> Caller {
        // Root's groups decide nothing (the owner's thread acts with
        // root's capabilities, or squashes root to an id without
        // groups), and reading them costs a read of /proc, several
        // microseconds, on every operation.
        let groups = if req.uid() == 0 {
            Vec::new()
        } else {
            self.caller_groups.of(req.pid())
        };
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            groups,
            pid: req.pid(),
        }
    }

    /// Runs `op` at `node` as the requester; `generation` for an open
    /// file of another node.
    fn ask(
        &self,
        req: &Request,
        node: NodeId,
        op: FsOp,
        generation: Option<u64>,
        wait: Wait,
    ) -> Result<(FsResult, u64), Errno> {
        let caller = self.caller(req);
        self.stats.count_op(node == self.me);
        if let FsOp::Write { data, .. } = &op {
            self.stats.count_written(data.len());
        }
        let reads = matches!(op, FsOp::Read { .. });
        let (result, generation) = if node == self.me {
            let credentials = Credentials::of(&caller, false, self.squash);
            self.exporter.settle_write_leases(&op, None);
            (self.exporter.execute(&credentials, op), 0)
        } else {
            self.client
                .call(node, &caller, op, generation, wait)
                .map_err(errno)?
        };
        match result {
            FsResult::Errno(e) => Err(Errno::from_i32(e)),
            FsResult::Data(data) if reads => {
                self.stats.count_read(data.len());
                Ok((FsResult::Data(data), generation))
            }
            other => Ok((other, generation)),
        }
    }

    fn run(&self, req: &Request, node: NodeId, op: FsOp) -> Result<FsResult, Errno> {
        self.ask(req, node, op, None, Wait::Bounded).map(|(r, _)| r)
    }

    /// Runs `op` at `node`, keeping what a grant in its answer needs.
    fn answered(&self, req: &Request, node: NodeId, op: FsOp) -> Answered {
        let asked = Instant::now();
        let (result, connection) = match self.ask(req, node, op, None, Wait::Bounded) {
            Ok((result, connection)) => (Ok(result), connection),
            Err(e) => (Err(e), 0),
        };
        Answered {
            result,
            asked,
            connection,
        }
    }

    /// The node and path of inode `ino`.
    fn locate(&self, ino: INodeNo) -> Result<(NodeId, Vec<u8>, u64), Errno> {
        let inodes = self.inodes.lock().expect("inodes lock");
        let inode = inodes.get(&ino.0).ok_or(Errno::ENOENT)?;
        Ok((inode.node, path_of(&inodes, ino.0)?, inode.dev))
    }

    /// Whether `attr`, found at inode `ino`'s path, is still that inode:
    /// the same inode number and the same type.
    fn still_there(&self, ino: u64, node: NodeId, attr: &Attr) -> bool {
        let inodes = self.inodes.lock().expect("inodes lock");
        inode_number(node, attr.dev, attr.ino) == ino
            && inodes
                .get(&ino)
                .is_some_and(|inode| inode.kind == attr.mode & libc::S_IFMT)
    }

    /// Runs `op` at `node` and answers whether it was done; another
    /// node's answer goes to the kernel from the connection's task, as in
    /// [`answer_entry`](Self::answer_entry).
    fn answer_done(&self, req: &Request, node: NodeId, op: FsOp, reply: ReplyEmpty) {
        self.run_then(req, node, op, move |result, _| match result {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    /// Runs `op` at `node` as the requester and hands its result, and
    /// the connection's generation (0 here), to `then`: here for this
    /// node's files, on the connection's task for another node's
    /// ([`ask_then`](Self::ask_then)).
    fn run_then(
        &self,
        req: &Request,
        node: NodeId,
        op: FsOp,
        then: impl FnOnce(Result<FsResult, Errno>, u64) + Send + 'static,
    ) {
        if node == self.me {
            then(self.run(req, node, op), 0)
        } else {
            self.ask_then(req, node, op, then)
        }
    }

    /// Runs `op` at another node as the requester, and hands its result
    /// (the owner's errno as an error) and the connection's generation to
    /// `then`, which runs on the connection's task when the answer comes
    /// ([`FsClient::call_then`]).
    fn ask_then(
        &self,
        req: &Request,
        node: NodeId,
        op: FsOp,
        then: impl FnOnce(Result<FsResult, Errno>, u64) + Send + 'static,
    ) {
        self.ask_then_as(&self.caller(req), node, op, then)
    }

    /// [`ask_then`](Self::ask_then) for a caller already known.
    fn ask_then_as(
        &self,
        caller: &Caller,
        node: NodeId,
        op: FsOp,
        then: impl FnOnce(Result<FsResult, Errno>, u64) + Send + 'static,
    ) {
        self.stats.count_op(false);
        self.client
            .call_then(node, caller, op, move |result, connection| {
                let result = result.map_err(errno).and_then(|result| match result {
                    FsResult::Errno(e) => Err(Errno::from_i32(e)),
                    other => Ok(other),
                });
                then(result, connection)
            });
    }

    /// Runs `op` at `node` and answers with the entry it gives `name` in
    /// `parent` ([`run_then`](Self::run_then)). Another node's answer goes
    /// to the kernel from the connection's task as it comes: this thread goes back to the
    /// kernel's next request at once, and no thread is woken on the
    /// answer's way (on this VM each wake-up of an idle CPU costs tens of
    /// microseconds, as much as the owner's look).
    fn answer_entry(
        &self,
        req: &Request,
        node: NodeId,
        op: FsOp,
        place: (u64, &[u8]),
        made: bool,
        reply: ReplyEntry,
    ) {
        let then = self.entry_then(node, place, made, reply);
        self.run_then(req, node, op, then);
    }

    /// What answers the kernel with the entry an operation on `name` in
    /// `parent` at `node` gives, once it comes (see
    /// [`answer_entry`](Self::answer_entry)).
    fn entry_then(
        &self,
        node: NodeId,
        (parent, name): (u64, &[u8]),
        made: bool,
        reply: ReplyEntry,
    ) -> impl FnOnce(Result<FsResult, Errno>, u64) + Send + 'static {
        let asked = Instant::now();
        let inodes = self.inodes.clone();
        let attrs = self.client.attrs().clone();
        let name = name.to_vec();
        move |result, connection| {
            let answered = Answered {
                result,
                asked,
                connection,
            };
            reply_entry(
                &inodes,
                &attrs,
                answered,
                node,
                (parent, &name),
                made,
                reply,
            )
        }
    }

    /// Runs the operation `op` makes of `parent`/`name`'s path (a lookup or
    /// a create) and answers with the entry.
    fn child_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        op: impl FnOnce(Vec<u8>) -> FsOp,
        reply: ReplyEntry,
    ) {
        match self.child(parent, name) {
            Ok((node, path)) => {
                let op = op(path);
                // These fail if the name exists: what they answer is new.
                let made = matches!(
                    op,
                    FsOp::MkDir { .. } | FsOp::MkNod { .. } | FsOp::Symlink { .. }
                );
                self.answer_entry(req, node, op, (parent.0, name.as_bytes()), made, reply)
            }
            Err(e) => reply.error(e),
        }
    }

    /// Looks up `name` in directory `dir` (its inode and path) of another
    /// node: from what a look-ahead brought, if it has the name and its
    /// grants hold, otherwise at the owner. Asks for a look-ahead when
    /// the lookups of the directory make one worth it
    /// ([`super::look_ahead`]).
    fn lookup_away(
        &self,
        req: &Request,
        (node, dir_ino, dir): (NodeId, u64, Vec<u8>),
        name: &[u8],
        reply: ReplyEntry,
    ) {
        let caller = self.caller(req);
        let key = DirKey::new(node, dir_ino, &caller);
        let attrs = self.client.attrs();
        let (hit, ask) = self.look_ahead.lookup(&key, (&dir, name), attrs.as_ref());
        if let Some(ask) = ask {
            self.ask_ahead(&caller, key, &dir, ask);
        }
        match hit {
            Some(hit) => {
                let answered = Answered {
                    result: Ok(FsResult::Granted {
                        attr: hit.attr,
                        number: hit.number,
                    }),
                    asked: hit.asked,
                    connection: hit.generation,
                };
                let place = (dir_ino, name);
                reply_entry(&self.inodes, attrs, answered, node, place, false, reply)
            }
            None => {
                let op = FsOp::Lookup {
                    path: child_path(&dir, name),
                };
                let then = self.entry_then(node, (dir_ino, name), false, reply);
                self.ask_then_as(&caller, node, op, then)
            }
        }
    }

    /// What a look-ahead read of the extended attribute `xattr` of the
    /// file of inode `ino`, at `path` of another node, if its grants
    /// hold ([`LookAhead::xattr`]): its value, or the errno.
    fn xattr_ahead(
        &self,
        req: &Request,
        (node, ino, path): (NodeId, u64, &[u8]),
        xattr: &OsStr,
    ) -> Option<Result<Vec<u8>, i32>> {
        let parent = self.inodes.lock().expect("inodes lock").get(&ino)?.parent;
        let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(slash) => (&path[..slash], &path[slash + 1..]),
            None => (&path[..0], path),
        };
        let key = DirKey::new(node, parent, &self.caller(req));
        let grants = self.client.attrs().as_ref();
        self.look_ahead
            .xattr(&key, (dir, name), (ino, xattr.as_bytes()), grants)
    }

    /// Asks the owner of `key`'s directory, at `dir`, for the look-ahead
    /// `ask`; its answer goes to [`LookAhead::answered`] on the
    /// connection's task.
    fn ask_ahead(&self, caller: &Caller, key: DirKey, dir: &[u8], ask: Ask) {
        let op = FsOp::LookAhead {
            dir: dir.to_vec(),
            after: ask.after,
            count: ask.count,
        };
        let asked = Instant::now();
        let node = key.node();
        let look_ahead = self.look_ahead.clone();
        let dir = dir.to_vec();
        self.ask_then_as(caller, node, op, move |result, connection| {
            let answer = result.unwrap_or_else(|e| FsResult::Errno(e.code()));
            look_ahead.answered((&key, ask.id, dir), asked, connection, answer);
        });
    }

    fn node_in_map(&self, name: &OsStr) -> Option<NodeId> {
        let id: u16 = name.to_str()?.parse().ok()?;
        let node = NodeId::new(id)?;
        self.map.borrow().contains(node).then_some(node)
    }

    /// The node a magic link names for process `pid`.
    fn magic_target(&self, index: usize, pid: u32) -> NodeId {
        let place = self.whereabouts.place(pid);
        match MAGIC[index] {
            "here" => place.here,
            "home" => place.home,
            "magic" => place.magic,
            "lastexec" => place.lastexec,
            _ => place.selected,
        }
    }

    fn magic_index(ino: u64) -> Option<usize> {
        (2..2 + MAGIC.len() as u64)
            .contains(&ino)
            .then(|| (ino - 2) as usize)
    }

    /// Parent and child of a name operation; both must be a node's files.
    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<(NodeId, Vec<u8>), Errno> {
        if parent.0 == ROOT {
            return Err(Errno::EACCES);
        }
        let (node, path, _) = self.locate(parent)?;
        Ok((node, child_path(&path, name.as_bytes())))
    }

    fn open_handle(&self, fh: FileHandle) -> Result<(NodeId, u64, Option<u64>), Errno> {
        let opens = self.opens.lock().expect("opens lock");
        match &opens.get(&fh.0).ok_or(Errno::EBADF)?.1 {
            Open::Here { handle, .. } => Ok((self.me, *handle, None)),
            Open::Away {
                node,
                handle,
                generation,
            } => Ok((*node, *handle, Some(*generation))),
        }
    }

    /// Runs an operation on an open file.
    fn on_open(
        &self,
        req: &Request,
        fh: FileHandle,
        op: impl FnOnce(u64) -> FsOp,
        wait: Wait,
    ) -> Result<FsResult, Errno> {
        let (node, handle, generation) = self.open_handle(fh)?;
        self.ask(req, node, op(handle), generation, wait)
            .map(|(r, _)| r)
    }

    fn add_open(&self, ino: u64, open: Open) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.opens
            .lock()
            .expect("opens lock")
            .insert(fh, (ino, open));
        fh
    }

    /// Some open file of inode `ino`: an unlinked file is reached only
    /// through one (fstat does not tell which).
    fn any_open_of(&self, ino: u64) -> Option<FileHandle> {
        let opens = self.opens.lock().expect("opens lock");
        opens
            .iter()
            .find(|(_, (of, _))| *of == ino)
            .map(|(fh, _)| FileHandle(*fh))
    }

    /// The passthrough registration of inode `ino`, made from `handle`'s
    /// descriptor if there is none: the kernel wants one backing file per
    /// inode at a time.
    fn backing_for(
        &self,
        ino: u64,
        handle: u64,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let mut backing = self.backing.lock().expect("backing lock");
        if let Some(existing) = backing.get(&ino).and_then(Weak::upgrade) {
            return Some(existing);
        }
        let file = self.exporter.handle_fd(handle).ok()?;
        match register(&file) {
            Ok(id) => {
                let id = Arc::new(id);
                backing.insert(ino, Arc::downgrade(&id));
                Some(id)
            }
            Err(e) => {
                debug!("no passthrough for inode {ino}: {e}");
                None
            }
        }
    }

    /// What the kernel keeps of other nodes' attributes (the mount gives
    /// it the means to drop them).
    pub fn kept_attrs(&self) -> Arc<KeptAttrs> {
        self.client.attrs().clone()
    }

    /// Whether the kernel holds an inode, or is about to (looked up and
    /// not forgotten), for dropping what it keeps.
    pub fn kernel_knows(&self) -> super::kept_attrs::KernelKnows {
        let inodes = self.inodes.clone();
        Box::new(move |ino| {
            inodes
                .lock()
                .expect("inodes lock")
                .get(&ino)
                .is_some_and(|inode| inode.lookups > 0)
        })
    }

    fn root_listing(&self) -> Listing {
        let mut entries = vec![
            (b".".to_vec(), ROOT, FileType::Directory),
            (b"..".to_vec(), ROOT, FileType::Directory),
        ];
        for (i, name) in MAGIC.iter().enumerate() {
            entries.push((name.as_bytes().to_vec(), 2 + i as u64, FileType::Symlink));
        }
        let map = self.map.borrow().clone();
        for node in map.node_ids() {
            // The inode number is only known after a lookup; readdir's is
            // a hint the kernel does not keep.
            entries.push((
                node.to_string().into_bytes(),
                inode_number(node, 0, 0),
                FileType::Directory,
            ));
        }
        entries
    }
}

impl Filesystem for Mfs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_POSIX_LOCKS
            | InitFlags::FUSE_FLOCK_LOCKS
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        if config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        let _ = config.set_max_write(MAX_FS_IO);
        let _ = config.set_max_readahead(MAX_FS_IO);
        info!(
            "MFS mounted: this node's files {}",
            if self.passthrough.load(Ordering::Relaxed) {
                "by kernel passthrough"
            } else {
                "through the daemon (this kernel has no FUSE passthrough)"
            }
        );
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT {
            if let Some(i) = MAGIC.iter().position(|m| m.as_bytes() == name.as_bytes()) {
                let target = self.magic_target(i, req.pid()).to_string();
                let attr =
                    synthetic_attr(2 + i as u64, FileType::Symlink, 0o777, target.len() as u64);
                return reply.entry(&NO_CACHE, &attr, Generation(0));
            }
            let Some(node) = self.node_in_map(name) else {
                return reply.error(Errno::ENOENT);
            };
            let op = FsOp::Lookup { path: Vec::new() };
            return self.answer_entry(req, node, op, (ROOT, name.as_bytes()), false, reply);
        }
        match self.locate(parent) {
            Ok((node, dir, _)) if node != self.me => {
                self.lookup_away(req, (node, parent.0, dir), name.as_bytes(), reply)
            }
            Ok((node, dir, _)) => {
                let op = FsOp::Lookup {
                    path: child_path(&dir, name.as_bytes()),
                };
                self.answer_entry(req, node, op, (parent.0, name.as_bytes()), false, reply)
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut inodes = self.inodes.lock().expect("inodes lock");
        if let Some(inode) = inodes.get_mut(&ino.0) {
            inode.lookups = inode.lookups.saturating_sub(nlookup);
            if inode.lookups == 0 {
                inodes.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT {
            return reply.attr(
                &NO_CACHE,
                &synthetic_attr(ROOT, FileType::Directory, 0o555, 0),
            );
        }
        if let Some(i) = Self::magic_index(ino.0) {
            let target = self.magic_target(i, req.pid()).to_string();
            let attr = synthetic_attr(ino.0, FileType::Symlink, 0o777, target.len() as u64);
            return reply.attr(&NO_CACHE, &attr);
        }
        let through_open = |fh: FileHandle| {
            let (node, handle, generation) = self.open_handle(fh)?;
            let op = FsOp::GetAttr {
                path: Vec::new(),
                handle: Some(handle),
            };
            self.ask(req, node, op, generation, Wait::Bounded)
                .map(|(r, _)| r)
        };
        let mut granted_by = None;
        let result = match fh {
            Some(fh) => through_open(fh),
            None => {
                let by_path = self.locate(ino).and_then(|(node, path, _)| {
                    let Answered {
                        result,
                        asked,
                        connection,
                    } = self.answered(req, node, FsOp::GetAttr { path, handle: None });
                    match result {
                        // Its path now names another file (a kept
                        // directory entry, or a file replaced at the
                        // owner): the kernel walks the path again.
                        Ok(FsResult::Attr(attr) | FsResult::Granted { attr, .. })
                            if !self.still_there(ino.0, node, &attr) =>
                        {
                            Err(Errno::ESTALE)
                        }
                        other => {
                            granted_by = Some((node, connection, asked));
                            other
                        }
                    }
                });
                match (by_path, self.any_open_of(ino.0)) {
                    // fstat of an open file that was unlinked (fstat
                    // carries no handle): ask through an open of it.
                    (Err(Errno::ENOENT | Errno::ESTALE), Some(fh)) => through_open(fh),
                    (by_path, _) => by_path,
                }
            }
        };
        match (result, granted_by) {
            (Ok(FsResult::Attr(attr)), _) => reply.attr(&NO_CACHE, &file_attr(ino.0, &attr)),
            (Ok(FsResult::Granted { attr, number }), Some((node, connection, asked))) => {
                self.client.attrs().answer(
                    node,
                    ((attr.dev, attr.ino), number, connection),
                    asked,
                    ino.0,
                    |keep| reply.attr(&keep, &file_attr(ino.0, &attr)),
                )
            }
            (Ok(other), _) => reply.error(unexpected(&other)),
            (Err(e), _) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (node, path, _) = match self.locate(ino) {
            Ok(found) => found,
            Err(e) => return reply.error(e),
        };
        let attrs = SetAttrs {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let open = fh.and_then(|fh| self.open_handle(fh).ok());
        let (handle, generation) = match open {
            Some((open_node, handle, generation)) if open_node == node => {
                (Some(handle), generation)
            }
            _ => (None, None),
        };
        let op = FsOp::SetAttr {
            path,
            handle,
            attrs,
        };
        match self.ask(req, node, op, generation, Wait::Bounded) {
            Ok((FsResult::Attr(attr), _)) => reply.attr(&NO_CACHE, &file_attr(ino.0, &attr)),
            Ok((other, _)) => reply.error(unexpected(&other)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        if let Some(i) = Self::magic_index(ino.0) {
            return reply.data(self.magic_target(i, req.pid()).to_string().as_bytes());
        }
        let result = self
            .locate(ino)
            .and_then(|(node, path, _)| self.run(req, node, FsOp::ReadLink { path }));
        match result {
            Ok(FsResult::Data(target)) => reply.data(&target),
            Ok(other) => reply.error(unexpected(&other)),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let op = |path| FsOp::MkNod {
            path,
            mode,
            rdev: rdev as u64,
        };
        self.child_entry(req, parent, name, op, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.child_entry(req, parent, name, |path| FsOp::MkDir { path, mode }, reply)
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name) {
            Ok((node, path)) => self.answer_done(req, node, FsOp::Unlink { path }, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name) {
            Ok((node, path)) => self.answer_done(req, node, FsOp::RmDir { path }, reply),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes().to_vec();
        let op = |path| FsOp::Symlink { path, target };
        self.child_entry(req, parent, link_name, op, reply)
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let from = self.child(parent, name);
        let to = self.child(newparent, newname);
        let ((node, from), (to_node, to)) = match (from, to) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if node != to_node {
            return reply.error(Errno::EXDEV);
        }
        let op = FsOp::Rename {
            from: from.clone(),
            to: to.clone(),
            flags: flags.bits(),
        };
        let inodes = self.inodes.clone();
        let (name, newname) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        self.run_then(req, node, op, move |result, _| match result {
            Ok(_) => {
                let (from, to) = ((parent.0, &name[..]), (newparent.0, &newname[..]));
                renamed(&inodes, node, from, to, exchange);
                reply.ok()
            }
            Err(e) => reply.error(e),
        })
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (node, from, _) = match self.locate(ino) {
            Ok(found) => found,
            Err(e) => return reply.error(e),
        };
        let (to_node, to) = match self.child(newparent, newname) {
            Ok(child) => child,
            Err(e) => return reply.error(e),
        };
        if node != to_node {
            return reply.error(Errno::EXDEV);
        }
        match self.run(
            req,
            node,
            FsOp::Link {
                from,
                to: to.clone(),
            },
        ) {
            Ok(FsResult::Attr(attr)) => entry(
                &self.inodes,
                node,
                newparent.0,
                newname.as_bytes(),
                &attr,
                false,
                reply,
            ),
            Ok(other) => reply.error(unexpected(&other)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (node, path, _) = match self.locate(ino) {
            Ok(found) => found,
            Err(e) => return reply.error(e),
        };
        let op = FsOp::Open {
            path,
            flags: flags.0,
        };
        let (handle, generation) = match self.ask(req, node, op, None, Wait::Bounded) {
            Ok((FsResult::Opened { handle, .. }, generation)) => (handle, generation),
            Ok((other, _)) => return reply.error(unexpected(&other)),
            Err(e) => return reply.error(e),
        };
        let ino_of_open = ino.0;
        if node != self.me {
            let fh = self.add_open(
                ino_of_open,
                Open::Away {
                    node,
                    handle,
                    generation,
                },
            );
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        let backing = self.backing_for(ino.0, handle, |file| reply.open_backing(file));
        let fh = self.add_open(
            ino_of_open,
            Open::Here {
                handle,
                _backing: backing.clone(),
            },
        );
        match backing {
            Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
            None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (node, path) = match self.child(parent, name) {
            Ok(child) => child,
            Err(e) => return reply.error(e),
        };
        let op = FsOp::Create { path, flags, mode };
        let (handle, attr, generation) = match self.ask(req, node, op, None, Wait::Bounded) {
            Ok((FsResult::Opened { handle, attr }, generation)) => (handle, attr, generation),
            Ok((other, _)) => return reply.error(unexpected(&other)),
            Err(e) => return reply.error(e),
        };
        // Not necessarily new: without O_EXCL an existing file is opened,
        // maybe one the kernel holds under another name.
        let (ino, inode_generation) =
            remember(&self.inodes, node, parent.0, name.as_bytes(), &attr, false);
        let attr = file_attr(ino, &attr);
        let ino_of_open = ino;
        if node != self.me {
            let fh = self.add_open(
                ino_of_open,
                Open::Away {
                    node,
                    handle,
                    generation,
                },
            );
            return reply.created(
                &NO_CACHE,
                &attr,
                inode_generation,
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            );
        }
        let backing = self.backing_for(ino, handle, |file| reply.open_backing(file));
        let fh = self.add_open(
            ino_of_open,
            Open::Here {
                handle,
                _backing: backing.clone(),
            },
        );
        match backing {
            Some(id) => reply.created_passthrough(
                &NO_CACHE,
                &attr,
                inode_generation,
                FileHandle(fh),
                FopenFlags::empty(),
                &id,
            ),
            None => reply.created(
                &NO_CACHE,
                &attr,
                inode_generation,
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (node, handle, generation) = match self.open_handle(fh) {
            Ok(open) => open,
            Err(e) => return reply.error(e),
        };
        // Another node's file: through what was read ahead under its
        // owner's lease, when it has the bytes.
        if let Some(generation) = generation {
            self.stats.count_op(false);
            let caller = self.caller(req);
            return match self
                .client
                .read(node, &caller, handle, generation, offset, size)
            {
                Ok(data) => {
                    self.stats.count_read(data.len());
                    reply.data(&data)
                }
                Err(e) => reply.error(errno(e)),
            };
        }
        let op = |handle| FsOp::Read {
            handle,
            offset,
            size,
            ahead: 0,
        };
        match self.on_open(req, fh, op, Wait::Bounded) {
            Ok(FsResult::Data(data)) => reply.data(&data),
            Ok(other) => reply.error(unexpected(&other)),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // A write to another node's file goes in pieces in flight
        // together (whole if appending: the owner places it), and behind
        // its program under a write lease. Small writes too: the kernel
        // sends a large write in two when the program's buffer is not all
        // in memory yet, and a program may write in small blocks.
        let appending = flags.0 & libc::O_APPEND != 0;
        {
            let away = match self.open_handle(fh) {
                Ok((node, handle, Some(generation))) => Some((node, handle, generation)),
                Ok(_) => None,
                Err(e) => return reply.error(e),
            };
            if let Some((node, handle, generation)) = away {
                self.stats.count_op(false);
                self.stats.count_written(data.len());
                let caller = self.caller(req);
                return match self.client.write_in_pieces(
                    RemoteFile {
                        node,
                        handle,
                        generation,
                        appending,
                    },
                    &caller,
                    offset,
                    data,
                ) {
                    Ok((n, behind)) => {
                        if behind {
                            self.stats.count_written_behind(n as usize);
                        }
                        reply.written(n)
                    }
                    Err(e) => reply.error(errno(e)),
                };
            }
        }
        let op = |handle| FsOp::Write {
            handle,
            offset,
            data: data.to_vec(),
            lease: false,
        };
        match self.on_open(req, fh, op, Wait::Bounded) {
            Ok(FsResult::Written(n)) => reply.written(n),
            Ok(other) => reply.error(unexpected(&other)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let op = |handle| FsOp::Flush {
            handle,
            lock_owner: lock_owner.0,
        };
        match self.on_open(req, fh, op, Wait::Bounded) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.on_open(req, fh, |handle| FsOp::Release { handle }, Wait::Bounded);
        if let Ok((_, handle, Some(generation))) = self.open_handle(fh) {
            self.client.forget(handle, generation);
        }
        self.opens.lock().expect("opens lock").remove(&fh.0);
        match result {
            // The owner forgot the file with its connection.
            Ok(_) | Err(_) => reply.ok(),
        }
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let op = |handle| FsOp::Fsync { handle, datasync };
        match self.on_open(req, fh, op, Wait::Bounded) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let listing = if ino.0 == ROOT {
            self.root_listing()
        } else {
            let (node, path, dev) = match self.locate(ino) {
                Ok(found) => found,
                Err(e) => return reply.error(e),
            };
            let mut listing = Vec::new();
            loop {
                let op = FsOp::ReadDir {
                    path: path.clone(),
                    start: listing.len() as u32,
                };
                let entries = match self.run(req, node, op) {
                    Ok(FsResult::Entries(entries)) => entries,
                    Ok(other) => return reply.error(unexpected(&other)),
                    // The kernel kept this directory's entry, and its path
                    // now names a file: the kernel walks the path again.
                    Err(Errno::ENOTDIR) => return reply.error(Errno::ESTALE),
                    Err(e) => return reply.error(e),
                };
                let done = entries.len() < super::export::DIR_ENTRIES_PER_REPLY;
                for entry in entries {
                    let ino = match entry.name.as_slice() {
                        b"." | b".." => ino.0,
                        _ => inode_number(node, dev, entry.ino),
                    };
                    listing.push((entry.name, ino, dirent_type(entry.kind)));
                }
                if done {
                    break;
                }
            }
            listing
        };
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.listings
            .lock()
            .expect("listings lock")
            .insert(fh, listing);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listings = self.listings.lock().expect("listings lock");
        let Some(listing) = listings.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (name, ino, kind)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings.lock().expect("listings lock").remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are made by the owner's system calls, which its
        // own file system orders; there is nothing held here to write.
        reply.ok();
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let (node, path) = match self.locate(ino) {
            Ok((node, path, _)) => (node, path),
            Err(_) => (self.me, Vec::new()),
        };
        match self.run(req, node, FsOp::StatFs { path }) {
            Ok(FsResult::StatFs(s)) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Ok(other) => reply.error(unexpected(&other)),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = self.locate(ino).and_then(|(node, path, _)| {
            let op = FsOp::SetXattr {
                path,
                name: name.as_bytes().to_vec(),
                value: value.to_vec(),
                flags,
            };
            self.run(req, node, op)
        });
        match result {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino.0 == ROOT || Self::magic_index(ino.0).is_some() {
            return reply.error(Errno::ENODATA);
        }
        let result = self.locate(ino).and_then(|(node, path, _)| {
            if node != self.me
                && let Some(read) = self.xattr_ahead(req, (node, ino.0, &path), name)
            {
                return match read {
                    Ok(value) if size == 0 => Ok(FsResult::Size(value.len() as u32)),
                    Ok(value) if value.len() > size as usize => Err(Errno::ERANGE),
                    Ok(value) => Ok(FsResult::Data(value)),
                    Err(e) => Err(Errno::from_i32(e)),
                };
            }
            let op = FsOp::GetXattr {
                path,
                name: name.as_bytes().to_vec(),
                size,
            };
            self.run(req, node, op)
        });
        match result {
            Ok(FsResult::Size(n)) => reply.size(n),
            Ok(FsResult::Data(data)) => reply.data(&data),
            Ok(other) => reply.error(unexpected(&other)),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if ino.0 == ROOT || Self::magic_index(ino.0).is_some() {
            return if size == 0 {
                reply.size(0)
            } else {
                reply.data(&[])
            };
        }
        let result = self
            .locate(ino)
            .and_then(|(node, path, _)| self.run(req, node, FsOp::ListXattr { path, size }));
        match result {
            Ok(FsResult::Size(n)) => reply.size(n),
            Ok(FsResult::Data(data)) => reply.data(&data),
            Ok(other) => reply.error(unexpected(&other)),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.locate(ino).and_then(|(node, path, _)| {
            let op = FsOp::RemoveXattr {
                path,
                name: name.as_bytes().to_vec(),
            };
            self.run(req, node, op)
        });
        match result {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if ino.0 == ROOT || Self::magic_index(ino.0).is_some() {
            return if mask.contains(AccessFlags::W_OK) {
                reply.error(Errno::EACCES)
            } else {
                reply.ok()
            };
        }
        let result = self.locate(ino).and_then(|(node, path, _)| {
            self.run(
                req,
                node,
                FsOp::Access {
                    path,
                    mask: mask.bits(),
                },
            )
        });
        match result {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let lock = LockSpec {
            owner: lock_owner.0,
            start,
            end,
            kind: typ,
            pid,
        };
        match self.on_open(
            req,
            fh,
            |handle| FsOp::GetLk { handle, lock },
            Wait::Bounded,
        ) {
            Ok(FsResult::Lock(Some(held))) => {
                reply.locked(held.start, held.end, held.kind, held.pid)
            }
            Ok(FsResult::Lock(None)) => reply.locked(0, 0, libc::F_UNLCK, 0),
            Ok(other) => reply.error(unexpected(&other)),
            Err(e) => reply.error(e),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let lock = LockSpec {
            owner: lock_owner.0,
            start,
            end,
            kind: typ,
            pid,
        };
        let op = |handle| FsOp::SetLk {
            handle,
            lock,
            sleep,
        };
        let wait = if sleep {
            Wait::WhileConnected
        } else {
            Wait::Bounded
        };
        match self.on_open(req, fh, op, wait) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let op = |handle| FsOp::Fallocate {
            handle,
            offset,
            length,
            mode,
        };
        match self.on_open(req, fh, op, Wait::Bounded) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let op = |handle| FsOp::Lseek {
            handle,
            offset,
            whence,
        };
        match self.on_open(req, fh, op, Wait::Bounded) {
            Ok(FsResult::Offset(to)) => reply.offset(to as i64),
            Ok(other) => reply.error(unexpected(&other)),
            Err(e) => reply.error(e),
        }
    }
}
