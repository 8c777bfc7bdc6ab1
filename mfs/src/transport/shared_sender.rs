//! The sending half of a connection shared by blocking threads: each
//! thread seals its own message and writes it to the socket itself, in
//! turn, under one lock.
//!
//! A message then costs no hand-over to another thread (a wake-up at
//! each end), and a payload is copied once, by the sealing, straight from
//! the caller's buffer. Sealing and writing under the same lock keeps the
//! messages on the wire in the order of their nonces.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rkyv::api::high::HighSerializer;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use super::TransportError;
use super::noise::Sealer;
use crate::wire::codec::encode_payload_head_in;
use crate::wire::{encode_in, keep_buffer};

/// See the module documentation.
pub struct SharedSender {
    inner: Mutex<Inner>,
}

struct Inner {
    sealer: Sealer,
    /// The connection's socket, possibly non-blocking (a duplicate of the
    /// descriptor an async reader uses): writes wait for room with poll.
    socket: TcpStream,
    /// Scratch for encoding and sealing, kept between messages.
    encoded: AlignedVec,
    out: Vec<u8>,
    /// A write failed or timed out, maybe in the middle of a message:
    /// nothing more can follow on this stream.
    broken: bool,
}

impl SharedSender {
    /// Continues the sending direction of a connection whose first
    /// messages `sealer` sealed, on `socket`.
    pub fn new(sealer: Sealer, socket: TcpStream) -> SharedSender {
        SharedSender {
            inner: Mutex::new(Inner {
                sealer,
                socket,
                encoded: AlignedVec::new(),
                out: Vec::new(),
                broken: false,
            }),
        }
    }

    /// Seals `message`, and `payload` after it if there is one (see
    /// [`crate::wire::encode_payload_head_in`]), and writes them by
    /// `deadline`. A failure breaks the connection: the socket is shut
    /// down both ways, so its reader ends too, and later sends fail.
    pub fn send<T>(
        &self,
        message: &T,
        payload: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<(), TransportError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let mut inner = self.inner.lock().expect("sender lock");
        let Inner {
            sealer,
            socket,
            encoded,
            out,
            broken,
        } = &mut *inner;
        if *broken {
            return Err(std::io::Error::from(std::io::ErrorKind::NotConnected).into());
        }
        let sealed = match payload {
            Some(payload) => {
                let (archive, trailer) =
                    encode_payload_head_in(message, payload.len(), std::mem::take(encoded));
                *encoded = archive;
                sealer.seal_frame_parts(&[encoded, payload, &trailer], out)
            }
            None => {
                *encoded = encode_in(message, std::mem::take(encoded));
                sealer.seal_frame(encoded, out)
            }
        };
        keep_buffer(encoded);
        let written = write_all_by(socket, sealed, deadline);
        if written.is_err() {
            *broken = true;
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        written
    }

    /// Shuts the socket down both ways (its reader ends too); later sends
    /// fail.
    pub fn shut_down(&self) {
        // Poison tolerated: a sender whose sealing panicked is shut down
        // all the same, also from drops while unwinding.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.broken = true;
        let _ = inner.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// Writes all of `bytes` to `socket`, waiting for room until `deadline`.
fn write_all_by(
    mut socket: &TcpStream,
    mut bytes: &[u8],
    deadline: Instant,
) -> Result<(), TransportError> {
    while !bytes.is_empty() {
        match socket.write(bytes) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(TransportError::Timeout(left));
                }
                let timeout =
                    PollTimeout::try_from(left.as_millis().max(1).min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(std::io::Error::from(e).into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use crate::cluster_key::ClusterKey;
    use crate::transport::{Identity, accept, connect};
    use std::time::Duration;

    /// Messages sent by many threads at once, with and without payloads,
    /// all arrive whole and decrypt (their nonces follow the wire order),
    /// after a first message sent by the async channel itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_of_many_threads_arrive_whole_in_wire_order() {
        let key = ClusterKey::generate().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let one = Identity {
            node: NodeId::new(1).unwrap(),
            key: key.clone(),
        };
        let two = Identity {
            node: NodeId::new(2).unwrap(),
            key,
        };
        let (client, server) = tokio::join!(
            async {
                let stream = tokio::net::TcpStream::connect(address).await.unwrap();
                let socket = TcpStream::from(stream.as_fd().try_clone_to_owned().unwrap());
                let mut channel = connect(stream, &one, NodeId::new(2).unwrap())
                    .await
                    .unwrap();
                channel.send(&"first".to_string()).await.unwrap();
                let (reader, writer) = channel.split();
                (reader, SharedSender::new(writer.into_sealer(), socket))
            },
            async {
                let (stream, _) = listener.accept().await.unwrap();
                accept(stream, &two, |_| Ok(())).await.unwrap().1
            }
        );
        let (_reader, sender) = client;
        let mut server = server;
        let sender = std::sync::Arc::new(sender);
        let threads = 4;
        let each = 25;
        let payload_of = |t: usize, i: usize| -> Vec<u8> {
            vec![(t * 31 + i) as u8; if i.is_multiple_of(3) { 0 } else { 1000 * i + t }]
        };
        let sending = tokio::task::spawn_blocking({
            let sender = sender.clone();
            move || {
                std::thread::scope(|scope| {
                    for t in 0..threads {
                        let sender = &sender;
                        scope.spawn(move || {
                            for i in 0..each {
                                let payload = payload_of(t, i);
                                let label = format!("{t} {i}");
                                let deadline = Instant::now() + Duration::from_secs(10);
                                let payload = (!payload.is_empty()).then_some(&payload[..]);
                                sender.send(&label, payload, deadline).unwrap();
                            }
                        });
                    }
                });
            }
        });
        let first: String = server.recv().await.unwrap().unwrap();
        assert_eq!(first, "first");
        let mut next = vec![0; threads];
        for _ in 0..threads * each {
            let (label, payload) = server
                .recv_with_payload(|label: String, payload| (label, payload.to_vec()))
                .await
                .unwrap()
                .unwrap();
            let (t, i) = label.split_once(' ').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s messages in its order");
            next[t] += 1;
            assert!(payload == payload_of(t, i), "payload of message {label}");
        }
        sending.await.unwrap();
        sender.shut_down();
        let after = sender.send(
            &"late".to_string(),
            None,
            Instant::now() + Duration::from_secs(1),
        );
        assert!(after.is_err(), "a shut-down sender refuses to send");
    }
}
