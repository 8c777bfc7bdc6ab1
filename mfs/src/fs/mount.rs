//! Putting MFS at its mount point, taking it away cleanly, and recovering
//! a mount point left behind by a daemon that crashed.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL};
use tracing::{info, warn};

use super::fuse::Mfs;

/// The file system type name MFS mounts carry (`fuse.omx-mfs`).
pub const FS_NAME: &str = "omx-mfs";

/// A mounted MFS: unmounted when dropped.
pub struct Mounted {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    dev: u64,
}

impl Mounted {
    /// The device number of the mount (for the exporter, which must never
    /// serve it back into itself).
    pub fn dev(&self) -> u64 {
        self.dev
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            drop(session);
            info!("MFS unmounted from {}", self.mountpoint.display());
        }
    }
}

/// Whether `mountpoint` holds a FUSE mount named `fs_name` (of this mount
/// namespace).
fn is_fuse_mount_of(mountpoint: &Path, fs_name: &str) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let wanted = mountpoint.to_string_lossy();
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(target), Some(kind)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        target == wanted && (source == fs_name || kind == format!("fuse.{fs_name}"))
    })
}

/// Removes a FUSE mount named `fs_name` left at `mountpoint` by an
/// earlier daemon (after a crash it answers every access with ENOTCONN).
pub fn recover_stale(mountpoint: &Path, fs_name: &str) -> io::Result<()> {
    while is_fuse_mount_of(mountpoint, fs_name) {
        warn!(
            "{} holds a {fs_name} mount left by an earlier daemon: removing it",
            mountpoint.display()
        );
        nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            io::Error::other(format!("cannot unmount {}: {e}", mountpoint.display()))
        })?;
    }
    Ok(())
}

/// Mounts `mfs` at `mountpoint` with `threads` threads serving it.
pub fn mount(mfs: Mfs, mountpoint: &Path, threads: usize) -> io::Result<Mounted> {
    recover_stale(mountpoint, FS_NAME)?;
    std::fs::create_dir_all(mountpoint).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot create the MFS mount point {}: {e}",
                mountpoint.display()
            ),
        )
    })?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.into()),
        MountOption::Subtype(FS_NAME.into()),
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::Exec,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    let kept_attrs = mfs.kept_attrs();
    let kernel_knows = mfs.kernel_knows();
    let session = Session::new(mfs, mountpoint, &config).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot mount MFS at {}: {e}", mountpoint.display()),
        )
    })?;
    // Other nodes' attributes are kept only once they can be dropped.
    kept_attrs.set_notifier(session.notifier(), kernel_knows);
    let session = session.spawn()?;
    let dev = std::fs::metadata(mountpoint)?.dev();
    info!("MFS mounted at {}", mountpoint.display());
    Ok(Mounted {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
        dev,
    })
}
