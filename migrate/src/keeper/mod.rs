//! Keepers: the processes that serve a migrated process.
//!
//! Each migrated process has two, both single-threaded children of their
//! node's daemon (they die with it): the *home keeper* traces the deputy
//! and runs its forwarded calls; the *remote keeper* spawned the remote,
//! holds its seccomp listener and forwards its calls. They talk over their
//! own encrypted link. Being processes of their own, keepers can block,
//! poll and ptrace without disturbing the daemon, and a fault in one
//! affects one migrated process only.

pub mod dfsa;
pub mod home;
pub mod remote;
pub mod spin;
mod waiter;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use omx_mfs::NodeId;
use omx_mfs::transport::blocking::{self, BlockingChannel};
use omx_mfs::transport::{Identity, TransportError};
use omx_mfs::wire::PeerMessage;
use omx_mfs::wire::image::ImageHeader;
use omx_mfs::wire::link::{
    DfsaList, KeeperCommand, KeeperReport, LinkMessage, LinkReply, LinkRequest, MoveStats,
};
use omx_mfs::wire::plain::{BlockingFramed, PlainError};

use crate::capture::{self, Capture};
use crate::inject::{InjectError, Injector};
use crate::restore::{self, RestoreError, Target};
pub use waiter::Waiter;

/// The link between a process's two keepers.
pub type Link = BlockingChannel<TcpStream>;

/// How long connecting and handshaking may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keeper waits for the next part of an image.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Inject(#[from] InjectError),
    #[error("{0}")]
    Restore(#[from] RestoreError),
    #[error("{0}")]
    Capture(#[from] capture::CaptureError),
    #[error("talking to the daemon: {0}")]
    Daemon(#[from] PlainError),
    #[error("{0}")]
    Refused(String),
    #[error("the other keeper broke the protocol: {0}")]
    Protocol(String),
    #[error("the link closed")]
    LinkClosed,
    /// The sender closed a new link before the image: it set the link up
    /// while the process ran, and the process then could not go (it
    /// ended, or a reason to stay showed once it was stopped).
    #[error("the sender called the move off before sending the process")]
    CalledOff,
}

/// A keeper's channel to its daemon: framed messages, and descriptors
/// passed alongside them.
pub struct DaemonChannel {
    framed: BlockingFramed<UnixStream>,
    received_fds: Vec<OwnedFd>,
    /// Set once the channel failed: never polled again.
    closed: bool,
    /// Forwarded calls not reported yet, and when they last were.
    calls_unreported: u64,
    calls_reported_at: std::time::Instant,
    /// A pipe nobody writes to (its write end is held open too), polled
    /// in place of a closed channel.
    never: (OwnedFd, OwnedFd),
}

/// How often a keeper tells its daemon how many calls it forwarded.
const CALL_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl DaemonChannel {
    pub fn new(stream: UnixStream) -> DaemonChannel {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        DaemonChannel {
            framed: BlockingFramed::new(stream),
            received_fds: Vec::new(),
            closed: false,
            calls_unreported: 0,
            calls_reported_at: std::time::Instant::now(),
            never: (reader.into(), writer.into()),
        }
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        if self.closed {
            self.never.0.as_fd()
        } else {
            self.framed.get_ref().as_fd()
        }
    }

    /// A descriptor that never becomes readable, to poll in place of one
    /// not to be read now.
    pub fn idle_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.never.0.as_fd()
    }

    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Counts a forwarded call; the count goes to the daemon at most once
    /// a second, and before any other report.
    pub fn count_call(&mut self) {
        self.calls_unreported += 1;
        if self.calls_reported_at.elapsed() >= CALL_REPORT_INTERVAL {
            self.send_call_count();
        }
    }

    fn send_call_count(&mut self) {
        self.calls_reported_at = std::time::Instant::now();
        if self.calls_unreported > 0 {
            let count = std::mem::take(&mut self.calls_unreported);
            self.send(&KeeperReport::ForwardedCalls { count });
        }
    }

    pub fn report(&mut self, report: &KeeperReport) {
        self.send_call_count();
        self.send(report);
    }

    fn send(&mut self, report: &KeeperReport) {
        // The daemon may be gone (then so are we, by PDEATHSIG); a report
        // that cannot be sent is not worth more than a log line.
        if let Err(e) = self.framed.send(report) {
            tracing::warn!("cannot report to the daemon: {e}");
        }
    }

    /// Reads what is available (with any descriptors) and returns the next
    /// command, `Ok(None)` if no whole command is there yet, or an error if
    /// the daemon closed the channel.
    pub fn receive(&mut self) -> Result<Option<KeeperCommand>, KeeperError> {
        if let Some(command) = self.framed.buffered()? {
            return Ok(Some(command));
        }
        let mut buffer = [0u8; 4096];
        let (read, fds) = crate::sys::receive_with_fds(self.framed.get_ref(), &mut buffer)?;
        if read == 0 {
            return Err(KeeperError::Refused("the daemon closed its channel".into()));
        }
        self.received_fds.extend(fds);
        self.framed.push(&buffer[..read]);
        Ok(self.framed.buffered()?)
    }

    /// A descriptor that came with a command.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        if self.received_fds.is_empty() {
            None
        } else {
            Some(self.received_fds.remove(0))
        }
    }
}

/// Connects to `node`'s daemon, asks it to hand the connection to a keeper
/// (`request`), and starts the keeper-to-keeper channel on it.
pub fn open_link(
    identity: &Identity,
    node: NodeId,
    address: IpAddr,
    port: u16,
    request: LinkRequest,
) -> Result<Link, KeeperError> {
    let stream = TcpStream::connect_timeout(&SocketAddr::new(address, port), SETUP_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(SETUP_TIMEOUT))?;
    stream.set_write_timeout(Some(SETUP_TIMEOUT))?;
    let mut daemon = blocking::connect(stream, identity, node)?;
    daemon.send(&PeerMessage::OpenLink(request))?;
    match daemon.recv::<LinkReply>()? {
        Some(LinkReply::Accepted) => {}
        Some(LinkReply::Refused { reason }) => return Err(KeeperError::Refused(reason)),
        None => return Err(KeeperError::LinkClosed),
    }
    let stream = daemon.into_inner()?;
    let link = blocking::connect(stream, identity, node)?;
    link.get_ref().set_read_timeout(None)?;
    link.get_ref().set_write_timeout(None)?;
    Ok(link)
}

/// The accepting side of [`open_link`], once the daemon has handed the
/// connection over: `peer` is who the daemon authenticated.
pub fn accept_link(
    stream: TcpStream,
    identity: &Identity,
    peer: NodeId,
) -> Result<Link, KeeperError> {
    stream.set_read_timeout(Some(SETUP_TIMEOUT))?;
    stream.set_write_timeout(Some(SETUP_TIMEOUT))?;
    let (_, link) = blocking::accept(stream, identity, |node| {
        if node == peer {
            Ok(())
        } else {
            Err(format!("this link belongs to node {peer}, not node {node}"))
        }
    })?;
    link.get_ref().set_read_timeout(None)?;
    link.get_ref().set_write_timeout(None)?;
    Ok(link)
}

/// Sends a captured image: header, page runs (each a `PageRun` message
/// and its raw frames), end. One buffer serves every run.
pub fn send_image(
    link: &mut Link,
    captured: &Capture,
    source: &Injector,
) -> Result<(), KeeperError> {
    link.send(&LinkMessage::Header(Box::new(captured.header.clone())))?;
    let mut buffer = vec![0u8; capture::RUN_BYTES as usize];
    for (address, len) in &captured.runs {
        let run = &mut buffer[..*len as usize];
        capture::read_run(&source.memory, *address, run);
        link.send(&LinkMessage::PageRun {
            address: *address,
            len: *len,
        })?;
        link.send_stream(run)?;
    }
    link.send(&LinkMessage::ImageEnd)?;
    Ok(())
}

/// Receives the next message, treating a closed link as an error.
pub fn receive(link: &mut Link) -> Result<LinkMessage, KeeperError> {
    link.recv::<LinkMessage>()?.ok_or(KeeperError::LinkClosed)
}

/// How long home waits for the cost of a move the remote made.
const MOVE_DONE_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits (briefly) for the `MoveDone` a remote sends once the process it
/// sent on runs at its next place. The offsets it sent before the move
/// go to `on_offsets`; other messages on that finished link are ignored.
/// `None` if the remote did not say.
pub fn await_move_done(
    link: &mut Link,
    mut on_offsets: impl FnMut(&[(i32, u64)]),
) -> Option<MoveStats> {
    link.get_ref()
        .set_read_timeout(Some(MOVE_DONE_TIMEOUT))
        .ok()?;
    loop {
        match receive(link) {
            Ok(LinkMessage::MoveDone(stats)) => return Some(stats),
            Ok(LinkMessage::Offsets(offsets)) => on_offsets(&offsets),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Receives an image's header (the first message of an image).
pub fn receive_header(link: &mut Link) -> Result<ImageHeader, KeeperError> {
    link.get_ref().set_read_timeout(Some(IMAGE_TIMEOUT))?;
    match receive(link)? {
        LinkMessage::Header(header) => Ok(*header),
        other => Err(KeeperError::Protocol(format!(
            "expected an image header, got {}",
            name_of(&other)
        ))),
    }
}

/// Receives what comes before an image's pages where the process is to
/// run: the list of its DFSA files, if the sender sent one, and the
/// image's header.
pub fn receive_arrival(link: &mut Link) -> Result<(DfsaList, ImageHeader), KeeperError> {
    link.get_ref().set_read_timeout(Some(IMAGE_TIMEOUT))?;
    let first = match receive(link) {
        Err(KeeperError::LinkClosed) => return Err(KeeperError::CalledOff),
        other => other?,
    };
    match first {
        LinkMessage::DfsaFiles(list) => Ok((list, receive_header(link)?)),
        LinkMessage::Header(header) => Ok((DfsaList::default(), *header)),
        other => Err(KeeperError::Protocol(format!(
            "expected an image, got {}",
            name_of(&other)
        ))),
    }
}

/// Receives an image's pages into `injector`'s tracee and restores the
/// rest; the tracee is left stopped with the image's registers.
pub fn receive_image_into(
    link: &mut Link,
    injector: &mut Injector,
    header: &ImageHeader,
    target: Target,
) -> Result<(), KeeperError> {
    let mut phases = Phases::start();
    restore::check_compatibility(header, &capture::local_compatibility()?)?;
    let sink = restore::prepare(injector, header, target)?;
    phases.mark("areas");
    receive_pages(link, &sink, &injector.memory)?;
    link.get_ref().set_read_timeout(None)?;
    drop(sink);
    phases.mark("pages");
    restore::finish(injector, header, target)?;
    phases.mark("state");
    tracing::debug!("pid {}: restored: {}", injector.pid(), phases.summary());
    Ok(())
}

/// Receives page runs until `ImageEnd`, copying each decrypted piece into
/// the process while it is still in the cache (each piece is one Noise
/// message of 15 whole pages, as `BlockingChannel::send_stream` cuts
/// them). A lab node's CPU share limits a move, so one thread copying
/// less beats two copying more.
fn receive_pages(
    link: &mut Link,
    sink: &restore::PageSink,
    memory: &crate::sys::memory::ProcessMemory,
) -> Result<(), KeeperError> {
    let page = crate::maps::PAGE_SIZE;
    let mut partial = Vec::with_capacity(page as usize);
    loop {
        match receive(link)? {
            LinkMessage::PageRun { address, len } => {
                if len > capture::RUN_BYTES || address % page != 0 || len % page != 0 {
                    return Err(KeeperError::Protocol(format!(
                        "a page run of {len} bytes at {address:#x}"
                    )));
                }
                link.recv_stream(len, |offset, bytes| -> Result<(), KeeperError> {
                    write_whole_pages(address + offset, bytes, &mut partial, |at, pages| {
                        sink.write(memory, at, pages)
                    })
                })?;
            }
            LinkMessage::ImageEnd => return Ok(()),
            other => {
                return Err(KeeperError::Protocol(format!(
                    "expected pages, got {}",
                    name_of(&other)
                )));
            }
        }
    }
}

/// Writes the bytes of a run that go at `address` into the process, whole
/// pages at a time (`UFFDIO_COPY` takes nothing else): a page split
/// between pieces waits in `partial` for its rest. A run is whole pages,
/// so nothing waits past its end.
fn write_whole_pages<E>(
    address: u64,
    mut bytes: &[u8],
    partial: &mut Vec<u8>,
    mut write: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(), KeeperError>
where
    KeeperError: From<E>,
{
    let page = crate::maps::PAGE_SIZE as usize;
    let mut at = address - partial.len() as u64;
    if !partial.is_empty() {
        let take = (page - partial.len()).min(bytes.len());
        partial.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        if partial.len() < page {
            return Ok(());
        }
        write(at, partial)?;
        at += page as u64;
        partial.clear();
    }
    let whole = bytes.len() / page * page;
    if whole > 0 {
        write(at, &bytes[..whole])?;
    }
    partial.extend_from_slice(&bytes[whole..]);
    Ok(())
}

/// Skips the rest of an image that will not be restored.
pub fn discard_image(link: &mut Link) -> Result<(), KeeperError> {
    loop {
        match receive(link)? {
            LinkMessage::PageRun { len, .. } => {
                link.recv_stream(
                    len.min(capture::RUN_BYTES),
                    |_, _| Ok::<(), KeeperError>(()),
                )?;
            }
            LinkMessage::ImageEnd => return Ok(()),
            other => {
                return Err(KeeperError::Protocol(format!(
                    "expected pages, got {}",
                    name_of(&other)
                )));
            }
        }
    }
}

/// A message's name, for logs.
pub fn name_of(message: &LinkMessage) -> &'static str {
    match message {
        LinkMessage::Header(_) => "Header",
        LinkMessage::PageRun { .. } => "PageRun",
        LinkMessage::ImageEnd => "ImageEnd",
        LinkMessage::Restored => "Restored",
        LinkMessage::RestoreFailed { .. } => "RestoreFailed",
        LinkMessage::Call(_) => "Call",
        LinkMessage::CallResult(_) => "CallResult",
        LinkMessage::Signal { .. } => "Signal",
        LinkMessage::SignalVerdict { .. } => "SignalVerdict",
        LinkMessage::Stopped { .. } => "Stopped",
        LinkMessage::Continued => "Continued",
        LinkMessage::Exited { .. } => "Exited",
        LinkMessage::Killed { .. } => "Killed",
        LinkMessage::Kill => "Kill",
        LinkMessage::MoveTo { .. } => "MoveTo",
        LinkMessage::AbandonCall => "AbandonCall",
        LinkMessage::CallAbandoned => "CallAbandoned",
        LinkMessage::MoveFailed { .. } => "MoveFailed",
        LinkMessage::ComingHome { .. } => "ComingHome",
        LinkMessage::Released => "Released",
        LinkMessage::MoveDone(_) => "MoveDone",
        LinkMessage::Usage(_) => "Usage",
        LinkMessage::DfsaFiles(_) => "DfsaFiles",
        LinkMessage::Offsets(_) => "Offsets",
    }
}

/// Times the phases of a move, for the debug log.
pub struct Phases {
    last: std::time::Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Phases {
    pub fn start() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            marks: Vec::new(),
        }
    }

    pub fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.marks.push((phase, now - self.last));
        self.last = now;
    }

    pub fn summary(&self) -> String {
        self.marks
            .iter()
            .map(|(phase, took)| format!("{phase} {:.1} ms", took.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Dies with the daemon that started us.
pub fn die_with_parent() -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However a run is cut into pieces, it lands as whole, aligned pages
    /// with every byte in its place, and nothing is left waiting.
    #[test]
    fn a_run_cut_anywhere_lands_as_whole_pages_in_place() {
        let page = crate::maps::PAGE_SIZE as usize;
        let base = 0x7f00_0000_0000u64;
        let run: Vec<u8> = (0..16 * page).map(|i| (i % 251) as u8).collect();
        // Each cutting's last piece is the rest of the run.
        let cuttings: [&[usize]; 4] = [
            &[],
            &[page],
            &[1, page - 1, page + 1, 3, 100],
            &[61440, 2048, 100, 1],
        ];
        for cuts in cuttings {
            let mut cuts = cuts.to_vec();
            cuts.push(run.len() - cuts.iter().sum::<usize>());
            let mut landed = vec![0u8; run.len()];
            let mut partial = Vec::new();
            let mut offset = 0;
            for &cut in &cuts {
                let piece = &run[offset..offset + cut];
                write_whole_pages(base + offset as u64, piece, &mut partial, |at, pages| {
                    assert_eq!(
                        at % page as u64,
                        0,
                        "a write at {at:#x} is not page-aligned"
                    );
                    assert_eq!(pages.len() % page, 0, "a write of {} bytes", pages.len());
                    let at = (at - base) as usize;
                    landed[at..at + pages.len()].copy_from_slice(pages);
                    Ok::<(), KeeperError>(())
                })
                .unwrap();
                offset += cut;
            }
            assert!(partial.is_empty(), "bytes left waiting after {cuts:?}");
            assert!(landed == run, "the run cut as {cuts:?} landed changed");
        }
    }
}
