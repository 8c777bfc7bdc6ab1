//! Messages of MFS: file system operations a node asks of the node that
//! owns the files, and the answers.
//!
//! A connection becomes an MFS connection with `PeerMessage::OpenFs`; from
//! then on the client sends [`FsRequest`]s and the owner answers each with
//! an [`FsReply`] carrying the same `id`, in any order (requests run
//! concurrently at the owner), inside an [`FsAnswer`]; the owner may also
//! take back a read lease ([`FsAnswer::Revoke`], see `fs::lease`), which
//! the client confirms with [`FsOp::Revoked`]. Paths are relative to the owner's exported
//! root, one component per name, never `..`; the owner checks that.

use rkyv::{Archive, Deserialize, Serialize};

/// Largest data payload of one read or write.
pub const MAX_FS_IO: u32 = 1 << 20;
/// Largest frame on an MFS connection: a full payload and its envelope.
pub const MAX_FS_FRAME: usize = MAX_FS_IO as usize + (64 << 10);

/// Who asks: the calling process's credentials, as its node saw them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub pid: u32,
}

/// One request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FsRequest {
    pub id: u64,
    pub caller: Caller,
    pub op: FsOp,
}

/// A point in time (seconds and nanoseconds since the epoch).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timespec {
    pub secs: i64,
    pub nanos: u32,
}

/// A time to set: a given one, or the owner's now.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    At(Timespec),
    Now,
}

/// The attributes of a setattr (each optional).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// A byte-range lock request (POSIX `struct flock`, or a whole-file flock).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockSpec {
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub kind: i32,
    pub pid: u32,
}

/// The operations. `path` names the object; `handle` an open file at the
/// owner (from `Open`/`Create`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum FsOp {
    Lookup {
        path: Vec<u8>,
    },
    GetAttr {
        path: Vec<u8>,
        handle: Option<u64>,
    },
    SetAttr {
        path: Vec<u8>,
        handle: Option<u64>,
        attrs: SetAttrs,
    },
    ReadLink {
        path: Vec<u8>,
    },
    MkNod {
        path: Vec<u8>,
        mode: u32,
        rdev: u64,
    },
    MkDir {
        path: Vec<u8>,
        mode: u32,
    },
    Unlink {
        path: Vec<u8>,
    },
    RmDir {
        path: Vec<u8>,
    },
    Symlink {
        path: Vec<u8>,
        target: Vec<u8>,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        flags: u32,
    },
    Link {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Open {
        path: Vec<u8>,
        flags: i32,
    },
    Create {
        path: Vec<u8>,
        flags: i32,
        mode: u32,
    },
    /// `ahead`: bytes past the request the client would like to keep
    /// (it reads sequentially). The owner sends them only under a read
    /// lease, as [`FsResult::Leased`].
    Read {
        handle: u64,
        offset: u64,
        size: u32,
        ahead: u32,
    },
    /// The client dropped what it kept of `handle` under lease `epoch`.
    Revoked {
        handle: u64,
        epoch: u64,
    },
    Write {
        handle: u64,
        offset: u64,
        data: Vec<u8>,
    },
    Flush {
        handle: u64,
        lock_owner: u64,
    },
    Release {
        handle: u64,
    },
    Fsync {
        handle: u64,
        datasync: bool,
    },
    /// Entries from the `start`th on (`.` and `..` included), at most
    /// a few thousand: ask again from where the answer ends.
    ReadDir {
        path: Vec<u8>,
        start: u32,
    },
    StatFs {
        path: Vec<u8>,
    },
    SetXattr {
        path: Vec<u8>,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: i32,
    },
    GetXattr {
        path: Vec<u8>,
        name: Vec<u8>,
        size: u32,
    },
    ListXattr {
        path: Vec<u8>,
        size: u32,
    },
    RemoveXattr {
        path: Vec<u8>,
        name: Vec<u8>,
    },
    Access {
        path: Vec<u8>,
        mask: i32,
    },
    Fallocate {
        handle: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    Lseek {
        handle: u64,
        offset: i64,
        whence: i32,
    },
    GetLk {
        handle: u64,
        lock: LockSpec,
    },
    /// flock(2) locks arrive as whole-file locks too (FUSE tells them
    /// apart, but fuser does not pass that on): both are held alike.
    SetLk {
        handle: u64,
        lock: LockSpec,
        sleep: bool,
    },
}

/// The attributes of a file at its owner.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

/// One directory entry.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    /// The `d_type` (DT_REG, DT_DIR, ...).
    pub kind: u8,
}

/// File system statistics.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// The answer to one request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FsReply {
    pub id: u64,
    pub result: FsResult,
}

/// What the owner sends on an MFS connection.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum FsAnswer {
    Reply(FsReply),
    /// Someone is about to write the file open as `handle`: drop what was
    /// kept of it under lease `epoch` (or any earlier), then confirm.
    Revoke {
        handle: u64,
        epoch: u64,
    },
}

/// What an operation gave: an errno, or its value.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum FsResult {
    Errno(i32),
    Done,
    Attr(Attr),
    Opened {
        handle: u64,
        attr: Attr,
    },
    Data(Vec<u8>),
    /// Data read under read lease `epoch`: the bytes asked for, then up
    /// to `ahead` more, which stay valid until the lease is revoked. Short
    /// only at the end of the file.
    Leased {
        data: Vec<u8>,
        epoch: u64,
    },
    Written(u32),
    Entries(Vec<DirEntry>),
    StatFs(StatFs),
    /// The size an xattr call needs (asked with size 0).
    Size(u32),
    Offset(u64),
    /// A conflicting lock, or `None` when the range is free.
    Lock(Option<LockSpec>),
}
