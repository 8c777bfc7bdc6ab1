//! Which paths beneath the exported root lead into file systems that may
//! take long to answer (network and FUSE file systems, automounts): a look
//! at one must not run on a connection's reader, where a hung NFS server
//! would stall every request of that node.
//!
//! The mount table is read from `/proc/thread-self/mountinfo` (the mount
//! namespace of the thread that made the exporter) when it changes
//! (the kernel flags a change to `poll`), so a mount made after the
//! daemon started is known before the next look.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::warn;

/// File system types that answer from this machine's own memory or disks.
/// Every other type (nfs, cifs, fuse.*, autofs, ...) counts as slow.
const LOCAL_TYPES: &[&str] = &[
    "ext2",
    "ext3",
    "ext4",
    "xfs",
    "btrfs",
    "bcachefs",
    "zfs",
    "nilfs2",
    "msdos",
    "udf",
    "hfsplus",
    "cpuset",
    "f2fs",
    "jfs",
    "reiserfs",
    "vfat",
    "exfat",
    "ntfs3",
    "tmpfs",
    "ramfs",
    "devtmpfs",
    "hugetlbfs",
    "overlay",
    "squashfs",
    "iso9660",
    "erofs",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "pstore",
    "configfs",
    "efivarfs",
    "binfmt_misc",
    "nsfs",
    "fusectl",
    "rpc_pipefs",
];

/// The slow mounts beneath one exported root, kept up to date.
pub struct SlowMounts {
    /// The exported root, resolved.
    root: PathBuf,
    watch: Mutex<Watch>,
}

struct Watch {
    /// The mount table, kept open to learn of changes; `None` if
    /// it cannot be read (then every path counts as slow).
    mountinfo: Option<File>,
    /// Paths from the root of the slow mounts beneath it; an empty path
    /// if the root itself is on a slow file system.
    slow: Vec<Vec<u8>>,
}

impl SlowMounts {
    pub fn new(root: &Path) -> SlowMounts {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let mountinfo = File::open("/proc/thread-self/mountinfo")
            .inspect_err(|e| {
                warn!(
                    "cannot read the mount table ({e}): every MFS look runs on a thread of its own"
                )
            })
            .ok();
        let mut watch = Watch {
            mountinfo,
            slow: Vec::new(),
        };
        watch.reread(&root);
        SlowMounts {
            root,
            watch: Mutex::new(watch),
        }
    }

    /// `path` as a path from the root, if it is the root or beneath it.
    pub fn from_root(&self, path: &Path) -> Option<Vec<u8>> {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let relative = path.strip_prefix(&self.root).ok()?;
        Some(relative.as_os_str().as_bytes().to_vec())
    }

    /// Whether walking `path` (relative to the root, from the wire) may
    /// enter a slow file system.
    pub fn may_be_slow(&self, path: &[u8]) -> bool {
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mountinfo) = &watch.mountinfo else {
            return true;
        };
        let mut fds = [PollFd::new(mountinfo.as_fd(), PollFlags::POLLPRI)];
        let changed = poll(&mut fds, PollTimeout::ZERO).map_or(true, |n| n > 0);
        if changed {
            watch.reread(&self.root);
        }
        watch.slow.iter().any(|mount| beneath(path, mount))
    }
}

impl Watch {
    fn reread(&mut self, root: &Path) {
        let Some(text) = self.mountinfo.as_ref().and_then(read_whole) else {
            self.mountinfo = None;
            return;
        };
        self.slow = slow_mounts_beneath(&text, root);
    }
}

/// Whether `path` is `mount` or beneath it (both relative to the root;
/// an empty `mount` is the root).
pub(crate) fn beneath(path: &[u8], mount: &[u8]) -> bool {
    mount.is_empty()
        || (path.starts_with(mount) && matches!(path.get(mount.len()), None | Some(b'/')))
}

fn read_whole(file: &File) -> Option<Vec<u8>> {
    let mut text = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let read = file.read_at(&mut chunk, text.len() as u64).ok()?;
        if read == 0 {
            return Some(text);
        }
        text.extend_from_slice(&chunk[..read]);
    }
}

/// The slow mounts of a `mountinfo` table, as paths from `root`: those
/// beneath it, and an empty path if the mount holding the root is slow.
fn slow_mounts_beneath(mountinfo: &[u8], root: &Path) -> Vec<Vec<u8>> {
    let mut slow = Vec::new();
    // The deepest mount at or above the root holds it (of several at one
    // point, the last, which covers the others): its depth and slowness.
    let mut holder: Option<(usize, bool)> = None;
    for line in mountinfo.split(|b| *b == b'\n') {
        let Some((point, kind)) = mount_point_and_type(line) else {
            continue;
        };
        let is_slow = !LOCAL_TYPES.contains(&kind.as_str());
        let point = PathBuf::from(std::ffi::OsStr::from_bytes(&point));
        if root.starts_with(&point) {
            let depth = point.components().count();
            if holder.is_none_or(|(deepest, _)| depth >= deepest) {
                holder = Some((depth, is_slow));
            }
        } else if let Ok(relative) = point.strip_prefix(root)
            && is_slow
        {
            slow.push(relative.as_os_str().as_bytes().to_vec());
        }
    }
    if holder.is_some_and(|(_, is_slow)| is_slow) {
        slow.push(Vec::new());
    }
    slow
}

/// The mount point (unescaped) and file system type of one `mountinfo`
/// line: `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE ...`.
fn mount_point_and_type(line: &[u8]) -> Option<(Vec<u8>, String)> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let point = unescape(fields.get(4)?);
    let dash = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    let kind = String::from_utf8_lossy(fields.get(dash + 1)?).into_owned();
    Some((point, kind))
}

/// Undoes the kernel's octal escapes (`\040` for a space) in a path.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (field[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 27 0:40 / /srv rw,relatime shared:5 - ext4 /dev/sdb1 rw
31 30 0:41 / /srv/data/nfs rw,relatime shared:6 - nfs4 server:/export rw
32 30 0:42 / /srv/data/my\\040mount rw - fuse.sshfs me@host: rw
33 27 0:43 / /mfs rw - fuse.mfs mfs rw
34 30 0:44 / /srv/data/scratch rw - tmpfs tmpfs rw
";

    #[test]
    fn network_and_fuse_mounts_beneath_the_root_are_slow_and_local_ones_are_not() {
        let slow = slow_mounts_beneath(TABLE.as_bytes(), Path::new("/srv/data"));
        assert_eq!(slow, vec![b"nfs".to_vec(), b"my mount".to_vec()]);
        let slow = slow_mounts_beneath(TABLE.as_bytes(), Path::new("/"));
        assert_eq!(
            slow,
            vec![
                b"srv/data/nfs".to_vec(),
                b"srv/data/my mount".to_vec(),
                b"mfs".to_vec()
            ]
        );
        // A root on an NFS mount: everything is slow.
        let slow = slow_mounts_beneath(TABLE.as_bytes(), Path::new("/srv/data/nfs/home"));
        assert_eq!(slow, vec![Vec::<u8>::new()]);
        assert!(beneath(b"anything/at/all", b""));
    }

    #[test]
    fn a_path_is_beneath_a_mount_only_at_a_component_boundary() {
        assert!(beneath(b"nfs", b"nfs"));
        assert!(beneath(b"nfs/a/b", b"nfs"));
        assert!(!beneath(b"nfsx", b"nfs"));
        assert!(!beneath(b"other/nfs", b"nfs"));
    }
}
