//! The programs the lab benchmarks run inside nodes: a process holding
//! memory to migrate, both ends of a plain TCP transfer (the physical
//! limit a migration is compared with), a timer of forwarded calls,
//! CPU- and syscall-bound workloads, file system metadata rates, and a
//! free port finder.
//!
//! ```text
//! omx-bench-helper hold MIB          fill MIB MiB, print "ready", sleep;
//!                                    SIGUSR1 verifies the memory
//! omx-bench-helper tcp-sink PORT [fresh]
//! omx-bench-helper tcp-push ADDRESS:PORT MIB
//! omx-bench-helper calls N           per stdin line: time N getppid and
//!                                    N 1-byte pipe writes
//! omx-bench-helper work cpu|syscalls N
//! omx-bench-helper meta DIR COUNT     create, stat and unlink COUNT files
//!                                    in a new directory DIR; prints JSON
//! omx-bench-helper free-port ADDRESS  print a TCP port free on ADDRESS
//! ```

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| usage()) };
    let number = |i: usize| -> u64 { arg(i).parse().unwrap_or_else(|_| usage()) };
    match arg(0) {
        "hold" => hold(number(1)),
        "tcp-sink" => tcp_sink(number(1) as u16, args.get(2).is_some_and(|a| a == "fresh")),
        "tcp-push" => tcp_push(arg(1), number(2)),
        "calls" => calls(number(1) as usize),
        "work" => work(arg(1), number(2)),
        "meta" => meta(Path::new(arg(1)), number(2)),
        "free-port" => free_port(arg(1)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: omx-bench-helper hold MIB | tcp-sink PORT [fresh] | tcp-push ADDRESS:PORT MIB | calls N | work cpu|syscalls N | meta DIR COUNT | free-port ADDRESS"
    );
    std::process::exit(2)
}

fn pattern(index: usize) -> u64 {
    (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xda94_2042_e4dd_58b5
}

static VERIFY: AtomicBool = AtomicBool::new(false);

extern "C" fn ask_verify(_: libc::c_int) {
    VERIFY.store(true, Ordering::SeqCst);
}

/// Holds `mib` MiB of distinct, non-zero words, mostly asleep, so a move
/// costs its memory and nothing else.
fn hold(mib: u64) {
    let words = (mib << 20) as usize / 8;
    let memory: Vec<u64> = (0..words).map(pattern).collect();
    let handler = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(ask_verify),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGUSR1, &handler) }
        .expect("sigaction");
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if VERIFY.swap(false, Ordering::SeqCst) {
            let wrong = memory
                .iter()
                .enumerate()
                .position(|(i, w)| *w != pattern(i));
            match wrong {
                None => println!("verified {mib} MiB"),
                Some(i) => println!("word {i} is wrong"),
            }
            std::io::stdout().flush().expect("stdout");
        }
    }
}

/// Receives one transfer (an 8-byte length, then the bytes) and answers
/// with one byte. `fresh`: into new memory, as a migration receives a
/// process; else into one reused buffer (the network alone).
fn tcp_sink(port: u16, fresh: bool) {
    let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    let (mut stream, _) = listener.accept().expect("accept");
    let mut len = [0u8; 8];
    stream.read_exact(&mut len).expect("length");
    let len = u64::from_ne_bytes(len) as usize;
    if fresh {
        // Zeroed by the allocator lazily (fresh pages from mmap): each page
        // is first touched by the receive, as a migration's are.
        let mut memory = vec![0u8; len];
        stream.read_exact(&mut memory).expect("data");
        std::hint::black_box(&memory);
    } else {
        let mut buffer = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = stream.read(&mut buffer[..left.min(1 << 20)]).expect("data");
            assert!(n > 0, "the pusher closed early");
            left -= n;
        }
    }
    stream.write_all(&[1]).expect("ack");
}

/// Sends `mib` MiB of already-touched memory to a sink; prints the
/// microseconds from the first byte sent to the sink's answer.
fn tcp_push(to: &str, mib: u64) {
    let data: Vec<u8> = (0..(mib << 20) as usize / 8)
        .flat_map(|i| pattern(i).to_ne_bytes())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(to) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("cannot reach the sink at {to}: {e}"),
        }
    };
    stream.set_nodelay(true).expect("nodelay");
    let started = Instant::now();
    stream
        .write_all(&(data.len() as u64).to_ne_bytes())
        .expect("length");
    stream.write_all(&data).expect("data");
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).expect("ack");
    println!("{}", started.elapsed().as_micros());
}

/// For each line on stdin, times `n` getppid calls and `n` one-byte
/// writes to a pipe made at start; prints "getppid MEDIAN P99 write
/// MEDIAN P99" in nanoseconds.
fn calls(n: usize) {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    let mut reader = std::fs::File::from(reader);
    let writer = std::fs::File::from(writer);
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        if line.is_err() {
            break;
        }
        let mut getppid = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            std::hint::black_box(nix::unistd::getppid());
            getppid.push(started.elapsed().as_nanos() as u64);
        }
        let mut write = Vec::with_capacity(n);
        let mut drain = vec![0u8; 64 * 1024];
        for i in 0..n {
            let started = Instant::now();
            nix::unistd::write(&writer, b"x").expect("write");
            write.push(started.elapsed().as_nanos() as u64);
            // Empty the pipe now and then, untimed.
            if i % 4096 == 4095 {
                let _ = reader.read(&mut drain);
            }
        }
        let pending = n % 4096;
        if pending > 0 {
            reader.read_exact(&mut drain[..pending]).expect("drain");
        }
        let (g50, g99) = percentiles(&mut getppid);
        let (w50, w99) = percentiles(&mut write);
        println!("getppid {g50} {g99} write {w50} {w99}");
        std::io::stdout().flush().expect("stdout");
    }
}

fn percentiles(samples: &mut [u64]) -> (u64, u64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// A fixed amount of work: `cpu` N million multiply-adds, or `syscalls`
/// N cheap system calls (getppid and a 1-byte write to /dev/null).
fn work(kind: &str, n: u64) {
    match kind {
        "cpu" => {
            let mut x = 1u64;
            for _ in 0..n * 1_000_000 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
            }
            println!("{x:016x}");
        }
        "syscalls" => {
            let null = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .expect("/dev/null");
            for _ in 0..n / 2 {
                std::hint::black_box(nix::unistd::getppid());
                nix::unistd::write(&null, b"x").expect("write");
            }
            println!("{n} calls");
        }
        _ => usage(),
    }
}

/// Creates `count` files of 1 KiB in a new directory `dir`, stats them,
/// then unlinks them (and `dir`); prints the three rates, in files per
/// second, as JSON. The kernel's caches are dropped before the stat pass
/// (as root; skipped otherwise), so that it asks the file system rather
/// than the kernel's dentry and inode caches.
fn meta(dir: &Path, count: u64) {
    std::fs::create_dir(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let files: Vec<PathBuf> = (0..count).map(|i| dir.join(format!("f{i:06}"))).collect();
    let content = [b'x'; 1024];
    let per_second = |started: Instant| count as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    for file in &files {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(file)
            .and_then(|mut f| f.write_all(&content))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", file.display()));
    }
    let create = per_second(started);

    nix::unistd::sync();
    let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    let started = Instant::now();
    for file in &files {
        let metadata = std::fs::metadata(file)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", file.display()));
        assert_eq!(
            metadata.len(),
            1024,
            "{} has the wrong size",
            file.display()
        );
    }
    let stat = per_second(started);

    let started = Instant::now();
    for file in &files {
        std::fs::remove_file(file)
            .unwrap_or_else(|e| panic!("cannot unlink {}: {e}", file.display()));
    }
    let unlink = per_second(started);
    std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("cannot remove {}: {e}", dir.display()));
    println!(
        "{}",
        serde_json::json!({
            "create_per_s": create,
            "stat_per_s": stat,
            "unlink_per_s": unlink,
            "caches_dropped": dropped,
        })
    );
}

/// Prints a TCP port that is free on `address` now (the kernel picks it).
fn free_port(address: &str) {
    let listener =
        TcpListener::bind((address, 0)).unwrap_or_else(|e| panic!("cannot bind to {address}: {e}"));
    println!("{}", listener.local_addr().expect("local address").port());
}
