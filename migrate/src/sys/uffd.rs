//! Filling a process's empty memory with userfaultfd's UFFDIO_COPY.
//!
//! Writing a migrated image through /proc/PID/mem makes the kernel fault
//! in and zero every page before overwriting it; UFFDIO_COPY installs a
//! page with its contents in one step. The userfaultfd belongs to the
//! target process (it is created there by injection) and is driven from
//! the keeper, which holds a duplicate of it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::check;

const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_AA01;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// userfaultfd() flag: only faults from user mode (allowed unprivileged).
pub const UFFD_USER_MODE_ONLY: u64 = 1;

#[repr(C)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct Copy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copied: i64,
}

/// A userfaultfd of another process, through which we fill its pages.
pub struct PageFiller {
    fd: OwnedFd,
    registered: Vec<(u64, u64)>,
}

impl PageFiller {
    /// Takes a userfaultfd (a duplicate of the target's) and performs the
    /// API handshake.
    pub fn new(fd: OwnedFd) -> io::Result<PageFiller> {
        let mut api = Api {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one uffdio_api struct we own.
        let result = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api as *mut Api) };
        check(result as libc::c_long)?;
        Ok(PageFiller {
            fd,
            registered: Vec::new(),
        })
    }

    /// Makes `[start, start+len)` (page-aligned, anonymous, empty) fillable.
    pub fn register(&mut self, start: u64, len: u64) -> io::Result<()> {
        let mut register = Register {
            range: Range { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one uffdio_register we own.
        check(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                UFFDIO_REGISTER,
                &mut register as *mut Register,
            )
        } as libc::c_long)?;
        self.registered.push((start, len));
        Ok(())
    }

    /// Installs `bytes` (whole pages) at `address` in the target.
    pub fn copy(&self, address: u64, bytes: &[u8]) -> io::Result<()> {
        let mut done = 0u64;
        while done < bytes.len() as u64 {
            let mut copy = Copy {
                dst: address + done,
                src: bytes.as_ptr() as u64 + done,
                len: bytes.len() as u64 - done,
                mode: 0,
                copied: 0,
            };
            // SAFETY: UFFDIO_COPY reads `len` bytes from `src`, which lies
            // inside `bytes`, and writes the struct we own; the destination
            // is in the target process, registered above.
            let ret =
                unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut copy as *mut Copy) };
            if copy.copied > 0 {
                done += copy.copied as u64;
            }
            if ret != 0 {
                let error = io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::EAGAIN) {
                    continue;
                }
                return Err(error);
            }
        }
        Ok(())
    }
}

impl Drop for PageFiller {
    fn drop(&mut self) {
        for (start, len) in self.registered.drain(..) {
            let mut range = Range { start, len };
            // SAFETY: UFFDIO_UNREGISTER reads one uffdio_range we own. A
            // failure (the process died) leaves nothing to undo.
            unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    UFFDIO_UNREGISTER,
                    &mut range as *mut Range,
                )
            };
        }
    }
}
