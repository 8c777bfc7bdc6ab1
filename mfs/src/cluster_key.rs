//! The cluster key: the 32-byte secret every node of a cluster shares.
//!
//! Possession of the key is what makes a peer part of the cluster: the
//! transport's handshake proves it in both directions. The file holds the key
//! as 64 hexadecimal digits and must not be readable by anyone but its owner.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::TryRng;

pub const KEY_LEN: usize = 32;

/// The shared secret of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read cluster key {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cluster key {path} is readable by group or others (mode {mode:o}): run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "cluster key {path} is malformed: expected 64 hexadecimal digits, as written by `omx keygen`"
    )]
    Malformed { path: PathBuf },
    #[error("cannot write cluster key {path}: {source}")]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

impl ClusterKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<ClusterKey, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(ClusterKey(bytes))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ClusterKey {
        ClusterKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Reads a key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let unreadable = |source| KeyError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(unreadable)?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        ClusterKey::from_hex(text.trim()).ok_or_else(|| KeyError::Malformed {
            path: path.to_path_buf(),
        })
    }

    /// Writes the key to a new file readable only by its owner.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let unwritable = |source| KeyError::Unwritable {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(unwritable)?;
        writeln!(file, "{}", self.to_hex()).map_err(unwritable)?;
        file.sync_all().map_err(unwritable)
    }

    fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(text: &str) -> Option<ClusterKey> {
        if text.len() != KEY_LEN * 2 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; KEY_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ClusterKey(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_key_loads_back_and_is_private() {
        let dir = std::env::temp_dir().join(format!("omx-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.key");
        let _ = std::fs::remove_file(&path);
        let key = ClusterKey::generate().unwrap();
        key.save(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(ClusterKey::load(&path).unwrap(), key);
        assert!(
            key.save(&path).is_err(),
            "an existing key is never overwritten"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ClusterKey::load(&path),
            Err(KeyError::TooOpen { mode: 0o644, .. })
        ));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "abc\n").unwrap();
        assert!(matches!(
            ClusterKey::load(&path),
            Err(KeyError::Malformed { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_generated_keys_differ() {
        assert_ne!(
            ClusterKey::generate().unwrap(),
            ClusterKey::generate().unwrap()
        );
    }
}
