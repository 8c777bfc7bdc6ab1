//! DFSA end to end: a process's files reopened on the node where it runs.
//! A program on node 1 with a file of node 2 (read and written), a file
//! of its home node and an append-only log moves 1 -> 2 -> 3, home, 3 and
//! home again while a test drives its reads, writes, seeks and locks line
//! by line. Its reads come out right, its I/O does not move the deputy's
//! offsets (so it ran where the process was) nor stop it (so it ran in the
//! kernel, not through its keeper), the deputy has the right offsets
//! whenever home needs them, a lock taken at home holds all along, and the
//! calls the filter could not follow (an open that takes a closed file's
//! number, a `dup`) bring the process home first.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use omx_tests::{Lab, stdout, wait_for};

const FILES: &str = env!("CARGO_BIN_EXE_omx-test-files");

/// Byte `i` of the file of node 2, and of the file of node 1.
fn remote_byte(i: usize) -> u8 {
    b'a' + (i % 26) as u8
}
fn home_byte(i: usize) -> u8 {
    b'0' + (i % 10) as u8
}

fn expected(byte: fn(usize) -> u8, from: usize, len: usize) -> String {
    let bytes: Vec<u8> = (from..from + len).map(byte).collect();
    format!("data:{}", String::from_utf8(bytes).unwrap())
}

/// The program, talked to a line at a time.
struct Program {
    child: Child,
    input: ChildStdin,
    answers: Receiver<String>,
}

impl Program {
    fn start(lab: &Lab) -> Program {
        // An ordinary user: the files are reopened as that user.
        let command = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            FILES,
        ];
        let mut child = lab.spawn(1, &command, Stdio::piped(), Stdio::piped());
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        let (send, answers) = channel();
        std::thread::spawn(move || {
            for line in output.lines() {
                if send.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        Program {
            child,
            input,
            answers,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.input, "{command}").unwrap();
        self.input.flush().unwrap();
        self.answers
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no answer to `{command}`: {e}"))
    }

    fn open(&mut self, path: &Path, mode: &str) -> i32 {
        let answer = self.ask(&format!("open {} {mode}", path.display()));
        answer
            .parse()
            .unwrap_or_else(|_| panic!("open {}: {answer}", path.display()))
    }
}

/// The offset of the deputy's (or the process's, at home) descriptor.
fn deputy_offset(pid: u32, fd: i32) -> u64 {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("pos:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// How many times process `pid` has given up its CPU.
fn voluntary_switches(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether another process at `node` finds bytes `start..start+len` of
/// `path` locked.
fn locked(lab: &Lab, node: u16, path: &str, start: u64, len: u64) -> bool {
    let output = lab.exec(
        node,
        &[FILES, "probe", path, &start.to_string(), &len.to_string()],
    );
    match stdout(&output).trim() {
        "busy" => true,
        "free" => false,
        other => panic!("probe of {path} at node {node}: {other}"),
    }
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o666);
    std::fs::set_permissions(path, mode).unwrap();
}

#[test]
fn files_are_read_written_and_locked_where_the_process_runs() {
    let lab = Lab::up("dfsa", 53, 3, &["--cpus", "0.5"]);
    wait_for(Duration::from_secs(15), "all nodes up", || {
        lab.all_see_all("up")
    });
    // A directory of node 2 for everyone, with a data file and a log; and
    // a file of node 1's own disk (what it exports as /mfs/1).
    let disk = |node: u16| lab.dir().join(format!("node-{node}/disk"));
    let public = disk(2).join("pub");
    std::fs::create_dir(&public).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o1777);
    std::fs::set_permissions(&public, mode).unwrap();
    let data: Vec<u8> = (0..10_000).map(remote_byte).collect();
    write_file(&public.join("data"), &data);
    write_file(&public.join("log"), b"start\n");
    let home_data: Vec<u8> = (0..5_000).map(home_byte).collect();
    let home_file = disk(1).join("local");
    write_file(&home_file, &home_data);
    let (data_path, log_path) = ("/mfs/2/pub/data", "/mfs/2/pub/log");

    let mut program = Program::start(&lab);
    let pid = program.pid();
    let a = program.open(Path::new(data_path), "rw");
    let b = program.open(&home_file, "r");
    let c = program.open(Path::new(log_path), "a");

    // At home: some I/O, and a lock on the first 100 bytes of the data.
    assert_eq!(
        program.ask(&format!("read {a} 100")),
        expected(remote_byte, 0, 100)
    );
    assert_eq!(
        program.ask(&format!("read {b} 50")),
        expected(home_byte, 0, 50)
    );
    assert_eq!(program.ask(&format!(r"write {c} home-1\n")), "7");
    assert_eq!(program.ask(&format!("lock {a} 0 100")), "ok");
    assert!(locked(&lab, 1, data_path, 0, 100));

    // On node 2, which holds the data: reads and writes run there, so the
    // deputy's offsets stay where the process left them.
    lab.migrate(1, pid, "2").expect("moved to node 2");
    assert_eq!(
        program.ask(&format!("read {a} 1000")),
        expected(remote_byte, 100, 1000)
    );
    assert_eq!(
        deputy_offset(pid, a),
        100,
        "the read of node 2's file ran at home"
    );
    assert_eq!(
        program.ask(&format!("read {b} 500")),
        expected(home_byte, 50, 500)
    );
    assert_eq!(
        deputy_offset(pid, b),
        50,
        "the read of node 1's file ran at home (does the daemon pass the home keeper --export?)"
    );
    // They run in the kernel, without the keeper: a call that went
    // through it would stop the process once each (a context switch).
    let mut guest = None;
    wait_for(Duration::from_secs(5), "node 2 to list its guest", || {
        guest = lab.status(2).expect("node 2 answers")["guests"][0]["pid"].as_u64();
        guest.is_some()
    });
    let guest = guest.expect("waited for");
    let switches = || voluntary_switches(guest);
    let before = switches();
    assert_eq!(program.ask(&format!("preads {a} 2000")), "ok");
    let spent = switches() - before;
    assert!(
        spent < 500,
        "2000 reads of a DFSA file stopped the process {spent} times: they went through its keeper"
    );
    // A file it opens while here is reopened here too.
    let f = program.open(Path::new(data_path), "r");
    assert_eq!(
        program.ask(&format!("read {f} 10")),
        expected(remote_byte, 0, 10)
    );
    assert_eq!(
        deputy_offset(pid, f),
        0,
        "the read of a file opened on node 2 ran at home"
    );
    assert_eq!(program.ask(&format!("tell {a}")), "1100");
    assert_eq!(program.ask(&format!("size {a}")), "10000");
    assert_eq!(program.ask(&format!("write {a} XYZ")), "3");
    let around = format!(
        "data:{}XYZ{}",
        remote_byte(1099) as char,
        remote_byte(1103) as char
    );
    assert_eq!(program.ask(&format!("pread {a} 5 1099")), around);
    assert_eq!(program.ask(&format!(r"write {c} away-2\n")), "7");
    // The lock is held where the process is and at home.
    assert!(locked(&lab, 1, data_path, 0, 100), "lock lost at home");
    assert!(locked(&lab, 2, data_path, 50, 10), "lock lost at node 2");
    assert!(!locked(&lab, 1, data_path, 200, 100));
    // A lock from the current offset is taken at home where the process
    // is in the file: home hears of the offset first.
    assert_eq!(program.ask(&format!("lockcur {a} 10")), "ok");
    assert_eq!(deputy_offset(pid, a), 1103);
    assert!(locked(&lab, 1, data_path, 1103, 10));
    assert!(!locked(&lab, 1, data_path, 1090, 13));
    assert_eq!(
        program.ask(&format!("read {a} 10")),
        expected(remote_byte, 1103, 10)
    );

    // On to node 3: the files go along with their offsets; home has them
    // too.
    lab.migrate(1, pid, "3").expect("moved to node 3");
    assert_eq!(deputy_offset(pid, a), 1113);
    assert_eq!(deputy_offset(pid, b), 550);
    assert_eq!(
        program.ask(&format!("read {a} 100")),
        expected(remote_byte, 1113, 100)
    );
    assert_eq!(
        program.ask(&format!("read {b} 100")),
        expected(home_byte, 550, 100)
    );
    assert_eq!(
        deputy_offset(pid, a),
        1113,
        "the read on node 3 ran at home"
    );
    assert_eq!(deputy_offset(pid, b), 550, "the read on node 3 ran at home");
    assert_eq!(program.ask(&format!(r"write {c} away-3\n")), "7");
    assert!(
        locked(&lab, 1, data_path, 0, 100),
        "lock lost after moving on"
    );
    // A closed file is closed at home too.
    assert_eq!(program.ask(&format!("close {b}")), "ok");
    assert_eq!(
        program.ask(&format!("read {b} 1")),
        format!("error {}", libc::EBADF)
    );
    assert_eq!(lab.where_is(1, pid)["node"].as_u64(), Some(3));
    // A file opened now, at home, takes the closed one's number there.
    // Calls on that number ran here in the kernel, and would still: the
    // open brings the process home first, where the new file is.
    let e = program.open(&home_file, "r");
    assert_eq!(e, b, "the new file took the lowest free number");
    assert_eq!(
        program.ask(&format!("read {e} 10")),
        expected(home_byte, 0, 10)
    );
    // (Home's daemon hears of the arrival just after the process runs.)
    wait_for(Duration::from_secs(5), "the open to bring it home", || {
        lab.where_is(1, pid)["node"].is_null()
    });
    // Back to node 3. A copy of a descriptor would share its offset at
    // home while its copy here moves on its own: `dup` brings the process
    // home, where it carries on from the offset it had.
    lab.migrate(1, pid, "3").expect("moved to node 3 again");
    assert_eq!(
        program.ask(&format!("read {a} 10")),
        expected(remote_byte, 1213, 10)
    );
    assert_eq!(
        deputy_offset(pid, a),
        1213,
        "the read on node 3 ran at home"
    );
    // Setting the flags it has changes nothing: it stays, and its reads
    // still run here.
    assert_eq!(program.ask(&format!("setfl-same {a}")), "ok");
    assert_eq!(lab.where_is(1, pid)["node"].as_u64(), Some(3));
    assert_eq!(
        program.ask(&format!("read {a} 10")),
        expected(remote_byte, 1223, 10)
    );
    assert_eq!(
        deputy_offset(pid, a),
        1223,
        "the read after F_SETFL ran at home"
    );
    let d = program.ask(&format!("dup {a}"));
    wait_for(Duration::from_secs(5), "the dup to bring it home", || {
        lab.where_is(1, pid)["node"].is_null()
    });
    assert_eq!(deputy_offset(pid, a), 1233);
    // (Closing the copy would release the lock, as POSIX has it.)
    let _ = d;

    // Home: the process carries on from its offsets.
    assert_eq!(deputy_offset(pid, a), 1233);
    assert_eq!(program.ask(&format!("tell {a}")), "1233");
    assert_eq!(
        program.ask(&format!("read {a} 7")),
        expected(remote_byte, 1233, 7)
    );
    assert_eq!(program.ask(&format!(r"write {c} home-2\n")), "7");
    assert!(
        locked(&lab, 2, data_path, 0, 100),
        "lock lost on the way home"
    );
    writeln!(program.input, "quit").unwrap();
    assert!(program.child.wait().unwrap().success());

    // What it wrote is in the files, appended in order; its locks went
    // with it.
    let log = std::fs::read_to_string(public.join("log")).unwrap();
    assert_eq!(log, "start\nhome-1\naway-2\naway-3\nhome-2\n");
    let data = std::fs::read(public.join("data")).unwrap();
    assert_eq!(&data[1100..1103], b"XYZ");
    assert!(!locked(&lab, 1, data_path, 0, 100));

    a_real_program_reading_and_writing_node_2_gives_the_native_result(&lab, &public);
}

/// gzip with its stdin and stdout on files of node 2, moved 2 -> 3 -> home
/// mid-run, writes what it writes natively.
fn a_real_program_reading_and_writing_node_2_gives_the_native_result(lab: &Lab, public: &Path) {
    let mut text = String::new();
    let mut x: u64 = 7;
    for line in 0..700_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text += &format!("record {line:09} value {} tag {}\n", x % 100_000, x % 7);
    }
    write_file(&public.join("input"), text.as_bytes());
    let native = std::process::Command::new("gzip")
        .args(["-9", "-c"])
        .stdin(std::fs::File::open(public.join("input")).unwrap())
        .output()
        .unwrap();
    assert!(native.status.success());
    let script = "exec gzip -9 -c < /mfs/2/pub/input > /mfs/2/pub/input.gz";
    let command = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sh",
        "-c",
        script,
    ];
    let mut gzip = lab.spawn(1, &command, Stdio::null(), Stdio::null());
    lab.bounce(
        1,
        gzip.id(),
        &["2", "3", "home"],
        Duration::from_millis(700),
    );
    assert!(gzip.wait().unwrap().success());
    let moved = std::fs::read(public.join("input.gz")).unwrap();
    assert!(
        moved == native.stdout,
        "gzip's output differs from a native run"
    );
}
