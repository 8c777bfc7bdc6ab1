//! The owner's side of MFS: file operations on this node's exported tree,
//! run as the caller, for this node's own mount and for other nodes alike.
//!
//! Every object is named by a path relative to the exported root, and
//! every path is resolved beneath that root without following any
//! symbolic link (the asking kernel follows links itself, one lookup at a
//! time), so no request reaches outside the export. Open files are
//! handles into a table; byte-range locks are open file description locks
//! on a descriptor of their own per lock owner, so they conflict with the
//! locks of every other process of the cluster and of this node's native
//! processes, and closing (flush) releases exactly that owner's locks.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use tracing::debug;

use super::attr_grants::{AttrGrants, AttrHolder, FileId, Grant, grantable};
use super::creds::{Credentials, run_as, run_as_looking};
use super::mounts::{SlowMounts, beneath};
use super::writeback::{self, Writeback};
use super::{lease, sys};
use crate::NodeId;
use crate::wire::fs::{
    AheadEntry, AheadXattr, Attr, AttrsChange, DirEntry, FsOp, FsResult, LockSpec, MAX_FS_IO,
    SetAttrs, SetTime, StatFs, child_path,
};

/// Directory entries sent in one answer.
pub const DIR_ENTRIES_PER_REPLY: usize = 4096;

/// The extended attributes a look-ahead reads of each file, as its
/// caller: those `ls -l` asks every file for (it marks a file that has an
/// access control list, or a security label, and most have neither).
const XATTRS_AHEAD: [&[u8]; 2] = [b"security.selinux", b"system.posix_acl_access"];

/// The largest value of one of [`XATTRS_AHEAD`] a look-ahead reads (a
/// larger one is an error, ERANGE, and the asker asks itself).
const XATTR_VALUE_AHEAD: u32 = 4096;

/// Most entries one look-ahead grants.
pub const MAX_LOOK_AHEAD: u32 = 256;

/// A directory of more entries than this is not looked ahead in: each
/// look-ahead lists it whole, to find the names that follow (a scan of
/// one this large lists it 64 times or more).
const MAX_LOOK_AHEAD_LISTING: usize = 16384;

/// An open file at the owner.
struct OpenFile {
    handle: u64,
    file: File,
    /// The access mode it was opened with (for lock descriptors).
    access: OFlag,
    /// The file's device and inode number, naming it among write leases.
    id: (u64, u64),
    /// One descriptor per lock owner holding locks through this file.
    lock_fds: Mutex<HashMap<u64, Arc<File>>>,
    lease: Mutex<LeaseState>,
    /// Held while a lease is being broken, so that a second break (the
    /// kernel's and a stat's at once) waits for the first's revoke instead
    /// of letting go of the lease before the node confirmed.
    one_break: Mutex<()>,
    write_leases: Arc<WriteLeases>,
    /// How far the writeback of what other nodes wrote was started (see
    /// `write_back_behind`).
    writeback_started_to: AtomicU64,
    /// Set when open for writing: counted there, so that no node is let
    /// keep the file's attributes while it is open.
    writing: Option<Arc<AttrGrants>>,
}

/// The files under a write lease of another node, by device and inode:
/// a stat or a change of attributes through MFS by anyone but the holder
/// revokes the lease first (the kernel calls the holder back for opens
/// and truncates, not for those).
type WriteLeases = Mutex<HashMap<(u64, u64), WriteLeaseHolder>>;

struct WriteLeaseHolder {
    node: NodeId,
    handle: u64,
    file: Weak<OpenFile>,
}

/// The lease of an open file (read lease for a read-only handle, write
/// lease for one open for writing), for the node that opened it.
#[derive(Default)]
struct LeaseState {
    held: bool,
    /// The lease is being broken: none is taken again until it is let
    /// go (a write or read finishing meanwhile would take it again, and
    /// letting go would then leave the handle believing it holds one).
    breaking: bool,
    /// Counts the leases taken on this handle: what was read under one is
    /// revoked by its number.
    epoch: u64,
    revoker: Option<Arc<dyn Revoker>>,
}

/// Takes back, from the node that opened a handle, what it kept under a
/// read lease: returns once the node confirmed (or did not in time).
pub trait Revoker: Send + Sync {
    fn revoke(&self, handle: u64, epoch: u64);
}

impl OpenFile {
    /// The epoch of this handle's read lease, taken now if need be; `None`
    /// if there is none (someone may write the file).
    fn lease_for(self: &Arc<Self>, revoker: &Arc<dyn Revoker>) -> Option<u64> {
        if self.access != OFlag::O_RDONLY {
            return None;
        }
        self.lease_of(lease::Kind::Read, revoker, || {})
    }

    /// The epoch of this handle's write lease for `node`, taken now if
    /// need be; `None` if there is none (someone else has the file open,
    /// or the handle only reads).
    fn write_lease_for(self: &Arc<Self>, revoker: &Arc<dyn Revoker>, node: NodeId) -> Option<u64> {
        if self.access == OFlag::O_RDONLY {
            return None;
        }
        self.lease_of(lease::Kind::Write, revoker, || {
            self.write_leases.lock().expect("write leases lock").insert(
                self.id,
                WriteLeaseHolder {
                    node,
                    handle: self.handle,
                    file: Arc::downgrade(self),
                },
            );
        })
    }

    /// The epoch of this handle's lease of `kind`, taken now (then
    /// `taken` runs) if it holds none and none is being broken.
    fn lease_of(
        self: &Arc<Self>,
        kind: lease::Kind,
        revoker: &Arc<dyn Revoker>,
        taken: impl FnOnce(),
    ) -> Option<u64> {
        let mut state = self.lease.lock().expect("lease lock");
        if state.breaking {
            return None;
        }
        if !state.held {
            let me: Arc<dyn lease::LeaseHolder> = self.clone();
            if !lease::take(&self.file, kind, Arc::downgrade(&me)) {
                return None;
            }
            state.held = true;
            state.epoch += 1;
            state.revoker = Some(revoker.clone());
            taken();
        }
        Some(state.epoch)
    }

    /// Forgets this handle's entry among the write leases.
    fn forget_write_lease(&self) {
        let mut leases = self.write_leases.lock().expect("write leases lock");
        if leases
            .get(&self.id)
            .is_some_and(|holder| holder.handle == self.handle)
        {
            leases.remove(&self.id);
        }
    }

    /// Writes all of `data` at `offset`; short only if the file system
    /// stops taking bytes after some. A write that reaches the end of a
    /// stretch of [`writeback::STRETCH`] starts that stretch's writeback.
    fn write_full(
        self: &Arc<Self>,
        offset: u64,
        data: &[u8],
        writeback: &Writeback,
    ) -> Result<u32, Errno> {
        let written = self.write_all_at(offset, data)?;
        self.write_back_behind(offset, u64::from(written), writeback);
        Ok(written)
    }

    /// A program streaming a file to another node ends with an `fsync` or
    /// a close that waits for the disk: left to the kernel, all of the
    /// file's dirty pages are written then, after the network transfer
    /// instead of beside it. So each stretch a write reaches the end of is
    /// sent to the disk at once, as a program on this node would see the
    /// kernel do under memory pressure. Scattered small writes rarely
    /// reach a stretch's end; those that do cost one early write of it.
    /// (An append lands at the end whatever its offset says: its range is
    /// only as good as the writer's idea of the size, which is a hint
    /// too.) The request goes to the writeback thread: a disk with a full
    /// queue makes the kernel wait, which must not hold up this
    /// connection's next write.
    fn write_back_behind(self: &Arc<Self>, offset: u64, written: u64, writeback: &Writeback) {
        let started_to = self.writeback_started_to.load(Ordering::Relaxed);
        let Some((start, filled)) = writeback::range_to_start(offset, written, started_to) else {
            return;
        };
        // Weak: a handle closed before its turn is not kept open for
        // this. One closed during the call stays open until the call
        // returns: its lease and locks last that long (an opener recalls
        // the lease as from any holder), and the close runs on the
        // writeback thread.
        let file = Arc::downgrade(self);
        let offered = writeback.offer(move || {
            if let Some(open) = file.upgrade() {
                // Only a hint: a file the call does not apply to still
                // has its data written at fsync or by the kernel.
                let _ = sys::start_writeback(open.file.as_fd(), start, filled - start);
            }
        });
        if offered {
            self.writeback_started_to
                .fetch_max(filled, Ordering::Relaxed);
        } else {
            debug!(
                "MFS: writeback thread busy; bytes {start}..{filled} of a file wait for the next"
            );
        }
    }

    fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let mut written = 0;
        while written < data.len() {
            match self
                .file
                .write_at(&data[written..], offset + written as u64)
            {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if written == 0 => return Err(io_errno(e)),
                Err(_) => break,
            }
        }
        Ok(written as u32)
    }

    /// Reads up to `size` bytes at `offset`, short only at the end.
    fn read_full(&self, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let mut data = vec![0u8; size.min(MAX_FS_IO) as usize];
        let mut filled = 0;
        while filled < data.len() {
            match self
                .file
                .read_at(&mut data[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if filled == 0 => return Err(io_errno(e)),
                Err(_) => break,
            }
        }
        data.truncate(filled);
        Ok(data)
    }
}

impl lease::LeaseHolder for OpenFile {
    fn on_break(&self) {
        let _one_break = self.one_break.lock().expect("one break lock");
        let (epoch, revoker) = {
            let mut state = self.lease.lock().expect("lease lock");
            state.breaking = true;
            let held = std::mem::take(&mut state.held);
            (state.epoch, state.revoker.take().filter(|_| held))
        };
        if let Some(revoker) = revoker {
            revoker.revoke(self.handle, epoch);
        }
        self.forget_write_lease();
        lease::release(&self.file);
        self.lease.lock().expect("lease lock").breaking = false;
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        self.forget_write_lease();
        if let Some(grants) = &self.writing {
            grants.closed_for_writing(self.id);
        }
    }
}

/// This node's exported tree.
pub struct Exporter {
    root: OwnedFd,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    write_leases: Arc<WriteLeases>,
    next_handle: AtomicU64,
    /// The device of this node's own MFS mount, never exported (it would
    /// loop back into MFS).
    own_mount_dev: AtomicU64,
    /// Where that mount is, as a path from the exported root (if it is
    /// beneath it).
    own_mount_path: Mutex<Option<Vec<u8>>>,
    /// Where beneath the root a look may wait on a slow file system (and
    /// the root, resolved).
    slow_mounts: SlowMounts,
    /// `nomfs`: refuse other nodes.
    refuse_remote: AtomicBool,
    /// Starts writing out what other nodes streamed (see
    /// `OpenFile::write_back_behind`).
    writeback: Writeback,
    /// Which nodes keep which files' attributes.
    grants: Arc<AttrGrants>,
}

/// Whether an open with `flags` may change the file: open for writing, or
/// truncating. No node keeps the attributes of a file open so.
fn opens_for_writing(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// A path from the wire, checked: relative, no empty, `.` or `..`
/// component, no NUL.
fn checked(path: &[u8]) -> Result<&[u8], Errno> {
    if path.is_empty() {
        return Ok(path);
    }
    let valid = path
        .split(|b| *b == b'/')
        .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0));
    if valid { Ok(path) } else { Err(Errno::EINVAL) }
}

/// Splits a checked, non-empty path into its parent and last component.
fn split(path: &[u8]) -> Result<(&[u8], &[u8]), Errno> {
    if path.is_empty() {
        return Err(Errno::EINVAL);
    }
    Ok(match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[][..], path),
    })
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn is_dir(attr: &Attr) -> bool {
    attr.mode & libc::S_IFMT == libc::S_IFDIR
}

/// `path` and every directory above it, from the exported root (the
/// empty path) down.
fn path_prefixes(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let ends = path
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(|(i, _)| i)
        .chain((!path.is_empty()).then_some(path.len()));
    std::iter::once(&path[..0]).chain(ends.map(move |end| &path[..end]))
}

fn cstring(bytes: &[u8]) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

pub fn attr_of(st: &FileStat) -> Attr {
    Attr {
        dev: st.st_dev,
        ino: st.st_ino,
        mode: st.st_mode,
        nlink: st.st_nlink,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        blksize: st.st_blksize as u32,
        atime: (st.st_atime, st.st_atime_nsec as u32),
        mtime: (st.st_mtime, st.st_mtime_nsec as u32),
        ctime: (st.st_ctime, st.st_ctime_nsec as u32),
    }
}

fn timespec(time: Option<SetTime>) -> TimeSpec {
    match time {
        None => TimeSpec::UTIME_OMIT,
        Some(SetTime::Now) => TimeSpec::UTIME_NOW,
        Some(SetTime::At(t)) => TimeSpec::new(t.secs, t.nanos as i64),
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Exporter {
    /// Exports the tree at `root`.
    pub fn new(root_path: &Path) -> Result<Exporter, std::io::Error> {
        let root = nix::fcntl::open(
            root_path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("cannot export {}: {e}", root_path.display()),
            )
        })?;
        Ok(Exporter {
            root,
            files: Mutex::new(HashMap::new()),
            write_leases: Arc::new(Mutex::new(HashMap::new())),
            next_handle: AtomicU64::new(1),
            own_mount_dev: AtomicU64::new(u64::MAX),
            own_mount_path: Mutex::new(None),
            slow_mounts: SlowMounts::new(root_path),
            refuse_remote: AtomicBool::new(false),
            writeback: Writeback::start(),
            grants: AttrGrants::start(),
        })
    }

    /// Records this node's MFS mount, device and mount point, so that it
    /// is never exported back into itself.
    pub fn set_own_mount(&self, dev: u64, mountpoint: &Path) {
        self.own_mount_dev.store(dev, Ordering::Relaxed);
        *self.own_mount_path.lock().expect("own mount lock") =
            self.slow_mounts.from_root(mountpoint);
    }

    /// Whether `path` (from the wire) names this node's own MFS mount or
    /// something in it: walking it would ask MFS itself.
    fn enters_own_mount(&self, path: &[u8]) -> bool {
        let own = self.own_mount_path.lock().expect("own mount lock");
        own.as_deref().is_some_and(|own| beneath(path, own))
    }

    /// `nomfs`: whether other nodes are refused.
    pub fn set_refuse_remote(&self, refuse: bool) {
        self.refuse_remote.store(refuse, Ordering::Relaxed);
    }

    pub fn refuses_remote(&self) -> bool {
        self.refuse_remote.load(Ordering::Relaxed)
    }

    /// Opens `path` beneath the root, following no symbolic link.
    fn open_beneath(&self, path: &[u8], flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
        let path = checked(path)?;
        let target = if path.is_empty() { os(b".") } else { os(path) };
        let open = |flags: OFlag| {
            let how = OpenHow::new()
                .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
                .mode(mode)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_MAGICLINKS,
                );
            // A symbolic link met on the way gives ELOOP: the asker follows
            // links, one lookup at a time.
            openat2(self.root.as_fd(), target, how)
        };
        match open(flags) {
            // A read lease of another node (see `lease`) makes a
            // non-blocking open for writing fail, where the asker would
            // have got its file: the recall is under way, wait for it.
            Err(Errno::EWOULDBLOCK) if flags.contains(OFlag::O_NONBLOCK) => {
                open(flags - OFlag::O_NONBLOCK)
            }
            other => other,
        }
    }

    /// An O_PATH descriptor of the object itself.
    fn object(&self, path: &[u8]) -> Result<OwnedFd, Errno> {
        self.open_beneath(path, OFlag::O_PATH, Mode::empty())
    }

    /// The parent directory (O_PATH) and last component of `path`.
    fn parent<'p>(&self, path: &'p [u8]) -> Result<(OwnedFd, &'p OsStr), Errno> {
        let (parent, name) = split(checked(path)?)?;
        let fd = self.open_beneath(parent, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())?;
        Ok((fd, os(name)))
    }

    fn stat_path(&self, path: &[u8]) -> Result<Attr, Errno> {
        let st = if path.is_empty() {
            nix::sys::stat::fstat(self.root.as_fd())?
        } else {
            let (dir, name) = self.parent(path)?;
            nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)?
        };
        if st.st_dev == self.own_mount_dev.load(Ordering::Relaxed) {
            // This node's own /mfs, seen through its exported root.
            return Err(Errno::EACCES);
        }
        Ok(attr_of(&st))
    }

    fn file(&self, handle: u64) -> Result<Arc<OpenFile>, Errno> {
        self.files
            .lock()
            .expect("files lock")
            .get(&handle)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// The descriptor of an open file, for passthrough.
    pub fn handle_fd(&self, handle: u64) -> Result<File, Errno> {
        self.file(handle)?.file.try_clone().map_err(io_errno)
    }

    fn add_file(&self, file: File, flags: i32, attr: &Attr) -> u64 {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let access = OFlag::from_bits_truncate(flags & libc::O_ACCMODE);
        // Its writes may not come here (passthrough): no node keeps its
        // attributes while it is open.
        let writing = opens_for_writing(flags).then(|| {
            self.grants.opened_for_writing((attr.dev, attr.ino));
            self.grants.clone()
        });
        let open = OpenFile {
            handle,
            file,
            access,
            id: (attr.dev, attr.ino),
            lock_fds: Mutex::new(HashMap::new()),
            lease: Mutex::new(LeaseState::default()),
            one_break: Mutex::new(()),
            write_leases: self.write_leases.clone(),
            writeback_started_to: AtomicU64::new(0),
            writing,
        };
        self.files
            .lock()
            .expect("files lock")
            .insert(handle, Arc::new(open));
        handle
    }

    /// Forgets a handle (the file closes once no operation uses it).
    pub fn release(&self, handle: u64) {
        self.files.lock().expect("files lock").remove(&handle);
    }

    /// Runs `op` as `credentials`, for this node's own mount.
    pub fn execute(&self, credentials: &Credentials, op: FsOp) -> FsResult {
        self.execute_for(credentials, op, None).0
    }

    /// Runs `op` as `credentials`, asked by connection `asker` (none: this
    /// node's own mount). Other nodes that keep the attributes of a file it
    /// changes drop them first; the take-backs of what `asker` kept come
    /// back with the result, for its answer to carry.
    pub fn execute_for(
        &self,
        credentials: &Credentials,
        op: FsOp,
        asker: Option<&Arc<dyn AttrHolder>>,
    ) -> (FsResult, Vec<AttrsChange>) {
        let changes = self.changes_of(&op);
        let changing =
            (!changes.is_empty()).then(|| self.grants.change(&changes, asker.map(|a| a.id())));
        let result = match run_as(credentials, || self.run(op)) {
            Ok(result) => result,
            Err(errno) => FsResult::Errno(errno as i32),
        };
        let told = changing.iter().flat_map(|changing| changing.asker_told());
        let told = told
            .map(|&((dev, ino), number)| AttrsChange { dev, ino, number })
            .collect();
        (result, told)
    }

    /// A read of another node that would keep `ahead` more bytes: under a
    /// read lease of the handle (which `revoker` takes back before anyone
    /// writes the file), the data and what follows; without one, the
    /// data alone.
    pub fn read_ahead(
        &self,
        credentials: &Credentials,
        handle: u64,
        offset: u64,
        size: u32,
        ahead: u32,
        revoker: &Arc<dyn Revoker>,
    ) -> FsResult {
        let result = run_as(credentials, || {
            let open = self.file(handle)?;
            Ok(match open.lease_for(revoker) {
                Some(epoch) => FsResult::Leased {
                    data: open.read_full(offset, size.saturating_add(ahead))?,
                    epoch,
                },
                None => FsResult::Data(open.read_full(offset, size)?),
            })
        });
        result.unwrap_or_else(|errno: Errno| FsResult::Errno(errno as i32))
    }

    /// A write of node `from` that asks for a write lease: written, and
    /// answered with the lease's epoch if `from`'s handle holds one (taken
    /// now if no one else has the file open), which `revoker` takes back
    /// before anyone else opens, truncates or stats the file.
    pub fn write_leased(
        &self,
        credentials: &Credentials,
        handle: u64,
        offset: u64,
        data: &[u8],
        from: NodeId,
        revoker: &Arc<dyn Revoker>,
    ) -> FsResult {
        let result = run_as(credentials, || {
            let open = self.file(handle)?;
            let written = open.write_full(offset, data, &self.writeback)?;
            Ok(match open.write_lease_for(revoker, from) {
                Some(epoch) => FsResult::WrittenLeased { written, epoch },
                None => FsResult::Written(written),
            })
        });
        result.unwrap_or_else(|errno: Errno| FsResult::Errno(errno as i32))
    }

    /// Before `op` of node `asker` (`None`: this node's own mount) runs:
    /// if it stats or changes the attributes of a file another node holds
    /// a write lease of, revokes that lease (the holder has its writes
    /// answered first), so that sizes and times are those of every write
    /// that returned. The holder's own node settled its writes before
    /// asking.
    pub fn settle_write_leases(&self, op: &FsOp, asker: Option<NodeId>) {
        if let Some(open) = self.write_lease_to_settle(op, asker) {
            lease::LeaseHolder::on_break(&*open);
        }
    }

    /// The file under another node's write lease that `op` of `asker`
    /// must have settled before it runs, if any.
    fn write_lease_to_settle(&self, op: &FsOp, asker: Option<NodeId>) -> Option<Arc<OpenFile>> {
        let path = match op {
            FsOp::Lookup { path }
            | FsOp::GetAttr { path, handle: None }
            | FsOp::SetAttr {
                path, handle: None, ..
            } => path,
            _ => return None,
        };
        if self
            .write_leases
            .lock()
            .expect("write leases lock")
            .is_empty()
        {
            return None;
        }
        // Only to name the file: the operation itself runs as its caller.
        let attr = self.stat_path(path).ok()?;
        let leases = self.write_leases.lock().expect("write leases lock");
        match leases.get(&(attr.dev, attr.ino)) {
            Some(holder) if Some(holder.node) != asker => holder.file.upgrade(),
            _ => None,
        }
    }

    /// The node's attribute grants.
    pub fn grants(&self) -> &Arc<AttrGrants> {
        &self.grants
    }

    /// The regular files whose attributes `op` would change, as its paths
    /// name them now (found as this daemon, not as the caller: a file the
    /// caller cannot reach is not changed, and its grants stay).
    fn changes_of(&self, op: &FsOp) -> Vec<FileId> {
        // A directory is granted to a look-ahead (see `look_ahead`): a
        // change of its name or of who may look in it takes that back.
        let found = |path: &[u8], or_dir: bool| {
            self.stat_path(path)
                .ok()
                .filter(|attr| grantable(attr) || (or_dir && is_dir(attr)))
                .map(|attr| (attr.dev, attr.ino))
        };
        match op {
            // Some changes go through the handle, others by its path
            // (see `set_attr`): both files, if the path names another now.
            FsOp::SetAttr {
                handle: Some(handle),
                path,
                ..
            } => {
                let mut files: Vec<FileId> =
                    self.file(*handle).map(|open| open.id).into_iter().collect();
                files.extend(found(path, false).filter(|file| !files.contains(file)));
                files
            }
            FsOp::SetAttr { path, .. }
            | FsOp::SetXattr { path, .. }
            | FsOp::RemoveXattr { path, .. }
            | FsOp::RmDir { path } => found(path, true).into_iter().collect(),
            FsOp::Unlink { path } | FsOp::Link { from: path, .. } => {
                found(path, false).into_iter().collect()
            }
            FsOp::Rename { from, to, .. } => found(from, true)
                .into_iter()
                .chain(found(to, true))
                .collect(),
            FsOp::Open { path, flags } | FsOp::Create { path, flags, .. }
                if opens_for_writing(*flags) =>
            {
                found(path, false).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    /// `attr`, read after take-back number `read_after` at `path`, with a
    /// grant to `holder` if one may be given.
    fn grant(
        &self,
        path: &[u8],
        attr: Attr,
        holder: &Arc<dyn AttrHolder>,
        read_after: u64,
    ) -> FsResult {
        let file = (attr.dev, attr.ino);
        match self.grants.try_grant(file, holder, read_after) {
            Grant::Granted(number) => FsResult::Granted { attr, number },
            Grant::Refused => FsResult::Attr(attr),
            Grant::NeedsWatch => {
                // Watched from now on; what it was before the watch is
                // read again after it.
                let Ok(fd) = self.object(path) else {
                    return FsResult::Attr(attr);
                };
                let same = |st: &FileStat| (st.st_dev, st.st_ino) == file;
                if !nix::sys::stat::fstat(fd.as_fd()).is_ok_and(|st| same(&st)) {
                    return FsResult::Attr(attr);
                }
                if let Err(e) = self.grants.watch(file, &fd, is_dir(&attr)) {
                    debug!("no attribute grant: cannot watch a file: {e}");
                    return FsResult::Attr(attr);
                }
                let read_after = self.grants.now();
                let Ok(st) = nix::sys::stat::fstat(fd.as_fd()) else {
                    return FsResult::Attr(attr);
                };
                let attr = attr_of(&st);
                match self.grants.try_grant(file, holder, read_after) {
                    Grant::Granted(number) => FsResult::Granted { attr, number },
                    _ => FsResult::Attr(attr),
                }
            }
        }
    }

    /// Whether `op` only looks (a lookup, a stat, a read of a link, of
    /// extended attributes or of permissions): it makes and changes
    /// nothing, and takes no longer than the file system takes to find
    /// the file.
    pub fn only_looks(op: &FsOp) -> bool {
        matches!(
            op,
            FsOp::Lookup { .. }
                | FsOp::GetAttr { .. }
                | FsOp::ReadLink { .. }
                | FsOp::Access { .. }
                | FsOp::GetXattr { .. }
                | FsOp::ListXattr { .. }
        )
    }

    /// Runs `op`, which [only looks](Self::only_looks), as `credentials`
    /// of node `asker`, on a thread shared with other work (its umask is
    /// left alone); or gives it back if it may wait: for another node to
    /// settle its writes to the file (that node's confirmation may need
    /// the very thread this runs on), or on a network or FUSE file system
    /// mounted beneath the root (a hung server would hold the thread).
    /// A lookup or stat by path of a regular file for `holder` (a
    /// connection) comes with a grant when one may be given.
    pub fn look(
        &self,
        credentials: &Credentials,
        op: FsOp,
        asker: NodeId,
        holder: Option<&Arc<dyn AttrHolder>>,
    ) -> Result<FsResult, Box<FsOp>> {
        let path = match &op {
            // An open file of any file system, NFS too: nothing says it
            // answers soon.
            FsOp::GetAttr {
                handle: Some(_), ..
            } => return Err(Box::new(op)),
            FsOp::Lookup { path }
            | FsOp::GetAttr { path, .. }
            | FsOp::ReadLink { path }
            | FsOp::Access { path, .. }
            | FsOp::GetXattr { path, .. }
            | FsOp::ListXattr { path, .. } => path,
            _ => return Err(Box::new(op)),
        };
        // Never walked: this thread may be the one that would answer it
        // (through this node's own mount and another node's, back here).
        if self.enters_own_mount(path) {
            return Ok(FsResult::Errno(libc::EACCES));
        }
        // A network or FUSE file system may hang: never on a reader.
        if self.slow_mounts.may_be_slow(path) {
            return Err(Box::new(op));
        }
        if self.write_lease_to_settle(&op, Some(asker)).is_some() {
            return Err(Box::new(op));
        }
        // Read before the attributes: a change after it voids the grant.
        let may_grant = match (&op, holder) {
            (FsOp::Lookup { path } | FsOp::GetAttr { path, .. }, Some(holder)) => {
                Some((path.clone(), holder, self.grants.now()))
            }
            _ => None,
        };
        let result = run_as_looking(credentials, || self.run(op))
            .unwrap_or_else(|errno| FsResult::Errno(errno as i32));
        Ok(match (result, may_grant) {
            (FsResult::Attr(attr), Some((path, holder, read_after))) if grantable(&attr) => {
                self.grant(&path, attr, holder, read_after)
            }
            (result, _) => result,
        })
    }

    /// Answers [`FsOp::LookAhead`] for `asker`'s connection `holder`, as
    /// `credentials`: grants the directory `dir` and each directory above
    /// it, then the attributes of up to `count` of its entries whose names
    /// sort after `after`. Nothing is granted (an empty answer) if any of
    /// the directories cannot be, or the directory is on a file system
    /// that may hang, or is too large to list for a look-ahead.
    pub fn look_ahead(
        &self,
        credentials: &Credentials,
        (dir, after, count): (&[u8], &[u8], u32),
        asker: NodeId,
        holder: &Arc<dyn AttrHolder>,
    ) -> FsResult {
        let nothing = FsResult::LookedAhead {
            dirs: Vec::new(),
            entries: Vec::new(),
            last: Vec::new(),
            more: false,
        };
        if checked(dir).is_err() {
            return FsResult::Errno(libc::EINVAL);
        }
        if self.enters_own_mount(dir) {
            return FsResult::Errno(libc::EACCES);
        }
        if self.slow_mounts.may_be_slow(dir) {
            return nothing;
        }
        let chain = path_prefixes(dir).count();
        let room = self.grants.look_ahead_room().saturating_sub(chain);
        if room == 0 {
            return nothing;
        }
        // Listed first, to find the names (who may not list it is shown
        // none): each is then looked up afresh, after the grants of the
        // directories, so a name gone since is left out and one made
        // since is not in the answer, both as they should.
        let names = match run_as_looking(credentials, || self.names_in(dir)) {
            Ok(Some(names)) => names,
            Ok(None) => return nothing,
            Err(e) => return FsResult::Errno(e as i32),
        };
        // The directories: a rename, removal or change of mode of any of
        // them (which decides who may look below it) takes the look-ahead
        // back, as a change of an entry takes its own back.
        let mut dirs = Vec::new();
        for prefix in path_prefixes(dir) {
            let read_after = self.grants.now();
            let attr = match run_as_looking(credentials, || self.stat_path(prefix)) {
                Ok(attr) if is_dir(&attr) => attr,
                Ok(_) => return FsResult::Errno(libc::ENOTDIR),
                Err(e) => return FsResult::Errno(e as i32),
            };
            match self.grant(prefix, attr, holder, read_after) {
                FsResult::Granted { attr, number } => dirs.push(AttrsChange {
                    dev: attr.dev,
                    ino: attr.ino,
                    number,
                }),
                _ => return nothing,
            }
        }
        let count = (count.min(MAX_LOOK_AHEAD) as usize).min(room);
        let mut following: Vec<Vec<u8>> = names
            .into_iter()
            .filter(|name| name.as_slice() > after)
            .collect();
        following.sort_unstable();
        let more = following.len() > count;
        following.truncate(count);
        let last = following.last().cloned().unwrap_or_default();
        let mut entries = Vec::with_capacity(following.len());
        for name in following {
            let path = child_path(dir, &name);
            let lookup = FsOp::Lookup { path: path.clone() };
            let Ok(FsResult::Granted { attr, number }) =
                self.look(credentials, lookup, asker, Some(holder))
            else {
                continue;
            };
            // Read after the grant: a change since voids both.
            let xattrs = XATTRS_AHEAD
                .iter()
                .map(|name| {
                    let get = FsOp::GetXattr {
                        path: path.clone(),
                        name: name.to_vec(),
                        size: XATTR_VALUE_AHEAD,
                    };
                    let answer = match run_as_looking(credentials, || self.run(get)) {
                        Ok(FsResult::Data(value)) => Ok(value),
                        Ok(_) => Err(libc::EIO),
                        Err(e) => Err(e as i32),
                    };
                    AheadXattr {
                        name: name.to_vec(),
                        answer,
                    }
                })
                .collect();
            entries.push(AheadEntry {
                name,
                attr,
                number,
                xattrs,
            });
        }
        FsResult::LookedAhead {
            dirs,
            entries,
            last,
            more,
        }
    }

    /// The names in directory `path` (without `.` and `..`), or `None`
    /// if it has more than a look-ahead lists.
    fn names_in(&self, path: &[u8]) -> Result<Option<Vec<Vec<u8>>>, Errno> {
        let fd = self.open_beneath(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if names.len() == MAX_LOOK_AHEAD_LISTING {
                return Ok(None);
            }
            names.push(name.to_vec());
        }
        Ok(Some(names))
    }

    fn run(&self, op: FsOp) -> Result<FsResult, Errno> {
        Ok(match op {
            FsOp::Lookup { path } => FsResult::Attr(self.stat_path(&path)?),
            FsOp::GetAttr { path, handle } => match handle {
                Some(handle) => FsResult::Attr(attr_of(&nix::sys::stat::fstat(
                    self.file(handle)?.file.as_fd(),
                )?)),
                None => FsResult::Attr(self.stat_path(&path)?),
            },
            FsOp::SetAttr {
                path,
                handle,
                attrs,
            } => FsResult::Attr(self.set_attr(&path, handle, &attrs)?),
            FsOp::ReadLink { path } => {
                let (dir, name) = self.parent(&path)?;
                let target = nix::fcntl::readlinkat(dir.as_fd(), name)?;
                FsResult::Data(target.as_bytes().to_vec())
            }
            FsOp::MkNod { path, mode, rdev } => {
                let (dir, name) = self.parent(&path)?;
                let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
                let perm = Mode::from_bits_truncate(mode & 0o7777);
                nix::sys::stat::mknodat(dir.as_fd(), name, kind, perm, rdev)?;
                FsResult::Attr(self.stat_path(&path)?)
            }
            FsOp::MkDir { path, mode } => {
                let (dir, name) = self.parent(&path)?;
                nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(mode))?;
                FsResult::Attr(self.stat_path(&path)?)
            }
            FsOp::Unlink { path } => {
                let (dir, name) = self.parent(&path)?;
                nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
                FsResult::Done
            }
            FsOp::RmDir { path } => {
                let (dir, name) = self.parent(&path)?;
                nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::RemoveDir)?;
                FsResult::Done
            }
            FsOp::Symlink { path, target } => {
                let (dir, name) = self.parent(&path)?;
                nix::unistd::symlinkat(os(&target), dir.as_fd(), name)?;
                FsResult::Attr(self.stat_path(&path)?)
            }
            FsOp::Rename { from, to, flags } => {
                let (from_dir, from_name) = self.parent(&from)?;
                let (to_dir, to_name) = self.parent(&to)?;
                nix::fcntl::renameat2(
                    from_dir.as_fd(),
                    from_name,
                    to_dir.as_fd(),
                    to_name,
                    nix::fcntl::RenameFlags::from_bits_truncate(flags),
                )?;
                FsResult::Done
            }
            FsOp::Link { from, to } => {
                let (from_dir, from_name) = self.parent(&from)?;
                let (to_dir, to_name) = self.parent(&to)?;
                nix::unistd::linkat(
                    from_dir.as_fd(),
                    from_name,
                    to_dir.as_fd(),
                    to_name,
                    AtFlags::empty(),
                )?;
                FsResult::Attr(self.stat_path(&to)?)
            }
            FsOp::Open { path, flags } => {
                let oflags = OFlag::from_bits_truncate(
                    flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY),
                );
                let fd = self.open_beneath(&path, oflags, Mode::empty())?;
                let file = File::from(fd);
                let attr = attr_of(&nix::sys::stat::fstat(file.as_fd())?);
                FsResult::Opened {
                    handle: self.add_file(file, flags, &attr),
                    attr,
                }
            }
            FsOp::Create { path, flags, mode } => {
                let oflags = OFlag::from_bits_truncate(flags | libc::O_CREAT);
                let fd = self.open_beneath(&path, oflags, Mode::from_bits_truncate(mode))?;
                let file = File::from(fd);
                let attr = attr_of(&nix::sys::stat::fstat(file.as_fd())?);
                FsResult::Opened {
                    handle: self.add_file(file, flags, &attr),
                    attr,
                }
            }
            // Reading ahead needs a lease, and so a node to revoke it
            // from: see `read_ahead`.
            FsOp::Read {
                handle,
                offset,
                size,
                ahead: _,
            } => FsResult::Data(self.file(handle)?.read_full(offset, size)?),
            // Connection business, and a look-ahead, which grants to a
            // connection (see `look_ahead`).
            FsOp::Revoked { .. } | FsOp::AttrsDropped { .. } | FsOp::LookAhead { .. } => {
                return Err(Errno::EINVAL);
            }
            // A write lease needs a node to revoke it from: see
            // `write_leased`.
            FsOp::Write {
                handle,
                offset,
                data,
                lease: _,
            } => FsResult::Written(self.file(handle)?.write_full(
                offset,
                &data,
                &self.writeback,
            )?),
            FsOp::Flush { handle, lock_owner } => {
                // close() releases the closing process's locks.
                if let Ok(open) = self.file(handle) {
                    open.lock_fds
                        .lock()
                        .expect("locks lock")
                        .remove(&lock_owner);
                }
                FsResult::Done
            }
            FsOp::Release { handle } => {
                self.release(handle);
                FsResult::Done
            }
            FsOp::Fsync { handle, datasync } => {
                let open = self.file(handle)?;
                if datasync {
                    nix::unistd::fdatasync(open.file.as_fd())?;
                } else {
                    nix::unistd::fsync(open.file.as_fd())?;
                }
                FsResult::Done
            }
            FsOp::ReadDir { path, start } => FsResult::Entries(self.read_dir(&path, start)?),
            FsOp::StatFs { path } => {
                let fd = self.object(&path)?;
                let st = nix::sys::statvfs::fstatvfs(fd.as_fd())?;
                FsResult::StatFs(StatFs {
                    blocks: st.blocks(),
                    bfree: st.blocks_free(),
                    bavail: st.blocks_available(),
                    files: st.files(),
                    ffree: st.files_free(),
                    bsize: st.block_size() as u32,
                    namelen: st.name_max() as u32,
                    frsize: st.fragment_size() as u32,
                })
            }
            FsOp::SetXattr {
                path,
                name,
                value,
                flags,
            } => {
                let fd = self.object(&path)?;
                sys::set_xattr(&proc_path(&fd), &cstring(&name)?, &value, flags)
                    .map_err(io_errno)?;
                FsResult::Done
            }
            FsOp::GetXattr { path, name, size } => {
                let fd = self.object(&path)?;
                let mut buf = vec![0u8; size.min(MAX_FS_IO) as usize];
                let n = sys::get_xattr(&proc_path(&fd), &cstring(&name)?, &mut buf)
                    .map_err(io_errno)?;
                if size == 0 {
                    FsResult::Size(n as u32)
                } else {
                    buf.truncate(n);
                    FsResult::Data(buf)
                }
            }
            FsOp::ListXattr { path, size } => {
                let fd = self.object(&path)?;
                let mut buf = vec![0u8; size.min(MAX_FS_IO) as usize];
                let n = sys::list_xattr(&proc_path(&fd), &mut buf).map_err(io_errno)?;
                if size == 0 {
                    FsResult::Size(n as u32)
                } else {
                    buf.truncate(n);
                    FsResult::Data(buf)
                }
            }
            FsOp::RemoveXattr { path, name } => {
                let fd = self.object(&path)?;
                sys::remove_xattr(&proc_path(&fd), &cstring(&name)?).map_err(io_errno)?;
                FsResult::Done
            }
            FsOp::Access { path, mask } => {
                if path.is_empty() {
                    nix::unistd::faccessat(
                        self.root.as_fd(),
                        ".",
                        nix::unistd::AccessFlags::from_bits_truncate(mask),
                        AtFlags::AT_EACCESS,
                    )?;
                } else {
                    let (dir, name) = self.parent(&path)?;
                    nix::unistd::faccessat(
                        dir.as_fd(),
                        name,
                        nix::unistd::AccessFlags::from_bits_truncate(mask),
                        AtFlags::AT_EACCESS | AtFlags::AT_SYMLINK_NOFOLLOW,
                    )?;
                }
                FsResult::Done
            }
            FsOp::Fallocate {
                handle,
                offset,
                length,
                mode,
            } => {
                let open = self.file(handle)?;
                nix::fcntl::fallocate(
                    open.file.as_fd(),
                    nix::fcntl::FallocateFlags::from_bits_truncate(mode),
                    offset as i64,
                    length as i64,
                )?;
                FsResult::Done
            }
            FsOp::Lseek {
                handle,
                offset,
                whence,
            } => {
                let open = self.file(handle)?;
                let whence = match whence {
                    libc::SEEK_DATA => nix::unistd::Whence::SeekData,
                    libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
                    libc::SEEK_SET => nix::unistd::Whence::SeekSet,
                    libc::SEEK_END => nix::unistd::Whence::SeekEnd,
                    _ => return Err(Errno::EINVAL),
                };
                let to = nix::unistd::lseek(open.file.as_fd(), offset, whence)?;
                FsResult::Offset(to as u64)
            }
            FsOp::GetLk { handle, lock } => FsResult::Lock(self.get_lock(handle, &lock)?),
            FsOp::SetLk {
                handle,
                lock,
                sleep,
            } => {
                self.set_lock(handle, &lock, sleep)?;
                FsResult::Done
            }
        })
    }

    fn set_attr(&self, path: &[u8], handle: Option<u64>, attrs: &SetAttrs) -> Result<Attr, Errno> {
        let open = handle.map(|h| self.file(h)).transpose()?;
        let object = self.object(path)?;
        if let Some(mode) = attrs.mode {
            let mode = Mode::from_bits_truncate(mode & 0o7777);
            match &open {
                Some(open) => nix::sys::stat::fchmod(open.file.as_fd(), mode)?,
                None => {
                    use std::os::unix::fs::PermissionsExt;
                    let path = proc_path(&object);
                    let permissions = std::fs::Permissions::from_mode(mode.bits());
                    std::fs::set_permissions(os(path.as_bytes()), permissions).map_err(io_errno)?
                }
            }
        }
        if attrs.uid.is_some() || attrs.gid.is_some() {
            let uid = attrs.uid.map(nix::unistd::Uid::from_raw);
            let gid = attrs.gid.map(nix::unistd::Gid::from_raw);
            nix::unistd::fchownat(object.as_fd(), "", uid, gid, AtFlags::AT_EMPTY_PATH)?;
        }
        if let Some(size) = attrs.size {
            match &open {
                Some(open) if open.access != OFlag::O_RDONLY => {
                    nix::unistd::ftruncate(open.file.as_fd(), size as i64)?
                }
                _ => nix::unistd::truncate(proc_path(&object).as_c_str(), size as i64)?,
            }
        }
        if attrs.atime.is_some() || attrs.mtime.is_some() {
            let atime = timespec(attrs.atime);
            let mtime = timespec(attrs.mtime);
            let (dir, name) = if path.is_empty() {
                (None, os(b"."))
            } else {
                let (dir, name) = self.parent(path)?;
                (Some(dir), name)
            };
            let dir_fd = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            nix::sys::stat::utimensat(
                dir_fd,
                name,
                &atime,
                &mtime,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )?;
        }
        match &open {
            Some(open) => Ok(attr_of(&nix::sys::stat::fstat(open.file.as_fd())?)),
            None => self.stat_path(path),
        }
    }

    fn read_dir(&self, path: &[u8], start: u32) -> Result<Vec<DirEntry>, Errno> {
        let fd = self.open_beneath(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let mut entries = Vec::new();
        for (index, entry) in dir.iter().enumerate() {
            if index < start as usize {
                continue;
            }
            if entries.len() == DIR_ENTRIES_PER_REPLY {
                break;
            }
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            let kind = match entry.file_type() {
                Some(nix::dir::Type::Fifo) => libc::DT_FIFO,
                Some(nix::dir::Type::CharacterDevice) => libc::DT_CHR,
                Some(nix::dir::Type::Directory) => libc::DT_DIR,
                Some(nix::dir::Type::BlockDevice) => libc::DT_BLK,
                Some(nix::dir::Type::File) => libc::DT_REG,
                Some(nix::dir::Type::Symlink) => libc::DT_LNK,
                Some(nix::dir::Type::Socket) => libc::DT_SOCK,
                None => libc::DT_UNKNOWN,
            };
            entries.push(DirEntry {
                name: name.to_vec(),
                ino: entry.ino(),
                kind,
            });
        }
        Ok(entries)
    }

    /// The descriptor that holds `owner`'s locks on `handle`'s file.
    fn lock_fd(&self, handle: u64, owner: u64) -> Result<Arc<File>, Errno> {
        let open = self.file(handle)?;
        let mut fds = open.lock_fds.lock().expect("locks lock");
        if let Some(fd) = fds.get(&owner) {
            return Ok(fd.clone());
        }
        let reopened = nix::fcntl::open(
            proc_path(&open.file).as_c_str(),
            open.access | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let fd = Arc::new(File::from(reopened));
        fds.insert(owner, fd.clone());
        Ok(fd)
    }

    fn get_lock(&self, handle: u64, lock: &LockSpec) -> Result<Option<LockSpec>, Errno> {
        let fd = self.lock_fd(handle, lock.owner)?;
        let mut flock = to_flock(lock);
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_OFD_GETLK(&mut flock))?;
        if flock.l_type as i32 == libc::F_UNLCK {
            return Ok(None);
        }
        Ok(Some(LockSpec {
            owner: 0,
            start: flock.l_start as u64,
            end: if flock.l_len == 0 {
                u64::MAX
            } else {
                (flock.l_start + flock.l_len - 1) as u64
            },
            kind: flock.l_type as i32,
            pid: 0,
        }))
    }

    fn set_lock(&self, handle: u64, lock: &LockSpec, sleep: bool) -> Result<(), Errno> {
        let fd = self.lock_fd(handle, lock.owner)?;
        let flock = to_flock(lock);
        let arg = if sleep {
            nix::fcntl::FcntlArg::F_OFD_SETLKW(&flock)
        } else {
            nix::fcntl::FcntlArg::F_OFD_SETLK(&flock)
        };
        nix::fcntl::fcntl(fd.as_fd(), arg)?;
        Ok(())
    }
}

fn to_flock(lock: &LockSpec) -> libc::flock {
    let len = if lock.end == u64::MAX || lock.end >= i64::MAX as u64 {
        0
    } else {
        (lock.end - lock.start + 1) as i64
    };
    libc::flock {
        l_type: lock.kind as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: lock.start as i64,
        l_len: len,
        l_pid: 0,
    }
}

/// `/proc/self/fd/N`: reaches the very object a descriptor holds.
fn proc_path(fd: &impl AsRawFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}
