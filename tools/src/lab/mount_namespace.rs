//! A mount namespace per lab node, so that each node can mount its own /mfs.
//!
//! A namespace lives as long as a process is in it or a file is bind-mounted
//! onto its /proc/PID/ns/mnt. A helper (`omx __hold-mount-namespace`)
//! unshares a new one and waits; we bind its namespace file into the lab
//! directory, then let it exit. Such bind mounts need a parent mount that
//! is not shared, so the lab's `ns` directory is made a private mount.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::journal::{Journal, Resource};

/// Makes `dir` a private mount of itself, to hold namespace files.
pub fn prepare_holder_dir(dir: &Path, journal: &mut Journal) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    journal.record(&Resource::Mount {
        path: dir.to_path_buf(),
    })?;
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("cannot bind-mount {} onto itself", dir.display()))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .with_context(|| format!("cannot make {} a private mount", dir.display()))?;
    Ok(())
}

/// Creates a mount namespace and pins it at `holder_dir/name`.
pub fn create(holder_dir: &Path, name: &str, journal: &mut Journal) -> anyhow::Result<PathBuf> {
    let pin = holder_dir.join(name);
    std::fs::File::create(&pin).with_context(|| format!("cannot create {}", pin.display()))?;
    let exe = std::env::current_exe()?;
    let mut helper = Command::new(exe)
        .arg("__hold-mount-namespace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the mount namespace helper")?;
    let mut ready = String::new();
    BufReader::new(helper.stdout.take().expect("piped"))
        .read_line(&mut ready)
        .context("the mount namespace helper did not answer")?;
    if ready.trim() != "ready" {
        let mut err = String::new();
        let _ = helper
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut err);
        let _ = helper.wait();
        bail!("the mount namespace helper failed: {}", err.trim());
    }
    journal.record(&Resource::Mount { path: pin.clone() })?;
    let source = PathBuf::from(format!("/proc/{}/ns/mnt", helper.id()));
    let pinned = mount(
        Some(&source),
        &pin,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("cannot pin the mount namespace at {}", pin.display()));
    drop(helper.stdin.take());
    let _ = helper.wait();
    pinned?;
    Ok(pin)
}

/// The helper's side: unshare, keep host mounts flowing in but ours from
/// flowing out, report, and wait for the parent to close stdin.
pub fn hold() -> anyhow::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("cannot make / a slave mount in the new namespace")?;
    println!("ready");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    Ok(())
}

/// Detaches a mount; returns whether something was mounted there.
pub fn unmount(path: &Path) -> Result<bool, String> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(true),
        // Not mounted (any more), or gone: nothing to undo.
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(format!("cannot unmount {}: {e}", path.display())),
    }
}
