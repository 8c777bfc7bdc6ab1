//! Asking the local daemon something over its control socket.

use std::path::Path;

use anyhow::Context;
use omx_mfs::config::NodeConfig;
use omx_mfs::wire::plain::PlainFramed;
use omx_mfs::wire::{ControlReply, ControlRequest};
use tokio::net::UnixStream;

/// Sends one request to the daemon named by the config at `config_path`.
pub fn request(config_path: &Path, request: ControlRequest) -> anyhow::Result<ControlReply> {
    request_within(config_path, request, ANSWER_TIMEOUT)
}

/// Like [`request`], for requests that take long (a synchronous move).
pub fn request_patiently(
    config_path: &Path,
    request: ControlRequest,
) -> anyhow::Result<ControlReply> {
    request_within(config_path, request, std::time::Duration::from_secs(150))
}

fn request_within(
    config_path: &Path,
    request: ControlRequest,
    answer_timeout: std::time::Duration,
) -> anyhow::Result<ControlReply> {
    let config = NodeConfig::load(config_path)?;
    let socket = config.control_socket;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let exchange = async {
        let stream = UnixStream::connect(&socket).await.with_context(|| {
            format!(
                "cannot reach the omx daemon at {}: is `omx daemon` running on this node?",
                socket.display()
            )
        })?;
        let mut framed = PlainFramed::new(stream);
        framed.send(&request).await?;
        framed
            .recv::<ControlReply>()
            .await?
            .context("the daemon closed the connection without answering")
    };
    runtime.block_on(async {
        tokio::time::timeout(answer_timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "the omx daemon at {} did not answer within {answer_timeout:?}",
                    socket.display()
                ))
            })
    })
}

/// How long a command waits for the daemon.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
