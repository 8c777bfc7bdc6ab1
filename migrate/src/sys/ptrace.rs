//! ptrace: stopping a process, reading and setting its registers and
//! signal state, and interpreting its stops.
//!
//! A tracer is a thread: every request on a tracee must come from the
//! thread that seized it. omx's keepers are single-threaded processes.

use std::io;

use libc::{c_long, c_uint, c_void, pid_t};

use super::check;

pub type Regs = libc::user_regs_struct;

const PTRACE_SEIZE: c_uint = 0x4206;
const PTRACE_INTERRUPT: c_uint = 0x4207;
const PTRACE_LISTEN: c_uint = 0x4208;
const PTRACE_PEEKSIGINFO: c_uint = 0x4209;
const PTRACE_GETSIGMASK: c_uint = 0x420a;
const PTRACE_SETSIGMASK: c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: c_uint = 0x420f;
const PTRACE_GETREGSET: c_uint = 0x4204;
const PTRACE_SETREGSET: c_uint = 0x4205;
const PTRACE_GETSIGINFO: c_uint = 0x4202;
const NT_X86_XSTATE: usize = 0x202;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
pub const PTRACE_EVENT_STOP: i32 = 128;
pub const PTRACE_EVENT_EXEC: i32 = 4;
pub const PTRACE_EVENT_EXIT: i32 = 6;

/// Options for [`seize`].
pub const OPTION_TRACESYSGOOD: c_long = 0x01;
pub const OPTION_TRACEEXEC: c_long = 0x10;
pub const OPTION_TRACEEXIT: c_long = 0x40;
/// The tracee is killed if its tracer dies: a migrated process never
/// outlives the keeper that owns it.
pub const OPTION_EXITKILL: c_long = 0x100000;

/// The largest XSAVE area we accept (AVX-512 needs about 2.7 KiB; AMX 11 KiB).
const XSTATE_MAX: usize = 16 * 1024;

fn request(req: c_uint, pid: pid_t, addr: usize, data: usize) -> io::Result<c_long> {
    // SAFETY: ptrace with integer or pointer arguments; every caller passes
    // either plain integers or pointers to live buffers of the size the
    // request writes or reads.
    check(unsafe { libc::ptrace(req, pid, addr as *mut c_void, data as *mut c_void) })
}

pub const REGS_LEN: usize = std::mem::size_of::<Regs>();

/// The registers as bytes, for an image.
pub fn regs_to_bytes(regs: &Regs) -> Vec<u8> {
    // SAFETY: Regs is a plain C struct of integers: every byte of it is
    // initialised and may be read as u8.
    unsafe { std::slice::from_raw_parts(regs as *const Regs as *const u8, REGS_LEN) }.to_vec()
}

/// Registers from an image's bytes; `None` if the length is wrong.
pub fn regs_from_bytes(bytes: &[u8]) -> Option<Regs> {
    if bytes.len() != REGS_LEN {
        return None;
    }
    // SAFETY: Regs is a plain C struct of integers, for which any bit
    // pattern is valid; the length was checked.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Regs) })
}

pub fn seize(pid: pid_t, options: c_long) -> io::Result<()> {
    request(PTRACE_SEIZE, pid, 0, options as usize).map(drop)
}

/// Stops a seized tracee (it reports an interrupt stop).
pub fn interrupt(pid: pid_t) -> io::Result<()> {
    request(PTRACE_INTERRUPT, pid, 0, 0).map(drop)
}

/// Resumes a stopped tracee, delivering `signal` if non-zero (only
/// meaningful at a signal-delivery stop).
pub fn cont(pid: pid_t, signal: i32) -> io::Result<()> {
    request(libc::PTRACE_CONT, pid, 0, signal as usize).map(drop)
}

/// Lets a tracee in group-stop stay stopped while its tracer keeps
/// receiving its events.
pub fn listen(pid: pid_t) -> io::Result<()> {
    request(PTRACE_LISTEN, pid, 0, 0).map(drop)
}

pub fn detach(pid: pid_t, signal: i32) -> io::Result<()> {
    request(libc::PTRACE_DETACH, pid, 0, signal as usize).map(drop)
}

pub fn get_regs(pid: pid_t) -> io::Result<Regs> {
    // SAFETY: all-zero bytes are a valid user_regs_struct (plain integers).
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    request(
        libc::PTRACE_GETREGS,
        pid,
        0,
        &mut regs as *mut Regs as usize,
    )?;
    Ok(regs)
}

pub fn set_regs(pid: pid_t, regs: &Regs) -> io::Result<()> {
    request(libc::PTRACE_SETREGS, pid, 0, regs as *const Regs as usize).map(drop)
}

/// The FPU/SSE/AVX state as the kernel's XSAVE image.
pub fn get_xstate(pid: pid_t) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr() as *mut c_void,
        iov_len: buffer.len(),
    };
    request(
        PTRACE_GETREGSET,
        pid,
        NT_X86_XSTATE,
        &mut iov as *mut libc::iovec as usize,
    )?;
    buffer.truncate(iov.iov_len);
    Ok(buffer)
}

pub fn set_xstate(pid: pid_t, xstate: &[u8]) -> io::Result<()> {
    let mut copy = xstate.to_vec();
    let mut iov = libc::iovec {
        iov_base: copy.as_mut_ptr() as *mut c_void,
        iov_len: copy.len(),
    };
    request(
        PTRACE_SETREGSET,
        pid,
        NT_X86_XSTATE,
        &mut iov as *mut libc::iovec as usize,
    )
    .map(drop)
}

pub fn get_sigmask(pid: pid_t) -> io::Result<u64> {
    let mut mask = 0u64;
    request(PTRACE_GETSIGMASK, pid, 8, &mut mask as *mut u64 as usize)?;
    Ok(mask)
}

pub fn set_sigmask(pid: pid_t, mask: u64) -> io::Result<()> {
    request(PTRACE_SETSIGMASK, pid, 8, &mask as *const u64 as usize).map(drop)
}

/// The siginfo of the signal that caused the current signal-delivery stop.
pub fn get_siginfo(pid: pid_t) -> io::Result<[u8; 128]> {
    let mut info = [0u8; 128];
    request(PTRACE_GETSIGINFO, pid, 0, info.as_mut_ptr() as usize)?;
    Ok(info)
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// The signals pending for the tracee: its own queue, or the process's
/// shared queue.
pub fn pending_siginfos(pid: pid_t, shared: bool) -> io::Result<Vec<[u8; 128]>> {
    let mut all = Vec::new();
    loop {
        let mut batch = [[0u8; 128]; 16];
        let args = PeekSiginfoArgs {
            off: all.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: batch.len() as i32,
        };
        let got = request(
            PTRACE_PEEKSIGINFO,
            pid,
            &args as *const PeekSiginfoArgs as usize,
            batch.as_mut_ptr() as usize,
        )? as usize;
        all.extend_from_slice(&batch[..got]);
        if got < batch.len() {
            return Ok(all);
        }
    }
}

/// A thread's rseq registration, as the kernel reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqConfiguration {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

pub fn rseq_configuration(pid: pid_t) -> io::Result<RseqConfiguration> {
    let mut config = RseqConfiguration::default();
    request(
        PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        std::mem::size_of::<RseqConfiguration>(),
        &mut config as *mut RseqConfiguration as usize,
    )?;
    Ok(config)
}

/// What a tracee (or child) reported to `waitpid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Signal-delivery stop: the signal is about to be delivered; resuming
    /// with it delivers it, resuming with 0 suppresses it.
    Signal(i32),
    /// Group-stop (the process was stopped by a stop signal).
    Group(i32),
    /// Stopped by PTRACE_INTERRUPT (or a listened group-stop ending).
    Interrupt,
    /// A PTRACE_EVENT_* stop.
    Event(i32),
    Exited(i32),
    Killed {
        signal: i32,
        core_dumped: bool,
    },
    /// A stopped child was continued (waitpid with WCONTINUED).
    Continued,
}

impl Stop {
    pub fn from_status(status: i32) -> Stop {
        if libc::WIFCONTINUED(status) {
            return Stop::Continued;
        }
        if libc::WIFEXITED(status) {
            return Stop::Exited(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            return Stop::Killed {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            };
        }
        let signal = libc::WSTOPSIG(status);
        match status >> 16 {
            0 => Stop::Signal(signal),
            PTRACE_EVENT_STOP => match signal {
                libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
                    Stop::Group(signal)
                }
                _ => Stop::Interrupt,
            },
            event => Stop::Event(event),
        }
    }

    pub fn is_gone(self) -> bool {
        matches!(self, Stop::Exited(_) | Stop::Killed { .. })
    }
}

/// Waits for the next stop or the end of `pid` (a tracee or a child).
pub fn wait(pid: pid_t) -> io::Result<Stop> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes one int to the pointer we pass.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if ret == pid {
            return Ok(Stop::from_status(status));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Like [`wait`], but returns `None` at once if nothing happened; also
/// reports stops and continues of an untraced child.
pub fn wait_nohang(pid: pid_t) -> io::Result<Option<Stop>> {
    let mut status = 0;
    let flags = libc::__WALL | libc::WNOHANG | libc::WUNTRACED | libc::WCONTINUED;
    // SAFETY: waitpid writes one int to the pointer we pass.
    let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
    match ret {
        0 => Ok(None),
        r if r == pid => Ok(Some(Stop::from_status(status))),
        _ => Err(io::Error::last_os_error()),
    }
}
