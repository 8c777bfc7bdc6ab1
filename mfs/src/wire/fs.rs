//! Messages of MFS: file system operations a node asks of the node that
//! owns the files, and the answers.
//!
//! A connection becomes an MFS connection with `PeerMessage::OpenFs`; from
//! then on the client sends [`FsRequest`]s and the owner answers each with
//! an [`FsReply`] carrying the same `id`, in any order (requests run
//! concurrently at the owner), inside an [`FsAnswer`]; the owner may also
//! take back a read lease ([`FsAnswer::Revoke`], see `fs::lease`), which
//! the client confirms with [`FsOp::Revoked`], and take back attributes it
//! let the client keep ([`FsResult::Granted`], [`FsAnswer::AttrsChanged`],
//! confirmed with [`FsOp::AttrsDropped`]; see `fs::attr_grants`). Paths
//! are relative to the owner's exported root, one component per name,
//! never `..`; the owner checks that.

use rkyv::{Archive, Deserialize, Serialize};

/// Largest data payload of one read or write.
pub const MAX_FS_IO: u32 = 1 << 20;
/// Largest frame on an MFS connection: a full payload and its envelope.
pub const MAX_FS_FRAME: usize = MAX_FS_IO as usize + (64 << 10);

/// The path of `name` in directory `dir` (the empty path is the exported
/// root).
pub fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    path.extend_from_slice(dir);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

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
    /// The client dropped what it kept of `handle` under lease `epoch`
    /// (read ahead), or has every write it sent under it answered (write
    /// lease).
    Revoked {
        handle: u64,
        epoch: u64,
    },
    /// With `lease`, the writer asks for a write lease of the file: under
    /// one it may answer its program before the owner has the data (see
    /// [`FsResult::WrittenLeased`]).
    Write {
        handle: u64,
        offset: u64,
        data: Vec<u8>,
        lease: bool,
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
    /// The client dropped the attributes of file `ino` of device `dev`
    /// it kept under grants numbered below `number`.
    AttrsDropped {
        dev: u64,
        ino: u64,
        number: u64,
    },
    /// The entries of directory `dir` whose names sort after `after`, up
    /// to `count` of them, with their attributes granted (see
    /// `fs::look_ahead`): the asker saw a program look up names of the
    /// directory in order, as `ls -l`, `find` or a build's checks do.
    LookAhead {
        dir: Vec<u8>,
        after: Vec<u8>,
        count: u32,
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
    /// Files whose attributes the asking node kept and the request
    /// changes: dropped before the result is taken (as
    /// [`FsAnswer::AttrsChanged`], riding on the answer instead of a
    /// message of its own).
    pub changed: Vec<AttrsChange>,
}

impl FsReply {
    /// The answer `result` to request `id`, which changed nothing the
    /// asker keeps.
    pub fn of(id: u64, result: FsResult) -> FsReply {
        FsReply {
            id,
            result,
            changed: Vec::new(),
        }
    }
}

/// A take-back of the attributes of file `ino` of device `dev`, numbered
/// `number`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrsChange {
    pub dev: u64,
    pub ino: u64,
    pub number: u64,
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
    /// The attributes of file `ino` of device `dev` changed (take-back
    /// `number`): grants numbered below it are void. With `confirm`, the
    /// change waits for [`FsOp::AttrsDropped`].
    AttrsChanged {
        dev: u64,
        ino: u64,
        number: u64,
        confirm: bool,
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
    /// Written, and the writer's node holds write lease `epoch` of the
    /// file: no one else has it open, and the owner revokes the lease
    /// (the writer then has its writes in flight answered, and confirms)
    /// before anyone opens, truncates or stats it, so the writer may let
    /// its program go on before the owner answers its next writes.
    WrittenLeased {
        written: u32,
        epoch: u64,
    },
    Entries(Vec<DirEntry>),
    StatFs(StatFs),
    /// The size an xattr call needs (asked with size 0).
    Size(u32),
    Offset(u64),
    /// A conflicting lock, or `None` when the range is free.
    Lock(Option<LockSpec>),
    /// Attributes the client may keep until told they changed
    /// ([`FsAnswer::AttrsChanged`] numbered above `number`), for at most
    /// `fs::attr_grants::GRANT_TIME` from when it asked.
    Granted {
        attr: Attr,
        number: u64,
    },
    /// The answer to [`FsOp::LookAhead`]: grants of the directory and of
    /// each directory above it (`dirs`, from the exported root down; a
    /// take-back of any of them voids `entries`), and the entries whose
    /// attributes were granted, in name order. `more`: names after
    /// `last` were left for another request. `last` is the last name
    /// looked at, granted or not (empty if none).
    LookedAhead {
        dirs: Vec<AttrsChange>,
        entries: Vec<AheadEntry>,
        last: Vec<u8>,
        more: bool,
    },
}

/// An entry of [`FsResult::LookedAhead`]: `name`'s attributes, granted
/// under `number`, and what `getxattr` of a few extended attributes gave
/// the caller, read under the same grant.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AheadEntry {
    pub name: Vec<u8>,
    pub attr: Attr,
    pub number: u64,
    pub xattrs: Vec<AheadXattr>,
}

/// The value of extended attribute `name`, or the errno its read gave.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AheadXattr {
    pub name: Vec<u8>,
    pub answer: Result<Vec<u8>, i32>,
}

/// A payload came after a message that does not take one (see
/// [`crate::wire::codec::encode_payload_head_in`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a payload of {len} bytes came after {what}, which takes none")]
pub struct PayloadError {
    pub what: &'static str,
    pub len: usize,
}

/// A write's data, and a read's, travel as the payload after their
/// message, outside the archive: the sender then copies them once, from
/// the buffer they are in, where putting them inside the message would
/// copy them twice. A message with its data inside is taken as well.
impl FsRequest {
    /// The request with the payload it came with put in its place.
    pub fn with_payload(mut self, payload: &[u8]) -> Result<FsRequest, PayloadError> {
        if payload.is_empty() {
            return Ok(self);
        }
        let refuse = |what| PayloadError {
            what,
            len: payload.len(),
        };
        match &mut self.op {
            FsOp::Write { data, .. } if data.is_empty() => {
                *data = payload.to_vec();
                Ok(self)
            }
            FsOp::Write { .. } => Err(refuse("a write that carries its data inside")),
            _ => Err(refuse("a request other than a write")),
        }
    }
}

impl FsAnswer {
    /// Moves a read's data out of the answer, to send as its payload
    /// (empty for any other answer).
    pub fn take_payload(&mut self) -> Vec<u8> {
        match self {
            FsAnswer::Reply(FsReply {
                result: FsResult::Data(data) | FsResult::Leased { data, .. },
                ..
            }) => std::mem::take(data),
            _ => Vec::new(),
        }
    }

    /// The answer with the payload it came with put in its place.
    pub fn with_payload(mut self, payload: &[u8]) -> Result<FsAnswer, PayloadError> {
        if payload.is_empty() {
            return Ok(self);
        }
        let refuse = |what| PayloadError {
            what,
            len: payload.len(),
        };
        match &mut self {
            FsAnswer::Reply(FsReply {
                result: FsResult::Data(data) | FsResult::Leased { data, .. },
                ..
            }) if data.is_empty() => {
                *data = payload.to_vec();
                Ok(self)
            }
            FsAnswer::Reply(FsReply {
                result: FsResult::Data(_) | FsResult::Leased { .. },
                ..
            }) => Err(refuse("a read's answer that carries its data inside")),
            _ => Err(refuse("an answer other than a read's")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: FsOp) -> FsRequest {
        FsRequest {
            id: 7,
            caller: Caller {
                uid: 1000,
                gid: 1000,
                groups: vec![],
                pid: 42,
            },
            op,
        }
    }

    fn write(data: &[u8]) -> FsOp {
        FsOp::Write {
            handle: 3,
            offset: 4096,
            data: data.to_vec(),
            lease: false,
        }
    }

    /// A write's data comes as the payload or inside, never both; no
    /// other request takes one.
    #[test]
    fn only_a_write_without_data_inside_takes_a_payload() {
        assert_eq!(
            request(write(b"")).with_payload(b"data").unwrap(),
            request(write(b"data"))
        );
        assert_eq!(
            request(write(b"inside")).with_payload(b"").unwrap(),
            request(write(b"inside"))
        );
        let both = request(write(b"inside")).with_payload(b"data").unwrap_err();
        assert_eq!(both.what, "a write that carries its data inside");
        let other = request(FsOp::Unlink {
            path: b"f".to_vec(),
        })
        .with_payload(b"data")
        .unwrap_err();
        assert_eq!(
            other.to_string(),
            "a payload of 4 bytes came after a request other than a write, which takes none"
        );
    }

    /// A read's data leaves its answer as the payload and comes back in
    /// place, under or without a lease; other answers carry none.
    #[test]
    fn a_reads_data_travels_as_the_payload_of_its_answer() {
        let reply = |result| {
            FsAnswer::Reply(FsReply {
                id: 9,
                result,
                changed: Vec::new(),
            })
        };
        for result in [
            FsResult::Data(b"bytes".to_vec()),
            FsResult::Leased {
                data: b"bytes".to_vec(),
                epoch: 5,
            },
        ] {
            let mut answer = reply(result.clone());
            let payload = answer.take_payload();
            assert_eq!(payload, b"bytes");
            assert_ne!(answer, reply(result.clone()));
            assert_eq!(
                answer.with_payload(&payload).unwrap(),
                reply(result.clone())
            );
            let inside = reply(result).with_payload(b"more").unwrap_err();
            assert_eq!(inside.what, "a read's answer that carries its data inside");
        }
        let mut written = reply(FsResult::Written(5));
        assert!(written.take_payload().is_empty());
        assert!(written.with_payload(b"x").is_err());
        let revoke = FsAnswer::Revoke {
            handle: 1,
            epoch: 2,
        };
        assert!(revoke.with_payload(b"x").is_err());
    }
}
