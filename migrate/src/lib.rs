//! omx-migrate: preemptive process migration.
//!
//! A process migrates in two parts. Its *remote* (memory, registers, signal
//! state: everything the user context needs) is captured, sent to another
//! node and rebuilt there in a fresh process. Its *deputy* stays at home as
//! the original process, keeping its pid, file descriptors, cwd,
//! credentials and family, with its user memory released. The remote's
//! site-dependent system calls are intercepted (seccomp user notification)
//! and run by the deputy (ptrace injection), so the process keeps seeing
//! its home.
//!
//! Only this crate uses ptrace; all its unsafe code is in [`sys`].

pub mod sys;

pub mod capture;
pub mod constraints;
pub mod image;
pub mod inject;
pub mod keeper;
pub mod maps;
pub mod restore;
pub mod syscalls;
pub mod usage;
