//! Rebuilding a process from an image, inside a stopped tracee.
//!
//! The tracee is either a *fresh* process (a child of the remote keeper,
//! whose own memory is thrown away first) or the *deputy* at home, whose
//! memory was released when it left and which now takes its process back.
//! Restoring happens in three steps so that pages can stream in between:
//! [`prepare`], [`PageSink::write`] for every page run, [`finish`].

use std::io;

use omx_mfs::wire::image::{AreaKind, Compatibility, IMAGE_FORMAT, ImageHeader};

use crate::image::SIGACTION_LEN;
use crate::inject::{Batch, InjectError, Injector};
use crate::maps::{self, PAGE_SIZE};
use crate::sys::memory::ProcessMemory;
use crate::sys::ptrace::{self, Regs};
use crate::sys::uffd::{PageFiller, UFFD_USER_MODE_ONLY};

const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PR_SET_NAME: u64 = 15;
const RSEQ_FLAG_UNREGISTER: u64 = 1;
const MAP_FIXED_NOREPLACE: u64 = 0x100000;
const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
const SS_DISABLE: i32 = 2;
/// Pending signals requeued per batch (128 bytes of siginfo each).
const SIGNALS_PER_BATCH: usize = 128;

/// Which kind of process receives the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A new process on this node: its own memory goes first.
    Fresh,
    /// The deputy, taking its process back home.
    Deputy,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Inject(#[from] InjectError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("this node cannot run the process: {0}")]
    Incompatible(String),
    #[error("the image is malformed: {0}")]
    Malformed(String),
}

/// Refuses an image this node cannot run, with the reason.
pub fn check_compatibility(
    header: &ImageHeader,
    local: &Compatibility,
) -> Result<(), RestoreError> {
    let theirs = &header.compatibility;
    if header.format != IMAGE_FORMAT {
        return Err(RestoreError::Incompatible(format!(
            "image format {} (this node reads format {IMAGE_FORMAT})",
            header.format
        )));
    }
    if theirs.kernel_release != local.kernel_release || theirs.vdso_hash != local.vdso_hash {
        return Err(RestoreError::Incompatible(format!(
            "the process comes from kernel {} and this node runs {} (the vDSO must be identical)",
            theirs.kernel_release, local.kernel_release
        )));
    }
    if theirs.xsave_features != local.xsave_features {
        return Err(RestoreError::Incompatible(format!(
            "the process's CPU state has components {:#x} and this CPU {:#x}",
            theirs.xsave_features, local.xsave_features
        )));
    }
    if ptrace::regs_from_bytes(&header.regs).is_none() {
        return Err(RestoreError::Malformed(
            "registers of the wrong size".into(),
        ));
    }
    if header.signals.actions.len() != 64
        || header
            .signals
            .actions
            .iter()
            .any(|a| a.len() != SIGACTION_LEN)
    {
        return Err(RestoreError::Malformed(
            "signal actions of the wrong shape".into(),
        ));
    }
    for area in &header.areas {
        if area.start >= area.end || area.start % PAGE_SIZE != 0 || area.end % PAGE_SIZE != 0 {
            return Err(RestoreError::Malformed(format!(
                "memory area {:#x}-{:#x} is not page-aligned",
                area.start, area.end
            )));
        }
    }
    Ok(())
}

/// The image's areas as address ranges (to keep parasites away from them).
pub fn area_ranges(header: &ImageHeader) -> Vec<(u64, u64)> {
    header.areas.iter().map(|a| (a.start, a.end)).collect()
}

/// Where the image's pages go: through the target's userfaultfd when it
/// has one (no zeroing, no faults), else through /proc/PID/mem.
pub struct PageSink {
    filler: Option<PageFiller>,
    fillable: Vec<(u64, u64)>,
}

impl PageSink {
    /// Writes page contents into the tracee at `address`.
    pub fn write(
        &self,
        memory: &ProcessMemory,
        address: u64,
        bytes: &[u8],
    ) -> Result<(), RestoreError> {
        let end = address + bytes.len() as u64;
        if let Some(filler) = &self.filler
            && self
                .fillable
                .iter()
                .any(|(s, e)| *s <= address && end <= *e)
        {
            return Ok(filler.copy(address, bytes)?);
        }
        Ok(memory.write(address, bytes)?)
    }
}

/// Gives the tracee a userfaultfd, registers the image's areas with it and
/// returns a filler driving it; `None` if the kernel refuses (then pages
/// are written the slow way).
fn page_filler(injector: &Injector, header: &ImageHeader) -> Option<(PageFiller, Vec<(u64, u64)>)> {
    let flags = libc::O_CLOEXEC as u64 | UFFD_USER_MODE_ONLY;
    let fd = injector
        .call(libc::SYS_userfaultfd, &[flags])
        .ok()
        .filter(|fd| *fd >= 0)?;
    let duplicate = crate::sys::seccomp::pidfd_open(injector.pid()).and_then(|pidfd| {
        crate::sys::seccomp::pidfd_getfd(std::os::fd::AsFd::as_fd(&pidfd), fd as i32)
    });
    let _ = injector.call(libc::SYS_close, &[fd as u64]);
    let mut filler = PageFiller::new(duplicate.ok()?).ok()?;
    let mut fillable = Vec::new();
    for area in &header.areas {
        if let AreaKind::Special { .. } = area.kind {
            continue;
        }
        if filler.register(area.start, area.end - area.start).is_ok() {
            fillable.push((area.start, area.end));
        }
    }
    Some((filler, fillable))
}

/// Calls whose results must be exact (addresses of mappings), checked
/// after their batch ran.
#[derive(Default)]
struct Expected(Vec<(usize, u64, String)>);

impl Expected {
    /// The call just added to `batch` must return `value`.
    fn last_returns(&mut self, batch: &Batch, value: u64, what: String) {
        self.0.push((batch.len() - 1, value, what));
    }

    fn check(&self, results: &[i64]) -> Result<(), RestoreError> {
        for (index, value, what) in &self.0 {
            let got = results[*index] as u64;
            if got != *value {
                return Err(RestoreError::Malformed(format!(
                    "{what} went to {got:#x} instead of {value:#x}"
                )));
            }
        }
        Ok(())
    }
}

/// Empties the tracee's address space (a fresh process) and maps the
/// image's areas, ready for their pages.
pub fn prepare(
    injector: &mut Injector,
    header: &ImageHeader,
    target: Target,
) -> Result<PageSink, RestoreError> {
    let pid = injector.pid();
    if target == Target::Deputy
        && header
            .areas
            .iter()
            .any(|a| injector.parasite.overlaps(a.start, a.end))
    {
        relocate_parasite(injector, header)?;
    }
    let mut batch = injector.batch();
    let mut expected = Expected::default();
    if target == Target::Fresh {
        let own_rseq = ptrace::rseq_configuration(pid)?;
        if own_rseq.rseq_abi_pointer != 0 {
            batch.call(
                "rseq",
                libc::SYS_rseq,
                &[
                    own_rseq.rseq_abi_pointer,
                    u64::from(own_rseq.rseq_abi_size),
                    RSEQ_FLAG_UNREGISTER,
                    u64::from(own_rseq.signature),
                ],
            );
        }
        let own = maps::read_maps(pid)?;
        for area in &own {
            if area.is_vsyscall()
                || area.is_vdso_family()
                || injector.parasite.overlaps(area.start, area.end)
            {
                continue;
            }
            batch.call("munmap", libc::SYS_munmap, &[area.start, area.len()]);
        }
        move_specials(&own, header, &mut batch, &mut expected)?;
    }

    for area in &header.areas {
        if let AreaKind::Special { .. } = area.kind {
            continue;
        }
        let mut prot = 0;
        if area.read {
            prot |= libc::PROT_READ;
        }
        if area.write {
            prot |= libc::PROT_WRITE;
        }
        if area.execute {
            prot |= libc::PROT_EXEC;
        }
        let mut flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        if area.kind == AreaKind::Stack {
            flags |= libc::MAP_GROWSDOWN as u64;
        }
        // The deputy's brk() below leaves a heap mapping: replace it.
        flags |= if target == Target::Deputy && area.kind == AreaKind::Heap {
            libc::MAP_FIXED as u64
        } else {
            MAP_FIXED_NOREPLACE
        };
        if target == Target::Deputy && area.kind == AreaKind::Heap {
            // A process cannot set its own mm layout without
            // CAP_SYS_RESOURCE; but its start_brk never changed, and
            // brk() moves the end to where the remote had it.
            batch.call("brk", libc::SYS_brk, &[header.layout.brk]);
        }
        batch.call(
            "mmap",
            libc::SYS_mmap,
            &[
                area.start,
                area.end - area.start,
                prot as u64,
                flags,
                u64::MAX,
                0,
            ],
        );
        expected.last_returns(&batch, area.start, format!("memory area {:#x}", area.start));
    }
    let results = injector.run_batch_checked(&batch)?;
    expected.check(&results)?;
    Ok(match page_filler(injector, header) {
        Some((filler, fillable)) => PageSink {
            filler: Some(filler),
            fillable,
        },
        None => PageSink {
            filler: None,
            fillable: Vec::new(),
        },
    })
}

/// Moves the tracee's vDSO, vvar and vvar_vclock (among its areas `own`)
/// to where the image had them, through a free range first in case the
/// two layouts overlap.
fn move_specials(
    own: &[maps::MapEntry],
    header: &ImageHeader,
    batch: &mut Batch,
    expected: &mut Expected,
) -> Result<(), RestoreError> {
    let wanted: Vec<_> = header
        .areas
        .iter()
        .filter_map(|a| match &a.kind {
            AreaKind::Special { name } => Some((name.clone(), a.start, a.end)),
            _ => None,
        })
        .collect();
    let mut taken: Vec<(u64, u64)> = own.iter().map(|a| (a.start, a.end)).collect();
    taken.extend(area_ranges(header));
    let mut staged = Vec::new();
    for (name, start, end) in &wanted {
        let mine = own
            .iter()
            .find(|a| a.is_vdso_family() && &a.path == name)
            .ok_or_else(|| {
                RestoreError::Incompatible(format!("this kernel has no {name} mapping"))
            })?;
        if mine.len() != end - start {
            return Err(RestoreError::Incompatible(format!(
                "{name} is {} bytes here and {} bytes in the image",
                mine.len(),
                end - start
            )));
        }
        let hole = maps::find_hole(&taken, mine.len(), 0x6e00_0000_0000)
            .ok_or(InjectError::NoRoom(mine.len()))?;
        taken.push((hole, hole + mine.len()));
        remap(batch, expected, mine.start, mine.len(), hole);
        staged.push((hole, mine.len(), *start));
    }
    for (from, len, to) in staged {
        remap(batch, expected, from, len, to);
    }
    Ok(())
}

fn remap(batch: &mut Batch, expected: &mut Expected, from: u64, len: u64, to: u64) {
    batch.call(
        "mremap",
        libc::SYS_mremap,
        &[from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to],
    );
    expected.last_returns(batch, to, format!("mremap of {from:#x}"));
}

/// Gives the deputy a new parasite away from the image's areas and drops
/// the old one.
fn relocate_parasite(injector: &mut Injector, header: &ImageHeader) -> Result<(), RestoreError> {
    let old = injector.parasite;
    let fresh = Injector::bootstrap(injector.pid(), &area_ranges(header))?;
    for (start, end) in old.ranges() {
        fresh.call_checked("munmap", libc::SYS_munmap, &[start, end - start])?;
    }
    *injector = fresh;
    Ok(())
}

/// Restores everything but memory and leaves the tracee stopped with the
/// image's registers, ready to be let go.
pub fn finish(
    injector: &Injector,
    header: &ImageHeader,
    target: Target,
) -> Result<(), RestoreError> {
    let pid = injector.pid();
    let mut batch = injector.batch();
    if target == Target::Fresh {
        set_memory_layout(header, &mut batch);
    }
    for (index, action) in header.signals.actions.iter().enumerate() {
        let signal = index as u64 + 1;
        if signal == libc::SIGKILL as u64 || signal == libc::SIGSTOP as u64 {
            continue;
        }
        let at = batch.stage(action);
        batch.call("rt_sigaction", libc::SYS_rt_sigaction, &[signal, at, 0, 8]);
    }
    let altstack = header.signals.altstack;
    let mut stack = vec![0u8; 24];
    stack[0..8].copy_from_slice(&altstack.sp.to_ne_bytes());
    // Only 0 or SS_DISABLE may be set; "on the stack now" is not a setting.
    let flags = if altstack.flags & SS_DISABLE != 0 {
        SS_DISABLE
    } else {
        0
    };
    stack[8..12].copy_from_slice(&flags.to_ne_bytes());
    stack[16..24].copy_from_slice(&altstack.size.to_ne_bytes());
    let at = batch.stage(&stack);
    batch.call("sigaltstack", libc::SYS_sigaltstack, &[at, 0]);

    let robust = header.robust_list;
    if robust.head != 0 {
        batch.call(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[robust.head, robust.length],
        );
    }
    batch.call(
        "set_tid_address",
        libc::SYS_set_tid_address,
        &[header.clear_child_tid],
    );
    batch.call(
        "personality",
        libc::SYS_personality,
        &[u64::from(header.personality)],
    );
    let mut name = header.command.as_bytes()[..header.command.len().min(15)].to_vec();
    name.push(0);
    let at = batch.stage(&name);
    batch.call("prctl", libc::SYS_prctl, &[PR_SET_NAME, at]);
    if let Some(rseq) = header.rseq {
        batch.call(
            "rseq",
            libc::SYS_rseq,
            &[
                rseq.address,
                u64::from(rseq.length),
                0,
                u64::from(rseq.signature),
            ],
        );
    }
    injector.run_batch_checked(&batch)?;
    // Pending signals can be many (queued real-time ones): a batch of them
    // at a time, so their data fits the scratch area.
    let pending = (header.signals.pending_thread.iter().map(|i| (i, true)))
        .chain(header.signals.pending_process.iter().map(|i| (i, false)))
        .collect::<Vec<_>>();
    for group in pending.chunks(SIGNALS_PER_BATCH) {
        let mut batch = injector.batch();
        for (info, thread) in group {
            requeue_signal(pid, info, *thread, &mut batch)?;
        }
        injector.run_batch_checked(&batch)?;
    }
    set_rlimits(injector, &header.rlimits)?;
    ptrace::set_xstate(pid, &header.xstate)?;
    Ok(())
}

/// Sets resource limits from inside the process, in one batch unless one
/// is refused: raising a hard limit needs CAP_SYS_RESOURCE, and without
/// it that limit is kept as close as the process's hard limit allows.
fn set_rlimits(injector: &Injector, rlimits: &[(u64, u64)]) -> Result<(), RestoreError> {
    let mut next = 0;
    while next < rlimits.len() {
        let mut batch = injector.batch();
        for (resource, (soft, hard)) in rlimits.iter().enumerate().skip(next) {
            let mut limit = soft.to_ne_bytes().to_vec();
            limit.extend_from_slice(&hard.to_ne_bytes());
            let at = batch.stage(&limit);
            batch.call(
                "prlimit64",
                libc::SYS_prlimit64,
                &[0, resource as u64, at, 0],
            );
        }
        let results = injector.run_batch(&batch)?;
        let ran = results.len();
        match results.last() {
            Some(&e) if e == -(libc::EPERM as i64) => {
                let resource = next + ran - 1;
                let (soft, _) = rlimits[resource];
                lower_to_hard_limit(injector, resource as u64, soft)?;
            }
            Some(&e) if (-4095..0).contains(&e) => {
                return Err(RestoreError::Inject(InjectError::CallFailed {
                    name: "prlimit64",
                    error: io::Error::from_raw_os_error(-e as i32),
                }));
            }
            _ => {}
        }
        next += ran.max(1);
    }
    Ok(())
}

/// Sets the soft limit of `resource` to `soft`, or to the process's hard
/// limit if that is lower.
fn lower_to_hard_limit(injector: &Injector, resource: u64, soft: u64) -> Result<(), RestoreError> {
    let scratch = injector.parasite.scratch;
    injector.call_checked(
        "prlimit64",
        libc::SYS_prlimit64,
        &[0, resource, 0, scratch + 16],
    )?;
    let current_hard = u64::from_ne_bytes(injector.get(24, 8)?.try_into().expect("8 bytes"));
    let mut limit = soft.min(current_hard).to_ne_bytes().to_vec();
    limit.extend_from_slice(&current_hard.to_ne_bytes());
    injector.put(0, &limit)?;
    injector.call_checked("prlimit64", libc::SYS_prlimit64, &[0, resource, scratch, 0])?;
    Ok(())
}

/// Removes the parasite and leaves the tracee stopped with the image's
/// registers and signal mask, ready to be resumed or detached.
pub fn set_final_state(injector: Injector, header: &ImageHeader) -> Result<(), RestoreError> {
    let pid = injector.pid();
    let regs = final_regs(&injector, header)?;
    injector.remove_parasite()?;
    ptrace::set_regs(pid, &regs)?;
    ptrace::set_sigmask(pid, header.signals.mask)?;
    Ok(())
}

/// The registers to resume with: the image's, moved out of an rseq
/// critical section if the process was stopped in one (as the kernel does
/// on preemption).
pub fn final_regs(injector: &Injector, header: &ImageHeader) -> Result<Regs, RestoreError> {
    let regs = ptrace::regs_from_bytes(&header.regs)
        .ok_or_else(|| RestoreError::Malformed("registers of the wrong size".into()))?;
    match header.rseq {
        Some(rseq) => outside_rseq_critical_section(injector, rseq.address, regs),
        None => Ok(regs),
    }
}

fn outside_rseq_critical_section(
    injector: &Injector,
    rseq: u64,
    mut regs: Regs,
) -> Result<Regs, RestoreError> {
    // struct rseq: cpu_id_start u32, cpu_id u32, rseq_cs u64, ...
    let critical = injector.memory.read_u64(rseq + 8)?;
    if critical == 0 {
        return Ok(regs);
    }
    // struct rseq_cs: version u32, flags u32, start_ip, post_commit_offset, abort_ip.
    let cs = injector.memory.read_vec(critical, 32)?;
    let word = |at: usize| u64::from_ne_bytes(cs[at..at + 8].try_into().expect("8 bytes"));
    let (start, length, abort) = (word(8), word(16), word(24));
    if regs.rip >= start && regs.rip < start.saturating_add(length) {
        regs.rip = abort;
    }
    Ok(regs)
}

fn requeue_signal(
    pid: i32,
    info: &[u8],
    thread: bool,
    batch: &mut Batch,
) -> Result<(), RestoreError> {
    if info.len() != 128 {
        return Err(RestoreError::Malformed(
            "a pending signal of the wrong size".into(),
        ));
    }
    let signal = u64::from(u32::from_ne_bytes(info[0..4].try_into().expect("4 bytes")));
    let pid = pid as u64;
    let at = batch.stage(info);
    // The process queues it to itself, which may use any si_code.
    if thread {
        batch.call(
            "rt_tgsigqueueinfo",
            libc::SYS_rt_tgsigqueueinfo,
            &[pid, pid, signal, at],
        );
    } else {
        batch.call(
            "rt_sigqueueinfo",
            libc::SYS_rt_sigqueueinfo,
            &[pid, signal, at],
        );
    }
    Ok(())
}

fn set_memory_layout(header: &ImageHeader, batch: &mut Batch) {
    let layout = &header.layout;
    let auxv: Vec<u8> = layout.auxv.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let auxv_at = batch.stage(&auxv);
    let mut map = Vec::with_capacity(104);
    for value in [
        layout.start_code,
        layout.end_code,
        layout.start_data,
        layout.end_data,
        layout.start_brk,
        layout.brk,
        layout.start_stack,
        layout.arg_start,
        layout.arg_end,
        layout.env_start,
        layout.env_end,
        auxv_at,
    ] {
        map.extend_from_slice(&value.to_ne_bytes());
    }
    map.extend_from_slice(&(auxv.len() as u32).to_ne_bytes());
    // exe_fd = -1: leave /proc/PID/exe alone.
    map.extend_from_slice(&u32::MAX.to_ne_bytes());
    let at = batch.stage(&map);
    batch.call(
        "prctl",
        libc::SYS_prctl,
        &[PR_SET_MM, PR_SET_MM_MAP, at, map.len() as u64, 0],
    );
}

/// Frees the deputy's user memory once its process runs elsewhere: only
/// the parasite and the kernel's special mappings stay.
pub fn release_memory(injector: &Injector, header: &ImageHeader) -> Result<(), RestoreError> {
    let pid = injector.pid();
    let mut batch = injector.batch();
    if let Some(rseq) = header.rseq {
        // The kernel writes to a registered rseq area on every preemption:
        // unregister it before its memory goes.
        batch.call(
            "rseq",
            libc::SYS_rseq,
            &[
                rseq.address,
                u64::from(rseq.length),
                RSEQ_FLAG_UNREGISTER,
                u64::from(rseq.signature),
            ],
        );
    }
    for area in maps::read_maps(pid)? {
        if area.is_vsyscall()
            || area.is_vdso_family()
            || injector.parasite.overlaps(area.start, area.end)
        {
            continue;
        }
        batch.call("munmap", libc::SYS_munmap, &[area.start, area.len()]);
    }
    injector.run_batch_checked(&batch)?;
    Ok(())
}
