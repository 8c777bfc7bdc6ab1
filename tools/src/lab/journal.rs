//! The lab's journal: every resource `lab up` creates, written down before
//! it is created, so that `lab down` can remove everything even after a
//! crash or a half-finished `up`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Something the lab created on this machine.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// A directory the lab owns entirely (removed with its contents).
    Dir { path: PathBuf },
    /// A network namespace (`ip netns`).
    Netns { name: String },
    /// A network link in the host namespace.
    Link { name: String },
    /// A cgroup directory.
    Cgroup { path: PathBuf },
    /// A mount point.
    Mount { path: PathBuf },
}

pub struct Journal {
    file: File,
}

impl Journal {
    /// Starts the journal of a new lab in its directory.
    pub fn create(path: &Path) -> anyhow::Result<Journal> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot create the lab journal {}", path.display()))?;
        Ok(Journal { file })
    }

    /// Records `resource` (durably) before it is created.
    pub fn record(&mut self, resource: &Resource) -> anyhow::Result<()> {
        let line = serde_json::to_string(resource)?;
        writeln!(self.file, "{line}")?;
        self.file.sync_data()?;
        Ok(())
    }

    /// Everything recorded, in order. A torn last line (crash while
    /// writing) is skipped: its resource was not created yet.
    pub fn read(path: &Path) -> anyhow::Result<Vec<Resource>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut resources = Vec::new();
        for line in BufReader::new(file).lines() {
            if let Ok(resource) = serde_json::from_str(&line?) {
                resources.push(resource);
            }
        }
        Ok(resources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_in_order_and_a_torn_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("omx-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal");
        let _ = std::fs::remove_file(&path);
        let mut journal = Journal::create(&path).unwrap();
        let resources = vec![
            Resource::Dir { path: dir.clone() },
            Resource::Netns {
                name: "omx-1".into(),
            },
            Resource::Cgroup {
                path: "/sys/fs/cgroup/cpu/omx-lab-omx".into(),
            },
        ];
        for r in &resources {
            journal.record(r).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"kind\":\"link\",\"na")
            .unwrap();
        assert_eq!(Journal::read(&path).unwrap(), resources);
        assert!(Journal::create(&path).is_err(), "a journal is never reused");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
