//! MFS end to end: real FUSE mounts in the nodes of a real lab, reached
//! from other nodes over the authenticated transport.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use omx_tests::{Lab, sample, stderr, stdout, wait_for};

fn lab(name: &str, net: u8, nodes: u16) -> Lab {
    let lab = Lab::up(name, net, nodes, &[]);
    wait_for(Duration::from_secs(15), "all nodes up", || {
        lab.all_see_all("up")
    });
    lab
}

/// `sh -c SCRIPT` in `node`, which must succeed; its output.
fn sh(lab: &Lab, node: u16, script: &str) -> String {
    let output = lab.exec(node, &["sh", "-c", script]);
    assert!(
        output.status.success(),
        "node {node}: `{script}` failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// `sh -c SCRIPT` in `node`, whatever it gives.
fn try_sh(lab: &Lab, node: u16, script: &str) -> Output {
    lab.exec(node, &["sh", "-c", script])
}

/// Node `node`'s disk on the host: what it exports as /mfs/<node>.
fn disk(lab: &Lab, node: u16) -> PathBuf {
    lab.dir().join(format!("node-{node}/disk"))
}

/// A python3 program in a node that answers each line of input with one
/// line; killed when dropped.
struct Asker {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Asker {
    fn start(lab: &Lab, node: u16, script: &str) -> Asker {
        Asker::start_with(lab, node, &["python3", "-c", script])
    }

    /// The program run as user and group `uid`, without other groups.
    fn start_as(lab: &Lab, node: u16, uid: u32, script: &str) -> Asker {
        let who = format!("--reuid={uid}");
        let group = format!("--regid={uid}");
        let command = [
            "setpriv",
            &who,
            &group,
            "--clear-groups",
            // Not a per-user shim on root's path: the system's.
            "/usr/bin/python3",
            "-c",
            script,
        ];
        Asker::start_with(lab, node, &command)
    }

    fn start_with(lab: &Lab, node: u16, command: &[&str]) -> Asker {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = lab.spawn(node, command, Stdio::piped(), Stdio::piped());
        let input = child.stdin.take().unwrap();
        let output = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Asker {
            child,
            input,
            output,
        }
    }

    fn ask(&mut self, line: &str) -> String {
        use std::io::Write;
        writeln!(self.input, "{line}").unwrap();
        self.output.next().expect("the program answers").unwrap()
    }
}

impl Drop for Asker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rewrites `file` on its owner's disk (not through MFS) with `len`
/// bytes `byte`; the writer must not wait long for readers of other
/// nodes to drop what they read ahead.
fn rewrite_promptly(file: &std::path::Path, byte: u8, len: usize) {
    use std::io::Write;
    let started = Instant::now();
    let mut writer = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    writer.write_all(&vec![byte; len]).unwrap();
    drop(writer);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the writer waited {:?} for other nodes to drop what they read ahead",
        started.elapsed()
    );
}

/// A world-writable directory on node 2's disk, made by root at node 2.
fn shared_dir(lab: &Lab) {
    sh(lab, 2, "mkdir -m 1777 /mfs/2/pub");
}

#[test]
fn every_node_sees_every_write_rename_and_unlink_at_once() {
    let lab = lab("fcoh", 51, 3);
    shared_dir(&lab);
    // The tree: one directory per node, and the magic links.
    let listing = sh(&lab, 1, "ls /mfs");
    for name in [
        "1", "2", "3", "here", "home", "magic", "lastexec", "selected",
    ] {
        assert!(
            listing.lines().any(|l| l == name),
            "{name} missing from /mfs: {listing}"
        );
    }
    assert_eq!(sh(&lab, 3, "readlink /mfs/here").trim(), "3");
    assert_eq!(sh(&lab, 3, "readlink /mfs/home").trim(), "3");
    assert_eq!(
        sh(&lab, 1, "echo via-here > /mfs/here/own; cat /mfs/1/own"),
        "via-here\n"
    );

    // Write on 1, read on 3 at once; overwrite on 3, read on 1.
    for round in 0..20 {
        sh(&lab, 1, &format!("echo one-{round} > /mfs/2/pub/f"));
        assert_eq!(sh(&lab, 3, "cat /mfs/2/pub/f"), format!("one-{round}\n"));
        sh(&lab, 3, &format!("echo three-{round} > /mfs/2/pub/f"));
        assert_eq!(sh(&lab, 1, "cat /mfs/2/pub/f"), format!("three-{round}\n"));
    }
    // Metadata: the size a writer on 3 leaves is what 1 sees.
    sh(&lab, 3, "head -c 12345 /dev/zero > /mfs/2/pub/sized");
    assert_eq!(sh(&lab, 1, "stat -c %s /mfs/2/pub/sized").trim(), "12345");
    // Rename and unlink, seen from the other nodes and the owner.
    sh(&lab, 1, "mkdir /mfs/2/pub/d && echo x > /mfs/2/pub/d/a");
    sh(&lab, 3, "mv /mfs/2/pub/d/a /mfs/2/pub/b");
    assert_eq!(sh(&lab, 1, "ls /mfs/2/pub/d"), "");
    assert_eq!(sh(&lab, 2, "cat /mfs/2/pub/b"), "x\n");
    sh(
        &lab,
        1,
        "echo replaced > /mfs/2/pub/c && mv /mfs/2/pub/c /mfs/2/pub/b",
    );
    assert_eq!(sh(&lab, 3, "cat /mfs/2/pub/b"), "replaced\n");
    sh(&lab, 3, "rm /mfs/2/pub/b");
    assert!(!try_sh(&lab, 1, "test -e /mfs/2/pub/b").status.success());
    assert!(!disk(&lab, 2).join("pub/b").exists());

    // A file changed directly on the owner's disk, not through MFS.
    std::fs::write(disk(&lab, 2).join("pub/direct"), "on the disk\n").unwrap();
    assert_eq!(sh(&lab, 1, "cat /mfs/2/pub/direct"), "on the disk\n");
    std::fs::write(disk(&lab, 2).join("pub/direct"), "changed again, longer\n").unwrap();
    assert_eq!(
        sh(&lab, 3, "cat /mfs/2/pub/direct"),
        "changed again, longer\n"
    );

    // Links, symlinks, and the owner's view of a write through MFS.
    sh(
        &lab,
        1,
        "cd /mfs/2/pub && echo t > target && ln target hard && ln -s target soft",
    );
    assert_eq!(sh(&lab, 3, "stat -c %h /mfs/2/pub/target").trim(), "2");
    assert_eq!(sh(&lab, 3, "readlink /mfs/2/pub/soft").trim(), "target");
    assert_eq!(sh(&lab, 3, "cat /mfs/2/pub/soft"), "t\n");
    assert_eq!(
        std::fs::read_to_string(disk(&lab, 2).join("pub/hard")).unwrap(),
        "t\n"
    );
}

#[test]
fn counters_incremented_from_two_nodes_under_a_lock_lose_nothing() {
    let lab = lab("flock", 52, 3);
    shared_dir(&lab);
    // Root of the other nodes is nobody here: the files are for everyone.
    sh(
        &lab,
        2,
        "cd /mfs/2/pub && echo 0 > counter && touch lock log && chmod 666 counter lock log",
    );
    // Read, add one, write back: only a cluster-wide lock keeps every
    // increment.
    let script = "for i in $(seq 60); do \
         flock /mfs/2/pub/lock sh -c 'n=$(cat /mfs/2/pub/counter); echo $((n+1)) > /mfs/2/pub/counter'; \
         echo \"$$ $i\" >> /mfs/2/pub/log || exit 1; \
         done";
    let one = lab.spawn(
        1,
        &["sh", "-c", script],
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    let three = lab.spawn(
        3,
        &["sh", "-c", script],
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    for mut child in [one, three] {
        assert!(child.wait().unwrap().success());
    }
    // Every step of both loops ran.
    assert_eq!(sh(&lab, 1, "cat /mfs/2/pub/counter").trim(), "120");
    assert_eq!(sh(&lab, 3, "cat /mfs/2/pub/counter").trim(), "120");
    // Appends (O_APPEND at the owner) from both nodes: every line whole.
    let log = std::fs::read_to_string(disk(&lab, 2).join("pub/log")).unwrap();
    assert_eq!(log.lines().count(), 120, "{log}");
    assert!(log.lines().all(|l| l.split(' ').count() == 2), "{log}");
}

#[test]
fn permissions_are_the_callers_and_root_of_another_node_is_nobody() {
    let lab = lab("fperm", 42, 2);
    shared_dir(&lab);
    // Root at the owner (not squashed there) makes a private file of 1001.
    sh(
        &lab,
        2,
        "echo secret > /mfs/2/pub/private && chown 1001:1001 /mfs/2/pub/private && chmod 600 /mfs/2/pub/private",
    );
    let as_user = |uid: u32, script: &str| {
        let who = format!("--reuid={uid}");
        let group = format!("--regid={uid}");
        lab.exec(
            1,
            &[
                "setpriv",
                &who,
                &group,
                "--clear-groups",
                "sh",
                "-c",
                script,
            ],
        )
    };
    let owner = as_user(1001, "cat /mfs/2/pub/private");
    assert!(owner.status.success(), "{}", stderr(&owner));
    assert_eq!(stdout(&owner), "secret\n");
    let other = as_user(1002, "cat /mfs/2/pub/private");
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("Permission denied"),
        "{}",
        stderr(&other)
    );
    // A supplementary group of the caller counts at the owner.
    sh(
        &lab,
        2,
        "echo shared > /mfs/2/pub/grouped && chown 0:1500 /mfs/2/pub/grouped && chmod 640 /mfs/2/pub/grouped",
    );
    let in_group = lab.exec(
        1,
        &[
            "setpriv",
            "--reuid=1003",
            "--regid=1003",
            "--groups=1500",
            "cat",
            "/mfs/2/pub/grouped",
        ],
    );
    assert!(in_group.status.success(), "{}", stderr(&in_group));
    assert_eq!(stdout(&in_group), "shared\n");
    let outside = as_user(1003, "cat /mfs/2/pub/grouped");
    assert!(!outside.status.success(), "read without the group");
    // The user's files are theirs at the owner.
    let made = as_user(1002, "echo mine > /mfs/2/pub/made");
    assert!(made.status.success(), "{}", stderr(&made));
    assert_eq!(
        sh(&lab, 2, "stat -c %u:%g /mfs/2/pub/made").trim(),
        "1002:1002"
    );

    // Root of node 1 is nobody on node 2's files.
    let denied = try_sh(&lab, 1, "cat /mfs/2/pub/private");
    assert!(!denied.status.success());
    assert!(!try_sh(&lab, 1, "echo x > /mfs/2/rootfile").status.success());
    sh(&lab, 1, "echo x > /mfs/2/pub/byroot");
    assert_eq!(sh(&lab, 2, "stat -c %u /mfs/2/pub/byroot").trim(), "65534");
    // ... while root at home is root.
    sh(&lab, 1, "echo x > /mfs/1/rootfile");
    assert_eq!(sh(&lab, 1, "stat -c %u /mfs/1/rootfile").trim(), "0");
}

#[test]
fn a_dead_or_silent_owner_fails_callers_within_the_timeout() {
    let lab = lab("ffail", 43, 2);
    shared_dir(&lab);
    sh(
        &lab,
        2,
        "head -c 50000000 /dev/zero > /mfs/2/pub/big && echo kept > /mfs/2/pub/small && sync",
    );
    // Readers and writers busy on node 2's files when its daemon dies.
    let reader = lab.spawn(
        1,
        &[
            "sh",
            "-c",
            "while cat /mfs/2/pub/big > /dev/null; do :; done; exit 3",
        ],
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    let writer = lab.spawn(
        1,
        &[
            "sh",
            "-c",
            "while head -c 1000000 /dev/zero > /mfs/2/pub/w; do :; done; exit 3",
        ],
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let stopped = Instant::now();
    lab.stop(2, true);
    for mut child in [reader, writer] {
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(3), "the loop ends on an error");
    }
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(8), "callers waited {took:?}");
    let started = Instant::now();
    let failed = try_sh(&lab, 1, "ls /mfs/2/pub");
    assert!(!failed.status.success());
    assert!(started.elapsed() < Duration::from_secs(8));

    // The owner back: everything as it was (and its own stale mount, left
    // by the kill, recovered).
    lab.start(2);
    wait_for(Duration::from_secs(15), "node 2 serving again", || {
        try_sh(&lab, 1, "cat /mfs/2/pub/small").status.success()
    });
    assert_eq!(sh(&lab, 1, "cat /mfs/2/pub/small"), "kept\n");
    assert_eq!(sh(&lab, 2, "cat /mfs/2/pub/small"), "kept\n");

    // An owner that stops answering (its daemon frozen, the connection
    // still open): EIO after the timeout (5 s), not a hang.
    let daemon = std::fs::read_to_string(lab.dir().join("node-2/daemon.pid")).unwrap();
    let pid: i32 = daemon.trim().parse().unwrap();
    let frozen = Frozen::freeze(pid);
    // The read, and a look-up of a name the kernel never saw (its answer
    // would go to the kernel from the connection's task, not to a waiting
    // thread). A request the daemon took can't be killed: one that hangs
    // is ended by resuming the owner, and fails the test.
    for command in ["cat /mfs/2/pub/small", "stat /mfs/2/pub/never-seen"] {
        let started = Instant::now();
        let mut child = lab.spawn(
            1,
            &["sh", "-c", &format!("{command} 2>&1")],
            std::process::Stdio::null(),
            std::process::Stdio::piped(),
        );
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                frozen.resume();
                let _ = child.wait();
                panic!("{command} hung on a silent owner");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let waited = started.elapsed();
        let mut said = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut said).unwrap();
        assert!(!status.success(), "{command} succeeded");
        assert!(said.contains("Input/output error"), "{command}: {said}");
        assert!(
            waited >= Duration::from_secs(4) && waited < Duration::from_secs(12),
            "{command} waited {waited:?}"
        );
    }
    drop(frozen);
    assert_eq!(sh(&lab, 1, "cat /mfs/2/pub/small"), "kept\n");
}

/// A process stopped with SIGSTOP, resumed when dropped (also when a
/// check fails while it is stopped).
struct Frozen(nix::unistd::Pid);

impl Frozen {
    fn freeze(pid: i32) -> Frozen {
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Frozen(pid)
    }

    fn resume(&self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.resume();
    }
}

/// The repository's root (the pjdfstest runner lives in scripts/).
fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_path_buf()
}

#[test]
fn pjdfstest_passes_on_this_nodes_and_another_nodes_files() {
    // Root runs the suite (it changes owners and switches users): root of
    // node 1 must be root on node 2's files for that.
    let lab = Lab::up("fpjd", 44, 2, &["--mfs-root-squash", "false"]);
    wait_for(Duration::from_secs(15), "all nodes up", || {
        lab.all_see_all("up")
    });
    let runner = repository().join("scripts/pjdfstest");
    let runner = runner.to_str().unwrap();
    for (node, excluded) in [(1, "local"), (2, "remote")] {
        sh(&lab, 1, &format!("mkdir -p /mfs/{node}/pjd"));
        let exclude = repository().join(format!("scripts/pjdfstest-exclude-{excluded}.txt"));
        let output = lab.exec(
            1,
            &[
                runner,
                &format!("/mfs/{node}/pjd"),
                "--exclude-file",
                exclude.to_str().unwrap(),
                "--quiet",
            ],
        );
        assert!(
            output.status.success(),
            "pjdfstest on /mfs/{node}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        eprintln!("/mfs/{node}: {}", stdout(&output));
    }
}

/// A node reading another's file sequentially keeps what it read ahead,
/// under a read lease of the owner. Any writer, on the owner's disk or
/// through MFS from a third node, waits until that is dropped, so the
/// reader's next read returns the new data.
#[test]
fn what_a_reader_read_ahead_never_hides_a_later_write() {
    use std::os::unix::fs::MetadataExt;

    let lab = lab("flease", 59, 3);
    let file = disk(&lab, 2).join("big");
    std::fs::write(&file, vec![b'a'; 1 << 20]).unwrap();
    // Root of another node is nobody at the owner: let anyone write it.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let inode = std::fs::metadata(&file).unwrap().ino();
    // Reads 8 KiB per line of input, answering with the block's first byte.
    let script = "import sys\nf = open('/mfs/2/big', 'rb')\nfor _ in sys.stdin:\n    b = f.read(8192)\n    print(chr(b[0]) if b else 'EOF', flush=True)\n";
    let mut reader = Asker::start(&lab, 1, script);
    let mut next_block = move || reader.ask("");
    assert_eq!(next_block(), "a");
    assert_eq!(next_block(), "a");
    // The owner holds a read lease on the file for node 1.
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    assert!(
        locks.lines().any(|l| l.contains("LEASE")
            && l.contains("READ")
            && l.contains(&format!(":{inode} "))),
        "no read lease on inode {inode}:\n{locks}"
    );

    // Rewritten in place on the owner's disk, not through MFS.
    rewrite_promptly(&file, b'b', 1 << 20);
    assert_eq!(next_block(), "b");

    // Rewritten through MFS by node 3.
    sh(
        &lab,
        3,
        "head -c 1048576 /dev/zero | tr '\\0' c | dd of=/mfs/2/big conv=notrunc status=none",
    );
    assert_eq!(next_block(), "c");
    // And truncated by node 3: the reader is at the end.
    sh(&lab, 3, "truncate -s 8192 /mfs/2/big");
    assert_eq!(next_block(), "EOF");
}

/// A sequential reader of another node's file in 1 MiB blocks keeps the
/// next blocks in flight (under a read lease of the owner, which
/// `/proc/locks` shows), yet a rewrite on the owner's disk is what its
/// next read returns; and a reader at the end of the file sees what a
/// writer appends, although it was told the end under a lease.
#[test]
fn a_reader_keeping_blocks_in_flight_sees_rewrites_and_appends() {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    let lab = lab("fahead", 63, 2);
    let file = disk(&lab, 2).join("big");
    std::fs::write(&file, vec![b'a'; 4 << 20]).unwrap();
    let inode = std::fs::metadata(&file).unwrap().ino();
    // Each line of input is a size to read; the answer is the first
    // byte read and how many bytes came, or EOF.
    let script = "import sys\nf = open('/mfs/2/big', 'rb', buffering=0)\nfor line in sys.stdin:\n    b = f.read(int(line))\n    print(chr(b[0]) + ' ' + str(len(b)) if b else 'EOF', flush=True)\n";
    let mut reader = Asker::start(&lab, 1, script);
    let mut read = move |size: usize| reader.ask(&size.to_string());
    const MIB: usize = 1 << 20;
    assert_eq!(read(MIB), format!("a {MIB}"));
    // The blocks after it are asked for under a lease.
    wait_for(Duration::from_secs(5), "a read lease for node 1", || {
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("LEASE") && l.contains("READ") && l.contains(&format!(":{inode} ")))
    });

    rewrite_promptly(&file, b'b', 4 << 20);
    for _ in 1..4 {
        assert_eq!(read(MIB), format!("b {MIB}"));
    }
    // At the end, in small reads: the end is known under a lease.
    assert_eq!(read(8192), "EOF");
    assert_eq!(read(8192), "EOF");
    let mut appender = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    appender.write_all(&[b'd'; 1000]).unwrap();
    drop(appender);
    assert_eq!(read(8192), "d 1000");
    assert_eq!(read(8192), "EOF");
}

/// The kernel keeps the entries of another node's directories, so a path
/// walk asks the owner only for its last name; yet a directory renamed,
/// replaced or removed at the owner is seen at once, since every
/// operation goes to the owner by its whole path.
#[test]
fn kept_directory_entries_never_hide_a_rename_or_a_replacement_at_the_owner() {
    let lab = lab("fdirs", 64, 2);
    let disk2 = disk(&lab, 2);
    std::fs::create_dir_all(disk2.join("d/e")).unwrap();
    std::fs::write(disk2.join("d/e/f"), "one").unwrap();
    // Each line of input is a path; the answer is what stat says of it.
    let script = "import os, stat, sys\nfor line in sys.stdin:\n    try:\n        st = os.stat(line.strip())\n        print('dir' if stat.S_ISDIR(st.st_mode) else 'file ' + str(st.st_size), flush=True)\n    except OSError as e:\n        print(os.strerror(e.errno), flush=True)\n";
    let mut asker = Asker::start(&lab, 1, script);
    let mut stat = move |path: &str| asker.ask(path);
    let remote_ops = || {
        omx_tests::sample(
            &lab.http_get(1, "/metrics"),
            "omx_mfs_operations_total{owner=\"remote\"}",
        )
    };

    assert_eq!(stat("/mfs/2/d/e/f"), "file 3");
    // Walking the path again asks only for its last name and the stat:
    // /mfs/2, d and e are kept.
    let before = remote_ops();
    for _ in 0..10 {
        assert_eq!(stat("/mfs/2/d/e/f"), "file 3");
    }
    let per_stat = (remote_ops() - before) / 10.0;
    assert!(
        per_stat <= 2.0,
        "a stat of /mfs/2/d/e/f took {per_stat} operations at node 2: the directories' entries are not kept"
    );

    // Renamed at the owner: the old path is gone, the new one works.
    std::fs::rename(disk2.join("d"), disk2.join("z")).unwrap();
    assert_eq!(stat("/mfs/2/d/e/f"), "No such file or directory");
    assert_eq!(stat("/mfs/2/z/e/f"), "file 3");
    // A new directory of the old name is the one used.
    std::fs::create_dir_all(disk2.join("d/e")).unwrap();
    std::fs::write(disk2.join("d/e/g"), "two!").unwrap();
    assert_eq!(stat("/mfs/2/d/e/g"), "file 4");
    assert_eq!(stat("/mfs/2/d/e/f"), "No such file or directory");
    // A directory found under a new name carries what is below it along.
    std::fs::rename(disk2.join("z"), disk2.join("y")).unwrap();
    assert_eq!(stat("/mfs/2/y/e/f"), "file 3");
    assert_eq!(stat("/mfs/2/y/e"), "dir");
    // Replaced by a file at the owner.
    std::fs::remove_dir_all(disk2.join("d")).unwrap();
    std::fs::write(disk2.join("d"), "plain").unwrap();
    assert_eq!(stat("/mfs/2/d"), "file 5");
    assert_eq!(stat("/mfs/2/d/e"), "Not a directory");
    // Renamed through MFS from node 1 itself (root of node 1 is nobody
    // at node 2: in a directory anyone may write).
    let open_dir = disk2.join("w");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(
        &open_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::rename(disk2.join("y"), open_dir.join("y")).unwrap();
    assert_eq!(stat("/mfs/2/w/y/e/f"), "file 3");
    sh(&lab, 1, "mv /mfs/2/w/y /mfs/2/w/x");
    assert_eq!(stat("/mfs/2/w/x/e/f"), "file 3");
    assert_eq!(stat("/mfs/2/w/y/e/f"), "No such file or directory");
}

/// Large writes to another node's file go in pieces in flight together;
/// what lands at the owner is exactly what was written, in place and when
/// appending (appends are not cut: the owner places each at the end).
#[test]
fn large_writes_to_another_node_land_whole_in_place_and_appended() {
    let lab = lab("fwrite", 65, 2);
    let source = disk(&lab, 1).join("source");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&source, &data).unwrap();
    std::fs::create_dir(disk(&lab, 2).join("w")).unwrap();
    std::fs::set_permissions(
        disk(&lab, 2).join("w"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    // In place, 1 MiB and 3 MiB at a time, then over its middle.
    sh(
        &lab,
        1,
        "dd if=/mfs/1/source of=/mfs/2/w/f bs=1M status=none",
    );
    assert!(std::fs::read(disk(&lab, 2).join("w/f")).unwrap() == data);
    sh(
        &lab,
        1,
        "dd if=/mfs/1/source of=/mfs/2/w/g bs=3M status=none",
    );
    assert!(std::fs::read(disk(&lab, 2).join("w/g")).unwrap() == data);
    sh(
        &lab,
        1,
        "dd if=/mfs/1/source of=/mfs/2/w/g bs=1M count=2 seek=1 conv=notrunc status=none",
    );
    let mut expected = data.clone();
    expected.copy_within(0..2 << 20, 1 << 20);
    assert!(std::fs::read(disk(&lab, 2).join("w/g")).unwrap() == expected);
    // Appended 1 MiB at a time, twice over.
    for _ in 0..2 {
        sh(
            &lab,
            1,
            "dd if=/mfs/1/source of=/mfs/2/w/h bs=1M oflag=append conv=notrunc status=none",
        );
    }
    let appended = std::fs::read(disk(&lab, 2).join("w/h")).unwrap();
    assert_eq!(appended.len(), 2 * data.len());
    assert!(appended[..data.len()] == data[..] && appended[data.len()..] == data[..]);
}

/// The owner's ext4 gives a removed directory's inode number to the next
/// directory it makes. While the kernel still holds the removed one (an
/// open descriptor keeps it), the new directory must not be taken for it:
/// that dead inode would refuse new entries with ENOENT.
///
/// On a fresh ext4 of one block group the number comes back at once; on
/// the host's disk, where other work allocates alongside, ext4 may choose
/// another group for the next directory.
#[test]
fn a_new_directory_under_a_removed_ones_number_takes_new_entries() {
    let lab = lab("freuse", 66, 2);
    ext4_dir(&lab, 1, "fresh");
    ext4_dir(&lab, 2, "fresh");
    let script = r#"import os, sys
base = sys.argv[1]
os.mkdir(base + '/d')
ino = os.stat(base + '/d').st_ino
held = os.open(base + '/d', os.O_RDONLY)
os.rmdir(base + '/d')
for i in range(200):
    new = base + '/e%d' % i
    os.mkdir(new)
    if os.stat(new).st_ino == ino:
        open(new + '/f', 'w').close()
        print('reused and written')
        break
else:
    print('never reused')
"#;
    for base in ["/mfs/1/fresh", "/mfs/2/fresh"] {
        let output = lab.exec(1, &["python3", "-c", script, base]);
        assert!(
            output.status.success(),
            "in {base}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        // The file system reuses the number at once; if it ever stops,
        // this test no longer tests anything and must say so.
        assert_eq!(stdout(&output).trim(), "reused and written", "in {base}");
    }
}

/// A python program that writes to `path`, opened with `flags`, for
/// each line `n` it reads, `n` blocks of `block` bytes (block `k` is all
/// byte `k`), then answers with how many blocks it wrote in all.
fn block_writer(path: &str, flags: &str, block: usize) -> String {
    format!(
        r#"
import os, sys
fd = os.open("{path}", {flags}, 0o644)
k = 0
for line in sys.stdin:
    for _ in range(int(line)):
        assert os.write(fd, bytes([k % 256]) * {block}) == {block}
        k += 1
    print(k, flush=True)
"#
    )
}

/// The size of `path` and its last byte, as `python3` in `node` reads
/// them.
fn size_and_last_byte(lab: &Lab, node: u16, path: &str) -> String {
    sh(
        lab,
        node,
        &format!(
            "python3 -c 'import os; f = open(\"{path}\", \"rb\"); \
             f.seek(-1, 2); print(os.fstat(f.fileno()).st_size, f.read(1)[0])'"
        ),
    )
    .trim()
    .to_string()
}

/// A fresh 64 MiB ext4 of node `node`'s own, mounted at `name` under its
/// export (`/mfs/<node>/<name>`) in that node, open to all (1777). Its
/// path at the node.
fn ext4_dir(lab: &Lab, node: u16, name: &str) -> String {
    ext4_dir_of_size(lab, node, name, "64M")
}

/// [`ext4_dir`] of `size` (as mkfs.ext4 takes it).
fn ext4_dir_of_size(lab: &Lab, node: u16, name: &str, size: &str) -> String {
    let image = lab.dir().join(format!("node-{node}/{name}.img"));
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .arg(size)
        .output()
        .unwrap();
    assert!(made.status.success(), "mkfs.ext4: {}", stderr(&made));
    let dir = disk(lab, node).join(name);
    let dir = dir.to_str().unwrap().to_string();
    sh(
        lab,
        node,
        &format!(
            "mkdir {dir} && mount -o loop {} {dir} && chmod 1777 {dir}",
            image.display()
        ),
    );
    dir
}

/// A program streaming a file to another node has it on its way to the
/// owner's disk as it writes: the owner starts writing each 8 MiB stretch
/// out as a write reaches its end. Left to the kernel, all of it stays
/// dirty for up to 30 s (unless dirty pages pass the kernel's background
/// threshold, a tenth of memory: far above 64 MiB on any machine this
/// runs on), and a final fsync writes it only after the network transfer
/// instead of beside it. The owner's writeback thread may still be
/// working through the last stretches when the writer ends: the test
/// gives it 5 s, far short of the kernel's 30.
#[test]
fn a_file_streamed_to_another_node_goes_to_its_disk_as_it_comes() {
    const FILES: &str = env!("CARGO_BIN_EXE_omx-test-files");
    let lab = lab("fstream", 79, 2);
    // Large enough that ext4 does not write dirty pages out itself to
    // know how much room is left (it does once they are a third of it).
    let dir = ext4_dir_of_size(&lab, 2, "stream", "1G");
    sh(
        &lab,
        1,
        "dd if=/dev/zero of=/mfs/2/stream/f bs=1M count=64 status=none",
    );
    let stretch_pages = (8 << 20) / 4096;
    let pages = |stat: &str, what: &str| -> u64 {
        let words: Vec<&str> = stat.split_whitespace().collect();
        let at = words.iter().position(|w| *w == what).unwrap();
        words[at + 1].parse().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let stat = loop {
        let stat = sh(&lab, 2, &format!("{FILES} cachestat {dir}/f"));
        if pages(&stat, "dirty") <= stretch_pages || Instant::now() >= deadline {
            break stat;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        pages(&stat, "cached") >= 6 * stretch_pages,
        "the file's pages left the owner's cache ({stat}): the test shows nothing"
    );
    assert!(
        pages(&stat, "dirty") <= stretch_pages,
        "{} of the file's 16384 pages are still dirty at the owner after 5 s ({stat})",
        pages(&stat, "dirty")
    );
    assert_eq!(
        sh(&lab, 2, &format!("stat -c %s {dir}/f")).trim(),
        "67108864"
    );
}

/// A file system of node 2's own, mounted at `frozen` under its export
/// (`/mfs/2/frozen`) in node 2, to freeze: writes landing there wait
/// until it thaws. Its path at node 2.
fn freezable_dir(lab: &Lab) -> String {
    ext4_dir(lab, 2, "frozen")
}

/// Freezes the file system `path` of node 2, and thaws it half a second
/// after being told to, after 5 s in any case, or at once when dropped
/// (before the lab goes, also when the test fails), so that nothing stays
/// frozen and a write waiting for it fails the test instead of hanging
/// it.
struct Thaw {
    tell: Option<std::sync::mpsc::Sender<()>>,
    thawed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl Thaw {
    fn freeze(lab: &Lab, path: &str) -> Thaw {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (delay, limit) = (Duration::from_millis(500), Duration::from_secs(5));
        sh(lab, 2, &format!("fsfreeze -f {path}"));
        let (tell, told) = std::sync::mpsc::channel::<()>();
        let thawed = std::sync::Arc::new(AtomicBool::new(false));
        let (name, path, flag) = (lab.name.clone(), path.to_string(), thawed.clone());
        let thread = std::thread::spawn(move || {
            if told.recv_timeout(limit).is_ok() {
                std::thread::sleep(delay);
            }
            flag.store(true, Ordering::SeqCst);
            let output = omx_tests::omx(&[
                "lab", "exec", "--name", &name, "2", "--", "fsfreeze", "-u", &path,
            ]);
            output.status.success()
        });
        Thaw {
            tell: Some(tell),
            thawed,
            thread: Some(thread),
        }
    }

    /// Thaws `delay` from now.
    fn soon(&self) {
        if let Some(tell) = &self.tell {
            let _ = tell.send(());
        }
    }

    fn thawed(&self) -> bool {
        self.thawed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits for the thaw, which must have worked.
    fn finish(mut self) {
        self.soon();
        let thawed = self.thread.take().unwrap().join().unwrap();
        assert!(thawed, "thawing the owner's file system failed");
    }
}

impl Drop for Thaw {
    fn drop(&mut self) {
        self.tell = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Large writes to another node's file go behind their program under
/// the owner's write lease: they return while the owner's disk is frozen
/// (and the metric counts them). Yet each is there for every reader and
/// stat that comes after it returned, which waits for it to land: one
/// reading the owner's disk directly, one of a third node, a stat from a
/// third node, from the owner's own /mfs and from another process of the
/// writer's node.
#[test]
fn writes_behind_their_program_are_there_for_every_reader_and_stat_after_them() {
    let lab = lab("fbehind", 70, 3);
    let frozen = freezable_dir(&lab);
    let behind_bytes = |lab: &Lab| {
        sample(
            &lab.http_get(1, "/metrics"),
            "omx_mfs_written_behind_bytes_total",
        )
    };
    let before = behind_bytes(&lab);
    let file = "/mfs/2/frozen/behind";
    let writer_program = block_writer(file, "os.O_WRONLY | os.O_CREAT | os.O_TRUNC", 1 << 20);
    let mut writer = Asker::start(&lab, 1, &writer_program);
    let steps = 5u64;
    for step in 0..steps {
        // Answered before it returns: the check before took the lease
        // back, and this write takes it again.
        writer.ask("1");
        let thaw = Thaw::freeze(&lab, &frozen);
        let size = writer.ask("2").parse::<u64>().unwrap() << 20;
        assert!(
            !thaw.thawed(),
            "step {step}: the writes waited for the owner's disk"
        );
        assert_eq!(size, (3 * (step + 1)) << 20);
        let expected = format!("{size} {}", (3 * step + 2) % 256);
        // Thawed half a second from now: each check waits for that.
        thaw.soon();
        let seen = match step {
            // Straight on the owner's disk: the open waits for the revoke.
            0 => size_and_last_byte(&lab, 2, &format!("{frozen}/behind")),
            // Read by a third node.
            1 => size_and_last_byte(&lab, 3, file),
            // Stat'ed by a third node, by the owner's own mount, and by
            // another process of the writer's node.
            node => format!(
                "{} {}",
                sh(
                    &lab,
                    [3, 2, 1][node as usize - 2],
                    &format!("stat -c %s {file}")
                )
                .trim(),
                (3 * step + 2) % 256
            ),
        };
        assert!(
            thaw.thawed(),
            "step {step}: the check ended before the owner's disk thawed"
        );
        thaw.finish();
        assert_eq!(seen, expected, "step {step}");
    }
    drop(writer);
    let went_behind = behind_bytes(&lab) - before;
    assert!(
        went_behind >= (steps * (2 << 20)) as f64,
        "only {went_behind} bytes went behind their program"
    );
    assert_eq!(
        size_and_last_byte(&lab, 3, file),
        format!("{} {}", (3 * steps) << 20, (3 * steps - 1) % 256)
    );
}

/// Appends to another node's file go behind their program too (they
/// return while the owner's disk is frozen), and land whole and in the
/// program's order, though the owner writes each at the end as it
/// comes: a reader of a third node, after them, sees every block in
/// place.
#[test]
fn appends_behind_their_program_land_in_their_order() {
    let lab = lab("fappend", 72, 3);
    let frozen = freezable_dir(&lab);
    let appender_program = block_writer(
        "/mfs/2/frozen/log",
        "os.O_WRONLY | os.O_CREAT | os.O_APPEND",
        64 << 10,
    );
    let mut appender = Asker::start(&lab, 1, &appender_program);
    // Answered before it returns, and takes the write lease.
    assert_eq!(appender.ask("1"), "1");
    let thaw = Thaw::freeze(&lab, &frozen);
    // 24 appends of 64 KiB: all on their way at once, each waiting at
    // the owner for the thaw.
    assert_eq!(appender.ask("24"), "25");
    assert!(!thaw.thawed(), "the appends waited for the owner's disk");
    thaw.soon();
    let blocks = sh(
        &lab,
        3,
        "python3 -c 'import sys; d = open(\"/mfs/2/frozen/log\", \"rb\").read(); \
         print(len(d), [d[i] for i in range(0, len(d), 64 << 10) \
         if d[i:i + (64 << 10)] != bytes([d[i]]) * (64 << 10)], \
         [d[i] for i in range(0, len(d), 64 << 10)])'",
    );
    assert!(
        thaw.thawed(),
        "the read ended before the owner's disk thawed"
    );
    thaw.finish();
    let expected: Vec<String> = (0..25).map(|k| k.to_string()).collect();
    assert_eq!(
        blocks.trim(),
        format!("{} [] [{}]", 25 << 16, expected.join(", ")),
        "(size, blocks not all one byte, each block's byte)"
    );
}

/// A write that already returned and then fails at the owner (its disk
/// full) is reported to its program by a later write or by its close,
/// never lost without a word (nor turned into short counts only).
#[test]
fn a_write_behind_that_fails_at_the_owner_is_reported_by_a_later_write_or_the_close() {
    let lab = lab("fwbfull", 71, 2);
    let small = disk(&lab, 2).join("small");
    std::fs::create_dir(&small).unwrap();
    // A 3 MiB file system at the owner, mounted where its daemon exports.
    sh(
        &lab,
        2,
        &format!(
            "mount -t tmpfs -o size=3m,mode=1777 tmpfs {}",
            small.display()
        ),
    );
    let report = sh(
        &lab,
        1,
        r#"python3 -c '
import os
fd = os.open("/mfs/2/small/f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
returned = 0
for i in range(8):
    try:
        returned += os.write(fd, b"x" * (1 << 20))
    except OSError as e:
        print("write", i, e.errno)
        break
try:
    os.close(fd)
    print("closed", returned)
except OSError as e:
    print("close", e.errno, returned)
'"#,
    );
    let enospc = libc::ENOSPC.to_string();
    let words: Vec<&str> = report.split_whitespace().collect();
    assert!(
        (words[0] == "write" && words[2] == enospc) || (words[0] == "close" && words[1] == enospc),
        "the program was not told its disk was full: {report}"
    );
    // Mounted in node 2's mount namespace only: looked at from there.
    let on_disk: u64 = sh(&lab, 2, &format!("stat -c %s {}/f", small.display()))
        .trim()
        .parse()
        .unwrap();
    assert!(on_disk <= 3 << 20, "{on_disk} bytes in a 3 MiB file system");
    sh(&lab, 2, &format!("umount {}", small.display()));
}

/// How many operations node 1 has sent to other nodes' daemons.
fn remote_operations(lab: &Lab) -> f64 {
    sample(
        &lab.http_get(1, "/metrics"),
        "omx_mfs_operations_total{owner=\"remote\"}",
    )
}

/// Answers each line with what `fstat` says of /mfs/2/pub/kept through a
/// descriptor it keeps open: size, permission bits, links.
const FSTAT_KEPT: &str = r#"
import os, sys
fd = os.open("/mfs/2/pub/kept", os.O_RDONLY)
for line in sys.stdin:
    st = os.fstat(fd)
    print(st.st_size, oct(st.st_mode & 0o7777), st.st_nlink, flush=True)
"#;

#[test]
fn attributes_kept_by_another_node_never_outlive_a_change() {
    // Root of every node acts as root at the owner: any node may change
    // the file.
    let lab = Lab::up("fkeep", 81, 3, &["--mfs-root-squash", "false"]);
    wait_for(Duration::from_secs(15), "all nodes up", || {
        lab.all_see_all("up")
    });
    shared_dir(&lab);
    sh(
        &lab,
        2,
        "printf abc > /mfs/2/pub/kept && chmod 644 /mfs/2/pub/kept",
    );

    // The owner lets node 1's kernel keep the attributes: a stat is one
    // lookup, not a lookup and a getattr, and an fstat asks nothing.
    let before = remote_operations(&lab);
    sh(
        &lab,
        1,
        "for i in $(seq 50); do stat -c %s /mfs/2/pub/kept >/dev/null; done",
    );
    let asked = remote_operations(&lab) - before;
    assert!(
        asked <= 60.0,
        "50 stats of another node's file asked its owner {asked} times (100 without kept attributes)"
    );
    // But each still asked once: a stat by path always looks the name up
    // at the owner, whatever the kernel keeps.
    assert!(
        asked >= 50.0,
        "50 stats of another node's file asked its owner only {asked} times"
    );
    let mut fstat = Asker::start(&lab, 1, FSTAT_KEPT);
    assert_eq!(fstat.ask(""), "3 0o644 1");
    let before = remote_operations(&lab);
    for _ in 0..20 {
        assert_eq!(fstat.ask(""), "3 0o644 1");
    }
    let asked = remote_operations(&lab) - before;
    assert!(
        asked < 5.0,
        "20 fstats of a file whose attributes node 1 keeps asked its owner {asked} times"
    );

    // Every change through MFS, from any node, is seen by the next fstat
    // after it returns: the owner takes the attributes back first.
    let steps = [
        (3, "printf defg >> /mfs/2/pub/kept", "7 0o644 1"),
        (3, "chmod 600 /mfs/2/pub/kept", "7 0o600 1"),
        // Node 2's own process: its writes go by passthrough, not through
        // its daemon; its open for writing takes them back.
        (2, "printf hi >> /mfs/2/pub/kept", "9 0o600 1"),
        (3, "truncate -s 1 /mfs/2/pub/kept", "1 0o600 1"),
        (3, "ln /mfs/2/pub/kept /mfs/2/pub/kept2", "1 0o600 2"),
        (2, "rm /mfs/2/pub/kept2", "1 0o600 1"),
        (1, "chmod 640 /mfs/2/pub/kept", "1 0o640 1"),
    ];
    for (node, change, expected) in steps {
        // Kept again since the last change.
        fstat.ask("");
        sh(&lab, node, change);
        assert_eq!(
            fstat.ask(""),
            expected,
            "node 1 kept stale attributes after `{change}` on node {node} returned"
        );
    }

    // Changed on node 2's disk, not through MFS: the owner reads that
    // from inotify and takes the attributes back as soon as it does.
    fstat.ask("");
    std::fs::write(disk(&lab, 2).join("pub/kept"), b"direct!").unwrap();
    wait_for(
        Duration::from_secs(2),
        "node 1 to see a change made on node 2's disk",
        || fstat.ask("") == "7 0o640 1",
    );
}

/// Answers each line, a path, with what `stat` says of it (inode, size,
/// permission bits, links); a line `x PATH NAME` with the value of the
/// extended attribute (in hexadecimal); `o PATH` with `open` once it opened the file, and
/// then `fx PATH NAME` with the attribute's value read through that
/// descriptor; or with the name of the error.
const STAT_PATHS: &str = r#"
import errno, os, sys
fds = {}
for line in sys.stdin:
    words = line.split()
    try:
        if words[0] == "x":
            print(os.getxattr(words[1], words[2]).hex(), flush=True)
        elif words[0] == "o":
            fds[words[1]] = os.open(words[1], os.O_RDONLY)
            print("open", flush=True)
        elif words[0] == "fx":
            print(os.getxattr(fds[words[1]], words[2]).hex(), flush=True)
        else:
            st = os.stat(words[0])
            print(st.st_ino, st.st_size, oct(st.st_mode & 0o7777), st.st_nlink, flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
"#;

#[test]
fn lookups_in_order_are_answered_ahead_and_never_outlive_a_change() {
    let lab = Lab::up("fahead", 83, 3, &["--mfs-root-squash", "false"]);
    wait_for(Duration::from_secs(15), "all nodes up", || {
        lab.all_see_all("up")
    });
    shared_dir(&lab);
    let on_disk = disk(&lab, 2).join("pub/ahead");
    std::fs::create_dir(&on_disk).unwrap();
    for i in 0..400 {
        std::fs::write(on_disk.join(format!("f{i:03}")), b"x").unwrap();
    }
    let name = |i: usize| format!("/mfs/2/pub/ahead/f{i:03}");
    let mut root = Asker::start(&lab, 1, STAT_PATHS);

    // Stats of names in order: after the first few, node 1 answers them
    // from what it asked ahead for, a few requests in all. (Paced, so
    // that a loaded owner answers each look-ahead before the scan runs
    // past it: a scan faster than the owner asks for what it passes, as
    // it should, and this counts requests.)
    let before = remote_operations(&lab);
    for i in 0..200 {
        if i % 25 == 3 {
            std::thread::sleep(Duration::from_millis(300));
        }
        let answer = root.ask(&name(i));
        assert!(answer.ends_with(" 1 0o644 1"), "{}: {answer}", name(i));
    }
    let asked = remote_operations(&lab) - before;
    assert!(
        asked < 20.0,
        "200 stats in order of another node's directory asked its owner {asked} times"
    );

    // Each change is seen at once by node 1's next stat, though node 1
    // had the name from a look-ahead: the scan goes on to just before
    // the name, so that it was looked ahead for moments ago, and a
    // neighbour, also looked ahead for, still asks nothing.
    let mut next = 200;
    let mut scan_to = |root: &mut Asker, changed: usize| {
        for i in next..changed {
            root.ask(&name(i));
        }
        // Time for a look-ahead on its way to come, even from a loaded
        // owner.
        std::thread::sleep(Duration::from_millis(500));
        let before = remote_operations(&lab);
        root.ask(&name(changed + 2));
        assert_eq!(
            remote_operations(&lab) - before,
            0.0,
            "{} was not answered from the look-ahead",
            name(changed + 2)
        );
        next = changed + 3;
    };
    let ino_of = |answer: &str| answer.split(' ').next().unwrap().to_string();
    let steps = [
        ("printf more >> {}", "5 0o644 1"),
        ("chmod 600 {}", "1 0o600 1"),
        ("ln {} /mfs/2/pub/ahead/linked", "1 0o644 2"),
        ("rm {}", "ENOENT"),
    ];
    let mut changed = 205;
    for (change, expected) in steps {
        scan_to(&mut root, changed);
        sh(&lab, 3, &change.replace("{}", &name(changed)));
        let answer = root.ask(&name(changed));
        assert!(
            answer.ends_with(expected),
            "node 1 answered `{answer}` for {} after `{change}` on node 3 returned",
            name(changed)
        );
        changed += 10;
    }
    // An extended attribute `ls -l` reads, which the file does not have:
    // known from the look-ahead, without asking. Set from node 3, it is
    // read at once.
    scan_to(&mut root, changed);
    let probe = format!("x {} security.selinux", name(changed + 1));
    let before = remote_operations(&lab);
    assert_eq!(root.ask(&probe), "ENODATA");
    assert_eq!(
        remote_operations(&lab) - before,
        0.0,
        "a missing extended attribute of a file looked ahead for was asked for"
    );
    let set = format!(
        "python3 -c \"import os; os.setxattr('{}', 'security.selinux', b'v1')\"",
        name(changed + 1)
    );
    // Through a descriptor opened before (no lookup comes first).
    assert_eq!(root.ask(&format!("o {}", name(changed + 1))), "open");
    let through_fd = format!("fx {} security.selinux", name(changed + 1));
    assert_eq!(root.ask(&through_fd), "ENODATA");
    sh(&lab, 3, &set);
    assert_eq!(
        root.ask(&through_fd),
        "7631",
        "an extended attribute set from node 3"
    );
    assert_eq!(root.ask(&probe), "7631");
    changed += 10;

    // A rename over the name: the stat shows the file moved there.
    scan_to(&mut root, changed);
    let moved = ino_of(&sh(
        &lab,
        3,
        &format!("stat -c '%i ' {}", name(changed + 1)),
    ));
    sh(
        &lab,
        3,
        &format!("mv {} {}", name(changed + 1), name(changed)),
    );
    let answer = root.ask(&name(changed));
    assert_eq!(
        ino_of(&answer),
        moved.trim(),
        "{} after a rename over it",
        name(changed)
    );
    changed += 10;

    // Changed on node 2's disk: seen within the time inotify takes.
    scan_to(&mut root, changed);
    let path = on_disk.join(format!("f{changed:03}"));
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    wait_for(
        Duration::from_secs(2),
        "node 1 to see a chmod on node 2's disk",
        || root.ask(&name(changed)).ends_with("1 0o640 1"),
    );
    changed += 10;
    scan_to(&mut root, changed);
    std::fs::remove_file(on_disk.join(format!("f{changed:03}"))).unwrap();
    wait_for(
        Duration::from_secs(2),
        "node 1 to see an unlink on node 2's disk",
        || root.ask(&name(changed)) == "ENOENT",
    );
    changed += 10;

    // The directory renamed from node 3: nothing under its old name.
    scan_to(&mut root, changed);
    sh(&lab, 3, "mv /mfs/2/pub/ahead /mfs/2/pub/moved");
    assert_eq!(
        root.ask(&name(changed)),
        "ENOENT",
        "a name under a renamed directory"
    );
    sh(&lab, 3, "mv /mfs/2/pub/moved /mfs/2/pub/ahead");
    changed += 10;

    // Who may look: user 1001 scans, then root at node 3 closes the
    // directory to others; 1001's next stat is refused.
    let mut user = Asker::start_as(&lab, 1, 1001, STAT_PATHS);
    for i in changed..changed + 8 {
        assert!(
            user.ask(&name(i)).ends_with("0o644 1"),
            "user 1001 stats {}",
            name(i)
        );
    }
    sh(&lab, 3, "chmod 700 /mfs/2/pub/ahead");
    assert_eq!(
        user.ask(&name(changed + 9)),
        "EACCES",
        "user 1001 looked in a directory closed to it"
    );
    // Root, which may, still scans it ahead; what root was shown is never
    // user 1002's answer.
    let mut other = Asker::start_as(&lab, 1, 1002, STAT_PATHS);
    changed += 20;
    for i in changed..changed + 10 {
        assert!(
            root.ask(&name(i)).ends_with("0o644 1"),
            "root stats {}",
            name(i)
        );
    }
    assert_eq!(
        other.ask(&name(changed + 12)),
        "EACCES",
        "user 1002 was shown root's look-ahead"
    );
    sh(&lab, 3, "chmod 755 /mfs/2/pub/ahead");
    changed += 20;

    // The directory renamed on node 2's disk.
    scan_to(&mut root, changed);
    std::fs::rename(&on_disk, disk(&lab, 2).join("pub/gone")).unwrap();
    wait_for(
        Duration::from_secs(2),
        "node 1 to see its directory renamed on node 2's disk",
        || root.ask(&name(changed)) == "ENOENT",
    );

    // Another directory made under the old name, with some of the same
    // names: node 1's kernel still has the old name's entry (the inode
    // of the directory now called `gone`), and looks up in it, at the
    // owner, the new directory's files. Looked ahead for too, they must
    // not answer for the old directory once it is found as `gone`.
    std::fs::create_dir(&on_disk).unwrap();
    for i in 380..400 {
        std::fs::write(on_disk.join(format!("f{i:03}")), b"yy").unwrap();
    }
    for i in 380..386 {
        let answer = root.ask(&name(i));
        assert!(
            answer.ends_with(" 2 0o644 1"),
            "the new {}: {answer}",
            name(i)
        );
    }
    let answer = root.ask("/mfs/2/pub/gone/f390");
    assert!(
        answer.ends_with(" 1 0o644 1"),
        "the old directory's f390 answered as the new one's: {answer}"
    );
}
