//! Small parsers for the text files of /proc and cgroupfs.

use std::path::Path;

use super::LoadError;

pub fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub fn format_error(path: &Path, detail: impl Into<String>) -> LoadError {
    LoadError::Format {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// The value of `key` in a "key value" or "key: value kB" file.
pub fn keyed_u64(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let name = fields.next()?.trim_end_matches(':');
        if name == key {
            fields.next()?.parse().ok()
        } else {
            None
        }
    })
}

/// `avg10` of the "some" line of a PSI file, in percent.
pub fn psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

/// The scheduler state letter of a /proc/PID/stat line (the field after the
/// command, which may itself contain spaces and parentheses).
pub fn stat_state(stat: &str) -> Option<char> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().next()?.chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_and_cgroup_stat_keys() {
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(keyed_u64(meminfo, "MemAvailable"), Some(20_000_000));
        assert_eq!(
            keyed_u64("cache 5\ninactive_file 4096\n", "inactive_file"),
            Some(4096)
        );
        assert_eq!(keyed_u64("x 1", "y"), None);
    }

    #[test]
    fn parses_psi() {
        let psi = "some avg10=3.50 avg60=1.92 avg300=0.49 total=1699921\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(psi_some_avg10(psi), Some(3.5));
        assert_eq!(psi_some_avg10("garbage"), None);
    }

    #[test]
    fn finds_the_state_after_a_tricky_command_name() {
        assert_eq!(stat_state("123 (a) b) R 1 2 3"), Some('R'));
        assert_eq!(stat_state("7 (sleep) S 1"), Some('S'));
        assert_eq!(stat_state("no parens"), None);
    }
}
