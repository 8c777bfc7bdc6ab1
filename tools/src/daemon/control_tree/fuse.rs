//! The control tree as the kernel sees it: a FUSE file system over
//! [`ControlFiles`]. A file's text is taken when it is opened (as in
//! /proc); each write applies at once, and a refused one fails with the
//! model's errno (EINVAL for a bad value, EACCES for a caller without the
//! right). The map (`admin/config`) is the exception: it spans lines,
//! which shells write one at a time, so it is gathered and installed when
//! the file is closed, and a refused map fails the close.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};
use tracing::{debug, info};

use super::entries::{ADMIN_FILES, Access, Entry, Kind};
use super::files::{Caller, ControlError, ControlFiles};

/// Nothing is cached: every look is fresh.
const NO_CACHE: Duration = Duration::ZERO;
/// The file system type name (`fuse.omx-control`).
pub const FS_NAME: &str = "omx-control";
/// The most gathered for one file applied at close (a map of thousands
/// of ranges fits).
const MAX_GATHERED: usize = 1 << 20;
/// Threads serving the kernel's requests.
const THREADS: usize = 2;

/// The FUSE side of the tree.
pub struct ControlTree {
    files: Arc<ControlFiles>,
    next_handle: AtomicU64,
    opened: Mutex<HashMap<u64, OpenFile>>,
}

/// One open control file.
#[derive(Default)]
struct OpenFile {
    /// Its text, taken at open.
    text: Vec<u8>,
    /// What was written to a file applied at close (the map).
    gathered: Vec<u8>,
}

/// Whether writes to `entry` are gathered and applied at close.
fn applied_at_close(entry: Entry) -> bool {
    matches!(entry, Entry::AdminFile(i) if ADMIN_FILES[usize::from(i)].0 == "config")
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        pid: req.pid(),
    }
}

impl ControlTree {
    fn attr(&self, entry: Entry, req: &Request) -> FileAttr {
        let (kind, perm, size) = match entry.kind() {
            Kind::Directory => (FileType::Directory, 0o555, 0),
            Kind::Symlink => (
                FileType::Symlink,
                0o777,
                ControlFiles::self_target(caller(req)).len() as u64,
            ),
            Kind::File(Access::Read) => (FileType::RegularFile, 0o444, 0),
            Kind::File(Access::Write) => (FileType::RegularFile, 0o644, 0),
        };
        let owner = self.files.owner(entry);
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(entry.ino()),
            size,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: owner,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn apply_gathered(&self, req: &Request, ino: INodeNo, fh: FileHandle) -> Result<(), Errno> {
        let gathered = match self.opened.lock().expect("opened lock").get_mut(&fh.0) {
            Some(open) => std::mem::take(&mut open.gathered),
            None => return Ok(()),
        };
        if gathered.is_empty() {
            return Ok(());
        }
        let entry = self.entry(ino)?;
        let value = std::str::from_utf8(&gathered).map_err(|_| Errno::EINVAL)?;
        self.files.write(entry, value, caller(req)).map_err(|e| {
            debug!("control tree: {} refused: {e}", entry.name());
            errno(&e)
        })
    }

    /// The existing entry of an inode number.
    fn entry(&self, ino: INodeNo) -> Result<Entry, Errno> {
        Entry::from_ino(ino.0)
            .filter(|e| self.files.exists(*e))
            .ok_or(Errno::ENOENT)
    }
}

fn errno(error: &ControlError) -> Errno {
    Errno::from_i32(error.errno())
}

impl Filesystem for ControlTree {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.entry(parent).ok().and_then(|parent| {
            let child = parent.child(name.to_str()?)?;
            self.files.exists(child).then_some(child)
        });
        match found {
            Some(entry) => reply.entry(&NO_CACHE, &self.attr(entry, req), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.entry(ino) {
            Ok(entry) => reply.attr(&NO_CACHE, &self.attr(entry, req)),
            Err(e) => reply.error(e),
        }
    }

    /// Only a truncation (as `echo 1 > file` asks before writing) is
    /// taken, and changes nothing: a value is set by writing it.
    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        _size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let entry = match self.entry(ino) {
            Ok(entry) => entry,
            Err(e) => return reply.error(e),
        };
        if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&NO_CACHE, &self.attr(entry, req));
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.entry(ino) {
            Ok(Entry::SelfLink) => reply.data(ControlFiles::self_target(caller(req)).as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let entry = match self.entry(ino) {
            Ok(entry) => entry,
            Err(e) => return reply.error(e),
        };
        let access = flags.0 & libc::O_ACCMODE;
        let writing = access != libc::O_RDONLY;
        if writing && entry.kind() != Kind::File(Access::Write) {
            return reply.error(Errno::EACCES);
        }
        // A write-only open takes no snapshot (reading an action file
        // may cost something, and nobody will read it).
        let text = if access == libc::O_WRONLY {
            Vec::new()
        } else {
            match self.files.read(entry, caller(req)) {
                Ok(text) => text.into_bytes(),
                Err(e) => return reply.error(errno(&e)),
            }
        };
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.opened.lock().expect("opened lock").insert(
            handle,
            OpenFile {
                text,
                gathered: Vec::new(),
            },
        );
        reply.opened(FileHandle(handle), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let opened = self.opened.lock().expect("opened lock");
        let Some(OpenFile { text, .. }) = opened.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let start = (offset as usize).min(text.len());
        let end = start.saturating_add(size as usize).min(text.len());
        reply.data(&text[start..end]);
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let entry = match self.entry(ino) {
            Ok(entry) => entry,
            Err(e) => return reply.error(e),
        };
        if applied_at_close(entry) {
            if req.uid() != 0 {
                return reply.error(Errno::EACCES);
            }
            let mut opened = self.opened.lock().expect("opened lock");
            let Some(open) = opened.get_mut(&fh.0) else {
                return reply.error(Errno::EBADF);
            };
            if open.gathered.len() + data.len() > MAX_GATHERED {
                return reply.error(Errno::EFBIG);
            }
            open.gathered.extend_from_slice(data);
            return reply.written(data.len() as u32);
        }
        if offset != 0 {
            // A value is one write. What a shell adds after it (a lone
            // newline) is let through; more would be a second value.
            if data.iter().all(u8::is_ascii_whitespace) {
                return reply.written(data.len() as u32);
            }
            return reply.error(Errno::EINVAL);
        }
        let Ok(value) = std::str::from_utf8(data) else {
            return reply.error(Errno::EINVAL);
        };
        match self.files.write(entry, value, caller(req)) {
            Ok(()) => {
                debug!("control tree: {} <- {:?}", entry.name(), value.trim());
                reply.written(data.len() as u32)
            }
            Err(e) => {
                debug!(
                    "control tree: {} <- {:?} refused: {e}",
                    entry.name(),
                    value.trim()
                );
                reply.error(errno(&e))
            }
        }
    }

    /// Applies what was gathered for a file applied at close; a refusal
    /// fails the close(2) that asked.
    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.apply_gathered(req, ino, fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Normally flushed already; a release without one still applies.
        if let Err(e) = self.apply_gathered(req, ino, fh) {
            debug!("control tree: a write gathered until release was refused: {e:?}");
        }
        self.opened.lock().expect("opened lock").remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.entry(ino) {
            Ok(entry) if entry.kind() == Kind::Directory => {
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.entry(ino) {
            Ok(entry) => entry,
            Err(e) => return reply.error(e),
        };
        let mut listing = vec![(".".to_string(), dir), ("..".to_string(), dir.parent())];
        listing.extend(self.files.list(dir));
        for (i, (name, entry)) in listing.iter().enumerate().skip(offset as usize) {
            let kind = match entry.kind() {
                Kind::Directory => FileType::Directory,
                Kind::Symlink => FileType::Symlink,
                Kind::File(_) => FileType::RegularFile,
            };
            if reply.add(INodeNo(entry.ino()), i as u64 + 1, kind, OsStr::new(name)) {
                break;
            }
        }
        reply.ok();
    }
}

/// The mounted tree: unmounted when dropped.
pub struct ControlTreeMount {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl Drop for ControlTreeMount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            drop(session);
            info!("control tree unmounted from {}", self.mountpoint.display());
        }
    }
}

/// Mounts the tree at the first of `candidates` that can take it (where
/// `/proc/openMosix` cannot be made, as on a kernel without the companion
/// module, the next one), after removing a stale mount left by a daemon
/// that crashed.
pub fn mount(
    files: Arc<ControlFiles>,
    candidates: &[PathBuf],
) -> std::io::Result<ControlTreeMount> {
    let mut failures = Vec::new();
    for mountpoint in candidates {
        let tree = ControlTree {
            files: files.clone(),
            next_handle: AtomicU64::new(1),
            opened: Mutex::new(HashMap::new()),
        };
        match mount_at(tree, mountpoint) {
            Ok(mounted) => return Ok(mounted),
            Err(e) => {
                debug!("control tree: not at {}: {e}", mountpoint.display());
                failures.push(format!("{}: {e}", mountpoint.display()));
            }
        }
    }
    Err(std::io::Error::other(format!(
        "cannot mount the control tree anywhere ({})",
        failures.join("; ")
    )))
}

fn mount_at(tree: ControlTree, mountpoint: &Path) -> std::io::Result<ControlTreeMount> {
    omx_mfs::fs::mount::recover_stale(mountpoint, FS_NAME)?;
    std::fs::create_dir_all(mountpoint)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.into()),
        MountOption::Subtype(FS_NAME.into()),
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(THREADS);
    let session = fuser::Session::new(tree, mountpoint, &config)?.spawn()?;
    info!("control tree mounted at {}", mountpoint.display());
    Ok(ControlTreeMount {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
    })
}
