//! The remote keeper: rebuilds a process that arrives, and serves it.
//!
//! The process is rebuilt in a fresh child of the keeper, then confined:
//! an empty root, an unprivileged guest uid (so this node's users can
//! neither signal nor inspect it), no new privileges, and a seccomp filter
//! that lets its local calls run and hands every other call to the keeper.
//! The keeper forwards those home, answers getpid with the home pid, and
//! sends the process home for calls that need it.

use std::collections::HashMap;
use std::net::{IpAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use omx_mfs::NodeId;
use omx_mfs::transport::Identity;
use omx_mfs::wire::image::ImageHeader;
use omx_mfs::wire::link::{
    CallResult, GuestUsage, KeeperCommand, KeeperReport, LinkMessage, LinkRequest, MoveStats,
};
use tracing::{info, warn};

use super::dfsa::{self, Dfsa, Use};
use super::spin::Spinner;
use super::{
    DaemonChannel, KeeperError, Link, Waiter, accept_link, name_of, open_link, receive_arrival,
    receive_image_into, send_image,
};
use crate::capture;
use crate::inject::Injector;
use crate::restore::{self, Target};
use crate::sys;
use crate::sys::memory::ProcessMemory;
use crate::sys::ptrace::{self, Stop};
use crate::sys::seccomp;
use crate::syscalls::{
    self,
    marshal::{self, Prepared, Route},
};
use crate::usage::{self, FileHolder, IoTracker};

/// How often the keeper tells home what the process uses here.
const USAGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A process stopped for a move, with its image captured.
struct Frozen {
    injector: Injector,
    captured: capture::Capture,
    regs: ptrace::Regs,
    since: std::time::Instant,
}

const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_SET_DUMPABLE: u64 = 4;

pub struct RemoteArgs {
    /// This node.
    pub identity: Identity,
    pub home_node: NodeId,
    pub home_address: IpAddr,
    pub port: u16,
    pub home_pid: i32,
    pub session: u64,
    /// The node that sent the image: home, or the previous remote.
    pub sender: NodeId,
    pub guest_uid: u32,
    pub guest_gid: u32,
    /// An empty directory the process is confined to.
    pub empty_root: PathBuf,
    /// How long to busy-wait for the answer to a forwarded call before
    /// sleeping (see [`super::spin`]).
    pub spin: std::time::Duration,
    /// Where MFS is mounted here: the process's files are reopened under
    /// it (DFSA).
    pub mfs: PathBuf,
}

/// A call being served at home.
struct InFlight {
    /// The notification the process waits in.
    id: u64,
    /// How to apply the result.
    prepared: Prepared,
    /// A `close` of a descriptor the process also holds a reopened copy
    /// of: if it succeeds at home, the process closes its copy too.
    closes_copy: Option<i32>,
}

struct Remote {
    args: RemoteArgs,
    child: i32,
    memory: ProcessMemory,
    listener: OwnedFd,
    link: Link,
    daemon: DaemonChannel,
    waiter: Waiter,
    /// The call being served at home.
    pending: Option<InFlight>,
    /// Why the process must go home as soon as the call at hand is
    /// answered: its filter would no longer be right here.
    home_due: Option<String>,
    /// The terminal stop signal a SIGSTOP stands for (see `deliver`).
    stopped_for: Option<i32>,
    spinner: Spinner,
    /// The process's files reopened here.
    dfsa: Dfsa,
    /// Offsets of those files when last seen, and the bytes they moved
    /// since the last usage report.
    io: IoTracker,
    io_moved: HashMap<FileHolder, u64>,
    usage_sent_at: std::time::Instant,
}

/// Runs a remote keeper to the end.
pub fn run(args: RemoteArgs, link: TcpStream, daemon: UnixStream) -> i32 {
    let daemon = DaemonChannel::new(daemon);
    let waiter = match Waiter::new().and_then(|w| super::die_with_parent().map(|()| w)) {
        Ok(waiter) => waiter,
        Err(e) => {
            warn!("remote keeper cannot start: {e}");
            return 1;
        }
    };
    let mut link = match accept_link(link, &args.identity, args.sender) {
        Ok(link) => link,
        Err(e) => {
            warn!(
                "process {} of node {}: link from node {} failed: {e}",
                args.home_pid, args.home_node, args.sender
            );
            return 1;
        }
    };
    let (child, memory, listener, dfsa, first_sample) = match arrive(&args, &mut link) {
        Ok(arrived) => arrived,
        Err(KeeperError::CalledOff) => {
            info!(
                "process {} of node {} does not come: {}",
                args.home_pid,
                args.home_node,
                KeeperError::CalledOff
            );
            return 1;
        }
        Err(e) => {
            warn!(
                "process {} of node {} could not be rebuilt: {e}",
                args.home_pid, args.home_node
            );
            let _ = link.send(&LinkMessage::RestoreFailed {
                reason: e.to_string(),
            });
            return 1;
        }
    };
    let _ = link.send(&LinkMessage::Restored);
    let link = if args.sender == args.home_node {
        link
    } else {
        // It came from another remote: connect it to its deputy ourselves.
        let request = LinkRequest::Rejoin {
            home_pid: args.home_pid as u32,
            session: args.session,
        };
        match open_link(
            &args.identity,
            args.home_node,
            args.home_address,
            args.port,
            request,
        ) {
            Ok(home) => home,
            Err(e) => {
                warn!(
                    "process {} cannot rejoin node {}: {e}; ending it",
                    args.home_pid, args.home_node
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return 1;
            }
        }
    };
    info!(
        "hosting process {} of node {} (local pid {child})",
        args.home_pid, args.home_node
    );
    let spinner = Spinner::new(args.spin);
    let mut remote = Remote {
        args,
        child,
        memory,
        listener,
        link,
        daemon,
        waiter,
        pending: None,
        home_due: None,
        stopped_for: None,
        spinner,
        dfsa,
        io: IoTracker::new(),
        io_moved: HashMap::new(),
        usage_sent_at: std::time::Instant::now(),
    };
    // The offsets its DFSA files had when it started to run here.
    remote.io.update(&first_sample.files);
    remote.serve()
}

/// Receives the image and rebuilds the process in a fresh child; returns
/// the child (running), its memory, its seccomp listener and its DFSA
/// files.
fn arrive(
    args: &RemoteArgs,
    link: &mut Link,
) -> Result<(i32, ProcessMemory, OwnedFd, Dfsa, usage::Usage), KeeperError> {
    let mut phases = super::Phases::start();
    let (files, header) = receive_arrival(link)?;
    let mut dfsa = Dfsa::new(args.mfs.clone(), files);
    phases.mark("header");
    let child = sys::fork_stopped_child()?;
    // The keeper runs at the daemon's priority, to receive and serve the
    // process while the node's jobs run; the process runs at theirs.
    if let Err(e) = sys::set_nice_of(child, 0) {
        warn!("local pid {child} keeps its keeper's priority: {e}");
    }
    phases.mark("fork");
    tracing::debug!("arrival: {}", phases.summary());
    let rebuilt = rebuild(args, link, child, &header, &mut dfsa);
    if rebuilt.is_err() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = ptrace::wait(child);
    }
    rebuilt.map(|(memory, listener, sample)| (child, memory, listener, dfsa, sample))
}

fn rebuild(
    args: &RemoteArgs,
    link: &mut Link,
    child: i32,
    header: &ImageHeader,
    dfsa: &mut Dfsa,
) -> Result<(ProcessMemory, OwnedFd, usage::Usage), KeeperError> {
    let started = std::time::Instant::now();
    let mut injector = Injector::bootstrap(child, &restore::area_ranges(header))?;
    receive_image_into(link, &mut injector, header, Target::Fresh)?;
    // The kernel installs no descriptor at or above the soft limit.
    let fd_limit = header
        .rlimits
        .get(libc::RLIMIT_NOFILE as usize)
        .map(|(soft, _)| *soft);
    let listener = confine(&injector, args, dfsa, fd_limit)?;
    restore::set_final_state(injector, header)?;
    // Opened while it is still stopped: once it runs it may end at any
    // moment, and its end must reach home as its exit status (the serve
    // loop reaps it), not as a keeper that could not watch it (home would
    // see the link close and end the process by SIGKILL).
    let memory = ProcessMemory::open(child)?;
    // Its files' offsets before it runs: whatever it reads or writes from
    // now on counts as I/O done here.
    let sample = usage::sample(child as u32, &args.mfs)?;
    ptrace::detach(child, 0)?;
    tracing::debug!(
        "local pid {child}: running after {:?} (confined in {:?})",
        started.elapsed(),
        started.elapsed()
    );
    Ok((memory, listener, sample))
}

/// Confines the rebuilt process, installs the filter and the process's
/// DFSA files; returns the filter's listener.
fn confine(
    injector: &Injector,
    args: &RemoteArgs,
    dfsa: &mut Dfsa,
    fd_limit: Option<u64>,
) -> Result<OwnedFd, KeeperError> {
    let child = injector.pid();
    std::fs::create_dir_all(&args.empty_root)?;
    let mut root = args.empty_root.as_os_str().as_encoded_bytes().to_vec();
    root.push(0);
    let mut batch = injector.batch();
    let root = batch.stage(&root);
    batch.call("chroot", libc::SYS_chroot, &[root]);
    let slash = batch.stage(b"/\0");
    batch.call("chdir", libc::SYS_chdir, &[slash]);
    batch.call("setgroups", libc::SYS_setgroups, &[0, 0]);
    let (uid, gid) = (u64::from(args.guest_uid), u64::from(args.guest_gid));
    batch.call("setresgid", libc::SYS_setresgid, &[gid, gid, gid]);
    batch.call("setresuid", libc::SYS_setresuid, &[uid, uid, uid]);
    batch.call("prctl", libc::SYS_prctl, &[PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0]);
    batch.call("prctl", libc::SYS_prctl, &[PR_SET_DUMPABLE, 0, 0, 0, 0]);
    let fast = dfsa.reopen_all(fd_limit);
    let program = seccomp::notify_filter(
        &syscalls::local_numbers(),
        &syscalls::local_conditions(),
        seccomp::OnDescriptors {
            calls: syscalls::ON_DFSA_DESCRIPTOR,
            fds: &fast,
        },
    );
    let instructions = batch.stage(&seccomp::program_bytes(&program));
    let fprog = batch.stage(&seccomp::fprog_bytes(program.len(), instructions));
    batch.call(
        "seccomp",
        libc::SYS_seccomp,
        &[
            seccomp::SECCOMP_SET_MODE_FILTER,
            seccomp::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            fprog,
        ],
    );
    let fd = *injector
        .run_batch_checked(&batch)?
        .last()
        .expect("the batch ran");
    let pidfd = seccomp::pidfd_open(child)?;
    let listener = seccomp::pidfd_getfd(pidfd.as_fd(), fd as i32)?;
    if let Err(e) = seccomp::set_sync_wakeup(listener.as_fd()) {
        // Older kernels: calls are slower, not wrong.
        tracing::debug!("no synchronous seccomp wake-ups: {e}");
    }
    // The process's own copy of the listener must go; its close is now
    // a filtered call, which we let run. While it waits in it, its DFSA
    // files are installed: the filter already lets their I/O run.
    let base = ptrace::get_regs(child)?;
    let saved_mask = ptrace::get_sigmask(child)?;
    ptrace::set_sigmask(child, u64::MAX)?;
    injector.start(libc::SYS_close, &[fd as u64], &base)?;
    let notification = seccomp::receive(listener.as_fd())?;
    if notification.nr != libc::SYS_close {
        return Err(KeeperError::Protocol(format!(
            "expected close, intercepted call {}",
            notification.nr
        )));
    }
    dfsa.install_all(listener.as_fd(), notification.id)?;
    if dfsa.has_copy(fd as i32) {
        // A file went in at the listener's number, which closed the
        // listener there: the close must not close the file.
        seccomp::respond(listener.as_fd(), notification.id, 0, 0)?;
    } else {
        seccomp::respond_continue(listener.as_fd(), notification.id)?;
    }
    injector.finish()?;
    ptrace::set_regs(child, &base)?;
    ptrace::set_sigmask(child, saved_mask)?;
    Ok(listener)
}

impl Remote {
    fn serve(&mut self) -> i32 {
        loop {
            if self.pending.is_some() && !self.link.has_buffered_message() {
                // The answer comes soon, most likely.
                self.spinner.spin(self.link.get_ref().as_fd());
            }
            let outcome = if self.link.has_buffered_message() {
                self.on_link()
            } else {
                // While a call is served at home, the listener is not read:
                // a new notification then can only be the same call again.
                let listener = if self.pending.is_some() {
                    self.daemon.idle_fd()
                } else {
                    self.listener.as_fd()
                };
                let fds = [self.link.get_ref().as_fd(), listener, self.daemon.fd()];
                let usage_due = USAGE_INTERVAL.saturating_sub(self.usage_sent_at.elapsed());
                match self.waiter.wait(&fds, Some(usage_due)) {
                    Err(e) => Err(KeeperError::Io(e)),
                    Ok((child, ready)) => {
                        let mut outcome = Ok(None);
                        if child {
                            outcome = self.on_child();
                        }
                        if outcome.as_ref().is_ok_and(|o| o.is_none()) && ready[0] {
                            outcome = self.on_link();
                        }
                        if outcome.as_ref().is_ok_and(|o| o.is_none())
                            && ready[1]
                            && self.pending.is_none()
                        {
                            outcome = self.on_notification();
                        }
                        if outcome.as_ref().is_ok_and(|o| o.is_none()) && ready[2] {
                            outcome = self.on_daemon();
                        }
                        outcome
                    }
                }
            };
            let outcome = match outcome {
                Ok(None) => match self.home_due.take() {
                    Some(reason) => self.go_home(&reason).map(Some),
                    None => self.report_usage_when_due().map(|()| None),
                },
                other => other,
            };
            match outcome {
                Ok(None) => {}
                Ok(Some(code)) => return code,
                Err(e) => {
                    // No link home, no process: never leave it running
                    // unowned.
                    warn!(
                        "process {} of node {}: {e}; ending it here",
                        self.args.home_pid, self.args.home_node
                    );
                    self.kill_child();
                    return 1;
                }
            }
        }
    }

    fn kill_child(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = ptrace::wait(self.child);
    }

    fn on_child(&mut self) -> Result<Option<i32>, KeeperError> {
        while let Some(stop) = ptrace::wait_nohang(self.child)? {
            if stop.is_gone() {
                self.report_end(stop)?;
                return Ok(Some(0));
            }
            if !matches!(stop, Stop::Continued | Stop::Interrupt | Stop::Event(_)) {
                // The deputy stops as the process did: whoever shares its
                // files at home sees where it left them.
                self.sync_offsets()?;
            }
            match stop {
                Stop::Signal(signal) | Stop::Group(signal) => {
                    let signal = match (signal, self.stopped_for.take()) {
                        (libc::SIGSTOP, Some(original)) => original,
                        _ => signal,
                    };
                    self.link.send(&LinkMessage::Stopped { signal })?;
                }
                Stop::Continued => self.link.send(&LinkMessage::Continued)?,
                Stop::Exited(_) | Stop::Killed { .. } | Stop::Interrupt | Stop::Event(_) => {}
            }
        }
        Ok(None)
    }

    /// Tells home and the daemon that the process ended as `end` says,
    /// after home's offsets: the deputy ends as the process did, and
    /// whoever shares its files at home sees where it left them.
    fn report_end(&mut self, end: Stop) -> Result<(), KeeperError> {
        self.sync_offsets()?;
        let (code, signal) = match end {
            Stop::Exited(code) => {
                self.link.send(&LinkMessage::Exited { code })?;
                (Some(code), None)
            }
            Stop::Killed {
                signal,
                core_dumped,
            } => {
                self.link.send(&LinkMessage::Killed {
                    signal,
                    core_dumped,
                })?;
                (None, Some(signal))
            }
            other => {
                return Err(KeeperError::Protocol(format!(
                    "{other:?} is not the end of the process"
                )));
            }
        };
        self.daemon.report(&KeeperReport::Ended { code, signal });
        Ok(())
    }

    fn on_notification(&mut self) -> Result<Option<i32>, KeeperError> {
        let notification = match seccomp::receive(self.listener.as_fd()) {
            Ok(notification) => notification,
            // The process was interrupted or died before we looked.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    || e.raw_os_error() == Some(libc::EINTR) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let listener = self.listener.as_fd();
        let id = notification.id;
        let answered = match marshal::route(notification.nr, &notification.args) {
            Route::Local => seccomp::respond_continue(listener, id),
            Route::HomePid => seccomp::respond(listener, id, i64::from(self.args.home_pid), 0),
            Route::Forward(params) => return self.forward(&notification, params),
            Route::Home(reason) => {
                let call = syscalls::lookup(notification.nr).name;
                return self
                    .go_home(&format!("it called {call}: {reason}"))
                    .map(Some);
            }
        };
        ignore_gone(answered)?;
        Ok(None)
    }

    /// Serves a call that is forwarded home, unless it is a call on a
    /// DFSA file that runs here.
    fn forward(
        &mut self,
        notification: &seccomp::Notification,
        params: &'static [syscalls::Param],
    ) -> Result<Option<i32>, KeeperError> {
        let (nr, args, id) = (notification.nr, notification.args, notification.id);
        let memory = &self.memory;
        let uses = dfsa::uses(nr, &args, &self.dfsa.fds(), |address| {
            empty_path(memory, address)
        });
        if let Some(reason) = self.dfsa.needs_home(nr, &args, &uses) {
            return self.go_home(&reason).map(Some);
        }
        // A DFSA call the filter did not let run: a stat of the descriptor
        // itself, or a descriptor past the filter's limit.
        if let [(fd, Use::Native)] = uses[..]
            && self.dfsa.has_copy(fd)
        {
            ignore_gone(seccomp::respond_continue(self.listener.as_fd(), id))?;
            return Ok(None);
        }
        // Home runs it: with the offsets the process has here, and on the
        // deputy's descriptors alone if the call may change or share them.
        let named: Vec<i32> = uses
            .iter()
            .filter(|(_, u)| *u != Use::Native)
            .map(|(fd, _)| *fd)
            .collect();
        let offsets = self.dfsa.offsets_to_sync(&named);
        if !offsets.is_empty() {
            self.link.send(&LinkMessage::Offsets(offsets))?;
        }
        for (fd, u) in &uses {
            if self.dfsa.released_by(*fd, *u, &args) {
                self.dfsa.release(*fd);
            }
        }
        let closes_copy =
            (nr == libc::SYS_close && self.dfsa.has_copy(args[0] as i32)).then_some(args[0] as i32);
        match marshal::prepare(nr, &args, params, &self.memory) {
            Err(errno) => ignore_gone(seccomp::respond(self.listener.as_fd(), id, 0, errno))?,
            Ok(prepared) => {
                self.link.send(&LinkMessage::Call(prepared.call.clone()))?;
                self.pending = Some(InFlight {
                    id,
                    prepared,
                    closes_copy,
                });
            }
        }
        Ok(None)
    }

    /// Tells home the offsets of the DFSA files that moved, so that home's
    /// are right before the process leaves, stops or ends.
    fn sync_offsets(&mut self) -> Result<(), KeeperError> {
        let offsets = self.dfsa.all_offsets_to_sync();
        if !offsets.is_empty() {
            self.link.send(&LinkMessage::Offsets(offsets))?;
        }
        Ok(())
    }

    /// About once a second, tells home what the process uses here.
    fn report_usage_when_due(&mut self) -> Result<(), KeeperError> {
        if self.usage_sent_at.elapsed() < USAGE_INTERVAL {
            return Ok(());
        }
        self.usage_sent_at = std::time::Instant::now();
        let Some(sample) = self.track_io() else {
            // Gone: its end is on its way.
            return Ok(());
        };
        let moved = std::mem::take(&mut self.io_moved);
        let io_by_node = io_by_node(&moved, self.args.identity.node.get());
        self.link.send(&LinkMessage::Usage(GuestUsage {
            cpu_ns: sample.cpu_ns,
            rss: sample.rss,
            runnable: sample.runnable,
            wait_ns: sample.wait_ns,
            io_by_node,
        }))?;
        Ok(())
    }

    /// Samples the process, adding what its files moved since the last
    /// sample to the next usage report.
    fn track_io(&mut self) -> Option<usage::Usage> {
        let sample = usage::sample(self.child as u32, &self.args.mfs).ok()?;
        for (holder, bytes) in self.io.update(&sample.files) {
            *self.io_moved.entry(holder).or_default() += bytes;
        }
        Some(sample)
    }

    /// Answers the process's call with its result from home.
    fn complete(&mut self, result: &CallResult) -> Result<(), KeeperError> {
        let Some(InFlight {
            id,
            prepared,
            closes_copy,
        }) = self.pending.take()
        else {
            return Ok(());
        };
        // Linux closes a descriptor at home even when close fails (a write
        // that failed at the file's owner is reported there) or the caller
        // was interrupted meanwhile; unless the process's own close of its
        // copy runs, the filter goes on letting its I/O run on that copy.
        let fast_close = closes_copy.filter(|fd| self.dfsa.is_fast(*fd));
        let copy_left_open =
            |why: &str| fast_close.map(|fd| format!("its close of descriptor {fd} {why} at home"));
        let listener = self.listener.as_fd();
        if !seccomp::is_valid(listener, id) {
            self.home_due = copy_left_open("was interrupted after it ran");
            return Ok(());
        }
        if result.ret != 0 {
            self.home_due = copy_left_open("failed");
        }
        // A file it opened that every node reaches: its I/O runs here too.
        if let Some(file) = &result.opened
            && i64::from(file.fd) == result.ret
        {
            self.dfsa.adopt(file.clone(), listener, id);
        }
        let answered = match (marshal::apply(&prepared, result, &self.memory), closes_copy) {
            (Err(errno), _) => seccomp::respond(listener, id, 0, errno),
            (Ok(()), Some(fd)) if result.ret == 0 => {
                // Closed at home: the process's own close of its copy
                // returns the same 0.
                self.dfsa.closed_copy(fd);
                seccomp::respond_continue(listener, id)
            }
            (Ok(()), _) if result.ret < 0 && result.ret >= -4095 => {
                seccomp::respond(listener, id, 0, -result.ret as i32)
            }
            (Ok(()), _) => seccomp::respond(listener, id, result.ret, 0),
        };
        if answered
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
            && self.home_due.is_none()
        {
            self.home_due = copy_left_open("was interrupted after it ran");
        }
        ignore_gone(answered)
    }

    fn on_link(&mut self) -> Result<Option<i32>, KeeperError> {
        match super::receive(&mut self.link)? {
            LinkMessage::CallResult(result) => self.complete(&result)?,
            LinkMessage::Signal {
                signal,
                during_call,
            } => self.deliver(signal, during_call)?,
            LinkMessage::Kill => {
                self.kill_child();
                self.daemon.report(&KeeperReport::Ended {
                    code: None,
                    signal: Some(libc::SIGKILL),
                });
                return Ok(Some(0));
            }
            LinkMessage::MoveTo {
                node,
                address,
                port,
                from_placement,
            } => return self.move_to(node, &address, port, from_placement),
            LinkMessage::CallAbandoned => {}
            other => {
                return Err(KeeperError::Protocol(format!(
                    "unexpected {}",
                    name_of(&other)
                )));
            }
        }
        Ok(None)
    }

    /// Delivers a signal sent to the home pid. During a forwarded call,
    /// tells home whether the signal interrupts it (as it would have: a
    /// signal that is not blocked and not ignored).
    fn deliver(&mut self, signal: i32, during_call: bool) -> Result<(), KeeperError> {
        let bit = 1u64 << (signal - 1);
        let (blocked, ignored, caught) = sys::signal_dispositions(self.child)?;
        let ignored_by_default = matches!(
            signal,
            libc::SIGCHLD | libc::SIGCONT | libc::SIGURG | libc::SIGWINCH
        );
        let interrupts =
            blocked & bit == 0 && ignored & bit == 0 && (caught & bit != 0 || !ignored_by_default);
        // Here the process is in its keeper's process group, which the
        // kernel deems orphaned and so discards terminal stop signals;
        // at home (which decided the signal counts) it would stop.
        let terminal_stop = matches!(signal, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU);
        let stops_by_default =
            terminal_stop && caught & bit == 0 && ignored & bit == 0 && blocked & bit == 0;
        if interrupts && !during_call && self.pending.is_some() {
            // The signal would interrupt a call home may be running or have
            // run: settle it first, so that it never runs twice.
            for early in self.settle_pending_call()? {
                self.deliver(early, false)?;
            }
        }
        if stops_by_default {
            self.stopped_for = Some(signal);
            sys::kill_raw(self.child, libc::SIGSTOP)?;
        } else {
            sys::kill_raw(self.child, signal)?;
        }
        if during_call {
            self.link.send(&LinkMessage::SignalVerdict {
                interrupts_call: interrupts,
            })?;
            if interrupts {
                // The kernel interrupted the waiting call; its result, if
                // any, will not be applied.
                self.pending = None;
            }
        }
        Ok(())
    }

    /// Ends the forwarded call home is running for us, if any: home either
    /// finishes it (its result is applied: the process returns from the
    /// call) or abandons it before it ran. Afterwards the process may be
    /// interrupted without the call running twice. Signals that arrive
    /// meanwhile are returned, to deliver after.
    fn settle_pending_call(&mut self) -> Result<Vec<i32>, KeeperError> {
        let mut held = Vec::new();
        if self.pending.is_none() {
            return Ok(held);
        }
        self.link.send(&LinkMessage::AbandonCall)?;
        loop {
            match super::receive(&mut self.link)? {
                LinkMessage::CallResult(result) => {
                    self.complete(&result)?;
                    // An abandon that crossed a result is acknowledged too.
                }
                LinkMessage::CallAbandoned => {
                    self.pending = None;
                    return Ok(held);
                }
                LinkMessage::Signal { signal, .. } => held.push(signal),
                other => {
                    return Err(KeeperError::Protocol(format!(
                        "unexpected {} while settling a call",
                        name_of(&other)
                    )));
                }
            }
        }
    }

    /// Stops the process for a move: ends any forwarded call first, then
    /// freezes and captures it. `None` if it ended first: its end is
    /// reported as any end is, and there is nothing left to move.
    fn freeze(&mut self) -> Result<Option<Frozen>, KeeperError> {
        let held = self.settle_pending_call()?;
        for signal in held {
            self.deliver(signal, false)?;
        }
        let child = self.child;
        let since = std::time::Instant::now();
        if let Err(e) = ptrace::seize(child, 0).and_then(|()| ptrace::interrupt(child)) {
            // An ended process (a zombie) cannot be seized.
            return match ptrace::wait_nohang(child)? {
                Some(end) if end.is_gone() => self.report_end(end).map(|()| None),
                _ => Err(e.into()),
            };
        }
        loop {
            match ptrace::wait(child)? {
                Stop::Interrupt => break,
                Stop::Signal(signal) => ptrace::cont(child, signal)?,
                end if end.is_gone() => return self.report_end(end).map(|()| None),
                _ => ptrace::cont(child, 0)?,
            }
        }
        let regs = ptrace::get_regs(child)?;
        let mut injector = Injector::bootstrap(child, &[])?;
        let captured = capture::capture(&mut injector, regs)?;
        Ok(Some(Frozen {
            injector,
            captured,
            regs,
            since,
        }))
    }

    /// Tells home what the move of a [`Frozen`] process cost, now that it
    /// runs at its next place.
    fn report_move(&mut self, frozen: &Frozen) -> Result<(), KeeperError> {
        self.link.send(&LinkMessage::MoveDone(MoveStats {
            bytes: frozen.captured.header.page_bytes,
            frozen_us: frozen.since.elapsed().as_micros() as u64,
            total_us: 0,
        }))?;
        Ok(())
    }

    /// Undoes [`freeze`](Self::freeze): the process runs on here.
    fn thaw(&mut self, injector: Injector, regs: ptrace::Regs) -> Result<(), KeeperError> {
        injector.remove_parasite()?;
        ptrace::set_regs(self.child, &regs)?;
        ptrace::detach(self.child, 0)?;
        Ok(())
    }

    /// Follows this node's daemon: it may send the process home (an
    /// expel, or the node leaving the cluster).
    fn on_daemon(&mut self) -> Result<Option<i32>, KeeperError> {
        match self.daemon.receive() {
            Ok(Some(KeeperCommand::GoHome { reason })) => self.go_home(&reason).map(Some),
            Ok(Some(other)) => {
                warn!(
                    "process {} of node {}: ignoring {other:?} from the daemon",
                    self.args.home_pid, self.args.home_node
                );
                Ok(None)
            }
            Ok(None) => Ok(None),
            Err(e) => {
                // The daemon is gone or confused; the process runs on (if
                // the daemon died, PDEATHSIG ends us).
                warn!(
                    "process {} of node {}: the daemon channel failed ({e})",
                    self.args.home_pid, self.args.home_node
                );
                self.daemon.close();
                Ok(None)
            }
        }
    }

    /// Sends the process home (it needs to be there, or was asked to).
    fn go_home(&mut self, reason: &str) -> Result<i32, KeeperError> {
        info!(
            "process {} of node {} goes home: {reason}",
            self.args.home_pid, self.args.home_node
        );
        let Some(frozen) = self.freeze()? else {
            return Ok(0);
        };
        self.sync_offsets()?;
        self.link.send(&LinkMessage::ComingHome {
            reason: reason.to_string(),
        })?;
        send_image(&mut self.link, &frozen.captured, &frozen.injector)?;
        match super::receive(&mut self.link)? {
            LinkMessage::Restored => {}
            other => {
                return Err(KeeperError::Protocol(format!(
                    "home answered {}",
                    name_of(&other)
                )));
            }
        }
        self.kill_child();
        // Home is waiting for this; a failure to tell it is not worth more
        // than its log line there.
        let _ = self.report_move(&frozen);
        Ok(0)
    }

    /// Moves the process to another node, or home.
    fn move_to(
        &mut self,
        node: u16,
        address: &str,
        port: u16,
        from_placement: bool,
    ) -> Result<Option<i32>, KeeperError> {
        if node == self.args.home_node.get() {
            return self.go_home("requested").map(Some);
        }
        let destination =
            NodeId::new(node).ok_or_else(|| KeeperError::Protocol("node 0".into()))?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| KeeperError::Protocol(format!("bad address {address}")))?;
        let request = LinkRequest::Immigrate {
            home_node: self.args.home_node.get(),
            home_pid: self.args.home_pid as u32,
            session: self.args.session,
            from_placement,
        };
        // The link is set up while the process runs on (see the home
        // keeper's `leave`).
        let mut next = match open_link(&self.args.identity, destination, address, port, request) {
            Ok(next) => next,
            Err(e) => {
                self.link.send(&LinkMessage::MoveFailed {
                    reason: format!("node {node} cannot take it: {e}"),
                })?;
                return Ok(None);
            }
        };
        let Some(frozen) = self.freeze()? else {
            return Ok(Some(0));
        };
        // Home's offsets are right wherever the process goes next.
        self.sync_offsets()?;
        let files = self.dfsa.handover();
        let moved = next
            .send(&LinkMessage::DfsaFiles(files))
            .map_err(KeeperError::from)
            .and_then(|()| send_image(&mut next, &frozen.captured, &frozen.injector))
            .and_then(|()| match super::receive(&mut next)? {
                LinkMessage::Restored => Ok(()),
                LinkMessage::RestoreFailed { reason } => Err(KeeperError::Refused(reason)),
                other => Err(KeeperError::Protocol(format!(
                    "node {node} answered {}",
                    name_of(&other)
                ))),
            });
        match moved {
            Ok(()) => {
                // The process runs on the next node; ours never runs again.
                self.kill_child();
                self.report_move(&frozen)?;
                info!(
                    "process {} of node {} moved on to node {node}",
                    self.args.home_pid, self.args.home_node
                );
                // Wait for home to take the new link (it releases us).
                loop {
                    match super::receive(&mut self.link) {
                        Ok(LinkMessage::Released) | Err(KeeperError::LinkClosed) => {
                            return Ok(Some(0));
                        }
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => {
                self.thaw(frozen.injector, frozen.regs)?;
                self.link.send(&LinkMessage::MoveFailed {
                    reason: format!("node {node} cannot take it: {e}"),
                })?;
                Ok(None)
            }
        }
    }
}

/// Whether the path at `address` of the process is empty (or null), as a
/// call with `AT_EMPTY_PATH` on the descriptor itself has it.
fn empty_path(memory: &ProcessMemory, address: u64) -> bool {
    let mut first = [1u8];
    address == 0 || (memory.read(address, &mut first).is_ok() && first[0] == 0)
}

/// Bytes moved by holder, as the node ids that hold them (a file of this
/// node, outside MFS, is this node's).
fn io_by_node(moved: &HashMap<FileHolder, u64>, here: u16) -> Vec<(u16, u64)> {
    let mut by_node = std::collections::BTreeMap::new();
    for (holder, bytes) in moved {
        let node = match holder {
            FileHolder::Node(node) => *node,
            FileHolder::Local => here,
        };
        *by_node.entry(node).or_insert(0u64) += bytes;
    }
    by_node
        .into_iter()
        .filter(|(_, bytes)| *bytes > 0)
        .collect()
}

/// A response to a notification whose process moved on (interrupted, or
/// died) is not an error.
fn ignore_gone(result: std::io::Result<()>) -> Result<(), KeeperError> {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_is_reported_by_the_node_holding_the_file() {
        let moved = HashMap::from([
            (FileHolder::Node(2), 100),
            (FileHolder::Node(3), 0),
            (FileHolder::Node(5), 7),
            (FileHolder::Local, 20),
        ]);
        assert_eq!(io_by_node(&moved, 5), vec![(2, 100), (5, 27)]);
    }
}
