//! Filling another process's empty memory, the last step of a migration:
//! through /proc/PID/mem, through userfaultfd (UFFDIO_COPY), and through
//! /proc/PID/mem after the process pre-faulted the area
//! (MADV_POPULATE_WRITE); against filling fresh memory in-process.
//!
//! `cargo run --release -p omx-bench --bin page-fill [-- --mib 512]`

use std::process::{Command, Stdio};
use std::time::Instant;

use clap::Parser;
use omx_migrate::inject::Injector;
use omx_migrate::sys::ptrace::{self, Stop};
use omx_migrate::sys::seccomp::{pidfd_getfd, pidfd_open};
use omx_migrate::sys::uffd::{PageFiller, UFFD_USER_MODE_ONLY};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 512)]
    mib: u64,
}

const RUN: usize = 1 << 20;
const MADV_POPULATE_WRITE: u64 = 23;

/// A stopped child with an empty anonymous area of `len` bytes.
fn child_with_area(len: u64) -> (std::process::Child, Injector, u64) {
    let child = Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    ptrace::seize(pid, ptrace::OPTION_EXITKILL).unwrap();
    ptrace::interrupt(pid).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), Stop::Interrupt);
    let injector = Injector::bootstrap(pid, &[]).unwrap();
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let area = injector
        .call_checked("mmap", libc::SYS_mmap, &[0, len, prot, flags, u64::MAX, 0])
        .unwrap() as u64;
    (child, injector, area)
}

fn main() {
    let args = Args::parse();
    let len = args.mib << 20;
    let buffer = vec![7u8; RUN];
    let rate = |secs: f64| args.mib as f64 / secs;

    // In-process first touch: the cost of new memory on this machine.
    let started = Instant::now();
    let mut own = Vec::<u8>::with_capacity(len as usize);
    for _ in 0..args.mib {
        own.extend_from_slice(&buffer);
    }
    let native = started.elapsed().as_secs_f64();
    drop(own);

    let (mut child, injector, area) = child_with_area(len);
    let started = Instant::now();
    for i in 0..args.mib {
        injector
            .memory
            .write(area + i * RUN as u64, &buffer)
            .unwrap();
    }
    let proc_mem = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();

    let (mut child, injector, area) = child_with_area(len);
    let started = Instant::now();
    let fd = injector
        .call_checked(
            "userfaultfd",
            libc::SYS_userfaultfd,
            &[libc::O_CLOEXEC as u64 | UFFD_USER_MODE_ONLY],
        )
        .unwrap();
    let pidfd = pidfd_open(injector.pid()).unwrap();
    let mut filler =
        PageFiller::new(pidfd_getfd(std::os::fd::AsFd::as_fd(&pidfd), fd as i32).unwrap()).unwrap();
    filler.register(area, len).unwrap();
    for i in 0..args.mib {
        filler.copy(area + i * RUN as u64, &buffer).unwrap();
    }
    drop(filler);
    let uffd = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();

    let (mut child, injector, area) = child_with_area(len);
    let started = Instant::now();
    injector
        .call_checked(
            "madvise",
            libc::SYS_madvise,
            &[area, len, MADV_POPULATE_WRITE],
        )
        .unwrap();
    for i in 0..args.mib {
        injector
            .memory
            .write(area + i * RUN as u64, &buffer)
            .unwrap();
    }
    let populate = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "filling {} MiB of another process's new memory, 1 MiB at a time:",
        args.mib
    );
    println!(
        "  in-process first touch (reference): {native:.3} s  {:6.0} MiB/s",
        rate(native)
    );
    for (name, secs) in [
        ("/proc/PID/mem writes", proc_mem),
        ("userfaultfd UFFDIO_COPY", uffd),
        ("MADV_POPULATE_WRITE + /proc/PID/mem", populate),
    ] {
        println!(
            "  {name:36} {secs:.3} s  {:6.0} MiB/s  ratio {:.2}x reference",
            rate(secs),
            secs / native
        );
    }
}
