//! The owner's side of MFS on a real directory: requests that try to leave
//! the exported tree, name no open file or carry nonsense get an errno,
//! and the exporter goes on serving.

use omx_mfs::fs::Exporter;
use omx_mfs::fs::creds::Credentials;
use omx_mfs::wire::fs::{FsOp, FsResult};

fn root() -> Credentials {
    Credentials {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
    }
}

/// A user who is not root.
fn user_1001() -> Credentials {
    Credentials {
        uid: 1001,
        gid: 1001,
        groups: vec![1001],
    }
}

/// Writes `private` in `base`, a file only root may read.
fn write_private_file(base: &std::path::Path) {
    std::fs::write(base.join("private"), "root only").unwrap();
    std::fs::set_permissions(
        base.join("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
}

/// The node a request comes from.
fn node_2() -> omx_mfs::NodeId {
    omx_mfs::NodeId::new(2).unwrap()
}

fn errno(result: FsResult) -> i32 {
    match result {
        FsResult::Errno(e) => e,
        other => panic!("expected an errno, got {other:?}"),
    }
}

#[test]
fn requests_that_leave_the_export_or_name_nothing_get_an_errno() {
    let base = std::env::temp_dir().join(format!("omx-export-{}", std::process::id()));
    let export = base.join("export");
    std::fs::create_dir_all(export.join("dir")).unwrap();
    std::fs::write(base.join("outside"), "not exported").unwrap();
    std::fs::write(export.join("dir/inside"), "exported").unwrap();
    std::os::unix::fs::symlink("../../outside", export.join("dir/escape")).unwrap();
    std::os::unix::fs::symlink("/etc", export.join("abs")).unwrap();
    let exporter = Exporter::new(&export).unwrap();
    let who = root();
    let lookup = |path: &[u8]| {
        exporter.execute(
            &who,
            FsOp::Lookup {
                path: path.to_vec(),
            },
        )
    };

    for bad in [
        &b"../outside"[..],
        b"/etc/passwd",
        b"dir/../../outside",
        b"dir//inside",
        b"./dir",
        b"a\0b",
    ] {
        assert_eq!(
            errno(lookup(bad)),
            libc::EINVAL,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Symbolic links are the asker's to follow, never the owner's.
    let open = |path: &[u8]| {
        exporter.execute(
            &who,
            FsOp::Open {
                path: path.to_vec(),
                flags: libc::O_RDONLY,
            },
        )
    };
    assert_eq!(errno(open(b"dir/escape")), libc::ELOOP);
    let through_link = errno(lookup(b"abs/passwd"));
    assert!(
        [libc::ELOOP, libc::ENOTDIR].contains(&through_link),
        "errno {through_link}"
    );
    assert!(
        matches!(lookup(b"dir/escape"), FsResult::Attr(_)),
        "the link itself is fine"
    );
    // Handles nobody opened.
    let read = exporter.execute(
        &who,
        FsOp::Read {
            handle: 9999,
            offset: 0,
            size: 10,
            ahead: 0,
        },
    );
    assert_eq!(errno(read), libc::EBADF);

    // And it goes on serving.
    let FsResult::Opened { handle, .. } = open(b"dir/inside") else {
        panic!("open failed");
    };
    let data = exporter.execute(
        &who,
        FsOp::Read {
            handle,
            offset: 0,
            size: 100,
            ahead: 0,
        },
    );
    assert_eq!(data, FsResult::Data(b"exported".to_vec()));
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn operations_run_with_the_callers_identity() {
    let base = std::env::temp_dir().join(format!("omx-export-id-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    write_private_file(&base);
    let exporter = Exporter::new(&base).unwrap();
    let user = user_1001();
    let open = |who: &Credentials| {
        exporter.execute(
            who,
            FsOp::Open {
                path: b"private".to_vec(),
                flags: libc::O_RDONLY,
            },
        )
    };
    assert_eq!(errno(open(&user)), libc::EACCES);
    assert!(matches!(open(&root()), FsResult::Opened { .. }));
    // A file a user creates is theirs.
    let created = exporter.execute(
        &user,
        FsOp::MkDir {
            path: b"made".to_vec(),
            mode: 0o755,
        },
    );
    assert_eq!(errno(created), libc::EACCES, "root's 0755 directory");
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let FsResult::Attr(attr) = exporter.execute(
        &user,
        FsOp::MkDir {
            path: b"made".to_vec(),
            mode: 0o755,
        },
    ) else {
        panic!("mkdir failed");
    };
    assert_eq!((attr.uid, attr.gid, attr.mode & 0o777), (1001, 1001, 0o755));
    // The thread is root again afterwards.
    assert!(matches!(open(&root()), FsResult::Opened { .. }));
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn looks_run_as_the_caller_leave_the_threads_umask_and_never_enter_the_own_mount() {
    let base = std::env::temp_dir().join(format!("omx-export-look-{}", std::process::id()));
    std::fs::create_dir_all(base.join("mnt/below")).unwrap();
    std::fs::write(base.join("mntx"), "beside the mount, not in it").unwrap();
    write_private_file(&base);
    let exporter = Exporter::new(&base).unwrap();
    let user = user_1001();
    let access = |who: &Credentials| {
        let op = FsOp::Access {
            path: b"private".to_vec(),
            mask: libc::R_OK,
        };
        exporter
            .look(who, op, node_2(), None)
            .expect("a look runs here")
    };
    // On a thread of its own file system context (a test thread shares
    // the process's umask), set a umask the look must leave alone.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
                assert_eq!(errno(access(&user)), libc::EACCES, "the caller's identity");
                assert_eq!(access(&root()), FsResult::Done);
                let umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
                assert_eq!(umask.bits(), 0o027, "a look changed the thread's umask");
            })
            .join()
            .unwrap();
    });
    // The thread is itself again even when the operation panics.
    let panicked = std::panic::catch_unwind(|| {
        omx_mfs::fs::creds::run_as_looking(&user, || -> Result<(), nix::errno::Errno> {
            panic!("an operation that panics")
        })
    });
    assert!(panicked.is_err());
    let fsuid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
    assert_eq!(fsuid.as_raw(), 0, "the thread kept the caller's fsuid");

    // Only looks run this way: anything else is given back.
    let mkdir = FsOp::MkDir {
        path: b"made".to_vec(),
        mode: 0o755,
    };
    assert_eq!(
        exporter.look(&root(), mkdir.clone(), node_2(), None),
        Err(Box::new(mkdir))
    );

    // This node's own mount, beneath the exported root, is never walked.
    exporter.set_own_mount(u64::MAX - 1, &base.join("mnt"));
    let lookup = |path: &[u8]| {
        let op = FsOp::Lookup {
            path: path.to_vec(),
        };
        exporter
            .look(&root(), op, node_2(), None)
            .expect("a look runs here")
    };
    assert_eq!(errno(lookup(b"mnt")), libc::EACCES);
    assert_eq!(errno(lookup(b"mnt/below")), libc::EACCES);
    assert!(
        matches!(lookup(b"mntx"), FsResult::Attr(_)),
        "{:?}",
        lookup(b"mntx")
    );
    std::fs::remove_dir_all(&base).unwrap();
}

/// Takes back nothing: the lease it would take back is released when
/// the test ends.
struct NoRevoke;

impl omx_mfs::fs::export::Revoker for NoRevoke {
    fn revoke(&self, _handle: u64, _epoch: u64) {}
}

#[test]
fn a_look_at_a_file_another_node_writes_behind_is_given_back_to_wait_elsewhere() {
    let base = std::env::temp_dir().join(format!("omx-export-lease-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("written"), "").unwrap();
    let exporter = Exporter::new(&base).unwrap();
    let writer = omx_mfs::NodeId::new(3).unwrap();
    let FsResult::Opened { handle, .. } = exporter.execute(
        &root(),
        FsOp::Open {
            path: b"written".to_vec(),
            flags: libc::O_WRONLY,
        },
    ) else {
        panic!("open failed");
    };
    let revoker: std::sync::Arc<dyn omx_mfs::fs::export::Revoker> = std::sync::Arc::new(NoRevoke);
    let written = exporter.write_leased(&root(), handle, 0, b"behind", writer, &revoker);
    assert!(
        matches!(written, FsResult::WrittenLeased { written: 6, .. }),
        "no write lease: {written:?}"
    );
    // Another node's stat must wait for node 3 to settle its writes, and
    // node 3's confirmation comes in on a connection's reader: not there.
    let stat = FsOp::GetAttr {
        path: b"written".to_vec(),
        handle: None,
    };
    assert_eq!(
        exporter.look(&root(), stat.clone(), node_2(), None),
        Err(Box::new(stat.clone()))
    );
    // A stat through an open file may be of any file system, NFS too.
    let through_open = FsOp::GetAttr {
        path: Vec::new(),
        handle: Some(handle),
    };
    assert_eq!(
        exporter.look(&root(), through_open.clone(), writer, None),
        Err(Box::new(through_open))
    );
    // The writer's own node settled its writes before asking.
    assert!(matches!(
        exporter.look(&root(), stat, writer, None),
        Ok(FsResult::Attr(_))
    ));
    exporter.release(handle);
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_look_into_a_fuse_mount_made_after_the_start_that_may_hang_is_given_back_to_wait_elsewhere() {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let base = std::env::temp_dir().join(format!("omx-export-slow-{}", std::process::id()));
    std::fs::create_dir_all(base.join("hung")).unwrap();
    std::fs::write(base.join("beside"), "local").unwrap();
    // A mount namespace of this thread's own, private to it.
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
        mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
        let exporter = Exporter::new(&base).unwrap();
        // A FUSE mount no one serves: a stat in it would never return.
        let fuse = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap();
        let options = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            std::os::fd::AsRawFd::as_raw_fd(&fuse)
        );
        let hung = base.join("hung");
        mount(
            Some("test"),
            &hung,
            Some("fuse"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap();
        let stat = |path: &[u8]| FsOp::GetAttr {
            path: path.to_vec(),
            handle: None,
        };
        let inside = stat(b"hung/file");
        let (answered, answer) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _ = answered.send(exporter.look(&root(), stat(b"hung/file"), node_2(), None));
            });
            let looked = answer.recv_timeout(std::time::Duration::from_secs(5));
            // Ends a look stuck in the mount (ENOTCONN), whatever happened.
            drop(fuse);
            let looked = looked.expect("a look into a hung mount blocked its thread");
            assert_eq!(looked, Err(Box::new(inside)));
        });
        assert!(matches!(
            exporter.look(&root(), stat(b"beside"), node_2(), None),
            Ok(FsResult::Attr(_))
        ));
        umount2(&hung, MntFlags::MNT_DETACH).unwrap();
        // The mount table is read again once it changed: a plain
        // directory again, looked at here.
        assert_eq!(
            exporter.look(&root(), stat(b"hung/file"), node_2(), None),
            Ok(FsResult::Errno(libc::ENOENT))
        );
        std::fs::remove_dir_all(&base).unwrap();
    })
    .join()
    .unwrap();
}

/// A connection that records the take-backs it is told of.
struct Recorder {
    told: std::sync::Mutex<Vec<omx_mfs::fs::attr_grants::FileId>>,
}

impl omx_mfs::fs::attr_grants::AttrHolder for Recorder {
    fn id(&self) -> u64 {
        7
    }
    fn attrs_changed(
        &self,
        file: omx_mfs::fs::attr_grants::FileId,
        _number: u64,
        _tell: omx_mfs::fs::attr_grants::Tell,
    ) {
        self.told.lock().unwrap().push(file);
    }
}

#[test]
fn a_look_ahead_grants_the_entries_after_a_name_and_its_directories_which_a_change_takes_back() {
    use std::os::unix::fs::MetadataExt;
    let base = std::env::temp_dir().join(format!("omx-ahead-{}", std::process::id()));
    let export = base.join("export");
    std::fs::create_dir_all(export.join("d/sub")).unwrap();
    std::fs::create_dir_all(export.join("closed")).unwrap();
    for name in ["c", "a", "e", "b", "d"] {
        std::fs::write(export.join("d").join(name), name).unwrap();
    }
    std::fs::write(export.join("closed/x"), "x").unwrap();
    std::fs::set_permissions(
        export.join("closed"),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let exporter = Exporter::new(&export).unwrap();
    let recorder = std::sync::Arc::new(Recorder {
        told: std::sync::Mutex::new(Vec::new()),
    });
    let holder: std::sync::Arc<dyn omx_mfs::fs::attr_grants::AttrHolder> = recorder.clone();
    let id_of = |path: &str| {
        let meta = std::fs::metadata(export.join(path)).unwrap();
        (meta.dev(), meta.ino())
    };

    // The regular files after "a", in name order, at most 3; the
    // directory below is not granted (its entry is kept by the kernel).
    let answer = exporter.look_ahead(&root(), (b"d", b"a", 3), node_2(), &holder);
    let FsResult::LookedAhead {
        dirs,
        entries,
        last,
        more,
    } = answer
    else {
        panic!("a look-ahead answered {answer:?}");
    };
    let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, [b"b", b"c", b"d"], "the entries after a, in order");
    assert_eq!(last, b"d");
    assert!(more, "names were left after d");
    let granted: Vec<_> = dirs.iter().map(|d| (d.dev, d.ino)).collect();
    assert_eq!(
        granted,
        [id_of(""), id_of("d")],
        "the root and the directory"
    );
    assert_eq!((entries[0].attr.dev, entries[0].attr.ino), id_of("d/b"));

    // The rest: "e", and the directory "sub", which is not granted.
    let answer = exporter.look_ahead(&root(), (b"d", b"d", 10), node_2(), &holder);
    let FsResult::LookedAhead { entries, more, .. } = answer else {
        panic!("a look-ahead answered {answer:?}");
    };
    let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, [b"e"]);
    assert!(!more);

    // Who may not list a directory is shown none of its names, even if
    // it may look up each one.
    let refused = exporter.look_ahead(&user_1001(), (b"closed", b"", 10), node_2(), &holder);
    assert_eq!(errno(refused), libc::EACCES);

    // A change of the directory's mode, or of its name, through MFS
    // takes its grant back before it is made.
    let d = id_of("d");
    let mode = omx_mfs::wire::fs::SetAttrs {
        mode: Some(0o700),
        ..Default::default()
    };
    let op = FsOp::SetAttr {
        path: b"d".to_vec(),
        handle: None,
        attrs: mode,
    };
    let _ = exporter.execute(&root(), op);
    assert!(
        recorder.told.lock().unwrap().contains(&d),
        "chmod of a granted directory"
    );
    recorder.told.lock().unwrap().clear();
    exporter.look_ahead(&root(), (b"d", b"", 1), node_2(), &holder);
    let op = FsOp::Rename {
        from: b"d".to_vec(),
        to: b"moved".to_vec(),
        flags: 0,
    };
    assert_eq!(exporter.execute(&root(), op), FsResult::Done);
    assert!(
        recorder.told.lock().unwrap().contains(&d),
        "rename of a granted directory"
    );
    std::fs::remove_dir_all(&base).unwrap();
}
