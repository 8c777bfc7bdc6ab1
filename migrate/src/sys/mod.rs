//! The kernel interfaces migration needs that have no safe wrapper: ptrace
//! requests beyond nix's, process memory, seccomp user notification. Every
//! `unsafe` block of omx lives under this module.

pub mod memory;
pub mod ptrace;
pub mod seccomp;

/// The calling thread's errno as an I/O error.
pub(crate) fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Turns a -1 return into the errno error.
pub(crate) fn check(ret: libc::c_long) -> std::io::Result<libc::c_long> {
    if ret == -1 {
        Err(last_error())
    } else {
        Ok(ret)
    }
}

/// Another process's robust futex list `(head, length)`.
pub fn get_robust_list(pid: i32) -> std::io::Result<(u64, u64)> {
    let mut head = 0u64;
    let mut len = 0u64;
    // SAFETY: get_robust_list writes one pointer and one size_t to the
    // addresses we pass.
    check(unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            pid,
            &mut head as *mut u64,
            &mut len as *mut u64,
        )
    })?;
    Ok((head, len))
}

/// Gets and, if `new` is given, sets a resource limit of another process.
pub fn prlimit(pid: i32, resource: u32, new: Option<(u64, u64)>) -> std::io::Result<(u64, u64)> {
    let new = new.map(|(cur, max)| libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    });
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads the new limit (if any) and writes the old one
    // into structs we own.
    let ret = unsafe {
        libc::prlimit64(
            pid,
            resource as _,
            new.as_ref()
                .map_or(std::ptr::null(), |n| n as *const libc::rlimit64),
            &mut old,
        )
    };
    check(ret as libc::c_long)?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// XCR0: which state components this CPU's XSAVE area holds.
pub fn xsave_features() -> u64 {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return 0;
    }
    // SAFETY: xgetbv(0) is valid whenever the CPU supports XSAVE, checked
    // above; it only reads a register.
    unsafe { std::arch::x86_64::_xgetbv(0) }
}
