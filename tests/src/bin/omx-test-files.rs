//! Files driven from stdin, for the DFSA and MFS tests: each line of stdin is a
//! command on the program's own files, answered by one line on stdout,
//! so a test can move the program between commands and check each step.
//!
//! - `open PATH MODE` (MODE: `r`, `rw`, `a` for write-only append): the fd
//! - `read FD N`, `pread FD N OFFSET`: `data:` and the bytes read
//! - `preads FD COUNT`: COUNT reads of the first byte; `ok`
//! - `write FD TEXT`: the count written (`\n` in TEXT is a newline)
//! - `seek FD OFFSET`, `tell FD`: the offset; `size FD`: the file's size
//! - `lock FD START LEN`: a write lock (`F_SETLK`, from the start of the
//!   file); `lockcur FD LEN`: the same from the current offset
//! - `setfl-same FD`: sets the status flags it has (`F_SETFL`); `ok`
//! - `dup FD`: the new fd; `close FD`: `ok`; `quit`
//!
//! Failures answer `error ERRNO`. `omx-test-files probe PATH START LEN`
//! instead tries a write lock on the file and prints `free` or `busy`;
//! `omx-test-files cachestat PATH` prints how many of the file's pages
//! are in the page cache, dirty, and under writeback (`cachestat(2)`:
//! Linux 6.5 and later; the caller must be root or able to write the
//! file, else EPERM).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use nix::fcntl::{FcntlArg, fcntl};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe") {
        probe(&args[1], number(&args[2]), number(&args[3]));
        return;
    }
    if args.first().map(String::as_str) == Some("cachestat") {
        cachestat(&args[1]);
        return;
    }
    let mut files: HashMap<i32, File> = HashMap::new();
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.splitn(3, ' ').collect();
        if words[0] == "quit" {
            break;
        }
        let answer = match run(&mut files, &words) {
            Ok(answer) => answer,
            Err(e) => format!("error {}", e.raw_os_error().unwrap_or(0)),
        };
        writeln!(out, "{answer}").expect("stdout");
        out.flush().expect("stdout");
    }
}

fn number<T: std::str::FromStr>(text: &str) -> T {
    text.parse()
        .unwrap_or_else(|_| panic!("`{text}` is not a number"))
}

fn run(files: &mut HashMap<i32, File>, words: &[&str]) -> std::io::Result<String> {
    let word = |i: usize| *words.get(i).expect("an argument is missing");
    if words[0] == "open" {
        let mut options = OpenOptions::new();
        match word(2) {
            "r" => options.read(true),
            "rw" => options.read(true).write(true),
            "a" => options.append(true),
            mode => panic!("unknown mode {mode}"),
        };
        let file = options.open(word(1))?;
        let fd = file.as_raw_fd();
        files.insert(fd, file);
        return Ok(fd.to_string());
    }
    let fd: i32 = number(word(1));
    let file = files
        .get_mut(&fd)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))?;
    match words[0] {
        "read" => {
            let mut buffer = vec![0u8; number(word(2))];
            let n = file.read(&mut buffer)?;
            Ok(format!("data:{}", String::from_utf8_lossy(&buffer[..n])))
        }
        "pread" => {
            let (len, offset) = word(2).split_once(' ').expect("pread FD N OFFSET");
            let mut buffer = vec![0u8; number(len)];
            let n = file.read_at(&mut buffer, number(offset))?;
            Ok(format!("data:{}", String::from_utf8_lossy(&buffer[..n])))
        }
        "preads" => {
            // Many small reads in a row, for counting what they cost.
            let mut byte = [0u8; 1];
            for _ in 0..number::<u64>(word(2)) {
                file.read_at(&mut byte, 0)?;
            }
            Ok("ok".into())
        }
        "write" => {
            let text = word(2).replace("\\n", "\n");
            Ok(file.write(text.as_bytes())?.to_string())
        }
        "seek" => Ok(file.seek(SeekFrom::Start(number(word(2))))?.to_string()),
        "tell" => Ok(file.stream_position()?.to_string()),
        "size" => Ok(file.metadata()?.len().to_string()),
        "lock" => {
            let (start, len) = word(2).split_once(' ').expect("lock FD START LEN");
            lock(file, libc::SEEK_SET, number(start), number(len))
        }
        "lockcur" => lock(file, libc::SEEK_CUR, 0, number(word(2))),
        "setfl-same" => {
            // Sets the status flags it has, as xz does at its end.
            let flags = nix::fcntl::fcntl(&*file, nix::fcntl::FcntlArg::F_GETFL)?;
            let flags = nix::fcntl::OFlag::from_bits_truncate(flags);
            nix::fcntl::fcntl(&*file, nix::fcntl::FcntlArg::F_SETFL(flags))?;
            Ok("ok".into())
        }
        "dup" => {
            let copy = file.try_clone()?;
            let new = copy.as_raw_fd();
            files.insert(new, copy);
            Ok(new.to_string())
        }
        "close" => {
            // Closed explicitly, to answer what close returned.
            nix::unistd::close(files.remove(&fd).expect("looked up above"))?;
            Ok("ok".into())
        }
        other => panic!("unknown command {other}"),
    }
}

/// A write lock on `len` bytes from `start` (relative to `whence`).
fn lock(file: &File, whence: i32, start: i64, len: i64) -> std::io::Result<String> {
    let request = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: whence as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    fcntl(file, FcntlArg::F_SETLK(&request))?;
    Ok("ok".into())
}

/// Tries a write lock on `len` bytes from `start` of `path`.
fn probe(path: &str, start: i64, len: i64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    match lock(&file, libc::SEEK_SET, start, len) {
        Ok(_) => println!("free"),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
            println!("busy")
        }
        Err(e) => println!("error {e}"),
    }
}

/// `struct cachestat_range` of linux/mman.h.
#[repr(C)]
struct CachestatRange {
    offset: u64,
    len: u64,
}

/// `struct cachestat` of linux/mman.h.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    cache: u64,
    dirty: u64,
    writeback: u64,
    evicted: u64,
    recently_evicted: u64,
}

/// Prints `cached C dirty D writeback W` (pages) of the whole of `path`.
fn cachestat(path: &str) {
    // The libc crate names this number for some targets but not for
    // x86_64 with glibc, where it is 451.
    const SYS_CACHESTAT: libc::c_long = 451;
    let file = File::open(path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    // A length of 0 means up to the end of the file.
    let range = CachestatRange { offset: 0, len: 0 };
    let mut stat = Cachestat::default();
    // SAFETY: the kernel reads `range` and writes `stat`, both ours and of
    // the layout it expects, and keeps neither.
    let ret = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0,
        )
    };
    assert!(
        ret == 0,
        "cachestat {path}: {}",
        std::io::Error::last_os_error()
    );
    println!(
        "cached {} dirty {} writeback {}",
        stat.cache, stat.dirty, stat.writeback
    );
}
