//! omx-wirecheck: a hostile or broken peer, for testing that a daemon
//! refuses it and carries on.
//!
//! Usage: omx-wirecheck MODE ADDR:PORT [KEYFILE CLAIMED_NODE EXPECTED_NODE]
//!
//! Modes: `garbage` (random bytes instead of a handshake), `wrong-key` (a
//! correct handshake under another key), and with the cluster key:
//! `bad-message` (an encrypted frame that is no message), `oversized` (a
//! frame header announcing 4 GiB), `truncated` (half a frame, then close),
//! `claim` (a handshake claiming to be CLAIMED_NODE).
//!
//! Prints what the daemon did; exits 0 if it refused as it should.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use omx_mfs::NodeId;
use omx_mfs::cluster_key::ClusterKey;
use omx_mfs::transport::{Identity, TransportError, connect};
use omx_mfs::wire::frame::encode_frame;
use omx_mfs::wire::{GossipEntry, GossipPacket, LoadReport, PeerMessage, encode};
use rand::RngExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// A stream that counts the bytes the peer sent us.
struct Counting {
    inner: TcpStream,
    received: Arc<AtomicUsize>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.received
            .fetch_add(buf.filled().len() - before, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn node(text: &str) -> anyhow::Result<NodeId> {
    text.parse().map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, address) = match args.as_slice() {
        [mode, address, ..] => (mode.as_str(), address.as_str()),
        _ => bail!("usage: omx-wirecheck MODE ADDR:PORT [KEYFILE CLAIMED_NODE EXPECTED_NODE]"),
    };
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connect {address}"))?;
    match mode {
        "garbage" => {
            let mut stream = stream;
            let junk: Vec<u8> = (0..4096).map(|_| rand::rng().random()).collect();
            let _ = stream.write_all(&junk).await;
            let mut received = Vec::new();
            let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut received)).await;
            report_closed(closed.is_ok(), received.len())
        }
        "wrong-key" => {
            let received = Arc::new(AtomicUsize::new(0));
            let counting = Counting {
                inner: stream,
                received: received.clone(),
            };
            let intruder = Identity {
                node: node("1")?,
                key: ClusterKey::generate()?,
            };
            let expected = node(args.get(2).map_or("1", String::as_str))?;
            let outcome = connect(counting, &intruder, expected).await;
            let received = received.load(Ordering::Relaxed);
            match outcome {
                Err(TransportError::BadHandshake) => report_closed(true, received),
                Err(e) => bail!("unexpected failure: {e} ({received} bytes received)"),
                Ok(_) => bail!("the daemon accepted a peer without the cluster key"),
            }
        }
        "bad-message" | "oversized" | "truncated" | "claim" => {
            let [key, claimed, expected] = &args[2..] else {
                bail!("{mode} needs KEYFILE CLAIMED_NODE EXPECTED_NODE");
            };
            let identity = Identity {
                node: node(claimed)?,
                key: ClusterKey::load(key.as_ref())?,
            };
            let channel = match connect(stream, &identity, node(expected)?).await {
                Ok(channel) => channel,
                Err(TransportError::RefusedByPeer { reason }) if mode == "claim" => {
                    println!("refused: {reason}");
                    return Ok(());
                }
                Err(e) => bail!("handshake failed: {e}"),
            };
            if mode == "claim" {
                bail!("the daemon accepted node {claimed} connecting from the wrong address");
            }
            let (mut reader, mut writer) = channel.split();
            let bytes = match mode {
                "bad-message" => encode_frame(&[0xA5; 64]),
                "oversized" => u32::MAX.to_be_bytes().to_vec(),
                _ => {
                    let packet = PeerMessage::Gossip(GossipPacket {
                        entries: vec![GossipEntry {
                            node: 1,
                            age_ms: 0,
                            load: LoadReport::default(),
                        }],
                    });
                    let frame = encode_frame(&encode(&packet));
                    frame[..frame.len() / 2].to_vec()
                }
            };
            writer.send_raw_frame_bytes(&bytes).await?;
            if mode == "truncated" {
                writer.shutdown().await?;
            }
            let closed = tokio::time::timeout(WAIT, reader.recv::<PeerMessage>()).await;
            match closed {
                Ok(Ok(None)) | Ok(Err(_)) => report_closed(true, 0),
                Ok(Ok(Some(m))) => bail!("the daemon answered with {m:?}"),
                Err(_) => bail!("the daemon kept the connection open for {WAIT:?}"),
            }
        }
        other => bail!("unknown mode {other}"),
    }
}

fn report_closed(closed: bool, received: usize) -> anyhow::Result<()> {
    println!("connection closed: {closed}; bytes received from the daemon: {received}");
    if closed && received == 0 {
        Ok(())
    } else {
        bail!("expected the daemon to close the connection without sending anything")
    }
}
