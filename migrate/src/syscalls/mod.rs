//! Every x86_64 system call, classified: where it runs when its process
//! runs away from home, and (for calls forwarded home) which of its
//! arguments point to memory, in which direction, and how much.
//!
//! The table is in [`table`]; `docs/syscalls.md` is generated from it.

pub mod marshal;
mod table;

pub use table::TABLE;

/// Where a call of a migrated process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// On the node where the process is: its effect is on the process's
    /// own memory, time, signals or scheduling.
    Local,
    /// Answered by the remote keeper without running anything (the home
    /// pid for getpid and gettid).
    Emulated,
    /// Run by the deputy at home, with these arguments carried both ways.
    Forward(&'static [Param]),
    /// Forwarded with handling of its own (the arguments depend on another
    /// argument's value, or point to structures with pointers inside).
    Special,
    /// The process is brought home, where the call runs natively.
    Home,
}

/// What one argument of a forwarded call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// A plain value (a number, a home fd, a flag).
    Value,
    /// A NUL-terminated string (a path): carried to the deputy.
    Path,
    /// A buffer the call reads.
    In(Len),
    /// A buffer the call fills.
    Out(Len),
    /// A buffer the call reads and updates.
    InOut(Len),
    /// A buffer the call fills with as many bytes as it returns
    /// (`read`), times the factor (`epoll_wait`: 12 bytes per event).
    OutReturned(Len, u32),
    /// An iovec array the call reads from; the count is in the argument.
    InVector(u8),
    /// An iovec array the call fills, as many bytes as it returns.
    OutVector(u8),
}

/// The size of a buffer argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Len {
    /// Given by another argument.
    Arg(u8),
    /// Fixed by the call's definition.
    Fixed(u32),
    /// Another argument times a size (`poll`: 8 bytes per pollfd).
    ArgTimes(u8, u32),
    /// The u32 another argument points to (`accept`'s address length).
    Deref(u8),
    /// An fd_set for the descriptors below another argument.
    FdSet(u8),
}

/// One call's entry in the table.
#[derive(Clone, Copy, Debug)]
pub struct Syscall {
    pub nr: i64,
    pub name: &'static str,
    pub class: Class,
    /// Why it runs where it does.
    pub reason: &'static str,
}

/// The entry for call `nr`; calls the table does not know run at home.
pub fn lookup(nr: i64) -> Syscall {
    match TABLE.binary_search_by_key(&nr, |s| s.nr) {
        Ok(index) => TABLE[index],
        Err(_) => Syscall {
            nr,
            name: "unknown",
            class: Class::Home,
            reason: "not a call this kernel table knows: it runs at home",
        },
    }
}

/// Forwarded calls that run where the process is when the descriptor they
/// name (their first argument) is one of its DFSA files, reopened there
/// (`keeper::dfsa`): its data, offset and status are the same on every
/// node. The filter lets them run in the kernel. `newfstatat` and `statx`
/// run there too, only with `AT_EMPTY_PATH` and an empty path, that is on
/// the descriptor itself ([`ON_DFSA_DESCRIPTOR_ITSELF`]): the filter cannot
/// read the path, so the keeper lets them continue.
pub const ON_DFSA_DESCRIPTOR: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fadvise64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
];

/// Path calls that run on a DFSA file when they name the descriptor itself.
pub const ON_DFSA_DESCRIPTOR_ITSELF: &[i64] = &[libc::SYS_newfstatat, libc::SYS_statx];

/// The filter's conditional rules: special calls that run locally when
/// their arguments say so (the same rules as [`marshal::route`]).
pub fn local_conditions() -> Vec<crate::sys::seccomp::Condition> {
    use crate::sys::seccomp::Condition;
    let mut conditions = vec![Condition::ArgHasBits {
        nr: libc::SYS_mmap,
        arg: 3,
        bits: libc::MAP_ANONYMOUS as u32,
    }];
    // Calls naming the process itself by pid 0. The keeper injects some of
    // them (prlimit64) while capturing, so they must not wait for it.
    for nr in [
        libc::SYS_prlimit64,
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_getaffinity,
        libc::SYS_sched_getparam,
        libc::SYS_sched_getscheduler,
        libc::SYS_sched_rr_get_interval,
        libc::SYS_sched_getattr,
    ] {
        conditions.push(Condition::ArgEquals {
            nr,
            arg: 0,
            value: 0,
        });
    }
    conditions
}

/// Calls that run locally, for the seccomp filter.
pub fn local_numbers() -> Vec<i64> {
    TABLE
        .iter()
        .filter(|s| s.class == Class::Local)
        .map(|s| s.nr)
        .collect()
}

/// The table as a Markdown document.
pub fn markdown() -> String {
    let mut out = String::from(
        "# System calls of a migrated process\n\n\
         Generated from `migrate/src/syscalls/table.rs` (`cargo run -p omx-tools -- __syscall-table`).\n\
         A test fails if this file and the table differ.\n\n\
         - **local**: runs on the node where the process is.\n\
         - **emulated**: answered on that node without running anything.\n\
         - **forward**: runs at home in the deputy, with the listed arguments carried both ways.\n\
         - **special**: forwarded, with handling of its own.\n\
         - **home**: the process is brought home and the call runs there natively.\n\n",
    );
    let dfsa: Vec<String> = ON_DFSA_DESCRIPTOR
        .iter()
        .chain(ON_DFSA_DESCRIPTOR_ITSELF)
        .map(|nr| format!("`{}`", lookup(*nr).name))
        .collect();
    out += &format!(
        "On a file the process has reopened where it runs (DFSA, `docs/migration.md`), \
         these forwarded calls run there: {} (`newfstatat` and `statx` on the descriptor \
         itself: `AT_EMPTY_PATH` and an empty path). The filter lets all but those two run \
         in the kernel, without the keeper.\n\n",
        dfsa.join(", ")
    );
    out += "| nr | call | class | arguments | why |\n|---:|---|---|---|---|\n";
    for s in TABLE {
        let (class, params) = match s.class {
            Class::Local => ("local", String::new()),
            Class::Emulated => ("emulated", String::new()),
            Class::Forward(params) => (
                "forward",
                params.iter().map(describe).collect::<Vec<_>>().join(", "),
            ),
            Class::Special => ("special", String::new()),
            Class::Home => ("home", String::new()),
        };
        out += &format!(
            "| {} | `{}` | {} | {} | {} |\n",
            s.nr, s.name, class, params, s.reason
        );
    }
    out
}

fn describe(param: &Param) -> String {
    let len = |l: &Len| match l {
        Len::Arg(a) => format!("arg{a}"),
        Len::Fixed(n) => format!("{n}"),
        Len::ArgTimes(a, n) => format!("arg{a}x{n}"),
        Len::Deref(a) => format!("*arg{a}"),
        Len::FdSet(a) => format!("fdset(arg{a})"),
    };
    match param {
        Param::Value => "val".into(),
        Param::Path => "path".into(),
        Param::In(l) => format!("in[{}]", len(l)),
        Param::Out(l) => format!("out[{}]", len(l)),
        Param::InOut(l) => format!("inout[{}]", len(l)),
        Param::OutReturned(l, 1) => format!("out[ret<={}]", len(l)),
        Param::OutReturned(l, n) => format!("out[ret x{n}<={}]", len(l)),
        Param::InVector(a) => format!("in-iovec[arg{a}]"),
        Param::OutVector(a) => format!("out-iovec[arg{a}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_complete() {
        assert!(
            TABLE.windows(2).all(|w| w[0].nr < w[1].nr),
            "sorted, no duplicates"
        );
        assert!(TABLE.len() >= 370);
        for s in TABLE {
            assert!(!s.reason.is_empty(), "{} has no reason", s.name);
            if let Class::Forward(params) = s.class {
                assert!(params.len() <= 6, "{}", s.name);
            }
        }
        assert_eq!(lookup(0).name, "read");
        assert_eq!(lookup(39).class, Class::Emulated);
        assert_eq!(lookup(57).class, Class::Home, "fork");
        assert_eq!(lookup(9999).class, Class::Home);
    }

    #[test]
    fn docs_match_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/syscalls.md");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == markdown(),
            "docs/syscalls.md is out of date: run `cargo run -p omx-tools -- __syscall-table > docs/syscalls.md`"
        );
    }
}
