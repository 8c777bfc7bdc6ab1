//! The control socket: how the user's commands talk to the local daemon.
//!
//! A Unix socket anyone on the node may connect to (reading the cluster's
//! state is public, as /proc/hpc was); requests that change something are
//! checked against the caller's uid, which the kernel reports.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use omx_mfs::cluster_map::ClusterMap;
use omx_mfs::wire::plain::PlainFramed;
use omx_mfs::wire::{ControlReply, ControlRequest};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};

use omx_mfs::NodeId;
use omx_mfs::wire::MigrateTarget;

use super::control_tree::{Caller, ControlError, ControlFiles};
use super::{Migrations, Node};

/// Binds the control socket, replacing a stale one left by a crash but
/// refusing to steal the socket of a daemon that is still running.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket: remove it or choose another control_socket",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another omx daemon is serving {}: stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Clients served at once; more are turned away.
const MAX_CLIENTS: usize = 64;
/// Requests are small (a map is the largest).
const MAX_REQUEST: usize = 1 << 20;
/// A client that sends nothing for this long is dropped.
const CLIENT_IDLE: Duration = Duration::from_secs(10);

/// What the control socket serves.
#[derive(Clone)]
pub struct Served {
    pub node: Arc<Node>,
    pub migrations: Arc<Migrations>,
    pub files: Arc<ControlFiles>,
    /// Told when `setpe -off` has sent everything home: the daemon stops.
    pub leave: Arc<Notify>,
}

/// How long `setpe -off` waits for guests and away processes to get home.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn serve(listener: UnixListener, served: Served) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(permit) = clients.clone().try_acquire_owned() else {
                    warn!("turning a control client away: {MAX_CLIENTS} are connected already");
                    continue;
                };
                let served = served.clone();
                tokio::spawn(async move {
                    serve_client(stream, served).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_client(stream: UnixStream, served: Served) {
    let credentials = stream.peer_cred().ok();
    let uid = credentials.map(|c| c.uid());
    let pid = credentials.and_then(|c| c.pid()).map(|p| p as u32);
    let mut framed = PlainFramed::with_limit(stream, MAX_REQUEST);
    loop {
        let Ok(received) = tokio::time::timeout(CLIENT_IDLE, framed.recv::<ControlRequest>()).await
        else {
            return;
        };
        let request = match received {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                debug!("control client sent a bad request: {e}");
                let reply = ControlReply::Refused {
                    reason: format!("bad request: {e}"),
                };
                let _ = framed.send(&reply).await;
                return;
            }
        };
        let reply = handle(&served, request, uid, pid).await;
        if framed.send(&reply).await.is_err() {
            return;
        }
    }
}

async fn handle(
    served: &Served,
    request: ControlRequest,
    uid: Option<u32>,
    pid: Option<u32>,
) -> ControlReply {
    let node = &served.node;
    let migrations = &served.migrations;
    match request {
        ControlRequest::Migrate { pid, to, wait } => {
            if let MigrateTarget::Node(n) = to
                && let Some(target) = NodeId::new(n)
                && node.map().contains(target)
                && !node.is_up(target)
            {
                return ControlReply::Refused {
                    reason: format!("node {n} is down"),
                };
            }
            migrations.migrate(pid, to, wait, uid).await
        }
        ControlRequest::Where { pid } => {
            let reason = omx_migrate::constraints::reason_to_stay(pid as i32, 0)
                .unwrap_or_else(|e| Some(format!("cannot inspect process {pid}: {e}")));
            migrations.location(pid, reason)
        }
        ControlRequest::Register { pid, options } => migrations.register(pid, options, uid),
        ControlRequest::Status => {
            let mut view = node.view();
            view.away = migrations.away();
            view.guests = migrations.guests();
            ControlReply::Status(view)
        }
        ControlRequest::ReadControl { path } | ControlRequest::WriteControl { path, .. }
            if uid.is_none() || pid.is_none() =>
        {
            ControlReply::Refused {
                reason: format!("{path}: the caller's identity is unknown"),
            }
        }
        ControlRequest::ReadControl { path } => {
            let caller = Caller {
                uid: uid.expect("checked above"),
                pid: pid.expect("checked above"),
            };
            let files = served.files.clone();
            let read = tokio::task::spawn_blocking(move || {
                let entry = files.resolve(&path, caller)?;
                files.read(entry, caller)
            })
            .await;
            match read {
                Ok(Ok(text)) => ControlReply::Value { text },
                Ok(Err(e)) => ControlReply::Refused {
                    reason: e.to_string(),
                },
                Err(e) => ControlReply::Refused {
                    reason: format!("reading failed: {e}"),
                },
            }
        }
        ControlRequest::WriteControl { path, value } => {
            let caller = Caller {
                uid: uid.expect("checked above"),
                pid: pid.expect("checked above"),
            };
            let files = served.files.clone();
            let written = tokio::task::spawn_blocking(move || {
                let entry = files.resolve(&path, caller)?;
                files.write(entry, &value, caller).map_err(|e| match e {
                    ControlError::Invalid(reason) => {
                        ControlError::Invalid(format!("{path}: {reason}"))
                    }
                    other => other,
                })
            })
            .await;
            match written {
                Ok(Ok(())) => ControlReply::Accepted,
                Ok(Err(e)) => ControlReply::Refused {
                    reason: e.to_string(),
                },
                Err(e) => ControlReply::Refused {
                    reason: format!("writing failed: {e}"),
                },
            }
        }
        ControlRequest::Leave => {
            if uid != Some(0) {
                return ControlReply::Refused {
                    reason: "only root may take a node out of the cluster".into(),
                };
            }
            leave(served).await
        }
        ControlRequest::GetMap => ControlReply::Map {
            text: node.map().to_string(),
        },
        ControlRequest::SetMap { text, origin } => {
            if uid != Some(0) {
                return ControlReply::Refused {
                    reason: "only root may install a cluster map".into(),
                };
            }
            match ClusterMap::parse(&text, &origin)
                .map_err(|e| e.to_string())
                .and_then(|map| node.install_map(map, &origin))
            {
                Ok(nodes) => ControlReply::MapInstalled {
                    nodes: nodes as u32,
                },
                Err(reason) => ControlReply::Refused { reason },
            }
        }
    }
}

/// `setpe -off`: refuse new guests, send the guests home and bring this
/// node's processes home; once all are home (or after a timeout, with the
/// stragglers named), tell the daemon to stop.
async fn leave(served: &Served) -> ControlReply {
    let me = served.node.id();
    let _ = served.node.settings().update(|s| {
        s.block = true;
        Ok(())
    });
    let guests = served
        .migrations
        .send_guests_home(&format!("node {me} leaves the cluster"));
    let away = served.migrations.bring_all_home();
    info!("leaving: sending {guests} guests home and bringing {away} processes home");
    let deadline = tokio::time::Instant::now() + LEAVE_TIMEOUT;
    loop {
        let guests = served.migrations.guest_list().len();
        let away = served.migrations.away().len() + served.migrations.moving();
        if guests == 0 && away == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return ControlReply::Refused {
                reason: format!(
                    "after {LEAVE_TIMEOUT:?}, {guests} guests are still here and {away} processes still away: the node stays up; try again, or stop it to end them"
                ),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.leave.notify_one();
    ControlReply::Accepted
}
