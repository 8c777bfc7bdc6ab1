//! seccomp: the filter that sends a remote process's system calls to its
//! keeper (user notification), and the notification interface itself.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libc::sock_filter;

use super::check;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// System call numbers from here up are the x32 ABI.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
pub const SECCOMP_SET_MODE_FILTER: u64 = 1;
pub const SECCOMP_FILTER_FLAG_NEW_LISTENER: u64 = 1 << 3;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;

// Offsets in struct seccomp_data.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const fn offset_arg_low(n: u32) -> u32 {
    16 + 8 * n
}

/// A rule besides "this call runs locally".
#[derive(Clone, Copy, Debug)]
pub enum Condition {
    /// Runs locally if any of `bits` is set in the low 32 bits of argument
    /// `arg` (e.g. mmap with MAP_ANONYMOUS).
    ArgHasBits { nr: i64, arg: u32, bits: u32 },
    /// Runs locally if the low 32 bits of argument `arg` are `value` (e.g.
    /// prlimit64 on pid 0, the process itself).
    ArgEquals { nr: i64, arg: u32, value: u32 },
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Calls that run locally when their first argument is one of `fds` (the
/// process's DFSA files, reopened where it runs).
#[derive(Clone, Copy, Debug, Default)]
pub struct OnDescriptors<'a> {
    pub calls: &'a [i64],
    pub fds: &'a [i32],
}

/// The most descriptors [`notify_filter`] lets run in the kernel: each
/// costs two instructions per call in [`OnDescriptors::calls`], and a
/// jump over them must fit in 8 bits.
pub const MAX_FAST_DESCRIPTORS: usize = 64;
const _: () = assert!(2 * MAX_FAST_DESCRIPTORS + 2 <= u8::MAX as usize);

/// The filter: other architectures and the x32 ABI kill the process;
/// `local` calls, calls meeting a [`Condition`] and calls on descriptors
/// of `on_descriptors` run; every other call is handed to the keeper.
pub fn notify_filter(
    local: &[i64],
    conditions: &[Condition],
    on_descriptors: OnDescriptors<'_>,
) -> Vec<sock_filter> {
    let mut program = vec![
        stmt(LD_W_ABS, OFFSET_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFFSET_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, SECCOMP_RET_KILL_PROCESS),
    ];
    for nr in local {
        // Equal: fall through to ALLOW; not equal: skip it.
        program.push(jump(JEQ_K, *nr as u32, 0, 1));
        program.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    }
    for condition in conditions {
        let (nr, arg, test, k) = match *condition {
            Condition::ArgHasBits { nr, arg, bits } => (nr, arg, JSET_K, bits),
            Condition::ArgEquals { nr, arg, value } => (nr, arg, JEQ_K, value),
        };
        program.push(jump(JEQ_K, nr as u32, 0, 4));
        program.push(stmt(LD_W_ABS, offset_arg_low(arg)));
        program.push(jump(test, k, 0, 1));
        program.push(stmt(RET_K, SECCOMP_RET_ALLOW));
        // Reload the number for the next comparison.
        program.push(stmt(LD_W_ABS, OFFSET_NR));
    }
    let fds = &on_descriptors.fds[..on_descriptors.fds.len().min(MAX_FAST_DESCRIPTORS)];
    if !fds.is_empty() {
        for nr in on_descriptors.calls {
            // Not this call: skip the argument's load, its comparisons and
            // the reload.
            let skip = (1 + 2 * fds.len() + 1) as u8;
            program.push(jump(JEQ_K, *nr as u32, 0, skip));
            program.push(stmt(LD_W_ABS, offset_arg_low(0)));
            for fd in fds {
                program.push(jump(JEQ_K, *fd as u32, 0, 1));
                program.push(stmt(RET_K, SECCOMP_RET_ALLOW));
            }
            program.push(stmt(LD_W_ABS, OFFSET_NR));
        }
    }
    program.push(stmt(RET_K, SECCOMP_RET_USER_NOTIF));
    program
}

/// The filter's instructions as bytes, to be written into the process
/// that installs it.
pub fn program_bytes(program: &[sock_filter]) -> Vec<u8> {
    program
        .iter()
        .flat_map(|i| {
            let mut b = Vec::with_capacity(8);
            b.extend_from_slice(&i.code.to_ne_bytes());
            b.push(i.jt);
            b.push(i.jf);
            b.extend_from_slice(&i.k.to_ne_bytes());
            b
        })
        .collect()
}

/// struct sock_fprog for a program of `len` instructions at `address`.
pub fn fprog_bytes(len: usize, address: u64) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[..2].copy_from_slice(&(len as u16).to_ne_bytes());
    b[8..].copy_from_slice(&address.to_ne_bytes());
    b
}

/// One intercepted system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notification {
    pub id: u64,
    pub pid: u32,
    pub nr: i64,
    pub ip: u64,
    pub args: [u64; 6],
}

/// Receives the next notification (blocks unless the fd is non-blocking).
pub fn receive(listener: BorrowedFd<'_>) -> io::Result<Notification> {
    // SAFETY: all-zero is a valid seccomp_notif, and the kernel requires
    // the structure to be zeroed before RECV.
    let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: the ioctl writes one seccomp_notif into the struct we pass.
    check(unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV as _,
            &mut notif as *mut libc::seccomp_notif,
        )
    } as libc::c_long)?;
    Ok(Notification {
        id: notif.id,
        pid: notif.pid,
        nr: i64::from(notif.data.nr),
        ip: notif.data.instruction_pointer,
        args: notif.data.args,
    })
}

fn send(listener: BorrowedFd<'_>, resp: &libc::seccomp_notif_resp) -> io::Result<()> {
    // SAFETY: the ioctl reads one seccomp_notif_resp from the struct we pass.
    check(unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND as _,
            resp as *const libc::seccomp_notif_resp,
        )
    } as libc::c_long)
    .map(drop)
}

/// Completes the call with return value `value`, or with `-errno` if
/// `errno` is non-zero. ENOENT means the call is no longer waiting (the
/// process was interrupted by a signal, or died).
pub fn respond(listener: BorrowedFd<'_>, id: u64, value: i64, errno: i32) -> io::Result<()> {
    send(
        listener,
        &libc::seccomp_notif_resp {
            id,
            val: value,
            error: -errno,
            flags: 0,
        },
    )
}

/// Lets the call run in the process as if it had not been intercepted.
pub fn respond_continue(listener: BorrowedFd<'_>, id: u64) -> io::Result<()> {
    send(
        listener,
        &libc::seccomp_notif_resp {
            id,
            val: 0,
            error: 0,
            flags: SECCOMP_USER_NOTIF_FLAG_CONTINUE,
        },
    )
}

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS`: `_IOW('!', 4, __u64)`.
const SECCOMP_IOCTL_NOTIF_SET_FLAGS: u64 = 0x4008_2104;
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// Asks the kernel to hand over between the process and its supervisor on
/// the CPU that does the handing (Linux 6.6+): a forwarded call then
/// costs two context switches instead of two cross-CPU wake-ups.
pub fn set_sync_wakeup(listener: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: this ioctl takes its flags by value and writes nothing.
    check(unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_SET_FLAGS as _,
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
        )
    } as libc::c_long)
    .map(drop)
}

/// Whether notification `id` is still waiting for an answer.
pub fn is_valid(listener: BorrowedFd<'_>, id: u64) -> bool {
    // SAFETY: the ioctl reads one u64 from the pointer we pass.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
            &id as *const u64,
        ) == 0
    }
}

/// Installs `file` (a descriptor of ours) into the process waiting in
/// notification `id`, as its descriptor `target` (replacing whatever that
/// number held, as `dup2` would): both then share one open file
/// description.
pub fn add_fd(
    listener: BorrowedFd<'_>,
    id: u64,
    file: BorrowedFd<'_>,
    target: i32,
    cloexec: bool,
) -> io::Result<()> {
    let add = libc::seccomp_notif_addfd {
        id,
        flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
        srcfd: file.as_raw_fd() as u32,
        newfd: target as u32,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: the ioctl reads one seccomp_notif_addfd from the struct we
    // pass and returns the installed number or -1.
    check(unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ADDFD as _,
            &add as *const libc::seccomp_notif_addfd,
        )
    } as libc::c_long)
    .map(drop)
}

/// A pidfd for `pid`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A duplicate, in this process, of file descriptor `fd` of the process
/// behind `pidfd`.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes three integers and returns a new fd or -1.
    let new = check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_is_well_formed() {
        let program = notify_filter(
            &[0, 1, 60],
            &[Condition::ArgHasBits {
                nr: 9,
                arg: 3,
                bits: 0x20,
            }],
            OnDescriptors {
                calls: &[0, 1, 8],
                fds: &(0..MAX_FAST_DESCRIPTORS as i32 + 10).collect::<Vec<_>>(),
            },
        );
        assert!(program.len() < 4096);
        assert_eq!(program.last().unwrap().k, SECCOMP_RET_USER_NOTIF);
        assert_eq!(program_bytes(&program).len(), program.len() * 8);
        let fprog = fprog_bytes(program.len(), 0x1000);
        assert_eq!(
            u16::from_ne_bytes([fprog[0], fprog[1]]) as usize,
            program.len()
        );
    }
}
