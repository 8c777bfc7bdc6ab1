//! The migration link's throughput against plain TCP on the same path:
//! page runs (a `PageRun` message and raw frames) over the encrypted
//! blocking channel, and the same bytes written raw, both over loopback TCP.
//!
//! `cargo run --release -p omx-bench --bin wire-throughput [-- --mib 512]`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use clap::Parser;
use omx_mfs::NodeId;
use omx_mfs::cluster_key::ClusterKey;
use omx_mfs::transport::Identity;
use omx_mfs::transport::blocking;
use omx_mfs::wire::link::LinkMessage;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 512)]
    mib: usize,
}

const RUN: usize = 1 << 20;

fn main() {
    let args = Args::parse();
    let total = args.mib << 20;
    let key = ClusterKey::generate().unwrap();

    // Plain TCP: the physical limit of this path.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buffer = vec![0u8; RUN];
        let mut got = 0;
        while got < total {
            got += stream.read(&mut buffer).unwrap();
        }
    });
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).unwrap();
    let chunk = vec![7u8; RUN];
    for _ in 0..args.mib {
        stream.write_all(&chunk).unwrap();
    }
    reader.join().unwrap();
    let plain = started.elapsed().as_secs_f64();

    // The link: Pages messages over the encrypted channel.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server_key = key.clone();
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let me = Identity {
            node: NodeId::new(2).unwrap(),
            key: server_key,
        };
        let (_, mut channel) = blocking::accept(stream, &me, |_| Ok(())).unwrap();
        let mut got = 0;
        while got < total {
            match channel.recv::<LinkMessage>().unwrap().unwrap() {
                LinkMessage::PageRun { len, .. } => {
                    channel
                        .recv_stream(len, |_, _| Ok::<(), omx_mfs::transport::TransportError>(()))
                        .unwrap();
                    got += len as usize;
                }
                _ => panic!("unexpected message"),
            }
        }
    });
    let started = Instant::now();
    let stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    let me = Identity {
        node: NodeId::new(1).unwrap(),
        key,
    };
    let mut channel = blocking::connect(stream, &me, NodeId::new(2).unwrap()).unwrap();
    let run = vec![7u8; RUN];
    for i in 0..args.mib {
        channel
            .send(&LinkMessage::PageRun {
                address: (i * RUN) as u64,
                len: RUN as u64,
            })
            .unwrap();
        channel.send_stream(&run).unwrap();
    }
    receiver.join().unwrap();
    let ours = started.elapsed().as_secs_f64();

    let rate = |secs: f64| args.mib as f64 / secs;
    println!(
        "{} MiB over loopback TCP, one sender and one receiver thread:",
        args.mib
    );
    println!(
        "  plain TCP:             {:7.3} s  {:8.0} MiB/s",
        plain,
        rate(plain)
    );
    println!(
        "  omx link (page runs):  {:7.3} s  {:8.0} MiB/s  ratio {:.2}x plain",
        ours,
        rate(ours),
        ours / plain
    );
}
