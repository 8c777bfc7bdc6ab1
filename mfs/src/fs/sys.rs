//! The few kernel calls MFS makes that neither std nor nix offers in the
//! form it needs: per-thread supplementary groups, extended attributes by
//! path, and starting a range's writeback. Every `unsafe` block of the
//! crate but `lease.rs`'s (the lease signal handler and its set-up) is
//! here.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Sets the calling thread's supplementary groups, and only its own: the
/// C library's `setgroups` changes every thread of the process, which
/// would hand one caller's groups to the operations of others.
pub fn set_thread_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the raw system call reads `groups.len()` ids from a valid
    // slice and touches nothing else.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's supplementary groups.
pub fn thread_groups() -> io::Result<Vec<libc::gid_t>> {
    let mut groups = vec![0 as libc::gid_t; 65536];
    // SAFETY: the buffer holds as many ids as we say it does.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getgroups,
            groups.len() as libc::c_int,
            groups.as_mut_ptr(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    groups.truncate(n as usize);
    Ok(groups)
}

/// Starts writing the dirty pages of `file` in `[offset, offset + len)` to
/// its disk, without waiting for them (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE` only). Makes no promise of durability: that is
/// still `fsync`'s job.
pub fn start_writeback(file: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let out_of_range = |_| io::Error::from_raw_os_error(libc::EINVAL);
    let offset = libc::off64_t::try_from(offset).map_err(out_of_range)?;
    let len = libc::off64_t::try_from(len).map_err(out_of_range)?;
    // SAFETY: the call takes a descriptor, which the borrow keeps open,
    // and integers; it touches no memory of ours.
    let ret = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn size_result(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

// The paths given here are `/proc/self/fd/N` of an O_PATH descriptor:
// the calls must follow that magic link to reach the file (which, for a
// symbolic link's descriptor, is the link itself).

/// `getxattr` into `buf` (an empty `buf` asks for the size).
pub fn get_xattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: both strings are NUL-terminated; the buffer is valid for its
    // length.
    size_result(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// `listxattr` into `buf`: NUL-separated names (an empty `buf` asks for
/// the size).
pub fn list_xattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the path is NUL-terminated; the buffer is valid for its length.
    size_result(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `setxattr`.
pub fn set_xattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; the value is a valid slice.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    size_result(ret as libc::ssize_t).map(drop)
}

/// `removexattr`.
pub fn remove_xattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    let ret = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    size_result(ret as libc::ssize_t).map(drop)
}
