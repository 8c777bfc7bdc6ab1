//! Why a process cannot migrate, in words a user can act on.
//!
//! Checked while the process is stopped (so it cannot start a thread or
//! map shared memory between the check and the move); the daemon adds the
//! constraints it keeps itself (an explicit lock).

use std::io;

use crate::maps;

/// The first reason `pid` must stay home, or `None` if it may move.
/// `tracer` is our own pid (our ptrace attachment is not a constraint).
pub fn reason_to_stay(pid: i32, tracer: i32) -> io::Result<Option<String>> {
    if pid == 1 {
        return Ok(Some("it is init".into()));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let threads: u32 = field("Threads:").parse().unwrap_or(1);
    if threads > 1 {
        return Ok(Some(format!(
            "it has {threads} threads: multi-threaded processes stay home"
        )));
    }
    let locked_kib: u64 = field("VmLck:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(0);
    if locked_kib > 0 {
        return Ok(Some(format!(
            "it has {locked_kib} kB of locked memory (mlock)"
        )));
    }
    let tracer_pid: i32 = field("TracerPid:").parse().unwrap_or(0);
    if tracer_pid != 0 && tracer_pid != tracer {
        return Ok(Some(format!("it is traced by process {tracer_pid}")));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_command = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let fields: Vec<&str> = after_command.split_whitespace().collect();
    // Field 9 is the kernel's flags word (PF_KTHREAD = 0x00200000); field
    // 41 the scheduling policy.
    let flags: u64 = fields.get(9 - 3).and_then(|f| f.parse().ok()).unwrap_or(0);
    if flags & 0x0020_0000 != 0 {
        return Ok(Some("it is a kernel thread".into()));
    }
    let policy: i32 = fields.get(41 - 3).and_then(|f| f.parse().ok()).unwrap_or(0);
    if matches!(policy, libc::SCHED_FIFO | libc::SCHED_RR | 6) {
        return Ok(Some("it runs under real-time scheduling".into()));
    }
    for area in maps::read_maps(pid)? {
        if area.shared && area.write {
            let what = if area.path.is_empty() {
                "anonymous shared memory".to_string()
            } else if area.path.starts_with("/SYSV") {
                "a SysV shared memory segment".to_string()
            } else {
                area.path.clone()
            };
            return Ok(Some(format!("it has a writable shared mapping ({what})")));
        }
        if area.path.starts_with("/dev/")
            && !area.path.starts_with("/dev/shm/")
            && area.path != "/dev/zero"
        {
            return Ok(Some(format!("it maps a device ({})", area.path)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_process_may_move_and_a_threaded_one_may_not() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = sleeper.id() as i32;
        assert_eq!(reason_to_stay(pid, 0).unwrap(), None);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        // This test process has several threads (the test harness).
        let me = std::process::id() as i32;
        let _helper =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(500)));
        let reason = reason_to_stay(me, 0).unwrap().unwrap();
        assert!(reason.contains("threads"), "{reason}");
        assert_eq!(reason_to_stay(1, 0).unwrap().as_deref(), Some("it is init"));
    }
}
