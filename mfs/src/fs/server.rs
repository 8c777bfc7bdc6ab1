//! Serving another node's MFS connection: each request runs on a blocking
//! thread as its caller (squashed if root), answers go back as they come.
//! Files the connection opened are closed when it ends, which also
//! releases every lock its callers held.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::attr_grants::{AttrHolder, FileId, Tell};
use super::creds::{Credentials, Squash};
use super::export::{Exporter, Revoker};
use crate::NodeId;
use crate::transport::SecureChannel;
use crate::wire::fs::{FsAnswer, FsOp, FsReply, FsRequest, FsResult, MAX_FS_FRAME};

/// Answers queued for the writer before requests wait.
const ANSWER_QUEUE: usize = 256;
/// How long a writer of this node waits for a node to confirm it dropped
/// what it read ahead (then it goes on, and the node is warned of in the
/// log: it did not answer in time).
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Numbers connections, for the attribute grants they hold.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Takes back the read leases of one connection's handles, and the
/// attributes it keeps.
struct ConnectionRevoker {
    id: u64,
    from: NodeId,
    answers: mpsc::Sender<FsAnswer>,
    confirmations: Mutex<HashMap<(u64, u64), std::sync::mpsc::SyncSender<()>>>,
    /// Attribute take-backs waiting for their confirmation, by file and
    /// number.
    attr_confirmations: Mutex<HashMap<(FileId, u64), std::sync::mpsc::SyncSender<()>>>,
}

impl AttrHolder for ConnectionRevoker {
    fn id(&self) -> u64 {
        self.id
    }

    fn attrs_changed(&self, file: FileId, number: u64, tell: Tell) {
        let message = FsAnswer::AttrsChanged {
            dev: file.0,
            ino: file.1,
            number,
            confirm: matches!(tell, Tell::AndWait(_)),
        };
        let until = match tell {
            Tell::Soon => {
                if self.answers.try_send(message).is_err() {
                    debug!(
                        "node {} is not reading its MFS connection: it keeps the attributes of a \
                         file changed on this node's disk until its grant runs out",
                        self.from
                    );
                }
                return;
            }
            Tell::AndWait(until) => until,
        };
        // Past the grant's end the holder's kernel keeps nothing: the
        // change may go on then, confirmed or not (or the connection
        // closed, or not read until then).
        let send = || send_until(&self.answers, message, until);
        let wait = || until.saturating_duration_since(std::time::Instant::now());
        if confirmed_in_time(&self.attr_confirmations, (file, number), send, wait) == Some(false) {
            warn!(
                "node {} did not confirm in time that it dropped the attributes it kept of a \
                 file that is changing; its grant has run out",
                self.from
            );
        }
    }
}

/// Sends a take-back with `send` and waits up to `wait` for its
/// confirmation under `key` in `waiting`: whether it came, or `None` when
/// it could not be sent.
fn confirmed_in_time<K: std::hash::Hash + Eq + Copy>(
    waiting: &Mutex<HashMap<K, std::sync::mpsc::SyncSender<()>>>,
    key: K,
    send: impl FnOnce() -> bool,
    wait: impl FnOnce() -> Duration,
) -> Option<bool> {
    let (confirmed, confirmation) = std::sync::mpsc::sync_channel(1);
    waiting
        .lock()
        .expect("confirmations lock")
        .insert(key, confirmed);
    let came = send().then(|| confirmation.recv_timeout(wait()).is_ok());
    waiting.lock().expect("confirmations lock").remove(&key);
    came
}

/// Queues `answer`, waiting for room until `until` at most; whether it
/// was queued.
fn send_until(
    answers: &mpsc::Sender<FsAnswer>,
    answer: FsAnswer,
    until: std::time::Instant,
) -> bool {
    let mut answer = answer;
    loop {
        match answers.try_send(answer) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(again)) => {
                if std::time::Instant::now() >= until {
                    return false;
                }
                answer = again;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Revoker for ConnectionRevoker {
    fn revoke(&self, handle: u64, epoch: u64) {
        // A connection that ended has nothing left to revoke.
        let send = || {
            self.answers
                .blocking_send(FsAnswer::Revoke { handle, epoch })
                .is_ok()
        };
        let confirmed = confirmed_in_time(&self.confirmations, (handle, epoch), send, || {
            REVOKE_TIMEOUT
        });
        if confirmed == Some(false) {
            warn!(
                "node {} did not confirm within {REVOKE_TIMEOUT:?} that it dropped what it read \
                 ahead of a file, or landed what it wrote behind its program, before another \
                 process uses the file",
                self.from
            );
        }
    }
}

/// The writes to one open file, run one after the other in the order they
/// came, as its program made them: the writer's node sends several at once
/// when it writes behind the program. Appends must land in that order (the
/// owner places each at the end), and so must writes that extend the file:
/// run side by side, a write past the end could take the last free blocks
/// of a full disk before the write below it, leaving a hole under data
/// the program was told failed. (Other requests run side by side.)
#[derive(Default)]
struct InOrder {
    /// Writes waiting, and whether a thread is running them.
    queue: Mutex<(VecDeque<FsRequest>, bool)>,
}

/// Serves `from`'s MFS connection until it closes.
pub async fn serve(
    mut channel: SecureChannel<TcpStream>,
    from: NodeId,
    exporter: Arc<Exporter>,
    squash: Squash,
) {
    channel.limit_frames(MAX_FS_FRAME);
    let (mut reader, mut writer) = channel.split();
    let (answers, mut to_send) = mpsc::channel::<FsAnswer>(ANSWER_QUEUE);
    let writing = tokio::spawn(async move {
        while let Some(mut answer) = to_send.recv().await {
            let payload = answer.take_payload();
            let sent = if payload.is_empty() {
                writer.send(&answer).await
            } else {
                writer.send_with_payload(&answer, &payload).await
            };
            if sent.is_err() {
                break;
            }
        }
    });
    let handles: Arc<Mutex<HashSet<u64>>> = Arc::new(Mutex::new(HashSet::new()));
    let mut in_order: HashMap<u64, Arc<InOrder>> = HashMap::new();
    let revoker = Arc::new(ConnectionRevoker {
        id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        from,
        answers: answers.clone(),
        confirmations: Mutex::new(HashMap::new()),
        attr_confirmations: Mutex::new(HashMap::new()),
    });
    let holder: Arc<dyn AttrHolder> = revoker.clone();
    loop {
        let received = reader
            .recv_with_payload(|request: FsRequest, payload| request.with_payload(payload))
            .await;
        let request = match received {
            Ok(Some(Ok(request))) => request,
            Ok(Some(Err(e))) => {
                warn!("dropping the MFS connection of node {from}: a malformed request: {e}");
                break;
            }
            Ok(None) => {
                debug!("node {from} closed its MFS connection");
                break;
            }
            Err(e) => {
                warn!("dropping the MFS connection of node {from}: {e}");
                break;
            }
        };
        // A writer of this node waits for this confirmation: never behind
        // a blocking thread.
        let waiting = match request.op {
            FsOp::Revoked { handle, epoch } => Some(
                revoker
                    .confirmations
                    .lock()
                    .expect("confirmations lock")
                    .remove(&(handle, epoch)),
            ),
            FsOp::AttrsDropped { dev, ino, number } => Some(
                revoker
                    .attr_confirmations
                    .lock()
                    .expect("confirmations lock")
                    .remove(&((dev, ino), number)),
            ),
            _ => None,
        };
        if let Some(waiting) = waiting {
            if let Some(confirmed) = waiting {
                let _ = confirmed.try_send(());
            }
            let reply = FsReply::of(request.id, FsResult::Done);
            let _ = answers.send(FsAnswer::Reply(reply)).await;
            continue;
        }
        if let FsOp::Release { handle } = &request.op {
            in_order.remove(handle);
        }
        let write = match &request.op {
            FsOp::Write { handle, .. } => Some(*handle),
            _ => None,
        };
        if let Some(handle) = write {
            let queue = in_order.entry(handle).or_default().clone();
            let mut waiting = queue.queue.lock().expect("in-order lock");
            waiting.0.push_back(request);
            if waiting.1 {
                continue;
            }
            waiting.1 = true;
            drop(waiting);
            let exporter = exporter.clone();
            let answers = answers.clone();
            let handles = handles.clone();
            let revoker: Arc<dyn Revoker> = revoker.clone();
            let holder = holder.clone();
            tokio::task::spawn_blocking(move || {
                loop {
                    let request = {
                        let mut waiting = queue.queue.lock().expect("in-order lock");
                        match waiting.0.pop_front() {
                            Some(request) => request,
                            None => {
                                waiting.1 = false;
                                return;
                            }
                        }
                    };
                    let reply = answer(
                        &exporter, from, request, squash, &handles, &revoker, &holder,
                    );
                    let _ = answers.blocking_send(FsAnswer::Reply(reply));
                }
            });
            continue;
        }
        // A look runs here, on the reader: handing it to a blocking
        // thread and its answer back costs more than the look itself
        // (on a virtual machine whose idle CPUs halt, each hand-over is a
        // wake-up of tens of microseconds), and the next request of the
        // connection waits only as long as the file system takes to find
        // a file.
        let request = if Exporter::only_looks(&request.op) {
            match look(&exporter, from, request, squash, &handles, &holder) {
                Ok(reply) => {
                    let _ = answers.send(FsAnswer::Reply(reply)).await;
                    continue;
                }
                Err(request) => *request,
            }
        } else {
            request
        };
        let exporter = exporter.clone();
        let answers = answers.clone();
        let handles = handles.clone();
        let revoker: Arc<dyn Revoker> = revoker.clone();
        let holder = holder.clone();
        tokio::task::spawn_blocking(move || {
            let reply = answer(
                &exporter, from, request, squash, &handles, &revoker, &holder,
            );
            let _ = answers.blocking_send(FsAnswer::Reply(reply));
        });
    }
    // The grants hold the connection's sender: the writer ends only once
    // they let go of it.
    exporter.grants().forget_holder(holder.id());
    drop(holder);
    drop(revoker);
    drop(answers);
    let _ = writing.await;
    for handle in handles.lock().expect("handles lock").drain() {
        exporter.release(handle);
    }
}

/// Answers `request`, which [only looks](Exporter::only_looks), on the
/// calling thread; gives it back if it must run on a blocking thread
/// instead (it must first wait for another node to settle its writes).
fn look(
    exporter: &Exporter,
    from: NodeId,
    request: FsRequest,
    squash: Squash,
    handles: &Mutex<HashSet<u64>>,
    holder: &Arc<dyn AttrHolder>,
) -> Result<FsReply, Box<FsRequest>> {
    if let Some(result) = refusal(exporter, from, &request, handles) {
        return Ok(FsReply::of(request.id, result));
    }
    let credentials = Credentials::of(&request.caller, true, squash);
    let FsRequest { id, caller, op } = request;
    match exporter.look(&credentials, op, from, Some(holder)) {
        Ok(result) => Ok(FsReply::of(id, result)),
        Err(op) => Err(Box::new(FsRequest {
            id,
            caller,
            op: *op,
        })),
    }
}

/// Why `request` of node `from` must not run, if it must not: this node
/// refuses MFS, or it names a handle another connection opened.
fn refusal(
    exporter: &Exporter,
    from: NodeId,
    request: &FsRequest,
    handles: &Mutex<HashSet<u64>>,
) -> Option<FsResult> {
    if exporter.refuses_remote() {
        debug!("refusing an MFS request of node {from}: this node is set to nomfs");
        return Some(FsResult::Errno(libc::EACCES));
    }
    // A handle is usable only on the connection that opened it.
    let handle = handle_of(&request.op)?;
    (!handles.lock().expect("handles lock").contains(&handle))
        .then_some(FsResult::Errno(libc::EBADF))
}

/// The handle `op` works on, if it works on one.
fn handle_of(op: &FsOp) -> Option<u64> {
    match op {
        FsOp::Read { handle, .. }
        | FsOp::Write { handle, .. }
        | FsOp::Flush { handle, .. }
        | FsOp::Release { handle }
        | FsOp::Fsync { handle, .. }
        | FsOp::Fallocate { handle, .. }
        | FsOp::Lseek { handle, .. }
        | FsOp::GetLk { handle, .. }
        | FsOp::SetLk { handle, .. } => Some(*handle),
        FsOp::GetAttr { handle, .. } | FsOp::SetAttr { handle, .. } => *handle,
        _ => None,
    }
}

fn answer(
    exporter: &Exporter,
    from: NodeId,
    request: FsRequest,
    squash: Squash,
    handles: &Mutex<HashSet<u64>>,
    revoker: &Arc<dyn Revoker>,
    holder: &Arc<dyn AttrHolder>,
) -> FsReply {
    let id = request.id;
    if let Some(result) = refusal(exporter, from, &request, handles) {
        return FsReply::of(id, result);
    }
    let handle = handle_of(&request.op);
    let releases = matches!(request.op, FsOp::Release { .. });
    let credentials = Credentials::of(&request.caller, true, squash);
    let (result, changed) = match request.op {
        FsOp::Read {
            handle,
            offset,
            size,
            ahead,
        } if ahead > 0 => (
            exporter.read_ahead(&credentials, handle, offset, size, ahead, revoker),
            Vec::new(),
        ),
        FsOp::Write {
            handle,
            offset,
            data,
            lease: true,
        } => (
            exporter.write_leased(&credentials, handle, offset, &data, from, revoker),
            Vec::new(),
        ),
        FsOp::LookAhead { dir, after, count } => (
            exporter.look_ahead(&credentials, (&dir, &after, count), from, holder),
            Vec::new(),
        ),
        op => {
            exporter.settle_write_leases(&op, Some(from));
            exporter.execute_for(&credentials, op, Some(holder))
        }
    };
    if let FsResult::Opened { handle, .. } = &result {
        handles.lock().expect("handles lock").insert(*handle);
    }
    if releases && let Some(handle) = handle {
        handles.lock().expect("handles lock").remove(&handle);
    }
    FsReply {
        id,
        result,
        changed,
    }
}
