//! Asking the local daemon something over its control socket.

use std::path::Path;

use anyhow::Context;
use omx_mfs::config::NodeConfig;
use omx_mfs::wire::plain::PlainFramed;
use omx_mfs::wire::{ControlReply, ControlRequest};
use tokio::net::UnixStream;

/// Sends one request to the daemon named by the config at `config_path`.
pub fn request(config_path: &Path, request: ControlRequest) -> anyhow::Result<ControlReply> {
    let config = NodeConfig::load(config_path)?;
    let socket = config.control_socket;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
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
    })
}
