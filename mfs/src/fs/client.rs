//! Asking other nodes for file operations: one MFS connection per owner
//! node, many requests in flight on it, and an answer or a prompt error
//! for every caller.
//!
//! FUSE threads block in [`FsClient::call`]; each seals its request and
//! writes it to the owner's socket itself ([`SharedSender`]), and a task
//! per owner hands each answer to the thread that waits for it. When
//! the connection fails every waiting caller gets ENOTCONN at once; an
//! owner that does not answer in time gets the caller EIO. Open files
//! live in the owner's connection: after a reconnection, handles from the
//! old one are refused (EIO) rather than confused with new ones.
//!
//! Under the owner's leases it keeps what it read ahead of a file, and
//! lets writes go on behind their program ([`super::write_behind`]);
//! every other operation it sends to an owner waits first for the writes
//! to that owner still on their way.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc as sync_mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::errno::Errno;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::kept_attrs::KeptAttrs;
use super::write_behind::{Behind, PendingWrite};
use crate::NodeId;
use crate::cluster_map::ClusterMap;
use crate::transport::{Identity, SharedSender, connect};
use crate::wire::PeerMessage;
use crate::wire::fs::{Caller, FsAnswer, FsOp, FsRequest, FsResult, MAX_FS_FRAME, MAX_FS_IO};

/// How long a caller waits for an owner that does not answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whoever waits for an answer: a caller's thread, blocked until it
/// comes, or what the connection's task does with it as it comes (answer
/// the kernel: the caller's thread went back to the kernel's next request,
/// and no thread is woken on the answer's way).
enum Waiter {
    Thread(sync_mpsc::SyncSender<FsResult>),
    Then(Then),
}

/// What is done with an answer when it comes, or with the error if it
/// does not come by `deadline` (EIO) or the connection fails (ENOTCONN).
/// It runs on the connection's task, so it must not wait on anything.
struct Then {
    /// Set once the request is sent: sending may itself wait (for the
    /// connection, or for room on the socket) up to the timeout, and a
    /// request failed while it may still go out could be carried out
    /// after its caller was told it failed.
    deadline: Option<Instant>,
    /// Takes the answer and the connection's generation.
    run: Box<dyn FnOnce(Result<FsResult, Errno>, u64) + Send>,
}

/// How often a connection's late answers are looked for: a caller
/// answered through [`Then`] learns of an owner that did not answer at
/// most this long after its timeout.
const LATE_EVERY: Duration = Duration::from_millis(250);

/// How far past a sequential read the client asks to read ahead. A
/// program reading 8 KiB at a time then asks the owner once per 512 KiB,
/// not 64 times: each ask is a round trip that, on a busy node, may wait
/// for a CPU at both ends.
pub const READ_AHEAD: u32 = 512 << 10;

/// How many reads ahead a sequential reader keeps in flight, each of up
/// to [`MAX_FS_IO`] bytes. While the program takes one, the owner reads,
/// encrypts and sends the next: the network, the owner and this node work
/// at the same time instead of in turn.
pub const PREFETCH_DEPTH: usize = 2;

/// How far a program must have read a file before its reads ahead are
/// kept in flight: a program that reads the start of many files it keeps
/// open (a build reading headers) must not hold megabytes of each.
pub const PREFETCH_AFTER: u64 = 1 << 20;

/// The pieces a large write to another node's file is cut into, all sent
/// at once: the owner writes the first while the next are encrypted and
/// on the wire. Without the owner's write lease the write returns only
/// when every piece is written at the owner. Two pieces of a 1 MiB write
/// beat four (each piece is a request, an answer and their wake-ups at
/// both ends) and one (nothing overlaps): `dd bs=1M` of 2 GiB to another
/// node took 5.0 s against 5.2 s and 5.7 s (medians of 7, 7 and 3 runs,
/// alternating, each in a fresh lab).
pub const WRITE_PIECE: usize = 512 << 10;

/// A read ahead asked of the owner and not yet answered.
struct Prefetch {
    offset: u64,
    answer: sync_mpsc::Receiver<FsResult>,
}

/// What was read ahead of one open file, under a lease of its owner.
#[derive(Default)]
struct Kept {
    offset: u64,
    /// Shared with the replies cut from it: a reply takes its bytes
    /// without copying them.
    data: Bytes,
    /// `data` reaches the end of the file.
    at_end: bool,
    /// The latest lease the owner revoked: data read under it or an
    /// earlier one is not kept.
    revoked: u64,
    /// Where the next read starts if the program reads sequentially.
    next: u64,
    /// Bytes read one after the other up to `next`, since the last read
    /// elsewhere.
    streak: u64,
    /// Reads ahead in flight, in file order, each following the one
    /// before (the first follows `data`).
    prefetches: std::collections::VecDeque<Prefetch>,
    /// The owner answered the last read ahead without a lease (someone
    /// has the file open for writing): reading further ahead would be
    /// wasted until it grants one again.
    unleased: bool,
}

impl Kept {
    /// The `size` bytes at `offset`, if they are all kept (or the kept
    /// data ends at the end of the file).
    fn serve(&self, offset: u64, size: u32) -> Option<Bytes> {
        let end = self.end();
        if offset < self.offset || offset > end || (offset == end && !self.at_end) {
            return None;
        }
        let wanted_end = offset.saturating_add(u64::from(size));
        if wanted_end > end && !self.at_end {
            return None;
        }
        let from = (offset - self.offset) as usize;
        let to = (wanted_end.min(end) - self.offset) as usize;
        Some(self.data.slice(from..to))
    }

    /// Records that the program read `len` bytes at `offset`.
    fn advance(&mut self, offset: u64, len: usize) {
        self.streak = if offset == self.next {
            self.streak + len as u64
        } else {
            len as u64
        };
        self.next = offset + len as u64;
    }

    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    /// Takes in the answer to the read ahead at `offset`: data read
    /// under a lease that was not revoked since follows what is kept
    /// (whatever the program already took is dropped). Anything else
    /// ends the reading ahead.
    fn absorb(&mut self, offset: u64, answer: FsResult) {
        match answer {
            FsResult::Leased { data, epoch } if epoch > self.revoked && offset == self.end() => {
                let at_end = data.len() < MAX_FS_IO as usize;
                let taken = self.next.clamp(self.offset, self.end());
                if taken == self.end() {
                    self.data = Bytes::from(data);
                } else {
                    let left = &self.data[(taken - self.offset) as usize..];
                    let mut joined = Vec::with_capacity(left.len() + data.len());
                    joined.extend_from_slice(left);
                    joined.extend_from_slice(&data);
                    self.data = Bytes::from(joined);
                }
                self.offset = taken;
                self.at_end = at_end;
            }
            FsResult::Leased { .. } => self.prefetches.clear(),
            _ => {
                self.unleased = true;
                self.prefetches.clear();
            }
        }
    }

    /// Where the next read ahead would start, if one should be asked:
    /// the program reads sequentially and has read [`PREFETCH_AFTER`]
    /// bytes, the owner grants leases, the end of the file is not reached
    /// and fewer than [`PREFETCH_DEPTH`] are in flight.
    fn next_prefetch(&self) -> Option<u64> {
        if self.unleased
            || self.at_end
            || self.streak < PREFETCH_AFTER
            || self.prefetches.len() >= PREFETCH_DEPTH
        {
            return None;
        }
        let end = self.end();
        if self.next < self.offset || self.next > end {
            return None;
        }
        Some(
            self.prefetches
                .back()
                .map_or(end, |p| p.offset + u64::from(MAX_FS_IO)),
        )
    }
}

/// Read-ahead kept, by connection generation and handle.
type KeptFiles = Arc<Mutex<HashMap<(u64, u64), Kept>>>;

/// A file of another node open on one of its connections, as a write
/// names it.
#[derive(Debug, Clone, Copy)]
pub struct RemoteFile {
    pub node: NodeId,
    pub handle: u64,
    /// The connection it was opened on.
    pub generation: u64,
    /// Opened for appending: the owner places each write at the end.
    pub appending: bool,
}

/// One open file's writes behind its program, with the node that owns it.
struct BehindFile {
    node: NodeId,
    state: Mutex<Behind>,
}

/// Writes behind their programs, by connection generation and handle.
type BehindFiles = Arc<Mutex<HashMap<(u64, u64), Arc<BehindFile>>>>;

/// One owner's connection: being made, open, or closed (failed or
/// ended). The threads that ask send on it themselves
/// ([`SharedSender`]); a task reads the answers and hands each to the
/// thread that waits for it.
struct Peer {
    link: Mutex<Link>,
    /// Signalled when the link opens or closes.
    link_changed: Condvar,
    /// The threads waiting for an answer, by request id.
    waiting: Arc<Mutex<HashMap<u64, Waiter>>>,
    /// Names this connection, for the handles opened on it.
    generation: u64,
}

enum Link {
    Connecting,
    Open(Arc<SharedSender>),
    Closed,
}

impl Peer {
    fn is_closed(&self) -> bool {
        matches!(*self.link.lock().expect("link lock"), Link::Closed)
    }

    /// The open link's sender, once the connection is made (waiting for
    /// it until `deadline`); `Err(true)` if it closed, `Err(false)` if it
    /// is still being made at `deadline`.
    fn sender_by(&self, deadline: Instant) -> Result<Arc<SharedSender>, bool> {
        let mut link = self.link.lock().expect("link lock");
        loop {
            match &*link {
                Link::Open(sender) => return Ok(sender.clone()),
                Link::Closed => return Err(true),
                Link::Connecting => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(false);
                    }
                    link = self
                        .link_changed
                        .wait_timeout(link, left)
                        .expect("link lock")
                        .0;
                }
            }
        }
    }

    /// Opens the link on `sender`, unless it was closed while being made
    /// (the client is gone); says whether it opened.
    fn open(&self, sender: Arc<SharedSender>) -> bool {
        let mut link = self.link.lock().expect("link lock");
        if !matches!(*link, Link::Connecting) {
            sender.shut_down();
            return false;
        }
        *link = Link::Open(sender);
        self.link_changed.notify_all();
        true
    }

    /// Closes the link, shutting its socket down (which ends the task
    /// reading it).
    fn close(&self) {
        // Poison tolerated: this runs in drops, also while unwinding.
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut *link, Link::Closed);
        drop(link);
        if let Link::Open(sender) = old {
            sender.shut_down();
        }
        self.link_changed.notify_all();
    }
}

/// Connections to the owners of files.
pub struct FsClient {
    identity: Identity,
    map: watch::Receiver<Arc<ClusterMap>>,
    port: u16,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
    next_id: AtomicU64,
    next_generation: AtomicU64,
    kept: KeptFiles,
    behind: BehindFiles,
    attrs: Arc<KeptAttrs>,
}

/// How long a call may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The configured timeout.
    Bounded,
    /// As long as the connection lives (a lock the caller sleeps on).
    WhileConnected,
}

impl FsClient {
    pub fn new(
        identity: Identity,
        map: watch::Receiver<Arc<ClusterMap>>,
        port: u16,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
    ) -> FsClient {
        FsClient {
            identity,
            map,
            port,
            timeout,
            runtime,
            peers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            next_generation: AtomicU64::new(1),
            kept: Arc::new(Mutex::new(HashMap::new())),
            behind: Arc::new(Mutex::new(HashMap::new())),
            attrs: Arc::new(KeptAttrs::default()),
        }
    }

    /// What the kernel keeps of other nodes' attributes.
    pub fn attrs(&self) -> &Arc<KeptAttrs> {
        &self.attrs
    }

    /// Runs `op` at `node` as `caller`. `generation`, for an operation on
    /// an open file, is the connection it was opened on. Returns the
    /// result and the connection's generation.
    pub fn call(
        &self,
        node: NodeId,
        caller: &Caller,
        op: FsOp,
        generation: Option<u64>,
        wait: Wait,
    ) -> Result<(FsResult, u64), Errno> {
        // A write behind its program that failed fails every later write
        // of its file until a flush (its close) or fsync reports it.
        let (writes, reports) = match &op {
            FsOp::Write { handle, .. } => (generation.map(|g| (g, *handle)), None),
            FsOp::Flush { handle, .. } | FsOp::Fsync { handle, .. } => {
                (None, generation.map(|g| (g, *handle)))
            }
            _ => (None, None),
        };
        // Whatever this asks (a stat, a read, a lock, a close), it comes
        // after every write that returned.
        self.settle_writes_to(node);
        if let Some(key) = writes
            && let Some(e) = self.write_error(key, false)
        {
            return Err(e);
        }
        let (answer, generation) = self.submit(node, caller, op, generation)?;
        let result = self.wait(node, &answer, wait)?;
        if let Some(key) = reports
            && let Some(e) = self.write_error(key, true)
        {
            return Err(e);
        }
        Ok((result, generation))
    }

    /// Waits for the answers of every write to `node` still behind its
    /// program.
    fn settle_writes_to(&self, node: NodeId) {
        let files: Vec<Arc<BehindFile>> = {
            let behind = self.behind.lock().expect("behind lock");
            if behind.is_empty() {
                return;
            }
            behind
                .values()
                .filter(|file| file.node == node)
                .cloned()
                .collect()
        };
        let deadline = Instant::now() + self.timeout;
        for file in files {
            file.state
                .lock()
                .expect("behind state lock")
                .settle_all(deadline);
        }
    }

    /// The failure of a write behind its program on `key` not yet
    /// reported by a flush or fsync; `reported`: it is now.
    fn write_error(&self, key: (u64, u64), reported: bool) -> Option<Errno> {
        let file = self
            .behind
            .lock()
            .expect("behind lock")
            .get(&key)
            .cloned()?;
        let mut behind = file.state.lock().expect("behind state lock");
        if reported {
            behind.error.take()
        } else {
            behind.error
        }
    }

    /// Runs `op` at `node` as `caller` and hands the result, with the
    /// connection's generation, to `then`, without waiting: `then` runs
    /// on the connection's task when the answer comes (or with EIO when
    /// it does not come in time, ENOTCONN when the connection fails), or
    /// on this thread if the request cannot be sent. For operations that
    /// are neither writes nor flushes (whose errors are kept across
    /// calls), and `then` must not wait on anything.
    pub fn call_then(
        &self,
        node: NodeId,
        caller: &Caller,
        op: FsOp,
        then: impl FnOnce(Result<FsResult, Errno>, u64) + Send + 'static,
    ) {
        debug_assert!(!matches!(
            op,
            FsOp::Write { .. } | FsOp::Flush { .. } | FsOp::Fsync { .. }
        ));
        self.settle_writes_to(node);
        let waiter = Waiter::Then(Then {
            deadline: None,
            run: Box::new(then),
        });
        if let Err((e, Some(Waiter::Then(then)))) =
            self.send_request(node, caller, op, None, None, waiter)
        {
            (then.run)(Err(e), 0);
        }
    }

    /// Sends `op` to `node` as `caller` without waiting: the answer will
    /// come on the returned receiver. Returns it and the connection's
    /// generation.
    fn submit(
        &self,
        node: NodeId,
        caller: &Caller,
        op: FsOp,
        generation: Option<u64>,
    ) -> Result<(sync_mpsc::Receiver<FsResult>, u64), Errno> {
        self.submit_with_payload(node, caller, op, None, generation)
    }

    /// [`submit`](Self::submit), with `payload` sent after the request,
    /// outside it: a write's data, taken from the caller's buffer.
    fn submit_with_payload(
        &self,
        node: NodeId,
        caller: &Caller,
        op: FsOp,
        payload: Option<&[u8]>,
        generation: Option<u64>,
    ) -> Result<(sync_mpsc::Receiver<FsResult>, u64), Errno> {
        let (tx, rx) = sync_mpsc::sync_channel(1);
        self.send_request(node, caller, op, payload, generation, Waiter::Thread(tx))
            .map(|generation| (rx, generation))
            .map_err(|(e, _)| e)
    }

    /// Sends `op` (and `payload`) to `node` as `caller`, its answer to go
    /// to `waiter`; returns the connection's generation. On failure gives
    /// the waiter back unless the answer's way already has it.
    fn send_request(
        &self,
        node: NodeId,
        caller: &Caller,
        op: FsOp,
        payload: Option<&[u8]>,
        generation: Option<u64>,
        waiter: Waiter,
    ) -> Result<u64, (Errno, Option<Waiter>)> {
        let request = FsRequest {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            caller: caller.clone(),
            op,
        };
        let deadline = Instant::now() + self.timeout;
        // A connection that failed since we last looked is replaced once.
        for _ in 0..2 {
            let peer = match self.peer(node) {
                Ok(peer) => peer,
                Err(e) => return Err((e, Some(waiter))),
            };
            if generation.is_some_and(|g| g != peer.generation) {
                return Err((Errno::EIO, Some(waiter)));
            }
            let sender = match peer.sender_by(deadline) {
                Ok(sender) => sender,
                Err(true) => continue,
                Err(false) => {
                    debug!("no connection to node {node} within {:?}", self.timeout);
                    return Err((Errno::EIO, Some(waiter)));
                }
            };
            // Waiting before sending: the answer may come at once.
            peer.waiting
                .lock()
                .expect("waiters lock")
                .insert(request.id, waiter);
            return match sender.send(&request, payload, deadline) {
                Ok(()) => {
                    // The answer's wait starts now, as a thread's does.
                    let mut waiting = peer.waiting.lock().expect("waiters lock");
                    if let Some(Waiter::Then(then)) = waiting.get_mut(&request.id) {
                        then.deadline = Some(Instant::now() + self.timeout);
                    }
                    Ok(peer.generation)
                }
                Err(e) => {
                    debug!("sending to node {node} failed: {e}");
                    let waiter = peer
                        .waiting
                        .lock()
                        .expect("waiters lock")
                        .remove(&request.id);
                    Err((Errno::ENOTCONN, waiter))
                }
            };
        }
        Err((Errno::ENOTCONN, Some(waiter)))
    }

    /// The answer to a request sent to `node`, within the bounds of `wait`.
    fn wait(
        &self,
        node: NodeId,
        answer: &sync_mpsc::Receiver<FsResult>,
        wait: Wait,
    ) -> Result<FsResult, Errno> {
        match wait {
            Wait::Bounded => self.wait_until(node, answer, Instant::now() + self.timeout),
            Wait::WhileConnected => answer.recv().map_err(|_| Errno::ENOTCONN),
        }
    }

    /// The answer to a request sent to `node`, if it comes by `deadline`
    /// (several requests of one operation share one).
    fn wait_until(
        &self,
        node: NodeId,
        answer: &sync_mpsc::Receiver<FsResult>,
        deadline: Instant,
    ) -> Result<FsResult, Errno> {
        let left = deadline.saturating_duration_since(Instant::now());
        answer.recv_timeout(left).map_err(|e| match e {
            sync_mpsc::RecvTimeoutError::Timeout => {
                debug!("node {node} did not answer within {:?}", self.timeout);
                Errno::EIO
            }
            sync_mpsc::RecvTimeoutError::Disconnected => Errno::ENOTCONN,
        })
    }

    /// Reads `size` bytes at `offset` of `handle`, open at `node` on
    /// connection `generation`: from what was read ahead if it has them,
    /// else from the owner, asking for more when the program reads
    /// sequentially. A sequential reader also keeps up to
    /// [`PREFETCH_DEPTH`] reads ahead in flight.
    pub fn read(
        &self,
        node: NodeId,
        caller: &Caller,
        handle: u64,
        generation: u64,
        offset: u64,
        size: u32,
    ) -> Result<Bytes, Errno> {
        let key = (generation, handle);
        let sequential = loop {
            let prefetch = {
                let mut kept = self.kept.lock().expect("kept lock");
                let file = kept.entry(key).or_default();
                if let Some(data) = file.serve(offset, size) {
                    file.advance(offset, data.len());
                    self.prefetch(node, caller, key, file);
                    return Ok(data);
                }
                if file.next != offset {
                    // Not sequential: what is in flight is of no use.
                    file.prefetches.clear();
                    break false;
                }
                match file.prefetches.pop_front() {
                    Some(prefetch) => prefetch,
                    None => break true,
                }
            };
            // The bytes are on their way: wait for them, not for a new ask.
            let answer = self.wait(node, &prefetch.answer, Wait::Bounded)?;
            let mut kept = self.kept.lock().expect("kept lock");
            kept.entry(key).or_default().absorb(prefetch.offset, answer);
        };
        let ahead = if sequential {
            READ_AHEAD.min(MAX_FS_IO.saturating_sub(size))
        } else {
            0
        };
        let op = FsOp::Read {
            handle,
            offset,
            size,
            ahead,
        };
        let (result, _) = self.call(node, caller, op, Some(generation), Wait::Bounded)?;
        // What is kept from here on: the bytes past those asked for, if
        // they came under a lease not revoked since, and whether they reach
        // the end of the file. Without a lease, nothing, not even where
        // the file ends.
        let (data, kept_ahead) = match result {
            FsResult::Leased { data, epoch } => {
                let at_end = (data.len() as u64) < u64::from(size) + u64::from(ahead);
                // Cut where it lies: the part asked for goes to the
                // program, the rest is kept, neither copied.
                let mut data = Bytes::from(data);
                let read_ahead = data.split_off(data.len().min(size as usize));
                (data, Some((read_ahead, at_end, epoch)))
            }
            FsResult::Data(data) => (Bytes::from(data), None),
            FsResult::Errno(e) => return Err(Errno::from_raw(e)),
            other => {
                debug!("unexpected answer to a read: {other:?}");
                return Err(Errno::EIO);
            }
        };
        let mut kept = self.kept.lock().expect("kept lock");
        let file = kept.entry(key).or_default();
        file.advance(offset, data.len());
        file.prefetches.clear();
        file.offset = file.next;
        file.unleased = kept_ahead.is_none() && ahead > 0;
        (file.data, file.at_end) = match kept_ahead {
            Some((read_ahead, at_end, epoch)) if epoch > file.revoked => (read_ahead, at_end),
            _ => (Bytes::new(), false),
        };
        if sequential {
            self.prefetch(node, caller, key, file);
        }
        Ok(data)
    }

    /// Writes `data` at `offset` of `file`, as pieces of [`WRITE_PIECE`]
    /// bytes in flight together (positional writes of disjoint ranges),
    /// or whole if it is open for appending (the owner places it at the
    /// end, and runs the appends of a handle in the order they came).
    /// Returns how
    /// many bytes were written from `offset` on without a gap, and whether
    /// they went behind the program; an error only if the first piece
    /// failed.
    ///
    /// Each piece asks for the owner's write lease. While this node holds
    /// it, the write returns once sent, with up to `WRITE_BEHIND` bytes in
    /// `WRITES_BEHIND` requests of the file on their way (see
    /// [`super::write_behind`]); without it, once every piece is written
    /// at the owner.
    pub fn write_in_pieces(
        &self,
        file: RemoteFile,
        caller: &Caller,
        offset: u64,
        data: &[u8],
    ) -> Result<(u32, bool), Errno> {
        let RemoteFile {
            node,
            handle,
            generation,
            appending,
        } = file;
        let behind_file = self.behind_file(node, (generation, handle));
        // Held until the write is sent (or answered): a revoke waits for
        // it, and then for everything sent so far.
        let mut behind = behind_file.state.lock().expect("behind state lock");
        if let Some(e) = behind.error {
            return Err(e);
        }
        // An append is one request, so the owner lands it whole.
        let piece_len = if appending {
            data.len().max(1)
        } else {
            WRITE_PIECE
        };
        if behind.lease.is_some() {
            let deadline = Instant::now() + self.timeout;
            // Appends keep their order at the owner; other writes may not
            // cross ones still on their way.
            if !appending && behind.overlaps(offset, data.len()) {
                behind.settle_all(deadline);
            }
            behind.make_room(data.len(), data.len().div_ceil(piece_len).max(1), deadline);
            if let Some(e) = behind.error {
                return Err(e);
            }
        }
        let mut sent = Vec::new();
        for (i, piece) in data.chunks(piece_len).enumerate() {
            // The data goes as the request's payload: copied once, from
            // FUSE's buffer straight into the encoded request.
            let piece_offset = offset + (i * piece_len) as u64;
            let op = FsOp::Write {
                handle,
                offset: piece_offset,
                data: Vec::new(),
                lease: true,
            };
            match self.submit_with_payload(node, caller, op, Some(piece), Some(generation)) {
                Ok((answer, _)) => sent.push(PendingWrite {
                    offset: piece_offset,
                    len: piece.len(),
                    answer,
                }),
                Err(e) if sent.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        if behind.lease.is_some() {
            // Behind the program: the owner holds back anyone else until
            // these are answered.
            let sent_bytes: usize = sent.iter().map(|write| write.len).sum();
            behind.pending.extend(sent);
            return Ok((sent_bytes as u32, true));
        }
        // Every piece is waited for, even after a failure, so that none is
        // still being written when the caller learns the outcome; all
        // within one timeout, as one request would be.
        let deadline = Instant::now() + self.timeout;
        let mut written = 0u32;
        let mut gap = false;
        let mut first_error = None;
        for PendingWrite { len, answer, .. } in sent {
            let answer = match self.wait_until(node, &answer, deadline) {
                Ok(FsResult::WrittenLeased { written, epoch }) => {
                    behind.grant(epoch);
                    Ok(FsResult::Written(written))
                }
                other => other,
            };
            match answer {
                Ok(FsResult::Written(n)) if !gap => {
                    written += n;
                    gap = n as usize != len;
                }
                Ok(FsResult::Written(_)) => {}
                Ok(FsResult::Errno(e)) => {
                    gap = true;
                    first_error.get_or_insert(Errno::from_raw(e));
                }
                Ok(other) => {
                    debug!("unexpected answer to a write: {other:?}");
                    gap = true;
                    first_error.get_or_insert(Errno::EIO);
                }
                Err(e) => {
                    gap = true;
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if written == 0 => Err(e),
            _ => Ok((written, false)),
        }
    }

    /// Asks the owner for the next reads ahead of a sequential reader of
    /// `key`, as many as [`Kept::next_prefetch`] allows. They run under
    /// a lease, as any read ahead: an answer without one is dropped.
    fn prefetch(&self, node: NodeId, caller: &Caller, key: (u64, u64), file: &mut Kept) {
        let (generation, handle) = key;
        while let Some(offset) = file.next_prefetch() {
            let op = FsOp::Read {
                handle,
                offset,
                size: 0,
                ahead: MAX_FS_IO,
            };
            match self.submit(node, caller, op, Some(generation)) {
                Ok((answer, _)) => file.prefetches.push_back(Prefetch { offset, answer }),
                Err(_) => return,
            }
        }
    }

    /// The writes behind their program of `key`, open at `node`.
    fn behind_file(&self, node: NodeId, key: (u64, u64)) -> Arc<BehindFile> {
        self.behind
            .lock()
            .expect("behind lock")
            .entry(key)
            .or_insert_with(|| {
                Arc::new(BehindFile {
                    node,
                    state: Mutex::new(Behind::default()),
                })
            })
            .clone()
    }

    /// Drops what was read ahead of a handle that is closed, and what is
    /// known of its writes (its close settled them).
    pub fn forget(&self, handle: u64, generation: u64) {
        self.kept
            .lock()
            .expect("kept lock")
            .remove(&(generation, handle));
        self.behind
            .lock()
            .expect("behind lock")
            .remove(&(generation, handle));
    }

    /// The live connection to `node`, made if needed.
    fn peer(&self, node: NodeId) -> Result<Arc<Peer>, Errno> {
        let mut peers = self.peers.lock().expect("peers lock");
        if let Some(peer) = peers.get(&node)
            && !peer.is_closed()
        {
            return Ok(peer.clone());
        }
        let Some(address) = self.map.borrow().address(node) else {
            return Err(Errno::ENOENT);
        };
        let peer = Arc::new(Peer {
            link: Mutex::new(Link::Connecting),
            link_changed: Condvar::new(),
            waiting: Arc::new(Mutex::new(HashMap::new())),
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
        });
        peers.insert(node, peer.clone());
        let identity = self.identity.clone();
        let port = self.port;
        let timeout = self.timeout;
        // Closed however the task ends: failing, panicking, or dropped
        // with the runtime. A link left "being made" would hold every
        // caller to the timeout, for ever.
        let serving = ClosesPeer {
            node,
            peer: peer.clone(),
            kept: self.kept.clone(),
            behind: self.behind.clone(),
            attrs: self.attrs.clone(),
        };
        self.runtime.spawn(async move {
            // Ends with this task, also if it panics.
            let _late = AbortOnDrop(
                tokio::spawn(fail_late_answers(
                    node,
                    serving.peer.waiting.clone(),
                    serving.peer.generation,
                ))
                .abort_handle(),
            );
            let served = serve_peer(node, address, port, timeout, &identity, &serving);
            if let Err(e) = served.await {
                warn!("MFS connection to node {node} failed: {e}");
            }
            drop(serving);
        });
        Ok(peer)
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Gives EIO, every [`LATE_EVERY`], to each [`Then`] whose answer did
/// not come by its deadline, as a waiting thread gets it when its wait
/// runs out. Runs as long as the connection.
async fn fail_late_answers(
    node: NodeId,
    waiting: Arc<Mutex<HashMap<u64, Waiter>>>,
    generation: u64,
) {
    let mut every = tokio::time::interval(LATE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = Instant::now();
        let late: Vec<Then> = {
            let mut waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<u64> = waiting
                .iter()
                .filter(|(_, waiter)| {
                    matches!(waiter, Waiter::Then(Then { deadline: Some(deadline), .. }) if *deadline <= now)
                })
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| match waiting.remove(&id) {
                    Some(Waiter::Then(then)) => Some(then),
                    _ => None,
                })
                .collect()
        };
        for then in late {
            debug!("node {node} did not answer in time");
            (then.run)(Err(Errno::EIO), generation);
        }
    }
}

/// Ends a connection's peer when dropped: closes its link, tells every
/// caller still waiting (ENOTCONN at once), and forgets what was read
/// through its handles, which are gone with it.
struct ClosesPeer {
    node: NodeId,
    peer: Arc<Peer>,
    kept: KeptFiles,
    /// Not touched when closing: a write behind its program on the
    /// connection fails (ENOTCONN) when its answer is waited for, and is
    /// reported then.
    behind: BehindFiles,
    /// Every attribute kept of the node is dropped: no take-back comes.
    attrs: Arc<KeptAttrs>,
}

impl Drop for ClosesPeer {
    fn drop(&mut self) {
        self.peer.close();
        self.attrs.connection_lost(self.node, self.peer.generation);
        // Locks poisoned by a panic still hold consistent maps: each
        // change to them is a single insert or remove.
        let mut waiting = self.peer.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let waiters: Vec<Waiter> = waiting.drain().map(|(_, waiter)| waiter).collect();
        drop(waiting);
        // Threads learn it from their dropped sender; the rest are told
        // here, outside the lock.
        for waiter in waiters {
            if let Waiter::Then(then) = waiter {
                (then.run)(Err(Errno::ENOTCONN), self.peer.generation);
            }
        }
        let generation = self.peer.generation;
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(g, _), _| *g != generation);
    }
}

/// A client no longer used closes its connections: each one's task reads
/// until its socket is shut down, and its callers are gone.
impl Drop for FsClient {
    fn drop(&mut self) {
        for peer in self.peers.lock().expect("peers lock").values() {
            peer.close();
        }
    }
}

/// What a connection needs to honour the owner's revokes.
struct Revokes {
    generation: u64,
    kept: KeptFiles,
    behind: BehindFiles,
    /// The connection's sender, for the confirmations.
    sender: Arc<SharedSender>,
    timeout: Duration,
}

impl Revokes {
    /// Drops what was read ahead of `handle` under lease `epoch` or an
    /// earlier one, or has every write sent under its write lease
    /// answered, then confirms (whoever wants the file at the owner waits
    /// for that).
    fn revoke(&self, handle: u64, epoch: u64) {
        {
            let mut kept = self.kept.lock().expect("kept lock");
            let file = kept.entry((self.generation, handle)).or_default();
            file.revoked = file.revoked.max(epoch);
            file.data = Bytes::new();
            // Not even where the file ends is known now: a writer may be
            // about to extend it.
            file.at_end = false;
            file.prefetches.clear();
        }
        let request = confirmation(FsOp::Revoked { handle, epoch });
        // Sending may wait for the socket, and for callers sending before
        // it: not on the task that reads the answers they wait for.
        let sender = self.sender.clone();
        let deadline = Instant::now() + self.timeout;
        let behind = self
            .behind
            .lock()
            .expect("behind lock")
            .get(&(self.generation, handle))
            .cloned();
        tokio::task::spawn_blocking(move || {
            // The answers come on the task that called this: wait here.
            if let Some(file) = behind {
                let mut behind = file.state.lock().expect("behind state lock");
                behind.revoked = behind.revoked.max(epoch);
                behind.lease = None;
                behind.settle_all(deadline);
            }
            if let Err(e) = sender.send(&request, None, deadline) {
                debug!("confirming a revoke failed: {e}");
            }
        });
    }
}

impl Revokes {
    /// Sends the confirmation `op` (the owner waits for it).
    fn confirm(&self, op: FsOp) {
        let request = confirmation(op);
        // Sending may wait for the socket: not on the task that reads
        // the answers.
        let sender = self.sender.clone();
        let deadline = Instant::now() + self.timeout;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = sender.send(&request, None, deadline) {
                debug!("confirming a take-back failed: {e}");
            }
        });
    }
}

/// A confirmation to the owner, whose answer nobody waits for.
fn confirmation(op: FsOp) -> FsRequest {
    FsRequest {
        id: CONFIRMATION_ID,
        caller: Caller {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            pid: 0,
        },
        op,
    }
}

/// The id of confirmations, whose answers nobody waits for (the client
/// numbers its requests from 1).
const CONFIRMATION_ID: u64 = 0;

/// Connects to `node`, opens the link of `files`' peer, then hands each
/// answer to the thread waiting for it (and each revoke to [`Revokes`])
/// until the connection fails.
async fn serve_peer(
    node: NodeId,
    address: std::net::IpAddr,
    port: u16,
    timeout: Duration,
    identity: &Identity,
    files: &ClosesPeer,
) -> Result<(), String> {
    let ClosesPeer {
        peer,
        kept,
        behind,
        attrs,
        ..
    } = files;
    let stream = tokio::time::timeout(timeout, TcpStream::connect((address, port)))
        .await
        .map_err(|_| format!("no answer from {address}:{port} within {timeout:?}"))?
        .map_err(|e| format!("cannot connect to {address}:{port}: {e}"))?;
    let _ = stream.set_nodelay(true);
    // The callers' threads write on their own descriptor of the socket.
    let socket = stream
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpStream::from)
        .map_err(|e| format!("cannot duplicate the socket to {address}:{port}: {e}"))?;
    let mut channel = connect(stream, identity, node)
        .await
        .map_err(|e| e.to_string())?;
    channel
        .send(&PeerMessage::OpenFs)
        .await
        .map_err(|e| e.to_string())?;
    channel.limit_frames(MAX_FS_FRAME);
    debug!("MFS connection to node {node} open");
    let (mut reader, writer) = channel.split();
    let sender = Arc::new(SharedSender::new(writer.into_sealer(), socket));
    if !peer.open(sender.clone()) {
        return Err("the client closed it while it was being made".to_string());
    }
    attrs.connected(node, peer.generation);
    let revokes = Revokes {
        generation: peer.generation,
        kept: kept.clone(),
        behind: behind.clone(),
        sender,
        timeout,
    };
    loop {
        let answer = reader
            .recv_with_payload(|answer: FsAnswer, payload| answer.with_payload(payload))
            .await;
        match answer {
            Ok(Some(Err(e))) => return Err(format!("the owner sent a malformed answer: {e}")),
            Ok(Some(Ok(FsAnswer::Reply(reply)))) => {
                // What the asker's kernel kept of the files its request
                // changed goes before the caller has the answer.
                for change in &reply.changed {
                    attrs.changed(node, (change.dev, change.ino), change.number);
                }
                let waiter = peer.waiting.lock().expect("waiters lock").remove(&reply.id);
                match waiter {
                    Some(Waiter::Thread(thread)) => {
                        let _ = thread.try_send(reply.result);
                    }
                    Some(Waiter::Then(then)) => (then.run)(Ok(reply.result), peer.generation),
                    None => {}
                }
            }
            Ok(Some(Ok(FsAnswer::Revoke { handle, epoch }))) => revokes.revoke(handle, epoch),
            Ok(Some(Ok(FsAnswer::AttrsChanged {
                dev,
                ino,
                number,
                confirm,
            }))) => {
                attrs.changed(node, (dev, ino), number);
                if confirm {
                    revokes.confirm(FsOp::AttrsDropped { dev, ino, number });
                }
            }
            Ok(None) => return Err("the owner closed the connection".to_string()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose task is dropped while it is being made (here:
    /// the runtime ends while the owner never answers the handshake)
    /// still tells its caller at once, ENOTCONN, instead of holding it to
    /// the timeout with a link "being made" for ever.
    #[test]
    fn a_caller_waiting_for_a_connection_learns_at_once_when_its_task_is_dropped() {
        use crate::cluster_key::ClusterKey;
        // Accepts connections and never says a word.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let map = ClusterMap::parse("1 127.0.0.2 1\n2 127.0.0.1 1\n", "test").unwrap();
        let (_map_sender, map) = watch::channel(Arc::new(map));
        let identity = Identity {
            node: NodeId::new(1).unwrap(),
            key: ClusterKey::generate().unwrap(),
        };
        let timeout = Duration::from_secs(30);
        let client = Arc::new(FsClient::new(
            identity,
            map,
            port,
            timeout,
            runtime.handle().clone(),
        ));
        let asking = std::thread::spawn({
            let client = client.clone();
            move || {
                let caller = Caller {
                    uid: 0,
                    gid: 0,
                    groups: vec![],
                    pid: 1,
                };
                let op = FsOp::GetAttr {
                    path: b"/".to_vec(),
                    handle: None,
                };
                let started = Instant::now();
                let result = client.call(NodeId::new(2).unwrap(), &caller, op, None, Wait::Bounded);
                (result.map(|_| ()), started.elapsed())
            }
        });
        // The handshake is under way once the owner has accepted.
        let _held_open = silent.join().unwrap().unwrap();
        runtime.shutdown_background();
        let (result, waited) = asking.join().unwrap();
        assert_eq!(result, Err(Errno::ENOTCONN));
        assert!(
            waited < timeout,
            "the caller was held {waited:?}, to the timeout"
        );
    }

    fn leased(data: Vec<u8>, epoch: u64) -> FsResult {
        FsResult::Leased { data, epoch }
    }

    /// An in-flight read ahead at `offset`, already answered with `answer`.
    fn answered(offset: u64, answer: FsResult) -> Prefetch {
        let (tx, rx) = sync_mpsc::sync_channel(1);
        tx.send(answer).unwrap();
        Prefetch { offset, answer: rx }
    }

    #[test]
    fn reads_ahead_are_kept_in_flight_only_for_a_long_sequential_reader() {
        let mut file = Kept::default();
        file.advance(0, 4096);
        assert_eq!(
            file.next_prefetch(),
            None,
            "the start of a file is not enough"
        );
        file.advance(4096, PREFETCH_AFTER as usize);
        // Read from the owner: nothing kept, the next bytes follow.
        file.offset = file.next;
        let end = file.end();
        assert_eq!(
            file.next_prefetch(),
            Some(end),
            "after a long run, what follows"
        );
        file.prefetches.push_back(answered(end, FsResult::Done));
        assert_eq!(file.next_prefetch(), Some(end + u64::from(MAX_FS_IO)));
        file.prefetches.push_back(answered(end, FsResult::Done));
        assert_eq!(
            file.next_prefetch(),
            None,
            "at most PREFETCH_DEPTH in flight"
        );
        // A read elsewhere starts the run over.
        file.prefetches.clear();
        file.advance(50 << 20, 4096);
        file.offset = file.next;
        assert_eq!(file.next_prefetch(), None);
    }

    #[test]
    fn an_answer_under_a_revoked_lease_is_dropped_and_one_without_a_lease_stops_reading_ahead() {
        let mut file = Kept {
            offset: 0,
            data: Bytes::from(vec![1; 10]),
            next: 4,
            streak: PREFETCH_AFTER,
            ..Kept::default()
        };
        file.absorb(10, leased(vec![2; MAX_FS_IO as usize], 3));
        // What the program took is dropped; the rest and the new bytes stay.
        assert_eq!(file.offset, 4);
        assert_eq!(file.data.len(), 6 + MAX_FS_IO as usize);
        assert!(!file.at_end);
        // Revoked meanwhile (epoch 5 and before): not kept.
        file.revoked = 5;
        let end = file.end();
        file.absorb(end, leased(vec![3; 100], 5));
        assert_eq!(file.end(), end);
        // A short answer under a live lease reaches the end of the file.
        file.absorb(end, leased(vec![4; 100], 6));
        assert!(file.at_end);
        assert_eq!(file.serve(end, 4096), Some(Bytes::from(vec![4; 100])));
        // No lease: nothing kept, and no more reading ahead.
        let mut file = Kept {
            streak: PREFETCH_AFTER,
            ..Kept::default()
        };
        file.absorb(0, FsResult::Data(vec![5; 10]));
        assert!(file.data.is_empty() && file.unleased);
        assert_eq!(file.next_prefetch(), None);
    }
}
