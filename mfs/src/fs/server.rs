//! Serving another node's MFS connection: each request runs on a blocking
//! thread as its caller (squashed if root), answers go back as they come.
//! Files the connection opened are closed when it ends, which also
//! releases every lock its callers held.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::creds::{Credentials, Squash};
use super::export::Exporter;
use crate::NodeId;
use crate::transport::SecureChannel;
use crate::wire::fs::{FsOp, FsReply, FsRequest, FsResult, MAX_FS_FRAME};

/// Answers queued for the writer before requests wait.
const ANSWER_QUEUE: usize = 256;

/// Serves `from`'s MFS connection until it closes.
pub async fn serve(
    mut channel: SecureChannel<TcpStream>,
    from: NodeId,
    exporter: Arc<Exporter>,
    squash: Squash,
) {
    channel.limit_frames(MAX_FS_FRAME);
    let (mut reader, mut writer) = channel.split();
    let (answers, mut to_send) = mpsc::channel::<FsReply>(ANSWER_QUEUE);
    let writing = tokio::spawn(async move {
        while let Some(reply) = to_send.recv().await {
            if writer.send(&reply).await.is_err() {
                break;
            }
        }
    });
    let handles: Arc<Mutex<HashSet<u64>>> = Arc::new(Mutex::new(HashSet::new()));
    loop {
        let request = match reader.recv::<FsRequest>().await {
            Ok(Some(request)) => request,
            Ok(None) => {
                debug!("node {from} closed its MFS connection");
                break;
            }
            Err(e) => {
                warn!("dropping the MFS connection of node {from}: {e}");
                break;
            }
        };
        let exporter = exporter.clone();
        let answers = answers.clone();
        let handles = handles.clone();
        tokio::task::spawn_blocking(move || {
            let id = request.id;
            let result = answer(&exporter, from, request, squash, &handles);
            let _ = answers.blocking_send(FsReply { id, result });
        });
    }
    drop(answers);
    let _ = writing.await;
    for handle in handles.lock().expect("handles lock").drain() {
        exporter.release(handle);
    }
}

fn answer(
    exporter: &Exporter,
    from: NodeId,
    request: FsRequest,
    squash: Squash,
    handles: &Mutex<HashSet<u64>>,
) -> FsResult {
    if exporter.refuses_remote() {
        debug!("refusing an MFS request of node {from}: this node is set to nomfs");
        return FsResult::Errno(libc::EACCES);
    }
    // A handle is usable only on the connection that opened it.
    let handle = match &request.op {
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
    };
    if let Some(handle) = handle
        && !handles.lock().expect("handles lock").contains(&handle)
    {
        return FsResult::Errno(libc::EBADF);
    }
    let releases = matches!(request.op, FsOp::Release { .. });
    let credentials = Credentials::of(&request.caller, true, squash);
    let result = exporter.execute(&credentials, request.op);
    if let FsResult::Opened { handle, .. } = &result {
        handles.lock().expect("handles lock").insert(*handle);
    }
    if releases && let Some(handle) = handle {
        handles.lock().expect("handles lock").remove(&handle);
    }
    result
}
