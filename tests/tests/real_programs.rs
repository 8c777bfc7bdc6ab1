//! Real, unmodified programs moved at least three times while they run
//! give byte-identical results to a native run of the same input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use omx_tests::{Lab, wait_for};

const INPUT_BYTES: u64 = 200_000_000;

/// A 200 MB text file, made once (deterministic content).
fn input() -> PathBuf {
    let path = std::env::temp_dir().join("omx-test-input-200m.txt");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == INPUT_BYTES) {
        return path;
    }
    // Tests may make it at the same time: each writes its own copy, then renames.
    let partial = path.with_extension(format!(
        "partial-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&partial).unwrap());
    let mut written = 0u64;
    let mut x: u64 = 42;
    let mut line = 0u64;
    while written < INPUT_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let text = format!(
            "record {line:09} value {} tag {}\n",
            x % 100_000,
            ["alpha", "beta", "gamma", "delta"][(x % 4) as usize]
        );
        let take = text.len().min((INPUT_BYTES - written) as usize);
        out.write_all(&text.as_bytes()[..take]).unwrap();
        written += take as u64;
        line += 1;
    }
    out.flush().unwrap();
    drop(out);
    std::fs::rename(&partial, &path).unwrap();
    path
}

fn script(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `command` natively and, in `lab`, moved along `path`; compares the
/// outputs byte for byte.
fn same_result(lab: &Lab, command: &[&str], input: &Path, path: &[&str], pause: Duration) {
    let name = command.join(" ");
    let out_dir = std::env::temp_dir();
    let tag = command[0].rsplit('/').next().unwrap().to_string();
    let native_out = out_dir.join(format!("omx-real-{}-{tag}-native", lab.name));
    let moved_out = out_dir.join(format!("omx-real-{}-{tag}-moved", lab.name));
    let mut native = Command::new(command[0])
        .args(&command[1..])
        .stdin(std::fs::File::open(input).unwrap())
        .stdout(std::fs::File::create(&native_out).unwrap())
        .spawn()
        .unwrap();
    let mut moved = lab.spawn(
        1,
        command,
        Stdio::from(std::fs::File::open(input).unwrap()),
        Stdio::from(std::fs::File::create(&moved_out).unwrap()),
    );
    lab.bounce(1, moved.id(), path, pause);
    assert!(moved.wait().unwrap().success(), "{name} (moved) failed");
    assert!(native.wait().unwrap().success(), "{name} (native) failed");
    let (a, b) = (
        std::fs::read(&native_out).unwrap(),
        std::fs::read(&moved_out).unwrap(),
    );
    assert!(!a.is_empty(), "{name}: no output");
    assert!(
        a == b,
        "{name}: the moved run's output differs ({} vs {} bytes)",
        a.len(),
        b.len()
    );
    let _ = std::fs::remove_file(native_out);
    let _ = std::fs::remove_file(moved_out);
}

#[test]
fn compressors_and_interpreters_moved_three_times_match_native_runs() {
    let input = input();
    let python = script(
        "omx-real.py",
        "import hashlib, sys\nh = hashlib.sha256()\nx = 1\nfor i in range(40_000_000):\n    x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)\n    if i % 97 == 0:\n        h.update(x.to_bytes(8, 'little'))\nprint(h.hexdigest(), x)\n",
    );
    let perl = script(
        "omx-real.pl",
        "use strict; use Digest::MD5 qw(md5_hex);\nmy $x = 1; my $acc = '';\nfor my $i (0 .. 60_000_000) { $x = ($x * 1103515245 + 12345) % 2147483648; $acc = md5_hex($acc . $x) if $i % 50 == 0; }\nprint \"$acc $x\\n\";\n",
    );
    let lab = Lab::up("mreal", 40, 4, &["--cpus", "1"]);
    wait_for(Duration::from_secs(15), "all nodes up", || {
        lab.all_see_all("up")
    });
    let moves = ["2", "3", "4", "home"];
    let pause = Duration::from_millis(1500);
    let jobs: Vec<Vec<String>> = vec![
        vec!["gzip".into(), "-9".into()],
        vec!["xz".into(), "-T1".into()],
        vec!["bzip2".into()],
        vec!["python3".into(), python.display().to_string()],
        vec!["perl".into(), perl.display().to_string()],
    ];
    std::thread::scope(|scope| {
        for job in &jobs {
            let (lab, input) = (&lab, &input);
            scope.spawn(move || {
                let command: Vec<&str> = job.iter().map(String::as_str).collect();
                same_result(lab, &command, input, &moves, pause);
            });
        }
    });
}

#[test]
fn sha256sum_on_slow_nodes_moved_three_times_matches_a_native_run() {
    let input = input();
    // sha256sum is fast: on nodes of 1/20 CPU it runs long enough to move.
    let lab = Lab::up("msha", 41, 4, &["--cpus", "0.05"]);
    wait_for(Duration::from_secs(20), "all nodes up", || {
        lab.all_see_all("up")
    });
    same_result(
        &lab,
        &["sha256sum"],
        &input,
        &["2", "3", "4", "home"],
        Duration::from_millis(1000),
    );
}
