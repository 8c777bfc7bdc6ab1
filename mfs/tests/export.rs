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
    std::fs::write(base.join("private"), "root only").unwrap();
    std::fs::set_permissions(
        base.join("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let exporter = Exporter::new(&base).unwrap();
    let user = Credentials {
        uid: 1001,
        gid: 1001,
        groups: vec![1001],
    };
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
