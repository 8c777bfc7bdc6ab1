//! The kernel interfaces migration needs that have no safe wrapper: ptrace
//! requests beyond nix's, process memory, seccomp user notification. Every
//! `unsafe` block of omx lives under this module.

pub mod memory;
pub mod ptrace;
pub mod seccomp;
pub mod uffd;

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

/// XCR0: which state components this CPU's XSAVE area holds.
pub fn xsave_features() -> u64 {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return 0;
    }
    // SAFETY: xgetbv(0) is valid whenever the CPU supports XSAVE, checked
    // above; it only reads a register.
    unsafe { std::arch::x86_64::_xgetbv(0) }
}

/// Forks a child that asks to be traced and stops itself; returns its pid
/// once it is stopped. The child owns nothing of ours: its descriptors
/// beyond stdin, stdout and stderr are closed, and those three are
/// /dev/null. It dies with its parent.
pub fn fork_stopped_child() -> std::io::Result<i32> {
    let dev_null = std::ffi::CString::new("/dev/null").expect("no NUL inside");
    // SAFETY: the caller is single-threaded (a keeper), so the child is a
    // complete copy; before it stops it calls only async-signal-safe
    // functions (prctl, close_range, open, dup2, ptrace, raise, _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_error());
    }
    if pid == 0 {
        // SAFETY: plain system calls on integers and a valid C string, in
        // the child; on any failure the child exits at once.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            let null = libc::open(dev_null.as_ptr(), libc::O_RDWR);
            if null >= 0 {
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
            }
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                libc::_exit(126);
            }
            libc::raise(libc::SIGSTOP);
            // Reached only if the parent let us go without an image.
            libc::_exit(127);
        }
    }
    match ptrace::wait(pid)? {
        ptrace::Stop::Signal(libc::SIGSTOP) => Ok(pid),
        other => Err(std::io::Error::other(format!(
            "the new process stopped as {other:?}"
        ))),
    }
}

/// Signals blocked, ignored and caught by `pid`, from /proc/PID/status.
pub fn signal_dispositions(pid: i32) -> std::io::Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    Ok((mask("SigBlk:"), mask("SigIgn:"), mask("SigCgt:")))
}

/// Sets the nice value of the calling thread; threads and processes it
/// starts afterwards inherit it.
pub fn set_nice(value: i32) -> std::io::Result<()> {
    set_nice_of(0, value)
}

/// The nice value of thread `tid` (field 19 of its `/proc` stat line).
pub fn nice_of(tid: i32) -> std::io::Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat"))?;
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().nth(16))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("/proc/{tid}/stat has no nice value"),
            )
        })
}

/// Sets the nice value of thread `tid` (0: the calling thread; Linux
/// applies PRIO_PROCESS to one thread).
pub fn set_nice_of(tid: i32, value: i32) -> std::io::Result<()> {
    let who = libc::id_t::try_from(tid)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: setpriority takes three integers.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, value) };
    if result == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends signal number `signal` (any, real-time ones too) to `pid`.
pub fn kill_raw(pid: i32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill takes two integers.
    check(unsafe { libc::kill(pid, signal) } as libc::c_long).map(drop)
}

/// Takes ownership of descriptor `fd`, inherited from the process that
/// started us (a keeper's channels). Fails if it is not open.
pub fn inherited_fd(fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: fcntl(F_GETFD) only inspects the descriptor number.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) } as libc::c_long)?;
    // SAFETY: the descriptor is open (checked above) and was given to this
    // process to own; the caller takes it exactly once.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Receives bytes and any descriptors passed with them (SCM_RIGHTS).
pub fn receive_with_fds(
    stream: &std::os::unix::net::UnixStream,
    buffer: &mut [u8],
) -> std::io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut control = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(buffer)];
    let message = recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(stream),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed this descriptor in our
                // table for us; nothing else owns it.
                fds.push(unsafe {
                    <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                });
            }
        }
    }
    Ok((message.bytes, fds))
}
