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
use crate::inject::{InjectError, Injector};
use crate::maps::{self, PAGE_SIZE};
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
        injector: &Injector,
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
        Ok(injector.memory.write(address, bytes)?)
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

/// Empties the tracee's address space (a fresh process) and maps the
/// image's areas, ready for their pages.
pub fn prepare(
    injector: &mut Injector,
    header: &ImageHeader,
    target: Target,
) -> Result<PageSink, RestoreError> {
    let pid = injector.pid();
    if target == Target::Fresh {
        let own_rseq = ptrace::rseq_configuration(pid)?;
        if own_rseq.rseq_abi_pointer != 0 {
            injector.call_checked(
                "rseq",
                libc::SYS_rseq,
                &[
                    own_rseq.rseq_abi_pointer,
                    u64::from(own_rseq.rseq_abi_size),
                    RSEQ_FLAG_UNREGISTER,
                    u64::from(own_rseq.signature),
                ],
            )?;
        }
        for area in maps::read_maps(pid)? {
            if area.is_vsyscall()
                || area.is_vdso_family()
                || injector.parasite.overlaps(area.start, area.end)
            {
                continue;
            }
            injector.call_checked("munmap", libc::SYS_munmap, &[area.start, area.len()])?;
        }
        move_specials(injector, header)?;
    } else if header
        .areas
        .iter()
        .any(|a| injector.parasite.overlaps(a.start, a.end))
    {
        relocate_parasite(injector, header)?;
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
            injector.call_checked("brk", libc::SYS_brk, &[header.layout.brk])?;
        }
        let got = injector.call_checked(
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
        )? as u64;
        if got != area.start {
            return Err(RestoreError::Malformed(format!(
                "memory area {:#x} was placed at {got:#x}",
                area.start
            )));
        }
    }
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

/// Moves the tracee's vDSO, vvar and vvar_vclock to where the image had
/// them, through a free range first in case the two layouts overlap.
fn move_specials(injector: &Injector, header: &ImageHeader) -> Result<(), RestoreError> {
    let pid = injector.pid();
    let own: Vec<_> = maps::read_maps(pid)?
        .into_iter()
        .filter(|a| a.is_vdso_family())
        .collect();
    let wanted: Vec<_> = header
        .areas
        .iter()
        .filter_map(|a| match &a.kind {
            AreaKind::Special { name } => Some((name.clone(), a.start, a.end)),
            _ => None,
        })
        .collect();
    let mut taken: Vec<(u64, u64)> = maps::read_maps(pid)?
        .iter()
        .map(|a| (a.start, a.end))
        .collect();
    taken.extend(area_ranges(header));
    let mut staged = Vec::new();
    for (name, start, end) in &wanted {
        let mine = own.iter().find(|a| &a.path == name).ok_or_else(|| {
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
        remap(injector, mine.start, mine.len(), hole)?;
        staged.push((hole, mine.len(), *start));
    }
    for (from, len, to) in staged {
        remap(injector, from, len, to)?;
    }
    Ok(())
}

fn remap(injector: &Injector, from: u64, len: u64, to: u64) -> Result<(), RestoreError> {
    let got = injector.call_checked(
        "mremap",
        libc::SYS_mremap,
        &[from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to],
    )? as u64;
    if got != to {
        return Err(RestoreError::Malformed(format!(
            "mremap to {to:#x} went to {got:#x}"
        )));
    }
    Ok(())
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
    if target == Target::Fresh {
        set_memory_layout(injector, header)?;
    }
    let scratch = injector.parasite.scratch;
    for (index, action) in header.signals.actions.iter().enumerate() {
        let signal = index as u64 + 1;
        if signal == libc::SIGKILL as u64 || signal == libc::SIGSTOP as u64 {
            continue;
        }
        injector.put(0, action)?;
        injector.call_checked(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            &[signal, scratch, 0, 8],
        )?;
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
    injector.put(0, &stack)?;
    injector.call_checked("sigaltstack", libc::SYS_sigaltstack, &[scratch, 0])?;

    let robust = header.robust_list;
    if robust.head != 0 {
        injector.call_checked(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[robust.head, robust.length],
        )?;
    }
    injector.call(libc::SYS_set_tid_address, &[header.clear_child_tid])?;
    injector.call_checked(
        "personality",
        libc::SYS_personality,
        &[u64::from(header.personality)],
    )?;
    let mut name = header.command.as_bytes()[..header.command.len().min(15)].to_vec();
    name.push(0);
    injector.put(0, &name)?;
    injector.call_checked("prctl", libc::SYS_prctl, &[PR_SET_NAME, scratch])?;
    for (resource, (soft, hard)) in header.rlimits.iter().enumerate() {
        set_rlimit(injector, resource as u64, *soft, *hard)?;
    }
    if let Some(rseq) = header.rseq {
        injector.call_checked(
            "rseq",
            libc::SYS_rseq,
            &[
                rseq.address,
                u64::from(rseq.length),
                0,
                u64::from(rseq.signature),
            ],
        )?;
    }
    for info in &header.signals.pending_thread {
        requeue_signal(injector, info, true)?;
    }
    for info in &header.signals.pending_process {
        requeue_signal(injector, info, false)?;
    }
    ptrace::set_xstate(pid, &header.xstate)?;
    Ok(())
}

/// Sets a resource limit from inside the process. Raising a hard limit
/// needs CAP_SYS_RESOURCE; without it, the limit is kept as close as the
/// process's current hard limit allows.
fn set_rlimit(
    injector: &Injector,
    resource: u64,
    soft: u64,
    hard: u64,
) -> Result<(), RestoreError> {
    let scratch = injector.parasite.scratch;
    let mut limit = soft.to_ne_bytes().to_vec();
    limit.extend_from_slice(&hard.to_ne_bytes());
    injector.put(0, &limit)?;
    if injector.call(libc::SYS_prlimit64, &[0, resource, scratch, 0])? == -(libc::EPERM as i64) {
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
    }
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

fn requeue_signal(injector: &Injector, info: &[u8], thread: bool) -> Result<(), RestoreError> {
    if info.len() != 128 {
        return Err(RestoreError::Malformed(
            "a pending signal of the wrong size".into(),
        ));
    }
    let signal = u64::from(u32::from_ne_bytes(info[0..4].try_into().expect("4 bytes")));
    let pid = injector.pid() as u64;
    let at = injector.put(0, info)?;
    // The process queues it to itself, which may use any si_code.
    if thread {
        injector.call_checked(
            "rt_tgsigqueueinfo",
            libc::SYS_rt_tgsigqueueinfo,
            &[pid, pid, signal, at],
        )?;
    } else {
        injector.call_checked(
            "rt_sigqueueinfo",
            libc::SYS_rt_sigqueueinfo,
            &[pid, signal, at],
        )?;
    }
    Ok(())
}

fn set_memory_layout(injector: &Injector, header: &ImageHeader) -> Result<(), RestoreError> {
    let layout = &header.layout;
    let auxv: Vec<u8> = layout.auxv.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let auxv_at = injector.put(128, &auxv)?;
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
    let at = injector.put(0, &map)?;
    injector.call_checked(
        "prctl",
        libc::SYS_prctl,
        &[PR_SET_MM, PR_SET_MM_MAP, at, map.len() as u64, 0],
    )?;
    Ok(())
}

/// Frees the deputy's user memory once its process runs elsewhere: only
/// the parasite and the kernel's special mappings stay.
pub fn release_memory(injector: &Injector, header: &ImageHeader) -> Result<(), RestoreError> {
    let pid = injector.pid();
    if let Some(rseq) = header.rseq {
        // The kernel writes to a registered rseq area on every preemption:
        // unregister it before its memory goes.
        injector.call_checked(
            "rseq",
            libc::SYS_rseq,
            &[
                rseq.address,
                u64::from(rseq.length),
                RSEQ_FLAG_UNREGISTER,
                u64::from(rseq.signature),
            ],
        )?;
    }
    for area in maps::read_maps(pid)? {
        if area.is_vsyscall()
            || area.is_vdso_family()
            || injector.parasite.overlaps(area.start, area.end)
        {
            continue;
        }
        injector.call_checked("munmap", libc::SYS_munmap, &[area.start, area.len()])?;
    }
    Ok(())
}
