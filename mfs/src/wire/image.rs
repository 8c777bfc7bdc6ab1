//! A process image: what migration carries from one node to another.
//!
//! Everything the user context of a single-threaded process needs to run
//! again elsewhere: registers, memory areas and the contents of their
//! pages, signal state, and the small per-process kernel settings that
//! user space cannot see change (rseq, robust futex list, clear-tid
//! address, personality, resource limits). Page contents follow the header
//! as separate messages.

use rkyv::{Archive, Deserialize, Serialize};

/// Bumped whenever the image's meaning changes.
pub const IMAGE_FORMAT: u32 = 1;

/// Everything but the pages.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ImageHeader {
    pub format: u32,
    pub compatibility: Compatibility,
    /// The kernel's `user_regs_struct`, as bytes.
    pub regs: Vec<u8>,
    /// The XSAVE area (FPU, SSE, AVX, ...).
    pub xstate: Vec<u8>,
    pub areas: Vec<MemoryArea>,
    pub layout: MemoryLayout,
    pub signals: SignalState,
    pub rseq: Option<Rseq>,
    pub robust_list: RobustList,
    pub clear_child_tid: u64,
    pub personality: u32,
    /// `(soft, hard)` for each resource, in resource-number order.
    pub rlimits: Vec<(u64, u64)>,
    pub command: String,
    /// How many bytes of pages follow the header.
    pub page_bytes: u64,
}

/// What must be identical between the two nodes for an image to run.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Compatibility {
    /// `uname -r`: the vDSO and its data pages belong to one kernel build.
    pub kernel_release: String,
    /// A hash of the vDSO's code.
    pub vdso_hash: u64,
    /// XCR0: the CPU state components in the XSAVE area.
    pub xsave_features: u64,
    pub xsave_size: u32,
}

/// One memory area (a line of /proc/PID/maps).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MemoryArea {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub execute: bool,
    pub kind: AreaKind,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AreaKind {
    /// Private memory: anonymous, or a private copy of a file (whose
    /// unmodified pages are sent as well, since the file is at home).
    Private {
        file: Option<String>,
    },
    Heap,
    Stack,
    /// A kernel special mapping (`[vdso]`, `[vvar]`, `[vvar_vclock]`): not
    /// copied, moved into place on the target.
    Special {
        name: String,
    },
}

/// The mm fields prctl(PR_SET_MM_MAP) restores, and the auxiliary vector.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryLayout {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: Vec<u64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SignalState {
    /// Blocked signals.
    pub mask: u64,
    /// `struct sigaction` (kernel layout) for signals 1..=64, as bytes.
    pub actions: Vec<Vec<u8>>,
    /// Pending siginfos: the thread's own queue, then the process's.
    pub pending_thread: Vec<Vec<u8>>,
    pub pending_process: Vec<Vec<u8>>,
    pub altstack: AltStack,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rseq {
    pub address: u64,
    pub length: u32,
    pub signature: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RobustList {
    pub head: u64,
    pub length: u64,
}
