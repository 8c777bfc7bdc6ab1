//! Capturing a running process and rebuilding it in another process on the
//! same machine: the mechanics of migration, without the network.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use omx_migrate::capture::{self, read_run};
use omx_migrate::inject::Injector;
use omx_migrate::restore::{self, Target};
use omx_migrate::sys::ptrace::{self, Stop};

fn stop(pid: i32) {
    ptrace::seize(pid, ptrace::OPTION_EXITKILL).unwrap();
    ptrace::interrupt(pid).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), Stop::Interrupt);
}

/// Moves the user context of `from` into `into` (both stopped tracees) and
/// lets `into` run; `from` is killed.
fn transplant(from: i32, into: i32) -> usize {
    let regs = ptrace::get_regs(from).unwrap();
    let mut source = Injector::bootstrap(from, &[]).unwrap();
    let captured = capture::capture(&mut source, regs).unwrap();
    restore::check_compatibility(&captured.header, &capture::local_compatibility().unwrap())
        .unwrap();
    let pages: Vec<(u64, Vec<u8>)> = captured
        .runs
        .iter()
        .map(|(address, len)| {
            let mut bytes = vec![0u8; *len as usize];
            read_run(&source.memory, *address, &mut bytes);
            (*address, bytes)
        })
        .collect();
    // SAFETY-free: kill takes two integers.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(from),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let mut target = Injector::bootstrap(into, &restore::area_ranges(&captured.header)).unwrap();
    let sink = restore::prepare(&mut target, &captured.header, Target::Fresh).unwrap();
    for (address, bytes) in &pages {
        sink.write(&target.memory, *address, bytes).unwrap();
    }
    drop(sink);
    restore::finish(&target, &captured.header, Target::Fresh).unwrap();
    restore::set_final_state(target, &captured.header).unwrap();
    ptrace::detach(into, 0).unwrap();
    captured.header.areas.len()
}

#[test]
fn a_shell_loop_continues_in_another_process() {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let writer: OwnedFd = writer.into();
    let mut original = Command::new("sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; echo done $i; exit 7",
        ])
        .stdout(Stdio::from(writer.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let mut vessel = Command::new("sleep")
        .arg("1000")
        .stdout(Stdio::from(writer))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let (from, into) = (original.id() as i32, vessel.id() as i32);
    stop(from);
    stop(into);
    let areas = transplant(from, into);
    assert!(areas > 5);
    let _ = original.wait();
    let status = vessel.wait().unwrap();
    let mut output = String::new();
    reader.read_to_string(&mut output).unwrap();
    assert_eq!(output, "done 400000\n");
    assert_eq!(status.code(), Some(7), "the exit status is the program's");
}
