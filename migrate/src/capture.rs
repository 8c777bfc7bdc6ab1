//! Capturing a stopped process: its image header, and where its pages are.

use std::io;

use omx_mfs::wire::image::{
    AltStack, AreaKind, Compatibility, IMAGE_FORMAT, ImageHeader, MemoryArea, MemoryLayout,
    RobustList, Rseq, SignalState,
};

use crate::image::{RLIMIT_COUNT, SIGACTION_LEN, SIGINFO_LEN, fnv1a};
use crate::inject::{InjectError, Injector};
use crate::maps::{self, MapEntry, PAGE_SIZE, PageMap};
use crate::sys;
use crate::sys::memory::ProcessMemory;
use crate::sys::ptrace::{self, Regs};

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;
const PR_GET_TID_ADDRESS: u64 = 40;
/// Pages are read and sent in runs of at most this many bytes.
pub const RUN_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}")]
    Inject(#[from] InjectError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("/proc/{pid}/{file} is not as expected: {detail}")]
    Proc {
        pid: i32,
        file: &'static str,
        detail: String,
    },
}

/// A captured process: the header, and the page runs still to be read.
pub struct Capture {
    pub header: ImageHeader,
    pub runs: Vec<(u64, u64)>,
}

/// What this node offers an image: it must match the image's.
pub fn local_compatibility() -> io::Result<Compatibility> {
    let me = std::process::id() as i32;
    let vdso = maps::read_maps(me)?
        .into_iter()
        .find(|m| m.path == "[vdso]")
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "this process has no vDSO"))?;
    let code = ProcessMemory::open(me)?.read_vec(vdso.start, vdso.len() as usize)?;
    Ok(Compatibility {
        kernel_release: nix::sys::utsname::uname()?
            .release()
            .to_string_lossy()
            .into_owned(),
        vdso_hash: fnv1a(&code),
        xsave_features: sys::xsave_features(),
        xsave_size: 0,
    })
}

/// Undoes the kernel's "restart this call" convention in registers saved
/// while the process was inside an interruptible system call, so that the
/// call runs again when the registers are restored (as it would have).
pub fn restartable(mut regs: Regs) -> Regs {
    if (regs.orig_rax as i64) < 0 {
        return regs;
    }
    match regs.rax as i64 {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            regs.rax = regs.orig_rax;
            regs.rip -= 2;
        }
        ERESTART_RESTARTBLOCK => regs.rax = (-libc::EINTR) as i64 as u64,
        _ => {}
    }
    regs
}

/// Captures the stopped tracee behind `injector`. `regs` are its registers
/// at the stop (before any injection).
pub fn capture(injector: &mut Injector, regs: Regs) -> Result<Capture, CaptureError> {
    let pid = injector.pid();
    let regs = restartable(regs);
    let mut compatibility = local_compatibility()?;
    let xstate = ptrace::get_xstate(pid)?;
    compatibility.xsave_size = xstate.len() as u32;

    let areas = maps::read_maps(pid)?;
    let pagemap = PageMap::open(pid)?;
    let mut image_areas = Vec::new();
    let mut runs = Vec::new();
    for area in &areas {
        if area.is_vsyscall() || injector.parasite.overlaps(area.start, area.end) {
            continue;
        }
        image_areas.push(MemoryArea {
            start: area.start,
            end: area.end,
            read: area.read,
            write: area.write,
            execute: area.execute,
            kind: kind_of(area),
        });
        runs.extend(page_runs(area, &pagemap)?);
    }
    let page_bytes = runs.iter().map(|(_, len)| len).sum();

    // Everything the process must tell us itself, in one go.
    let mut batch = injector.batch();
    let mut action_at = Vec::new();
    for signal in 1..=64u64 {
        if signal == libc::SIGKILL as u64 || signal == libc::SIGSTOP as u64 {
            action_at.push(None);
            continue;
        }
        let at = batch.room(SIGACTION_LEN);
        batch.call("rt_sigaction", libc::SYS_rt_sigaction, &[signal, 0, at, 8]);
        action_at.push(Some(at));
    }
    let stack_at = batch.room(24);
    batch.call("sigaltstack", libc::SYS_sigaltstack, &[0, stack_at]);
    let tid_at = batch.room(8);
    batch.call("prctl", libc::SYS_prctl, &[PR_GET_TID_ADDRESS, tid_at]);
    // Asked by the process itself: reading another uid's limits would
    // need CAP_SYS_RESOURCE.
    let rlimit_at: Vec<u64> = (0..u64::from(RLIMIT_COUNT))
        .map(|resource| {
            let at = batch.room(16);
            batch.call("prlimit64", libc::SYS_prlimit64, &[0, resource, 0, at]);
            at
        })
        .collect();
    batch.call("brk", libc::SYS_brk, &[0]);
    let results = injector.run_batch_checked(&batch)?;
    let brk = *results.last().expect("the batch ran") as u64;
    let told = batch.read_back(injector)?;

    let actions = action_at
        .iter()
        .map(|at| match at {
            Some(at) => told.at(*at, SIGACTION_LEN).to_vec(),
            None => vec![0u8; SIGACTION_LEN],
        })
        .collect();
    let stack = told.at(stack_at, 24);
    let altstack = AltStack {
        sp: u64::from_ne_bytes(stack[0..8].try_into().expect("8 bytes")),
        flags: i32::from_ne_bytes(stack[8..12].try_into().expect("4 bytes")),
        size: u64::from_ne_bytes(stack[16..24].try_into().expect("8 bytes")),
    };
    let as_vecs = |infos: Vec<[u8; SIGINFO_LEN]>| infos.into_iter().map(|i| i.to_vec()).collect();
    let signals = SignalState {
        mask: ptrace::get_sigmask(pid)?,
        actions,
        pending_thread: as_vecs(ptrace::pending_siginfos(pid, false)?),
        pending_process: as_vecs(ptrace::pending_siginfos(pid, true)?),
        altstack,
    };
    let clear_child_tid = told.u64_at(tid_at);
    let rlimits = rlimit_at
        .iter()
        .map(|at| (told.u64_at(*at), told.u64_at(*at + 8)))
        .collect();
    let rseq = match ptrace::rseq_configuration(pid)? {
        c if c.rseq_abi_pointer == 0 => None,
        c => Some(Rseq {
            address: c.rseq_abi_pointer,
            length: c.rseq_abi_size,
            signature: c.signature,
        }),
    };
    let (head, length) = sys::get_robust_list(pid)?;
    let personality = read_proc(pid, "personality")?;
    let personality =
        u32::from_str_radix(personality.trim(), 16).map_err(|_| CaptureError::Proc {
            pid,
            file: "personality",
            detail: personality.clone(),
        })?;
    let command = read_proc(pid, "comm")?.trim_end().to_string();

    Ok(Capture {
        header: ImageHeader {
            format: IMAGE_FORMAT,
            compatibility,
            regs: ptrace::regs_to_bytes(&regs),
            xstate,
            areas: image_areas,
            layout: memory_layout(pid, brk)?,
            signals,
            rseq,
            robust_list: RobustList { head, length },
            clear_child_tid,
            personality,
            rlimits,
            command,
            page_bytes,
        },
        runs,
    })
}

fn kind_of(area: &MapEntry) -> AreaKind {
    match area.path.as_str() {
        "[heap]" => AreaKind::Heap,
        "[stack]" => AreaKind::Stack,
        _ if area.is_vdso_family() => AreaKind::Special {
            name: area.path.clone(),
        },
        path if path.starts_with('/') => AreaKind::Private {
            file: Some(path.to_string()),
        },
        _ => AreaKind::Private { file: None },
    }
}

/// The page runs of an area that hold data. A file mapping's pages all
/// count: the file stays at home, so pages never touched yet must travel too.
fn page_runs(area: &MapEntry, pagemap: &PageMap) -> io::Result<Vec<(u64, u64)>> {
    if area.is_vdso_family() {
        return Ok(Vec::new());
    }
    let file_backed = area.path.starts_with('/');
    let populated = if file_backed && area.read {
        vec![true; (area.len() / PAGE_SIZE) as usize]
    } else {
        pagemap.populated(area.start, area.end)?
    };
    let mut runs = Vec::new();
    for (first, count) in maps::runs(&populated) {
        let mut start = area.start + first as u64 * PAGE_SIZE;
        let end = start + count as u64 * PAGE_SIZE;
        while start < end {
            let len = (end - start).min(RUN_BYTES);
            runs.push((start, len));
            start += len;
        }
    }
    Ok(runs)
}

/// Reads one planned run into `buffer` (its length). Pages that cannot be
/// read (a file mapping past the end of its file) come back as zeros, as
/// they would read.
pub fn read_run(memory: &ProcessMemory, address: u64, buffer: &mut [u8]) {
    // Most pages are readable by the process: copy those the cheap way and
    // the rest (guard pages, PROT_NONE) through /proc/PID/mem.
    let copied = memory.read_readable(address, buffer) / PAGE_SIZE as usize * PAGE_SIZE as usize;
    let (address, buffer) = (address + copied as u64, &mut buffer[copied..]);
    if buffer.is_empty() {
        return;
    }
    if memory.read(address, buffer).is_err() {
        for (i, page) in buffer.chunks_mut(PAGE_SIZE as usize).enumerate() {
            if memory.read(address + i as u64 * PAGE_SIZE, page).is_err() {
                page.fill(0);
            }
        }
    }
}

fn read_proc(pid: i32, file: &'static str) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
}

fn memory_layout(pid: i32, brk: u64) -> Result<MemoryLayout, CaptureError> {
    let stat = read_proc(pid, "stat")?;
    let bad = |detail: &str| CaptureError::Proc {
        pid,
        file: "stat",
        detail: detail.to_string(),
    };
    let after_command = stat.rfind(')').ok_or_else(|| bad("no command"))?;
    // Field 3 (state) is the first after the command.
    let fields: Vec<u64> = stat[after_command + 1..]
        .split_whitespace()
        .map(|f| f.parse::<i64>().map_or(0, |v| v as u64))
        .collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| bad("too few fields"))
    };
    let auxv_bytes = std::fs::read(format!("/proc/{pid}/auxv"))?;
    Ok(MemoryLayout {
        start_code: field(26)?,
        end_code: field(27)?,
        start_stack: field(28)?,
        start_data: field(45)?,
        end_data: field(46)?,
        start_brk: field(47)?,
        brk,
        arg_start: field(48)?,
        arg_end: field(49)?,
        env_start: field(50)?,
        env_end: field(51)?,
        auxv: auxv_bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    })
}
