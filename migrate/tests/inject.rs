//! Injecting system calls into a real, stopped process.

use std::process::{Command, Stdio};

use omx_migrate::inject::{Injector, Outcome};
use omx_migrate::maps;
use omx_migrate::sys::ptrace::{self, Stop};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sleeping child, seized and stopped.
fn stopped_child() -> Child {
    let child = Command::new("sleep")
        .arg("100")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    ptrace::seize(pid, ptrace::OPTION_EXITKILL).unwrap();
    ptrace::interrupt(pid).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), Stop::Interrupt);
    Child(child)
}

#[test]
fn injected_calls_run_in_the_tracee_and_leave_it_intact() {
    let child = stopped_child();
    let pid = child.0.id() as i32;
    let before = ptrace::get_regs(pid).unwrap();
    let mask_before = ptrace::get_sigmask(pid).unwrap();
    let mut injector = Injector::bootstrap(pid, &[]).unwrap();
    assert_eq!(injector.call(libc::SYS_getpid, &[]).unwrap(), pid as i64);

    // Memory arguments go through the scratch area.
    let path = injector.put(0, b"/proc/self/comm\0").unwrap();
    let fd = injector
        .call_checked(
            "openat",
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, path, 0, 0],
        )
        .unwrap();
    let n = injector
        .call_checked(
            "read",
            libc::SYS_read,
            &[fd as u64, injector.parasite.scratch + 64, 64],
        )
        .unwrap();
    assert_eq!(injector.get(64, n as usize).unwrap(), b"sleep\n");
    injector
        .call_checked("close", libc::SYS_close, &[fd as u64])
        .unwrap();

    // The scratch area grows and keeps working.
    injector.ensure_scratch(1 << 20).unwrap();
    let far = injector.put((1 << 20) - 8, &7u64.to_ne_bytes()).unwrap();
    assert_eq!(injector.memory.read_u64(far).unwrap(), 7);

    // Failing calls report the errno.
    assert_eq!(
        injector.call(libc::SYS_close, &[9999]).unwrap(),
        -libc::EBADF as i64
    );

    // The parasite is where maps say, and away from everything else.
    let areas = maps::read_maps(pid).unwrap();
    assert!(
        areas
            .iter()
            .any(|a| a.start == injector.parasite.code && a.execute)
    );

    injector.remove_parasite().unwrap();
    let areas = maps::read_maps(pid).unwrap();
    assert!(
        !areas.iter().any(|a| a.start == before.rip),
        "no stray mappings"
    );
    let after = ptrace::get_regs(pid).unwrap();
    assert_eq!(
        (after.rip, after.rsp, after.rax),
        (before.rip, before.rsp, before.rax)
    );
    assert_eq!(ptrace::get_sigmask(pid).unwrap(), mask_before);
    ptrace::detach(pid, 0).unwrap();
}

#[test]
fn a_signal_interrupts_an_injected_blocking_call() {
    let child = stopped_child();
    let pid = child.0.id() as i32;
    let injector = Injector::bootstrap(pid, &[]).unwrap();
    let base = ptrace::get_regs(pid).unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        // SAFETY: kill takes two integers.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
    });
    // pause() blocks until a signal.
    let outcome = injector.run(libc::SYS_pause, &[], &base).unwrap();
    assert_eq!(outcome, Outcome::Signal(libc::SIGUSR1));
    let regs = ptrace::get_regs(pid).unwrap();
    assert_eq!(regs.rax as i64, -514, "pause reports -ERESTARTNOHAND");
    injector.abandon_interrupted(-(libc::EINTR as i64)).unwrap();
    let regs = ptrace::get_regs(pid).unwrap();
    assert_eq!(regs.rax as i64, -(libc::EINTR as i64));
}

#[test]
fn a_stop_between_a_finished_call_and_its_trap_keeps_the_result() {
    let child = stopped_child();
    let pid = child.0.id() as i32;
    let injector = Injector::bootstrap(pid, &[]).unwrap();
    let base = ptrace::get_regs(pid).unwrap();
    // A call that raises a signal against itself stops at the signal on
    // its way back to user space: after the call, before the trap, as a
    // read would if a signal or an interrupt came in just as it returned.
    let outcome = injector
        .run(libc::SYS_kill, &[pid as u64, libc::SIGUSR1 as u64], &base)
        .unwrap();
    assert_eq!(outcome, Outcome::Signal(libc::SIGUSR1));
    assert_eq!(injector.completed_result().unwrap(), Some(0));

    // An interrupted call did nothing: no result to keep.
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        // SAFETY: kill takes two integers.
        unsafe { libc::kill(pid, libc::SIGUSR2) };
    });
    let outcome = injector.run(libc::SYS_pause, &[], &base).unwrap();
    assert_eq!(outcome, Outcome::Signal(libc::SIGUSR2));
    assert_eq!(injector.completed_result().unwrap(), None);
}

#[test]
fn a_batch_runs_its_calls_in_one_go_and_stops_at_the_first_failure() {
    let child = stopped_child();
    let pid = child.0.id() as i32;
    let before = ptrace::get_regs(pid).unwrap();
    let mask_before = ptrace::get_sigmask(pid).unwrap();
    let injector = Injector::bootstrap(pid, &[]).unwrap();

    // Calls see their staged data, and write into their room.
    let mut batch = injector.batch();
    let path = batch.stage(b"/proc/self/comm\0");
    let into = batch.room(64);
    batch.call("getpid", libc::SYS_getpid, &[]);
    batch.call(
        "openat",
        libc::SYS_openat,
        &[libc::AT_FDCWD as u64, path, 0, 0],
    );
    let results = injector.run_batch_checked(&batch).unwrap();
    assert_eq!(results[0], pid as i64);
    let fd = results[1] as u64;
    let mut batch = injector.batch();
    let _ = batch.stage(b"/proc/self/comm\0");
    let into_again = batch.room(64);
    assert_eq!(into_again, into, "a batch's layout is deterministic");
    batch.call("read", libc::SYS_read, &[fd, into, 64]);
    batch.call("close", libc::SYS_close, &[fd]);
    let results = injector.run_batch_checked(&batch).unwrap();
    assert_eq!(results, vec![6, 0]);
    assert_eq!(injector.memory.read_vec(into, 6).unwrap(), b"sleep\n");

    // It stops at the first failure, which names the call.
    let mut batch = injector.batch();
    batch.call("getpid", libc::SYS_getpid, &[]);
    batch.call("close", libc::SYS_close, &[9999]);
    batch.call("kill", libc::SYS_kill, &[pid as u64, libc::SIGKILL as u64]);
    let results = injector.run_batch(&batch).unwrap();
    assert_eq!(results, vec![pid as i64, -libc::EBADF as i64]);
    let error = injector.run_batch_checked(&batch).unwrap_err().to_string();
    assert!(error.contains("close"), "{error}");

    // More calls than one table holds go in several.
    let mut batch = injector.batch();
    for _ in 0..5000 {
        batch.call("getppid", libc::SYS_getppid, &[]);
    }
    let results = injector.run_batch_checked(&batch).unwrap();
    assert_eq!(results.len(), 5000);
    assert!(results.iter().all(|r| *r == std::process::id() as i64));

    injector.remove_parasite().unwrap();
    let after = ptrace::get_regs(pid).unwrap();
    assert_eq!(
        (after.rip, after.rsp, after.rax, after.rbx),
        (before.rip, before.rsp, before.rax, before.rbx)
    );
    assert_eq!(ptrace::get_sigmask(pid).unwrap(), mask_before);
    ptrace::detach(pid, 0).unwrap();
}
