//! Carrying a forwarded call's memory both ways.
//!
//! On the remote's node, [`prepare`] reads what the call reads from the
//! remote's memory into slots; at home, [`stage`] lays the slots out in the
//! deputy's scratch area and points the arguments there, the deputy runs
//! the call, and [`collect`] gathers what it wrote; back on the remote's
//! node, [`apply`] writes that into the remote's memory.
//!
//! Vectors (readv, writev) travel as one contiguous slot: the deputy uses a
//! one-element iovec and the remote scatters the result over its own.

use omx_mfs::wire::link::{CallResult, CallSlot, ForwardedCall};

use super::{Class, Len, Param, lookup};
use crate::inject::{InjectError, Injector};
use crate::sys::memory::ProcessMemory;

/// The largest buffer one forwarded call carries; longer reads and writes
/// are shortened to it (short reads and writes are legal).
pub const MAX_SLOT: u64 = 8 << 20;
const PATH_MAX: usize = 4096;
const MAX_VECTOR: u64 = 1024;
const SLOT_ALIGN: u64 = 16;

/// What to do with one intercepted call, decided from its number and
/// arguments alone (both keepers decide the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Let it run where the process is.
    Local,
    /// Answer with the home pid.
    HomePid,
    /// Run it in the deputy, carrying these arguments.
    Forward(&'static [Param]),
    /// Bring the process home, for this reason.
    Home(&'static str),
}

use Param::{In, InOut, Out, Value};

const IOCTL_VALUE: &[Param] = &[Value, Value, Value];
const IOCTL_OUT_4: &[Param] = &[Value, Value, Out(Len::Fixed(4))];
const IOCTL_IN_4: &[Param] = &[Value, Value, In(Len::Fixed(4))];
const IOCTL_OUT_8: &[Param] = &[Value, Value, Out(Len::Fixed(8))];
const IOCTL_IN_8: &[Param] = &[Value, Value, In(Len::Fixed(8))];
const IOCTL_OUT_TERMIOS: &[Param] = &[Value, Value, Out(Len::Fixed(36))];
const IOCTL_IN_TERMIOS: &[Param] = &[Value, Value, In(Len::Fixed(36))];
const IOCTL_OUT_TERMIOS2: &[Param] = &[Value, Value, Out(Len::Fixed(44))];
const IOCTL_IN_TERMIOS2: &[Param] = &[Value, Value, In(Len::Fixed(44))];
const FCNTL_VALUE: &[Param] = &[Value, Value, Value];
const FCNTL_FLOCK: &[Param] = &[Value, Value, InOut(Len::Fixed(32))];
const FCNTL_OUT_8: &[Param] = &[Value, Value, Out(Len::Fixed(8))];
const FCNTL_IN_8: &[Param] = &[Value, Value, In(Len::Fixed(8))];
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
const GETRUSAGE_CHILDREN: &[Param] = &[Value, Out(Len::Fixed(144))];

/// Where call `nr` with `args` runs.
pub fn route(nr: i64, args: &[u64; 6]) -> Route {
    let call = lookup(nr);
    match call.class {
        Class::Local => Route::Local,
        Class::Emulated => Route::HomePid,
        Class::Forward(params) => Route::Forward(params),
        Class::Home => Route::Home(call.reason),
        Class::Special => special(call.name, args),
    }
}

fn special(name: &str, args: &[u64; 6]) -> Route {
    let self_only = |pid: u64| {
        if pid == 0 {
            Route::Local
        } else {
            Route::Home("names a process by pid")
        }
    };
    match name {
        "mmap" if args[3] & libc::MAP_ANONYMOUS as u64 != 0 => Route::Local,
        "mmap" => Route::Home("maps a file, which is at home"),
        "ioctl" => ioctl(args[1] as u32),
        "fcntl" => fcntl(args[1] as i32),
        "prlimit64" => self_only(args[0]),
        "sched_setaffinity"
        | "sched_getaffinity"
        | "sched_getparam"
        | "sched_getscheduler"
        | "sched_rr_get_interval"
        | "sched_getattr" => self_only(args[0]),
        "getpriority" | "setpriority" if args[0] == libc::PRIO_PROCESS as u64 => self_only(args[1]),
        "ioprio_get" | "ioprio_set" if args[0] == 1 => self_only(args[1]),
        "getpriority" | "setpriority" | "ioprio_get" | "ioprio_set" => {
            Route::Home("acts on a process group or user")
        }
        "getrusage" if args[0] as i64 == libc::RUSAGE_CHILDREN as i64 => {
            Route::Forward(GETRUSAGE_CHILDREN)
        }
        "getrusage" => Route::Local,
        _ => Route::Home("a special call without a handler"),
    }
}

fn ioctl(request: u32) -> Route {
    let spec = match request {
        0x5401 => IOCTL_OUT_TERMIOS,                                    // TCGETS
        0x5402..=0x5404 => IOCTL_IN_TERMIOS,                            // TCSETS, TCSETSW, TCSETSF
        0x802c_542a => IOCTL_OUT_TERMIOS2,                              // TCGETS2
        0x402c_542b..=0x402c_542d => IOCTL_IN_TERMIOS2, // TCSETS2, TCSETSW2, TCSETSF2
        0x5413 => IOCTL_OUT_8,                          // TIOCGWINSZ
        0x5414 => IOCTL_IN_8,                           // TIOCSWINSZ
        0x541b | 0x5411 | 0x540f | 0x5429 | 0x8004_5430 => IOCTL_OUT_4, // FIONREAD, TIOCOUTQ, TIOCGPGRP, TIOCGSID, TIOCGPTN
        0x5410 | 0x5421 | 0x5452 | 0x4004_5431 => IOCTL_IN_4, // TIOCSPGRP, FIONBIO, FIOASYNC, TIOCSPTLCK
        0x5409 | 0x540a | 0x540b | 0x540e | 0x5422 | 0x5450 | 0x5451 => IOCTL_VALUE, // TCSBRK, TCXONC, TCFLSH, TIOCSCTTY, TIOCNOTTY, FIONCLEX, FIOCLEX
        _ => return Route::Home("an ioctl request without a forwarding rule"),
    };
    Route::Forward(spec)
}

fn fcntl(command: i32) -> Route {
    let spec = match command {
        libc::F_DUPFD
        | libc::F_GETFD
        | libc::F_SETFD
        | libc::F_GETFL
        | libc::F_SETFL
        | libc::F_SETOWN
        | libc::F_GETOWN
        | F_SETSIG
        | F_GETSIG
        | libc::F_DUPFD_CLOEXEC
        | libc::F_SETPIPE_SZ
        | libc::F_GETPIPE_SZ
        | libc::F_ADD_SEALS
        | libc::F_GET_SEALS
        | libc::F_SETLEASE
        | libc::F_GETLEASE
        | libc::F_NOTIFY => FCNTL_VALUE,
        libc::F_GETLK
        | libc::F_SETLK
        | libc::F_SETLKW
        | libc::F_OFD_GETLK
        | libc::F_OFD_SETLK
        | libc::F_OFD_SETLKW => FCNTL_FLOCK,
        F_GETOWN_EX => FCNTL_OUT_8,
        F_SETOWN_EX => FCNTL_IN_8,
        _ => return Route::Home("an fcntl command without a forwarding rule"),
    };
    Route::Forward(spec)
}

/// Where, in the remote, a slot's output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    At(u64),
    Scatter(Vec<(u64, u64)>),
}

/// A call ready to send, with what is needed to apply its result.
#[derive(Debug)]
pub struct Prepared {
    pub call: ForwardedCall,
    targets: Vec<Option<Target>>,
}

/// Reads a call's inputs from the remote's memory. `Err(errno)`: the call
/// fails at once with that error, as it would have (a bad pointer).
pub fn prepare(
    nr: i64,
    args: &[u64; 6],
    params: &[Param],
    memory: &ProcessMemory,
) -> Result<Prepared, i32> {
    let mut args = *args;
    let mut slots = Vec::new();
    let mut targets = Vec::new();
    for (index, param) in params.iter().enumerate() {
        let pointer = args[index];
        let (slot, target) = match *param {
            Param::Value => continue,
            Param::Path => {
                if pointer == 0 {
                    (null_slot(), None)
                } else {
                    let mut bytes = memory.read_c_string(pointer, PATH_MAX).map_err(errno_of)?;
                    bytes.push(0);
                    (
                        CallSlot {
                            null: false,
                            input: bytes,
                            capacity: 0,
                        },
                        None,
                    )
                }
            }
            Param::In(len) | Param::Out(len) | Param::InOut(len) | Param::OutReturned(len, _) => {
                let capacity = clamp_length(len, &mut args, memory)?;
                if pointer == 0 {
                    (null_slot(), None)
                } else {
                    let reads = matches!(param, Param::In(_) | Param::InOut(_));
                    let writes = !matches!(param, Param::In(_));
                    let input = if reads {
                        memory
                            .read_vec(pointer, capacity as usize)
                            .map_err(errno_of)?
                    } else {
                        Vec::new()
                    };
                    let slot = CallSlot {
                        null: false,
                        input,
                        capacity: if writes { capacity } else { 0 },
                    };
                    (slot, writes.then_some(Target::At(pointer)))
                }
            }
            Param::InVector(count_arg) | Param::OutVector(count_arg) => {
                let count = args[count_arg as usize];
                if count > MAX_VECTOR {
                    return Err(libc::EINVAL);
                }
                let iov = memory
                    .read_vec(pointer, count as usize * 16)
                    .map_err(errno_of)?;
                let mut pieces = Vec::new();
                let mut total = 0u64;
                for entry in iov.chunks_exact(16) {
                    let base = u64::from_ne_bytes(entry[..8].try_into().expect("8 bytes"));
                    let len = u64::from_ne_bytes(entry[8..].try_into().expect("8 bytes"));
                    let len = len.min(MAX_SLOT - total);
                    total += len;
                    pieces.push((base, len));
                }
                if let Param::InVector(_) = param {
                    let mut input = Vec::with_capacity(total as usize);
                    for (base, len) in &pieces {
                        input.extend(memory.read_vec(*base, *len as usize).map_err(errno_of)?);
                    }
                    (
                        CallSlot {
                            null: false,
                            input,
                            capacity: 0,
                        },
                        None,
                    )
                } else {
                    let slot = CallSlot {
                        null: false,
                        input: Vec::new(),
                        capacity: total,
                    };
                    (slot, Some(Target::Scatter(pieces)))
                }
            }
        };
        slots.push(slot);
        if writes_output(param) {
            targets.push(target);
        }
    }
    Ok(Prepared {
        call: ForwardedCall {
            nr: nr as u32,
            args: args.to_vec(),
            slots,
        },
        targets,
    })
}

fn null_slot() -> CallSlot {
    CallSlot {
        null: true,
        input: Vec::new(),
        capacity: 0,
    }
}

fn writes_output(param: &Param) -> bool {
    matches!(
        param,
        Param::Out(_) | Param::InOut(_) | Param::OutReturned(..) | Param::OutVector(_)
    )
}

/// The length of a buffer argument; lengths given by an argument are
/// shortened to [`MAX_SLOT`] (and the argument with them).
fn clamp_length(len: Len, args: &mut [u64; 6], memory: &ProcessMemory) -> Result<u64, i32> {
    let value = match len {
        Len::Arg(i) => {
            let i = i as usize;
            args[i] = args[i].min(MAX_SLOT);
            args[i]
        }
        Len::Fixed(n) => u64::from(n),
        Len::ArgTimes(i, size) => args[i as usize].saturating_mul(u64::from(size)),
        Len::Deref(i) => match args[i as usize] {
            0 => 0,
            at => {
                let mut bytes = [0u8; 4];
                memory.read(at, &mut bytes).map_err(errno_of)?;
                u64::from(u32::from_ne_bytes(bytes))
            }
        },
        Len::FdSet(i) => args[i as usize].min(1 << 20).div_ceil(64) * 8,
    };
    if value > MAX_SLOT {
        return Err(libc::EINVAL);
    }
    Ok(value)
}

fn errno_of(error: std::io::Error) -> i32 {
    match error.raw_os_error() {
        Some(libc::ENAMETOOLONG) => libc::ENAMETOOLONG,
        _ => libc::EFAULT,
    }
}

/// Writes a call's outputs into the remote's memory.
pub fn apply(prepared: &Prepared, result: &CallResult, memory: &ProcessMemory) -> Result<(), i32> {
    if result.outputs.len() != prepared.targets.len() {
        return Err(libc::EIO);
    }
    for (target, bytes) in prepared.targets.iter().zip(&result.outputs) {
        match (target, bytes.is_empty()) {
            (_, true) | (None, _) => {}
            (Some(Target::At(address)), false) => {
                memory.write(*address, bytes).map_err(errno_of)?
            }
            (Some(Target::Scatter(pieces)), false) => {
                let mut rest = &bytes[..];
                for (base, len) in pieces {
                    let n = (*len as usize).min(rest.len());
                    memory.write(*base, &rest[..n]).map_err(errno_of)?;
                    rest = &rest[n..];
                }
            }
        }
    }
    Ok(())
}

/// A call laid out in the deputy, ready to run.
pub struct Staged {
    pub nr: i64,
    pub args: [u64; 6],
    /// Per output slot: where in the deputy, its capacity, and how many
    /// bytes per unit of return value it holds (0: all of it).
    outputs: Vec<(u64, u64, u32)>,
}

/// Why a forwarded call could not be staged in the deputy.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Inject(#[from] InjectError),
    #[error("the forwarded call does not match its table entry ({0})")]
    Malformed(&'static str),
}

/// Lays out `call` in the deputy's scratch area and rewrites its pointer
/// arguments to point there.
pub fn stage(call: &ForwardedCall, injector: &mut Injector) -> Result<Staged, StageError> {
    let nr = i64::from(call.nr);
    let mut args = [0u64; 6];
    if call.args.len() != 6 {
        return Err(StageError::Malformed("not six arguments"));
    }
    args.copy_from_slice(&call.args);
    let params = match route(nr, &args) {
        Route::Forward(params) => params,
        _ => return Err(StageError::Malformed("the call is not forwarded")),
    };
    let pointer_params = params.iter().filter(|p| **p != Param::Value).count();
    if pointer_params != call.slots.len() {
        return Err(StageError::Malformed("wrong number of slots"));
    }
    let mut total = 0u64;
    for slot in &call.slots {
        if slot.capacity > MAX_SLOT || slot.input.len() as u64 > MAX_SLOT {
            return Err(StageError::Malformed("a slot is too large"));
        }
        total += (slot.input.len() as u64)
            .max(slot.capacity)
            .next_multiple_of(SLOT_ALIGN)
            + SLOT_ALIGN;
    }
    injector.ensure_scratch(total.max(16))?;
    let mut offset = 0u64;
    let mut slots = call.slots.iter();
    let mut outputs = Vec::new();
    for (index, param) in params.iter().enumerate() {
        if *param == Param::Value {
            continue;
        }
        let slot = slots.next().expect("counted above");
        let room = (slot.input.len() as u64).max(slot.capacity);
        let address = if slot.null {
            0
        } else {
            injector.put(offset, &slot.input)?
        };
        let data_offset = offset;
        offset += room.next_multiple_of(SLOT_ALIGN);
        match param {
            Param::InVector(count) | Param::OutVector(count) if !slot.null => {
                // One iovec covering the whole slot.
                let mut iovec = address.to_ne_bytes().to_vec();
                iovec.extend_from_slice(&room.to_ne_bytes());
                args[index] = injector.put(offset, &iovec)?;
                args[*count as usize] = 1;
                offset += SLOT_ALIGN;
            }
            _ => args[index] = address,
        }
        let per_unit = match param {
            Param::OutReturned(_, factor) => *factor,
            Param::OutVector(_) => 1,
            _ => 0,
        };
        if writes_output(param) {
            outputs.push((
                if slot.null {
                    0
                } else {
                    injector.parasite.scratch + data_offset
                },
                if slot.null { 0 } else { slot.capacity },
                per_unit,
            ));
        }
    }
    Ok(Staged { nr, args, outputs })
}

/// What the call wrote, after it returned `ret`.
pub fn collect(
    staged: &Staged,
    ret: i64,
    memory: &ProcessMemory,
) -> Result<CallResult, InjectError> {
    let mut outputs = Vec::with_capacity(staged.outputs.len());
    for (address, capacity, per_unit) in &staged.outputs {
        let len = match (ret < 0, per_unit) {
            (true, _) => 0,
            (false, 0) => *capacity,
            (false, unit) => (ret as u64).saturating_mul(u64::from(*unit)).min(*capacity),
        };
        outputs.push(if *address == 0 || len == 0 {
            Vec::new()
        } else {
            memory.read_vec(*address, len as usize)?
        });
    }
    Ok(CallResult {
        ret,
        outputs,
        opened: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_table_and_the_special_rules() {
        let mut args = [0u64; 6];
        assert!(matches!(route(0, &args), Route::Forward(_)), "read");
        assert_eq!(route(39, &args), Route::HomePid);
        assert_eq!(route(228, &args), Route::Local, "clock_gettime");
        assert!(matches!(route(57, &args), Route::Home(_)), "fork");
        args[3] = libc::MAP_ANONYMOUS as u64;
        assert_eq!(route(libc::SYS_mmap, &args), Route::Local);
        args[3] = libc::MAP_PRIVATE as u64;
        assert!(matches!(route(libc::SYS_mmap, &args), Route::Home(_)));
        let mut ioctl_args = [1, 0x5401, 0x1000, 0, 0, 0];
        assert_eq!(
            route(libc::SYS_ioctl, &ioctl_args),
            Route::Forward(IOCTL_OUT_TERMIOS)
        );
        ioctl_args[1] = 0xdead;
        assert!(matches!(
            route(libc::SYS_ioctl, &ioctl_args),
            Route::Home(_)
        ));
        assert_eq!(
            route(libc::SYS_fcntl, &[3, libc::F_SETLKW as u64, 0, 0, 0, 0]),
            Route::Forward(FCNTL_FLOCK)
        );
        assert_eq!(
            route(libc::SYS_prlimit64, &[0, 7, 0, 0, 0, 0]),
            Route::Local
        );
        assert!(matches!(
            route(libc::SYS_prlimit64, &[1234, 7, 0, 0, 0, 0]),
            Route::Home(_)
        ));
        let children = libc::RUSAGE_CHILDREN as i64 as u64;
        assert_eq!(
            route(libc::SYS_getrusage, &[children, 0, 0, 0, 0, 0]),
            Route::Forward(GETRUSAGE_CHILDREN)
        );
        assert_eq!(
            route(libc::SYS_getrusage, &[0, 0, 0, 0, 0, 0]),
            Route::Local
        );
    }

    #[test]
    fn prepare_reads_inputs_and_apply_writes_outputs() {
        let me = std::process::id() as i32;
        let memory = ProcessMemory::open(me).unwrap();
        let path = b"/etc/passwd\0".to_vec();
        let mut stat_buffer = vec![0u8; 144];
        let args = [
            path.as_ptr() as u64,
            stat_buffer.as_mut_ptr() as u64,
            0,
            0,
            0,
            0,
        ];
        let Route::Forward(params) = route(libc::SYS_stat, &args) else {
            panic!()
        };
        let prepared = prepare(libc::SYS_stat, &args, params, &memory).unwrap();
        assert_eq!(prepared.call.slots.len(), 2);
        assert_eq!(prepared.call.slots[0].input, path);
        assert_eq!(prepared.call.slots[1].capacity, 144);
        let result = CallResult {
            ret: 0,
            outputs: vec![vec![7u8; 144]],
            opened: None,
        };
        apply(&prepared, &result, &memory).unwrap();
        assert_eq!(stat_buffer, vec![7u8; 144]);

        // A read longer than a slot is shortened, its argument with it.
        let mut buffer = vec![0u8; 16];
        let args = [0, buffer.as_mut_ptr() as u64, 1 << 40, 0, 0, 0];
        let Route::Forward(params) = route(0, &args) else {
            panic!()
        };
        let prepared = prepare(0, &args, params, &memory).unwrap();
        assert_eq!(prepared.call.args[2], MAX_SLOT);

        // A bad pointer fails the call with EFAULT, as the kernel would.
        let args = [1, 0x10, 5, 0, 0, 0];
        let Route::Forward(params) = route(1, &args) else {
            panic!()
        };
        assert_eq!(
            prepare(1, &args, params, &memory).unwrap_err(),
            libc::EFAULT
        );
    }

    #[test]
    fn vectors_gather_and_scatter() {
        let me = std::process::id() as i32;
        let memory = ProcessMemory::open(me).unwrap();
        let (a, b) = (b"hello ".to_vec(), b"world".to_vec());
        let iov: Vec<u64> = vec![
            a.as_ptr() as u64,
            a.len() as u64,
            b.as_ptr() as u64,
            b.len() as u64,
        ];
        let args = [1, iov.as_ptr() as u64, 2, 0, 0, 0];
        let Route::Forward(params) = route(libc::SYS_writev, &args) else {
            panic!()
        };
        let prepared = prepare(libc::SYS_writev, &args, params, &memory).unwrap();
        assert_eq!(prepared.call.slots[0].input, b"hello world");

        let (mut x, mut y) = (vec![0u8; 3], vec![0u8; 10]);
        let iov: Vec<u64> = vec![x.as_mut_ptr() as u64, 3, y.as_mut_ptr() as u64, 10];
        let args = [0, iov.as_ptr() as u64, 2, 0, 0, 0];
        let Route::Forward(params) = route(libc::SYS_readv, &args) else {
            panic!()
        };
        let prepared = prepare(libc::SYS_readv, &args, params, &memory).unwrap();
        assert_eq!(prepared.call.slots[0].capacity, 13);
        let result = CallResult {
            ret: 5,
            outputs: vec![b"abcde".to_vec()],
            opened: None,
        };
        apply(&prepared, &result, &memory).unwrap();
        assert_eq!(x, b"abc");
        assert_eq!(&y[..2], b"de");
    }
}
