//! The home keeper: sends a process away, then keeps its deputy.
//!
//! The deputy is the original process, with its pid, descriptors, cwd,
//! credentials and family, and with its user memory released. While the
//! process runs elsewhere the deputy waits in an injected `pause()`; every
//! signal sent to the home pid stops it there, and the keeper forwards the
//! signal to the remote. Forwarded calls run in the deputy by injection.
//! When the remote ends, the deputy ends the same way, so the parent sees
//! the exit status or the signal it would have seen.

use std::net::{IpAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use omx_mfs::NodeId;
use omx_mfs::transport::Identity;
use omx_mfs::wire::image::ImageHeader;
use omx_mfs::wire::link::{
    CallResult, DfsaList, ForwardedCall, KeeperCommand, KeeperReport, LinkMessage, LinkRequest,
    MoveStats,
};
use tracing::{info, warn};

use super::dfsa;
use super::spin::Spinner;
use super::{
    DaemonChannel, KeeperError, Link, Waiter, accept_link, name_of, open_link, receive_header,
    receive_image_into, send_image,
};
use crate::capture;
use crate::constraints;
use crate::inject::{Injector, Outcome};
use crate::restore::{self, Target};
use crate::sys;
use crate::sys::ptrace::{self, Regs, Stop};
use crate::sys::seccomp;
use crate::syscalls::marshal::{self, Staged};

/// Where a process is sent.
#[derive(Clone, Debug)]
pub struct Destination {
    pub node: NodeId,
    pub address: IpAddr,
    pub port: u16,
}

pub struct HomeArgs {
    pub pid: i32,
    /// Names this migration episode (see `LinkRequest`).
    pub session: u64,
    /// This (home) node.
    pub identity: Identity,
    pub destination: Destination,
    /// How long to busy-wait for the next forwarded call after answering
    /// one, before sleeping (see [`super::spin`]).
    pub spin: std::time::Duration,
    /// The root of what this node exports as `/mfs/<this node>`: the
    /// process's files beneath it are reopened where it runs (DFSA).
    pub export: PathBuf,
    /// Where MFS is mounted here.
    pub mfs: PathBuf,
    /// The first move was asked by the placement engine (see
    /// `LinkRequest::Immigrate`).
    pub from_placement: bool,
}

/// Whether `pid`'s process group is orphaned: no member has a parent in
/// another group of the same session (POSIX), read from /proc.
fn orphaned_group(pid: i32) -> bool {
    let ids = |pid: i32| -> Option<(i32, i32, i32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<i32> = stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .skip(1)
            .take(3)
            .filter_map(|f| f.parse().ok())
            .collect();
        // ppid, pgrp, session
        Some((*fields.first()?, *fields.get(1)?, *fields.get(2)?))
    };
    let Some((_, group, session)) = ids(pid) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in entries.flatten() {
        let Some(member) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Some((parent, member_group, _)) = ids(member) else {
            continue;
        };
        if member_group != group {
            continue;
        }
        if let Some((_, parent_group, parent_session)) = ids(parent)
            && parent_group != group
            && parent_session == session
        {
            return false;
        }
    }
    true
}

/// The state letter of /proc/PID/stat.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// What the deputy is doing.
enum Deputy {
    /// Waiting in `pause()` for signals or work.
    Idle,
    /// Being stopped (PTRACE_INTERRUPT) to do `Pending`.
    Interrupting(Pending),
    /// Running a forwarded call.
    Calling(Staged),
    /// Stopped by a signal in the middle of a forwarded call, waiting for
    /// the remote's verdict.
    AwaitingVerdict(Staged),
    /// In a job-control stop, mirroring the remote.
    Stopped,
    /// Being made to end as the remote ended.
    Ending,
}

impl Deputy {
    fn name(&self) -> &'static str {
        match self {
            Deputy::Idle => "idle",
            Deputy::Interrupting(_) => "interrupting",
            Deputy::Calling(_) => "calling",
            Deputy::AwaitingVerdict(_) => "awaiting a verdict",
            Deputy::Stopped => "stopped",
            Deputy::Ending => "ending",
        }
    }
}

enum Pending {
    Nothing,
    Call(ForwardedCall),
    Exit(i32),
    Die(i32),
}

struct Home {
    pid: i32,
    identity: Identity,
    injector: Injector,
    base: Regs,
    link: Link,
    node: NodeId,
    moves: u32,
    daemon: DaemonChannel,
    waiter: Waiter,
    deputy: Deputy,
    /// A stop signal we sent the deputy to mirror the remote's stop.
    mirrored_stop: Option<i32>,
    /// The signal we sent the deputy to end it as the remote ended.
    fatal: Option<i32>,
    /// The remote reported its end: the link closing is expected now.
    remote_ended: bool,
    /// What the remote's move to its successor cost, until the successor
    /// takes over.
    move_stats: Option<MoveStats>,
    /// The deputy's CPU affinity before we pinned it, to give back when
    /// the process comes home.
    affinity: Option<nix::sched::CpuSet>,
    spinner: Spinner,
    /// A call was just answered: the next may follow at once.
    answered_call: bool,
    /// A pidfd of the deputy, to set the offsets of its descriptors that
    /// the process moves where it runs (DFSA).
    pidfd: Option<OwnedFd>,
    /// This node's export root and MFS mount, to name the files the
    /// process opens while away (DFSA).
    export: PathBuf,
    mfs: PathBuf,
}

/// Runs a home keeper to the end; returns the process's exit code.
pub fn run(args: HomeArgs, daemon: UnixStream) -> i32 {
    let mut daemon = DaemonChannel::new(daemon);
    let waiter = match Waiter::new().and_then(|w| super::die_with_parent().map(|()| w)) {
        Ok(waiter) => waiter,
        Err(e) => {
            daemon.report(&KeeperReport::CannotMove {
                reason: format!("the keeper could not start: {e}"),
            });
            return 1;
        }
    };
    let pid = args.pid;
    match leave(&args) {
        Err(reason) => {
            info!("process {pid} stays home: {reason}");
            daemon.report(&KeeperReport::CannotMove { reason });
            0
        }
        Ok(Left {
            injector,
            mut link,
            header,
            stats,
            pidfd,
        }) => {
            info!(
                "process {pid} now runs on node {}: {} MiB sent, frozen {:.1} ms",
                args.destination.node,
                stats.bytes >> 20,
                stats.frozen_us as f64 / 1000.0
            );
            daemon.report(&KeeperReport::RunsOn {
                node: args.destination.node.get(),
                moves: 1,
                stats: Some(stats),
            });
            let base = match release_deputy(&injector, &header) {
                Ok(base) => base,
                Err(e) => {
                    // The process runs remotely with a half-released deputy:
                    // end both rather than leave two copies.
                    let _ = link.send(&LinkMessage::Kill);
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = ptrace::wait(pid);
                    let reason = format!("releasing its memory at home failed, it was ended: {e}");
                    warn!("process {pid}: {reason}");
                    daemon.report(&KeeperReport::Lost {
                        node: args.destination.node.get(),
                        reason,
                    });
                    return 1;
                }
            };
            let affinity = share_a_cpu(pid);
            let mut home = Home {
                export: args.export.clone(),
                mfs: args.mfs.clone(),
                affinity,
                spinner: Spinner::new(args.spin),
                answered_call: false,
                pid,
                identity: args.identity,
                injector,
                base,
                link,
                node: args.destination.node,
                moves: 1,
                daemon,
                waiter,
                deputy: Deputy::Idle,
                mirrored_stop: None,
                fatal: None,
                remote_ended: false,
                move_stats: None,
                pidfd,
            };
            home.serve()
        }
    }
}

/// Pins the keeper and the deputy to the CPU the keeper runs on, so the
/// deputy's stops and resumes (two per forwarded call) hand over between
/// two tasks of one CPU instead of waking another CPU each time. Returns
/// the deputy's own affinity, to give back when it comes home; `None` if
/// the system does not let us pin (calls are then slower, not wrong).
fn share_a_cpu(pid: i32) -> Option<nix::sched::CpuSet> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
    let deputy = nix::unistd::Pid::from_raw(pid);
    let original = sched_getaffinity(deputy).ok()?;
    let cpu = sched_getcpu().ok()?;
    let mut one = CpuSet::new();
    one.set(cpu).ok()?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).ok()?;
    sched_setaffinity(deputy, &one).ok()?;
    Some(original)
}

/// While it is frozen, the process runs at this keeper's priority.
///
/// Capturing it injects system calls that the process itself must run,
/// each waiting for its turn on the CPU: on a busy home node held to a
/// quota, at nice 0 among a dozen jobs, that made a 7 MiB capture take a
/// second. Frozen, it takes no CPU from the others but for those calls.
/// Its own nice value is given back when the move ends either way (the
/// deputy keeps it, and a process coming home finds it).
struct FreezeBoost {
    pid: i32,
    original: Option<i32>,
}

impl FreezeBoost {
    fn new(pid: i32) -> FreezeBoost {
        let own = sys::nice_of(nix::unistd::gettid().as_raw()).ok();
        let original = sys::nice_of(pid).ok();
        let boosted = match (own, original) {
            (Some(own), Some(original)) if own < original => {
                sys::set_nice_of(pid, own).is_ok().then_some(original)
            }
            _ => None,
        };
        FreezeBoost {
            pid,
            original: boosted,
        }
    }
}

impl Drop for FreezeBoost {
    fn drop(&mut self) {
        if let Some(original) = self.original {
            let _ = sys::set_nice_of(self.pid, original);
        }
    }
}

/// A process that left home: its deputy, the link to where it runs, the
/// deputy's registers to inject calls with, what the move cost, and a
/// pidfd of the deputy if the process took DFSA files along.
struct Left {
    injector: Injector,
    link: Link,
    header: ImageHeader,
    stats: MoveStats,
    pidfd: Option<OwnedFd>,
}

/// Why a process stopped by job control does not move.
const STOPPED: &str = "it is stopped (job control): continue it first";

/// Stops the process and sends its image; on any failure the process
/// carries on at home as if nothing happened. Its memory here is freed
/// later, by [`release_deputy`], once the user knows it runs there.
fn leave(args: &HomeArgs) -> Result<Left, String> {
    let pid = args.pid;
    let mut phases = super::Phases::start();
    match process_state(pid) {
        Some('Z' | 'X') => return Err("it has ended".into()),
        Some('T') => return Err(STOPPED.into()),
        _ => {}
    }
    let own_pid = std::process::id() as i32;
    // Nearly every reason to stay shows on the running process: no link is
    // opened for one that cannot go. It is asked again once it is stopped.
    if let Some(reason) = constraints::reason_to_stay(pid, own_pid).map_err(|e| e.to_string())? {
        return Err(reason);
    }
    // The link is set up while the process runs on: on a busy node its
    // handshakes take tens of milliseconds, and a destination that refuses
    // (admission) costs the process nothing.
    let destination = &args.destination;
    let request = LinkRequest::Immigrate {
        home_node: args.identity.node.get(),
        home_pid: pid as u32,
        session: args.session,
        from_placement: args.from_placement,
    };
    let mut link = open_link(
        &args.identity,
        destination.node,
        destination.address,
        destination.port,
        request,
    )
    .map_err(|e| format!("node {} cannot take it: {e}", destination.node))?;
    phases.mark("link");
    let frozen = std::time::Instant::now();
    if let Err(e) = ptrace::seize(pid, ptrace::OPTION_EXITKILL) {
        // It may have ended while the link was set up: a zombie cannot
        // be traced.
        return Err(match process_state(pid) {
            None | Some('Z' | 'X') => "it has ended".into(),
            Some(_) => format!("cannot trace process {pid}: {e}"),
        });
    }
    let _boost = FreezeBoost::new(pid);
    let detach = |why: String| {
        let _ = ptrace::detach(pid, 0);
        why
    };
    ptrace::interrupt(pid).map_err(|e| detach(e.to_string()))?;
    let mut held = Vec::new();
    loop {
        match ptrace::wait(pid).map_err(|e| detach(e.to_string()))? {
            Stop::Interrupt => break,
            Stop::Signal(signal) => {
                // Keep it for when the process runs again (here or away).
                held.push(signal);
                ptrace::cont(pid, 0).map_err(|e| detach(e.to_string()))?;
            }
            Stop::Group(_) => {
                return Err(detach(STOPPED.into()));
            }
            stop if stop.is_gone() => return Err(format!("it ended ({stop:?})")),
            _ => ptrace::cont(pid, 0).map_err(|e| detach(e.to_string()))?,
        }
    }
    // Signals that arrived while we stopped it stay pending: they go with
    // the image, or are delivered here if it stays.
    for signal in held {
        let _ = crate::sys::kill_raw(pid, signal);
    }
    if let Some(reason) =
        constraints::reason_to_stay(pid, own_pid).map_err(|e| detach(e.to_string()))?
    {
        return Err(detach(reason));
    }
    let regs = ptrace::get_regs(pid).map_err(|e| detach(e.to_string()))?;
    let mut injector = Injector::bootstrap(pid, &[]).map_err(|e| detach(e.to_string()))?;
    // From here, undoing means removing the parasite and the registers.
    let undo = |injector: Injector, why: String| {
        let _ = injector.remove_parasite();
        let _ = ptrace::set_regs(pid, &regs);
        detach(why)
    };
    let captured = match capture::capture(&mut injector, regs) {
        Ok(captured) => captured,
        Err(e) => return Err(undo(injector, format!("capturing it failed: {e}"))),
    };
    // Its files the destination can reopen: only if their offsets can be
    // set here again (through a pidfd) when the process moves them there.
    let pidfd = seccomp::pidfd_open(pid).ok();
    let files = match pidfd {
        Some(_) => dfsa::files_of(pid, args.identity.node, &args.export, &args.mfs),
        None => DfsaList::default(),
    };
    phases.mark("stop and capture");
    let sent = link
        .send(&LinkMessage::DfsaFiles(files))
        .map_err(KeeperError::from)
        .and_then(|()| send_image(&mut link, &captured, &injector));
    if let Err(e) = sent {
        return Err(undo(
            injector,
            format!("sending it to node {} failed: {e}", destination.node),
        ));
    }
    match super::receive(&mut link) {
        Ok(LinkMessage::Restored) => {}
        Ok(LinkMessage::RestoreFailed { reason }) => return Err(undo(injector, reason)),
        Ok(other) => {
            return Err(undo(
                injector,
                format!("node {} answered {}", destination.node, name_of(&other)),
            ));
        }
        Err(e) => {
            return Err(undo(
                injector,
                format!("node {} did not confirm: {e}", destination.node),
            ));
        }
    }
    phases.mark("image and restore");
    tracing::debug!("process {pid} left: {}", phases.summary());
    let stats = MoveStats {
        bytes: captured.header.page_bytes,
        frozen_us: frozen.elapsed().as_micros() as u64,
        total_us: 0,
    };
    Ok(Left {
        injector,
        link,
        header: captured.header,
        stats,
        pidfd,
    })
}

/// The process runs over there now: frees its memory here (a tenth of a
/// second for 2 GiB, so after the move is reported), lets every signal
/// reach the deputy (the remote applies its own mask), and returns the
/// deputy's registers to run its calls from.
fn release_deputy(injector: &Injector, header: &ImageHeader) -> Result<Regs, String> {
    let pid = injector.pid();
    restore::release_memory(injector, header).map_err(|e| e.to_string())?;
    ptrace::set_sigmask(pid, 0).map_err(|e| e.to_string())?;
    ptrace::get_regs(pid).map_err(|e| e.to_string())
}

impl Home {
    fn serve(&mut self) -> i32 {
        if let Err(e) = self.start_idle() {
            return self.lose(format!("the deputy could not wait: {e}"));
        }
        loop {
            if std::mem::take(&mut self.answered_call)
                && matches!(self.deputy, Deputy::Idle)
                && !self.link.has_buffered_message()
            {
                // A process that just made a call often makes another.
                self.spinner.spin(self.link.get_ref().as_fd());
            }
            let outcome = if !self.remote_ended && self.link.has_buffered_message() {
                self.on_link_readable()
            } else {
                // Once the remote has ended, only the deputy's end matters.
                let link = self.link.get_ref().as_fd();
                let fds = if self.remote_ended {
                    vec![self.daemon.fd()]
                } else {
                    vec![self.daemon.fd(), link]
                };
                match self.waiter.wait(&fds, None) {
                    Err(e) => Err(KeeperError::Io(e)),
                    Ok((child, ready)) => {
                        let mut outcome = Ok(None);
                        if child {
                            outcome = self.on_child();
                        }
                        if outcome.as_ref().is_ok_and(|o| o.is_none())
                            && ready.get(1) == Some(&true)
                        {
                            outcome = self.on_link_readable();
                        }
                        if outcome.as_ref().is_ok_and(|o| o.is_none()) && ready[0] {
                            outcome = self.on_daemon();
                        }
                        outcome
                    }
                }
            };
            match outcome {
                Ok(None) => {}
                Ok(Some(code)) => return code,
                Err(KeeperError::LinkClosed) => {
                    return self.lose(format!("node {} closed the link", self.node));
                }
                Err(e) => return self.lose(e.to_string()),
            }
        }
    }

    /// The link to the remote is gone: end the process, loudly.
    fn lose(&mut self, reason: String) -> i32 {
        warn!(
            "process {}: lost its link to node {} ({reason}): ending it (SIGKILL)",
            self.pid, self.node
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = ptrace::wait(self.pid);
        self.daemon.report(&KeeperReport::Lost {
            node: self.node.get(),
            reason,
        });
        1
    }

    fn start_idle(&mut self) -> Result<(), KeeperError> {
        self.injector.start(libc::SYS_pause, &[], &self.base)?;
        self.deputy = Deputy::Idle;
        if let Some(signal) = self.mirrored_stop {
            // A stop to mirror that waited for a call to finish.
            crate::sys::kill_raw(self.pid, signal)?;
        }
        Ok(())
    }

    fn send(&mut self, message: &LinkMessage) -> Result<(), KeeperError> {
        Ok(self.link.send(message)?)
    }

    fn interrupt_for(&mut self, pending: Pending) -> Result<(), KeeperError> {
        ptrace::interrupt(self.pid)?;
        self.deputy = Deputy::Interrupting(pending);
        Ok(())
    }

    fn on_child(&mut self) -> Result<Option<i32>, KeeperError> {
        while let Some(stop) = ptrace::wait_nohang(self.pid)? {
            if let Some(code) = self.on_stop(stop)? {
                return Ok(Some(code));
            }
        }
        Ok(None)
    }

    fn on_stop(&mut self, stop: Stop) -> Result<Option<i32>, KeeperError> {
        let pid = self.pid;
        tracing::trace!("process {pid}: {stop:?} while {}", self.deputy.name());
        match stop {
            Stop::Exited(code) => {
                if !matches!(self.deputy, Deputy::Ending) {
                    let _ = self.send(&LinkMessage::Kill);
                }
                info!("process {pid} exited with {code}");
                self.daemon.report(&KeeperReport::Ended {
                    code: Some(code),
                    signal: None,
                });
                return Ok(Some(0));
            }
            Stop::Killed { signal, .. } => {
                if !matches!(self.deputy, Deputy::Ending) {
                    // Killed at home (SIGKILL cannot be intercepted): end the
                    // remote too.
                    let _ = self.send(&LinkMessage::Kill);
                }
                info!("process {pid} was killed by signal {signal}");
                self.daemon.report(&KeeperReport::Ended {
                    code: None,
                    signal: Some(signal),
                });
                return Ok(Some(0));
            }
            Stop::Signal(signal) if self.fatal == Some(signal) => ptrace::cont(pid, signal)?,
            Stop::Signal(signal) if self.mirrored_stop == Some(signal) => {
                self.mirrored_stop = None;
                ptrace::cont(pid, signal)?;
            }
            Stop::Signal(signal) => self.on_signal(signal)?,
            Stop::Group(_) => {
                ptrace::listen(pid)?;
                self.deputy = Deputy::Stopped;
            }
            Stop::Interrupt => match std::mem::replace(&mut self.deputy, Deputy::Idle) {
                Deputy::Interrupting(pending) => self.do_pending(pending)?,
                Deputy::Stopped => {
                    // Continued out of a job-control stop: back to waiting.
                    self.start_idle()?;
                }
                other => {
                    self.deputy = other;
                    ptrace::cont(pid, 0)?;
                }
            },
            // A continue is a notification, not a stop: nothing to resume.
            Stop::Continued => {}
            Stop::Event(_) => ptrace::cont(pid, 0)?,
        }
        Ok(None)
    }

    fn on_signal(&mut self, signal: i32) -> Result<(), KeeperError> {
        let pid = self.pid;
        if matches!(signal, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) && orphaned_group(pid) {
            // The kernel discards terminal stop signals sent to orphaned
            // process groups: so do we, whatever the remote would do.
            // Suppressed; an interrupted call restarts by itself.
            return Ok(ptrace::cont(pid, 0)?);
        }
        match std::mem::replace(&mut self.deputy, Deputy::Idle) {
            Deputy::Calling(staged) => {
                let completed = self.injector.completed_result()?;
                match self.injector.outcome(Stop::Signal(signal))? {
                    Some(Outcome::Returned(ret)) => {
                        // The trap after the call: it is done.
                        let result = self.result_of(&staged, ret)?;
                        self.send(&LinkMessage::CallResult(result))?;
                        self.start_idle()?;
                        self.answered_call = true;
                    }
                    _ if completed.is_none() => {
                        // Interrupted, or stopped before it ran: the remote
                        // decides whether the signal ends the call.
                        self.send(&LinkMessage::Signal {
                            signal,
                            during_call: true,
                        })?;
                        self.deputy = Deputy::AwaitingVerdict(staged);
                    }
                    _ => {
                        // The call finished and raised a signal (SIGPIPE):
                        // result first, then the signal, as the kernel would.
                        let ret = completed.unwrap_or_default();
                        let result = self.result_of(&staged, ret)?;
                        self.send(&LinkMessage::CallResult(result))?;
                        self.send(&LinkMessage::Signal {
                            signal,
                            during_call: false,
                        })?;
                        self.start_idle()?;
                    }
                }
            }
            Deputy::Stopped => {
                self.send(&LinkMessage::Signal {
                    signal,
                    during_call: false,
                })?;
                ptrace::cont(pid, 0)?;
                self.deputy = Deputy::Idle;
            }
            other => {
                // Idle (in pause) or about to be interrupted: forward it;
                // pause restarts by itself.
                self.deputy = other;
                self.send(&LinkMessage::Signal {
                    signal,
                    during_call: false,
                })?;
                ptrace::cont(pid, 0)?;
            }
        }
        Ok(())
    }

    fn do_pending(&mut self, pending: Pending) -> Result<(), KeeperError> {
        match pending {
            Pending::Nothing => self.start_idle()?,
            Pending::Call(call) => match marshal::stage(&call, &mut self.injector) {
                Ok(staged) => {
                    self.injector.start(staged.nr, &staged.args, &self.base)?;
                    self.deputy = Deputy::Calling(staged);
                }
                Err(e) => {
                    warn!("process {}: refusing a forwarded call: {e}", self.pid);
                    self.send(&LinkMessage::CallResult(CallResult {
                        ret: -(libc::EINVAL as i64),
                        outputs: Vec::new(),
                        opened: None,
                    }))?;
                    self.start_idle()?;
                }
            },
            Pending::Exit(code) => {
                self.deputy = Deputy::Ending;
                self.injector
                    .start(libc::SYS_exit_group, &[code as u64], &self.base)?;
            }
            Pending::Die(signal) => {
                self.deputy = Deputy::Ending;
                // Die by the signal's default action, whatever the process
                // had installed for it.
                let scratch = self.injector.parasite.scratch;
                self.injector.put(0, &[0u8; 32])?;
                self.injector.call_checked(
                    "rt_sigaction",
                    libc::SYS_rt_sigaction,
                    &[signal as u64, scratch, 0, 8],
                )?;
                ptrace::set_sigmask(self.pid, 0)?;
                self.fatal = Some(signal);
                crate::sys::kill_raw(self.pid, signal)?;
                self.injector.start(libc::SYS_pause, &[], &self.base)?;
            }
        }
        Ok(())
    }

    fn on_link_readable(&mut self) -> Result<Option<i32>, KeeperError> {
        let message = super::receive(&mut self.link)?;
        match message {
            LinkMessage::Call(call) => match self.deputy {
                Deputy::Idle => {
                    self.daemon.count_call();
                    self.interrupt_for(Pending::Call(call))?
                }
                _ => {
                    return Err(KeeperError::Protocol(
                        "a call while another is in progress".into(),
                    ));
                }
            },
            LinkMessage::SignalVerdict { interrupts_call } => {
                match std::mem::replace(&mut self.deputy, Deputy::Idle) {
                    Deputy::AwaitingVerdict(staged) if interrupts_call => {
                        self.injector.abandon_interrupted(-(libc::EINTR as i64))?;
                        drop(staged);
                        self.start_idle()?;
                    }
                    Deputy::AwaitingVerdict(staged) => {
                        // The kernel restarts the interrupted call.
                        ptrace::cont(self.pid, 0)?;
                        self.deputy = Deputy::Calling(staged);
                    }
                    other => {
                        self.deputy = other;
                        return Err(KeeperError::Protocol("a verdict without a question".into()));
                    }
                }
            }
            LinkMessage::AbandonCall => self.abandon_call()?,
            LinkMessage::Stopped { signal } => {
                // The deputy stops too, so the parent sees the stop; if it is
                // busy with a call, once the call is over.
                self.mirrored_stop = Some(signal);
                if let Deputy::Idle = self.deputy {
                    crate::sys::kill_raw(self.pid, signal)?;
                }
            }
            LinkMessage::Continued => {}
            LinkMessage::Exited { code } => {
                self.remote_ended = true;
                self.interrupt_for(Pending::Exit(code))?;
            }
            LinkMessage::Killed { signal, .. } => {
                self.remote_ended = true;
                self.interrupt_for(Pending::Die(signal))?;
            }
            LinkMessage::MoveFailed { reason } => {
                info!("process {} stays on node {}: {reason}", self.pid, self.node);
                self.daemon.report(&KeeperReport::CannotMove { reason });
            }
            LinkMessage::ComingHome { reason } => return self.come_home(&reason).map(Some),
            // The remote moved the process on; its successor's link is on
            // its way to us through the daemon.
            LinkMessage::MoveDone(stats) => self.move_stats = Some(stats),
            LinkMessage::Offsets(offsets) => {
                dfsa::set_offsets(self.pidfd.as_ref().map(|p| p.as_fd()), &offsets)
            }
            LinkMessage::Usage(usage) => self.daemon.report(&KeeperReport::Usage(usage)),
            other => {
                return Err(KeeperError::Protocol(format!(
                    "unexpected {}",
                    name_of(&other)
                )));
            }
        }
        Ok(None)
    }

    /// The remote wants to move: end the call in progress, or report that
    /// it had already ended.
    fn abandon_call(&mut self) -> Result<(), KeeperError> {
        match std::mem::replace(&mut self.deputy, Deputy::Idle) {
            Deputy::Calling(staged) => {
                ptrace::interrupt(self.pid)?;
                loop {
                    let stop = ptrace::wait(self.pid)?;
                    let outcome = self.injector.outcome(stop)?;
                    if let Some(Outcome::Returned(ret)) = outcome {
                        self.answer(&staged, ret)?;
                        break;
                    }
                    let signal = match outcome {
                        Some(Outcome::Signal(signal)) => Some(signal),
                        None if stop == Stop::Interrupt => None,
                        _ => {
                            ptrace::cont(self.pid, 0)?;
                            continue;
                        }
                    };
                    // The stop may come after the call did its work but
                    // before its trap: then its result stands.
                    match self.injector.completed_result()? {
                        Some(ret) => self.answer(&staged, ret)?,
                        None => {
                            self.injector.abandon_interrupted(-(libc::EINTR as i64))?;
                            self.send(&LinkMessage::CallAbandoned)?;
                        }
                    }
                    if let Some(signal) = signal {
                        self.send(&LinkMessage::Signal {
                            signal,
                            during_call: false,
                        })?;
                    }
                    break;
                }
                self.start_idle()?;
            }
            Deputy::AwaitingVerdict(staged) => {
                // Stopped at the signal that interrupted the call (already
                // sent to the remote): the call did nothing, end it.
                drop(staged);
                self.injector.abandon_interrupted(-(libc::EINTR as i64))?;
                self.send(&LinkMessage::CallAbandoned)?;
                self.start_idle()?;
            }
            Deputy::Interrupting(Pending::Call(_)) => {
                self.deputy = Deputy::Interrupting(Pending::Nothing);
                self.send(&LinkMessage::CallAbandoned)?;
            }
            other => {
                self.deputy = other;
                self.send(&LinkMessage::CallAbandoned)?;
            }
        }
        Ok(())
    }

    /// What a finished call gives the remote: what it wrote and returned,
    /// and the file an `open` gave if every node reaches it through MFS
    /// (the remote then reopens it: DFSA).
    fn result_of(&self, staged: &Staged, ret: i64) -> Result<CallResult, KeeperError> {
        let mut result = marshal::collect(staged, ret, &self.injector.memory)?;
        let opens = matches!(
            staged.nr,
            libc::SYS_open | libc::SYS_openat | libc::SYS_openat2 | libc::SYS_creat
        );
        if opens && ret >= 0 {
            result.opened = dfsa::file_of(
                self.pid,
                ret as i32,
                self.identity.node,
                &self.export,
                &self.mfs,
            );
        }
        Ok(result)
    }

    /// Sends the result of a finished call; the remote acknowledges an
    /// abandon that crossed it, so an abandon is answered too.
    fn answer(&mut self, staged: &Staged, ret: i64) -> Result<(), KeeperError> {
        let result = self.result_of(staged, ret)?;
        self.send(&LinkMessage::CallResult(result))?;
        self.send(&LinkMessage::CallAbandoned)?;
        Ok(())
    }

    /// The process comes back: its image goes into the deputy, which then
    /// runs it natively.
    fn come_home(&mut self, reason: &str) -> Result<i32, KeeperError> {
        let pid = self.pid;
        let boost = FreezeBoost::new(pid);
        let mut held = Vec::new();
        if let Deputy::Idle | Deputy::Interrupting(_) = self.deputy {
            if let Deputy::Idle = self.deputy {
                ptrace::interrupt(pid)?;
            }
            loop {
                match ptrace::wait(pid)? {
                    Stop::Interrupt => break,
                    Stop::Signal(signal) => {
                        held.push(signal);
                        ptrace::cont(pid, 0)?;
                    }
                    stop if stop.is_gone() => return Ok(self.on_stop(stop)?.unwrap_or(0)),
                    _ => ptrace::cont(pid, 0)?,
                }
            }
        }
        let frozen = std::time::Instant::now();
        let header = receive_header(&mut self.link)?;
        receive_image_into(&mut self.link, &mut self.injector, &header, Target::Deputy)?;
        let placeholder = Injector::adopt(pid, self.injector.parasite)?;
        let injector = std::mem::replace(&mut self.injector, placeholder);
        restore::set_final_state(injector, &header)?;
        self.send(&LinkMessage::Restored)?;
        if let Some(affinity) = self.affinity.take() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &affinity);
        }
        // It runs at its own priority again from its first instruction.
        drop(boost);
        ptrace::detach(pid, 0)?;
        for signal in held {
            let _ = crate::sys::kill_raw(pid, signal);
        }
        // The remote, which froze the process, knows how long it was
        // frozen; failing that, we know a lower bound.
        let received_in = frozen.elapsed().as_micros() as u64;
        let pidfd = self.pidfd.as_ref().map(|p| p.as_fd());
        let stats =
            super::await_move_done(&mut self.link, |offsets| dfsa::set_offsets(pidfd, offsets))
                .unwrap_or(MoveStats {
                    bytes: header.page_bytes,
                    frozen_us: received_in,
                    total_us: 0,
                });
        info!(
            "process {pid} is home again ({reason}): {} MiB received in {:.1} ms, frozen {:.1} ms",
            stats.bytes >> 20,
            received_in as f64 / 1000.0,
            stats.frozen_us as f64 / 1000.0
        );
        self.daemon.report(&KeeperReport::Home {
            moves: self.moves + 1,
            stats: Some(stats),
        });
        Ok(0)
    }

    fn on_daemon(&mut self) -> Result<Option<i32>, KeeperError> {
        let command = match self.daemon.receive() {
            Ok(Some(command)) => command,
            Ok(None) => return Ok(None),
            Err(e) => {
                // Without its daemon the keeper still serves the process
                // (if the daemon died, so do we, by PDEATHSIG).
                warn!(
                    "process {}: the daemon channel failed ({e}); serving on without it",
                    self.pid
                );
                self.daemon.close();
                return Ok(None);
            }
        };
        match command {
            KeeperCommand::MoveTo {
                node,
                address,
                port,
                from_placement,
            } => {
                if node == self.node.get() {
                    self.daemon.report(&KeeperReport::CannotMove {
                        reason: format!("it runs on node {node} already"),
                    });
                } else {
                    self.send(&LinkMessage::MoveTo {
                        node,
                        address,
                        port,
                        from_placement,
                    })?;
                }
            }
            KeeperCommand::GoHome { .. } => {
                warn!(
                    "process {}: GoHome is for a guest's keeper; use MoveTo home",
                    self.pid
                );
            }
            KeeperCommand::TakeLink { node } => {
                let fd = self
                    .daemon
                    .take_fd()
                    .ok_or_else(|| KeeperError::Protocol("TakeLink without a connection".into()))?;
                let node =
                    NodeId::new(node).ok_or_else(|| KeeperError::Protocol("node 0".into()))?;
                let link = accept_link(TcpStream::from(fd), &self.identity, node)?;
                let mut old = std::mem::replace(&mut self.link, link);
                let _ = old.send(&LinkMessage::Released);
                // The old remote's last offsets may still be on its link.
                let pidfd = self.pidfd.as_ref().map(|p| p.as_fd());
                let stats = self.move_stats.take().or_else(|| {
                    super::await_move_done(&mut old, |offsets| dfsa::set_offsets(pidfd, offsets))
                });
                self.node = node;
                self.moves += 1;
                info!("process {} now runs on node {node}", self.pid);
                self.daemon.report(&KeeperReport::RunsOn {
                    node: node.get(),
                    moves: self.moves,
                    stats,
                });
            }
        }
        Ok(None)
    }
}
