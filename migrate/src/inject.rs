//! Running system calls inside a stopped tracee.
//!
//! The technique of CRIU's compel and reptyr: point the tracee's registers
//! at a `syscall; int3` sequence with the call's number and arguments, let
//! it run until the int3 traps, read the result. Each process we work on
//! gets a *parasite*: a code page holding that sequence and a scratch area
//! for the calls' memory arguments, mapped where the process has nothing.
//!
//! Each stop and resume of the tracee costs tens of microseconds, so work
//! of many calls (restoring an image: hundreds) goes as one [`Batch`]: a
//! table of calls in the scratch area, run by a small loop in the code page
//! in a single resume.

use std::io;

use tracing::trace;

use crate::maps::{self, PAGE_SIZE};
use crate::sys::memory::ProcessMemory;
use crate::sys::ptrace::{self, Regs, Stop};

/// `syscall` followed by `int3`.
const SYSCALL_TRAP: [u8; 3] = [0x0f, 0x05, 0xcc];
/// `syscall` is two bytes: after it, `rip` points at the trap.
const SYSCALL_INSTRUCTION_LEN: u64 = 2;
/// Where the batch loop starts in the code page.
const BATCH_OFFSET: u64 = 16;
/// Runs a table of calls: `rbx` points at entries of eight words (number,
/// six arguments, result), ended by a number of -1. The loop stops after
/// the first call that fails (a result in -4095..-1), then traps.
///
/// ```text
///  0: mov rax, [rbx]        ; 48 8b 03
///  3: cmp rax, -1           ; 48 83 f8 ff
///  7: je  53                ; 74 2c
///  9: mov rdi, [rbx+8]      ; 48 8b 7b 08
/// 13: mov rsi, [rbx+16]     ; 48 8b 73 10
/// 17: mov rdx, [rbx+24]     ; 48 8b 53 18
/// 21: mov r10, [rbx+32]     ; 4c 8b 53 20
/// 25: mov r8,  [rbx+40]     ; 4c 8b 43 28
/// 29: mov r9,  [rbx+48]     ; 4c 8b 4b 30
/// 33: syscall               ; 0f 05
/// 35: mov [rbx+56], rax     ; 48 89 43 38
/// 39: cmp rax, -4095        ; 48 3d 01 f0 ff ff
/// 45: jae 53                ; 73 06
/// 47: add rbx, 64           ; 48 83 c3 40
/// 51: jmp 0                 ; eb cb
/// 53: int3                  ; cc
/// ```
const BATCH_LOOP: [u8; 54] = [
    0x48, 0x8b, 0x03, 0x48, 0x83, 0xf8, 0xff, 0x74, 0x2c, 0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73,
    0x10, 0x48, 0x8b, 0x53, 0x18, 0x4c, 0x8b, 0x53, 0x20, 0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b,
    0x30, 0x0f, 0x05, 0x48, 0x89, 0x43, 0x38, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x06, 0x48,
    0x83, 0xc3, 0x40, 0xeb, 0xcb, 0xcc,
];
/// Bytes per entry of a batch's table.
const BATCH_ENTRY: usize = 64;

/// Where parasites go if nothing forces another place: below the usual
/// mmap area of x86_64 processes.
const PARASITE_CEILING: u64 = 0x6f00_0000_0000;
const MAP_FIXED_NOREPLACE: u64 = 0x100000;
/// The scratch area's size when a parasite is made.
const INITIAL_SCRATCH: u64 = 64 * 1024;

/// Why an injected call could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the process ended while being worked on ({0:?})")]
    Gone(Stop),
    #[error("the process stopped unexpectedly ({stop:?}) at {rip:#x} during an injected call")]
    Unexpected { stop: Stop, rip: u64 },
    #[error("the process has no executable memory to start from")]
    NoCode,
    #[error("no free address range of {0} bytes in the process")]
    NoRoom(u64),
    #[error("injected {name} failed: {error}")]
    CallFailed {
        name: &'static str,
        error: io::Error,
    },
}

/// How an injected call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The call returned this value (a negative errno on failure).
    Returned(i64),
    /// A signal arrived while the call was blocked: the tracee sits in a
    /// signal-delivery stop with the registers the kernel left.
    Signal(i32),
}

/// A code page and a scratch area inside one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parasite {
    pub code: u64,
    pub scratch: u64,
    pub scratch_len: u64,
}

impl Parasite {
    /// Whether `[start, end)` overlaps the parasite.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        let code = (self.code, self.code + PAGE_SIZE);
        let scratch = (self.scratch, self.scratch + self.scratch_len);
        [code, scratch].iter().any(|(s, e)| start < *e && *s < end)
    }

    pub fn ranges(&self) -> [(u64, u64); 2] {
        [
            (self.code, self.code + PAGE_SIZE),
            (self.scratch, self.scratch + self.scratch_len),
        ]
    }
}

/// Calls to run in one go, with the memory their arguments point to.
pub struct Batch {
    scratch: u64,
    data: Vec<u8>,
    calls: Vec<(&'static str, i64, [u64; 6])>,
}

impl Batch {
    /// Stages `bytes` for a call to read or overwrite; returns their
    /// address in the tracee (valid once the batch runs).
    pub fn stage(&mut self, bytes: &[u8]) -> u64 {
        let address = self.scratch + self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        self.data.resize(self.data.len().next_multiple_of(16), 0);
        address
    }

    /// Room for a call to write `len` bytes; returns its address.
    pub fn room(&mut self, len: usize) -> u64 {
        self.stage(&vec![0; len])
    }

    /// Adds call `nr` (named `name` in errors) with `args`.
    pub fn call(&mut self, name: &'static str, nr: i64, args: &[u64]) {
        let mut all = [0u64; 6];
        all[..args.len()].copy_from_slice(args);
        self.calls.push((name, nr, all));
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// The staged data as the calls left it, read back from `injector`'s
    /// tracee in one go.
    pub fn read_back(&self, injector: &Injector) -> Result<Staged, InjectError> {
        Ok(Staged {
            base: self.scratch,
            bytes: injector.memory.read_vec(self.scratch, self.data.len())?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// A batch's data after it ran.
pub struct Staged {
    base: u64,
    bytes: Vec<u8>,
}

impl Staged {
    /// The `len` bytes at `address` (an address [`Batch::stage`] or
    /// [`Batch::room`] gave).
    pub fn at(&self, address: u64, len: usize) -> &[u8] {
        let offset = (address - self.base) as usize;
        &self.bytes[offset..offset + len]
    }

    pub fn u64_at(&self, address: u64) -> u64 {
        u64::from_ne_bytes(self.at(address, 8).try_into().expect("8 bytes"))
    }
}

/// Runs system calls in one stopped tracee.
pub struct Injector {
    pid: i32,
    pub parasite: Parasite,
    pub memory: ProcessMemory,
}

impl Injector {
    /// Gives a stopped tracee a parasite placed away from `avoid` (address
    /// ranges that must stay free, e.g. the areas of an image to restore).
    pub fn bootstrap(pid: i32, avoid: &[(u64, u64)]) -> Result<Injector, InjectError> {
        let memory = ProcessMemory::open(pid)?;
        let areas = maps::read_maps(pid)?;
        // Borrow three bytes of existing code to make the first call.
        let borrowed = areas
            .iter()
            .find(|a| a.execute && !a.is_vsyscall() && !a.is_vdso_family())
            .ok_or(InjectError::NoCode)?
            .start;
        let original = memory.read_vec(borrowed, SYSCALL_TRAP.len())?;
        memory.write(borrowed, &SYSCALL_TRAP)?;
        let mut taken: Vec<(u64, u64)> = areas.iter().map(|a| (a.start, a.end)).collect();
        taken.extend_from_slice(avoid);
        let size = PAGE_SIZE + INITIAL_SCRATCH;
        let place =
            maps::find_hole(&taken, size, PARASITE_CEILING).ok_or(InjectError::NoRoom(size))?;
        let temporary = Injector {
            pid,
            parasite: Parasite {
                code: borrowed,
                scratch: 0,
                scratch_len: 0,
            },
            memory,
        };
        let mapped = (|| {
            let code = temporary.map_fixed(place, PAGE_SIZE, libc::PROT_READ | libc::PROT_EXEC)?;
            let scratch = temporary.map_fixed(
                place + PAGE_SIZE,
                INITIAL_SCRATCH,
                libc::PROT_READ | libc::PROT_WRITE,
            )?;
            Ok::<_, InjectError>((code, scratch))
        })();
        temporary.memory.write(borrowed, &original)?;
        let (code, scratch) = mapped?;
        temporary.memory.write(code, &SYSCALL_TRAP)?;
        temporary.memory.write(code + BATCH_OFFSET, &BATCH_LOOP)?;
        trace!("pid {pid}: parasite code at {code:#x}, scratch at {scratch:#x}");
        Ok(Injector {
            pid,
            parasite: Parasite {
                code,
                scratch,
                scratch_len: INITIAL_SCRATCH,
            },
            memory: temporary.memory,
        })
    }

    /// Works with a parasite made earlier (by a previous keeper step).
    pub fn adopt(pid: i32, parasite: Parasite) -> Result<Injector, InjectError> {
        Ok(Injector {
            pid,
            parasite,
            memory: ProcessMemory::open(pid)?,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn map_fixed(&self, address: u64, len: u64, prot: i32) -> Result<u64, InjectError> {
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | MAP_FIXED_NOREPLACE;
        let got = self.call_checked(
            "mmap",
            libc::SYS_mmap,
            &[address, len, prot as u64, flags, u64::MAX, 0],
        )? as u64;
        if got != address {
            return Err(InjectError::NoRoom(len));
        }
        Ok(got)
    }

    /// Makes the scratch area at least `len` bytes.
    pub fn ensure_scratch(&mut self, len: u64) -> Result<(), InjectError> {
        if len <= self.parasite.scratch_len {
            return Ok(());
        }
        let new_len = len.next_power_of_two().max(INITIAL_SCRATCH);
        // MREMAP_MAYMOVE: it may go anywhere the kernel likes.
        let moved = self.call_checked(
            "mremap",
            libc::SYS_mremap,
            &[
                self.parasite.scratch,
                self.parasite.scratch_len,
                new_len,
                1,
                0,
                0,
            ],
        )? as u64;
        self.parasite.scratch = moved;
        self.parasite.scratch_len = new_len;
        Ok(())
    }

    /// Runs one call with every signal blocked, and restores the tracee's
    /// registers and signal mask afterwards.
    pub fn call(&self, nr: i64, args: &[u64]) -> Result<i64, InjectError> {
        let saved_regs = ptrace::get_regs(self.pid)?;
        let saved_mask = ptrace::get_sigmask(self.pid)?;
        ptrace::set_sigmask(self.pid, u64::MAX)?;
        let outcome = self.run(nr, args, &saved_regs);
        ptrace::set_regs(self.pid, &saved_regs)?;
        ptrace::set_sigmask(self.pid, saved_mask)?;
        match outcome? {
            Outcome::Returned(value) => Ok(value),
            Outcome::Signal(signal) => Err(InjectError::Unexpected {
                stop: Stop::Signal(signal),
                rip: self.parasite.code,
            }),
        }
    }

    /// [`call`](Self::call), turning a negative return into an error.
    pub fn call_checked(
        &self,
        name: &'static str,
        nr: i64,
        args: &[u64],
    ) -> Result<i64, InjectError> {
        let value = self.call(nr, args)?;
        if (-4095..0).contains(&value) {
            return Err(InjectError::CallFailed {
                name,
                error: io::Error::from_raw_os_error(-value as i32),
            });
        }
        Ok(value)
    }

    /// Runs one call as the process's own: signals are not blocked, and one
    /// arriving while the call blocks ends the wait with
    /// [`Outcome::Signal`]. `base` supplies the registers not used for the
    /// call. Registers are left as the call leaves them.
    pub fn run(&self, nr: i64, args: &[u64], base: &Regs) -> Result<Outcome, InjectError> {
        self.start(nr, args, base)?;
        self.finish()
    }

    /// Starts one call as the process's own and returns at once; the
    /// caller sees its end among the tracee's stops ([`Injector::outcome`]).
    pub fn start(&self, nr: i64, args: &[u64], base: &Regs) -> Result<(), InjectError> {
        let mut regs = *base;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rip = self.parasite.code;
        let mut all = [0u64; 6];
        all[..args.len()].copy_from_slice(args);
        regs.rdi = all[0];
        regs.rsi = all[1];
        regs.rdx = all[2];
        regs.r10 = all[3];
        regs.r8 = all[4];
        regs.r9 = all[5];
        ptrace::set_regs(self.pid, &regs)?;
        ptrace::cont(self.pid, 0)?;
        Ok(())
    }

    /// What a stop means for a call started with [`start`](Self::start):
    /// `Some` if the call is over (returned, or a signal arrived during it),
    /// `None` if the stop is something else.
    pub fn outcome(&self, stop: Stop) -> Result<Option<Outcome>, InjectError> {
        match stop {
            Stop::Signal(libc::SIGTRAP) => {
                let regs = ptrace::get_regs(self.pid)?;
                if regs.rip == self.parasite.code + SYSCALL_TRAP.len() as u64 {
                    Ok(Some(Outcome::Returned(regs.rax as i64)))
                } else {
                    Ok(Some(Outcome::Signal(libc::SIGTRAP)))
                }
            }
            Stop::Signal(signal) => Ok(Some(Outcome::Signal(signal))),
            Stop::Exited(_) | Stop::Killed { .. } => Err(InjectError::Gone(stop)),
            _ => Ok(None),
        }
    }

    /// At a stop that is not the call's trap (a ptrace interrupt or a
    /// signal), whether the injected call had already completed: its
    /// result is then in `rax`, and dropping it would lose what the call
    /// did (the bytes a read consumed, say). `None` when it had not run yet
    /// or was interrupted before doing anything.
    pub fn completed_result(&self) -> Result<Option<i64>, InjectError> {
        let regs = ptrace::get_regs(self.pid)?;
        let after_syscall = self.parasite.code + SYSCALL_INSTRUCTION_LEN;
        let ret = regs.rax as i64;
        // -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND,
        // -ERESTART_RESTARTBLOCK: interrupted, to be restarted.
        let restarting = matches!(ret, -512 | -513 | -514 | -516);
        Ok((regs.rip == after_syscall && !restarting).then_some(ret))
    }

    /// Waits for the injected call to trap.
    pub fn finish(&self) -> Result<Outcome, InjectError> {
        loop {
            let stop = ptrace::wait(self.pid)?;
            match stop {
                Stop::Signal(libc::SIGTRAP) => {
                    let regs = ptrace::get_regs(self.pid)?;
                    if regs.rip == self.parasite.code + SYSCALL_TRAP.len() as u64 {
                        return Ok(Outcome::Returned(regs.rax as i64));
                    }
                    return Err(InjectError::Unexpected {
                        stop,
                        rip: regs.rip,
                    });
                }
                Stop::Signal(signal) => return Ok(Outcome::Signal(signal)),
                // A stop signal or a ptrace interrupt during the call: let
                // the call go on; the stop is seen again once it is over.
                Stop::Group(_) | Stop::Interrupt | Stop::Event(_) | Stop::Continued => {
                    ptrace::cont(self.pid, 0)?
                }
                Stop::Exited(_) | Stop::Killed { .. } => return Err(InjectError::Gone(stop)),
            }
        }
    }

    /// Resumes a call interrupted by a signal without delivering the
    /// signal: the kernel restarts it where it stopped.
    pub fn resume_interrupted(&self) -> Result<Outcome, InjectError> {
        ptrace::cont(self.pid, 0)?;
        self.finish()
    }

    /// Ends a call interrupted by a signal without restarting it.
    pub fn abandon_interrupted(&self, result: i64) -> Result<(), InjectError> {
        let mut regs = ptrace::get_regs(self.pid)?;
        // orig_rax = -1: no system call in progress, so no restart.
        regs.orig_rax = u64::MAX;
        if regs.rip == self.parasite.code {
            // Stopped before the call ran: skip it, straight to the trap.
            regs.rip += SYSCALL_INSTRUCTION_LEN;
        }
        regs.rax = result as u64;
        ptrace::set_regs(self.pid, &regs)?;
        match self.resume_interrupted()? {
            Outcome::Returned(_) => Ok(()),
            Outcome::Signal(signal) => Err(InjectError::Unexpected {
                stop: Stop::Signal(signal),
                rip: regs.rip,
            }),
        }
    }

    /// An empty batch of calls for this tracee.
    pub fn batch(&self) -> Batch {
        Batch {
            scratch: self.parasite.scratch,
            data: Vec::new(),
            calls: Vec::new(),
        }
    }

    /// Runs `batch`'s calls in order, with every signal blocked, stopping
    /// at the first that fails. Returns the result of each call that ran
    /// (the last one negative if it failed). The data the calls wrote is
    /// in the scratch area, at the addresses [`Batch::stage`] gave.
    pub fn run_batch(&self, batch: &Batch) -> Result<Vec<i64>, InjectError> {
        let data_len = batch.data.len() as u64;
        let table_room = self.parasite.scratch_len.saturating_sub(data_len) as usize;
        // One entry of each table is the terminator.
        let per_table = (table_room / BATCH_ENTRY).saturating_sub(1);
        if per_table == 0 && !batch.calls.is_empty() {
            return Err(InjectError::NoRoom(data_len + 2 * BATCH_ENTRY as u64));
        }
        if !batch.data.is_empty() {
            self.memory.write(self.parasite.scratch, &batch.data)?;
        }
        let table = self.parasite.scratch + data_len;
        let saved_regs = ptrace::get_regs(self.pid)?;
        let saved_mask = ptrace::get_sigmask(self.pid)?;
        ptrace::set_sigmask(self.pid, u64::MAX)?;
        let mut results = Vec::with_capacity(batch.calls.len());
        let ran = (|| {
            for chunk in batch.calls.chunks(per_table.max(1)) {
                let mut entries = Vec::with_capacity((chunk.len() + 1) * BATCH_ENTRY);
                for (_, nr, args) in chunk {
                    entries.extend_from_slice(&nr.to_ne_bytes());
                    for arg in args {
                        entries.extend_from_slice(&arg.to_ne_bytes());
                    }
                    entries.extend_from_slice(&0u64.to_ne_bytes());
                }
                entries.extend_from_slice(&u64::MAX.to_ne_bytes());
                entries.resize((chunk.len() + 1) * BATCH_ENTRY, 0);
                self.memory.write(table, &entries)?;
                let mut regs = saved_regs;
                regs.rbx = table;
                regs.rip = self.parasite.code + BATCH_OFFSET;
                regs.orig_rax = u64::MAX;
                ptrace::set_regs(self.pid, &regs)?;
                ptrace::cont(self.pid, 0)?;
                self.await_trap(self.parasite.code + BATCH_OFFSET + BATCH_LOOP.len() as u64)?;
                let written = self.memory.read_vec(table, chunk.len() * BATCH_ENTRY)?;
                for entry in written.chunks(BATCH_ENTRY) {
                    let result = i64::from_ne_bytes(entry[56..64].try_into().expect("8 bytes"));
                    results.push(result);
                    if (-4095..0).contains(&result) {
                        return Ok(());
                    }
                }
            }
            Ok::<_, InjectError>(())
        })();
        ptrace::set_regs(self.pid, &saved_regs)?;
        ptrace::set_sigmask(self.pid, saved_mask)?;
        ran?;
        Ok(results)
    }

    /// [`run_batch`](Self::run_batch), turning a failed call into an error
    /// naming it.
    pub fn run_batch_checked(&self, batch: &Batch) -> Result<Vec<i64>, InjectError> {
        let results = self.run_batch(batch)?;
        if let Some(&last) = results.last()
            && (-4095..0).contains(&last)
        {
            return Err(InjectError::CallFailed {
                name: batch.calls[results.len() - 1].0,
                error: io::Error::from_raw_os_error(-last as i32),
            });
        }
        Ok(results)
    }

    /// Waits for the tracee to trap at `at`, letting job-control stops
    /// and interrupts pass.
    fn await_trap(&self, at: u64) -> Result<(), InjectError> {
        loop {
            let stop = ptrace::wait(self.pid)?;
            match stop {
                Stop::Signal(libc::SIGTRAP) => {
                    let regs = ptrace::get_regs(self.pid)?;
                    if regs.rip == at {
                        return Ok(());
                    }
                    return Err(InjectError::Unexpected {
                        stop,
                        rip: regs.rip,
                    });
                }
                Stop::Signal(_) => {
                    let rip = ptrace::get_regs(self.pid)?.rip;
                    return Err(InjectError::Unexpected { stop, rip });
                }
                Stop::Group(_) | Stop::Interrupt | Stop::Event(_) | Stop::Continued => {
                    ptrace::cont(self.pid, 0)?
                }
                Stop::Exited(_) | Stop::Killed { .. } => return Err(InjectError::Gone(stop)),
            }
        }
    }

    /// Writes `bytes` into the scratch area at `offset`; returns the
    /// address in the tracee.
    pub fn put(&self, offset: u64, bytes: &[u8]) -> Result<u64, InjectError> {
        assert!(
            offset + bytes.len() as u64 <= self.parasite.scratch_len,
            "scratch overflow"
        );
        let address = self.parasite.scratch + offset;
        self.memory.write(address, bytes)?;
        Ok(address)
    }

    pub fn get(&self, offset: u64, len: usize) -> Result<Vec<u8>, InjectError> {
        Ok(self.memory.read_vec(self.parasite.scratch + offset, len)?)
    }

    /// Removes the parasite. The `munmap` of the code page returns into an
    /// unmapped page, so the tracee faults there: that fault is the end.
    pub fn remove_parasite(self) -> Result<(), InjectError> {
        self.call_checked(
            "munmap",
            libc::SYS_munmap,
            &[self.parasite.scratch, self.parasite.scratch_len],
        )?;
        let saved_regs = ptrace::get_regs(self.pid)?;
        let saved_mask = ptrace::get_sigmask(self.pid)?;
        ptrace::set_sigmask(self.pid, u64::MAX)?;
        let outcome = self.run(
            libc::SYS_munmap,
            &[self.parasite.code, PAGE_SIZE],
            &saved_regs,
        );
        ptrace::set_regs(self.pid, &saved_regs)?;
        ptrace::set_sigmask(self.pid, saved_mask)?;
        match outcome {
            Ok(Outcome::Signal(libc::SIGSEGV)) => Ok(()),
            Ok(other) => Err(InjectError::Unexpected {
                stop: match other {
                    Outcome::Signal(s) => Stop::Signal(s),
                    Outcome::Returned(_) => Stop::Signal(libc::SIGTRAP),
                },
                rip: self.parasite.code,
            }),
            Err(InjectError::Unexpected {
                stop: Stop::Signal(libc::SIGTRAP),
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
