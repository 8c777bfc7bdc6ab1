//! The shape of the control tree: which directories and files exist,
//! their names, and their inode numbers (computed, so that a tree over
//! every process of the node needs no table that grows).

/// Files of `admin/`, and whether each can be written.
pub const ADMIN_FILES: &[(&str, Access)] = &[
    ("block", Access::Write),
    ("bring", Access::Write),
    ("expel", Access::Write),
    ("lstay", Access::Write),
    ("stay", Access::Write),
    ("quiet", Access::Write),
    ("nomfs", Access::Write),
    ("speed", Access::Write),
    ("mospe", Access::Read),
    ("decayinterval", Access::Write),
    ("slowdecay", Access::Write),
    ("fastdecay", Access::Write),
    ("config", Access::Write),
    ("version", Access::Read),
];

/// Files of `nodes/<N>/`, all read-only.
pub const NODE_FILES: &[&str] = &[
    "CPUs", "load", "mem", "rmem", "tmem", "speed", "status", "util", "age",
];

/// Files of `decay/`: write a pid to apply to that process.
pub const DECAY_FILES: &[&str] = &["clear", "cpujob", "iojob", "slow", "fast"];

/// Files of `pid/<PID>/`.
pub const PID_FILES: &[(&str, Access)] = &[
    ("where", Access::Write),
    ("lock", Access::Write),
    ("cantmove", Access::Read),
    ("nmigs", Access::Read),
    ("selected", Access::Write),
    ("stats", Access::Read),
    ("decay", Access::Write),
];

/// Files of `remote/<PID>/`, one directory per guest process.
pub const GUEST_FILES: &[&str] = &["home", "pid", "mem", "cpu"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One node of the tree. Files are named by their index in the lists
/// above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Root,
    Admin,
    AdminFile(u8),
    Nodes,
    Node(u16),
    NodeFile(u16, u8),
    Decay,
    DecayFile(u8),
    Pids,
    Pid(u32),
    PidFile(u32, u8),
    /// `self`: a link to `pid/<reader's pid>`.
    SelfLink,
    Remote,
    Guest(u32),
    GuestFile(u32, u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File(Access),
    Symlink,
}

/// The inode number of the root, as FUSE wants it.
pub const ROOT_INO: u64 = 1;

impl Entry {
    pub fn kind(self) -> Kind {
        match self {
            Entry::Root
            | Entry::Admin
            | Entry::Nodes
            | Entry::Node(_)
            | Entry::Decay
            | Entry::Pids
            | Entry::Pid(_)
            | Entry::Remote
            | Entry::Guest(_) => Kind::Directory,
            Entry::SelfLink => Kind::Symlink,
            Entry::AdminFile(i) => Kind::File(ADMIN_FILES[i as usize].1),
            Entry::PidFile(_, i) => Kind::File(PID_FILES[i as usize].1),
            Entry::DecayFile(_) => Kind::File(Access::Write),
            Entry::NodeFile(..) | Entry::GuestFile(..) => Kind::File(Access::Read),
        }
    }

    /// The file's name within its directory.
    pub fn name(self) -> &'static str {
        match self {
            Entry::AdminFile(i) => ADMIN_FILES[i as usize].0,
            Entry::NodeFile(_, i) => NODE_FILES[i as usize],
            Entry::DecayFile(i) => DECAY_FILES[i as usize],
            Entry::PidFile(_, i) => PID_FILES[i as usize].0,
            Entry::GuestFile(_, i) => GUEST_FILES[i as usize],
            Entry::Admin => "admin",
            Entry::Nodes => "nodes",
            Entry::Decay => "decay",
            Entry::Pids => "pid",
            Entry::SelfLink => "self",
            Entry::Remote => "remote",
            Entry::Root | Entry::Node(_) | Entry::Pid(_) | Entry::Guest(_) => "",
        }
    }

    /// The inode number: a class in the top byte, an id (node, pid) in
    /// the middle, a file index in the low byte.
    pub fn ino(self) -> u64 {
        let (class, id, file): (u64, u64, u64) = match self {
            Entry::Root => return ROOT_INO,
            Entry::Admin => (1, 0, 0),
            Entry::AdminFile(i) => (2, 0, i.into()),
            Entry::Nodes => (3, 0, 0),
            Entry::Node(n) => (4, n.into(), 0),
            Entry::NodeFile(n, i) => (5, n.into(), i.into()),
            Entry::Decay => (6, 0, 0),
            Entry::DecayFile(i) => (7, 0, i.into()),
            Entry::Pids => (8, 0, 0),
            Entry::Pid(p) => (9, p.into(), 0),
            Entry::PidFile(p, i) => (10, p.into(), i.into()),
            Entry::SelfLink => (11, 0, 0),
            Entry::Remote => (12, 0, 0),
            Entry::Guest(p) => (13, p.into(), 0),
            Entry::GuestFile(p, i) => (14, p.into(), i.into()),
        };
        (class << 56) | (id << 8) | file
    }

    /// The entry of an inode number, if it is one of ours (existence is
    /// for the caller to check).
    pub fn from_ino(ino: u64) -> Option<Entry> {
        if ino == ROOT_INO {
            return Some(Entry::Root);
        }
        let class = ino >> 56;
        let id = (ino >> 8) & 0xffff_ffff;
        let file = (ino & 0xff) as u8;
        let node = || u16::try_from(id).ok();
        let pid = id as u32;
        let index = |len: usize| (usize::from(file) < len).then_some(file);
        Some(match class {
            1 => Entry::Admin,
            2 => Entry::AdminFile(index(ADMIN_FILES.len())?),
            3 => Entry::Nodes,
            4 => Entry::Node(node()?),
            5 => Entry::NodeFile(node()?, index(NODE_FILES.len())?),
            6 => Entry::Decay,
            7 => Entry::DecayFile(index(DECAY_FILES.len())?),
            8 => Entry::Pids,
            9 => Entry::Pid(pid),
            10 => Entry::PidFile(pid, index(PID_FILES.len())?),
            11 => Entry::SelfLink,
            12 => Entry::Remote,
            13 => Entry::Guest(pid),
            14 => Entry::GuestFile(pid, index(GUEST_FILES.len())?),
            _ => return None,
        })
    }

    /// The child called `name`, by shape only (whether that node or
    /// process exists is for the caller to check).
    pub fn child(self, name: &str) -> Option<Entry> {
        let position = |names: &mut dyn Iterator<Item = &str>| {
            names
                .enumerate()
                .find(|(_, n)| *n == name)
                .map(|(i, _)| i as u8)
        };
        match self {
            Entry::Root => match name {
                "admin" => Some(Entry::Admin),
                "nodes" => Some(Entry::Nodes),
                "decay" => Some(Entry::Decay),
                "pid" => Some(Entry::Pids),
                "self" => Some(Entry::SelfLink),
                "remote" => Some(Entry::Remote),
                _ => None,
            },
            Entry::Admin => position(&mut ADMIN_FILES.iter().map(|f| f.0)).map(Entry::AdminFile),
            Entry::Nodes => parse_id(name).map(Entry::Node),
            Entry::Node(n) => {
                position(&mut NODE_FILES.iter().copied()).map(|i| Entry::NodeFile(n, i))
            }
            Entry::Decay => position(&mut DECAY_FILES.iter().copied()).map(Entry::DecayFile),
            Entry::Pids => parse_id(name).map(Entry::Pid),
            Entry::Pid(p) => {
                position(&mut PID_FILES.iter().map(|f| f.0)).map(|i| Entry::PidFile(p, i))
            }
            Entry::Remote => parse_id(name).map(Entry::Guest),
            Entry::Guest(p) => {
                position(&mut GUEST_FILES.iter().copied()).map(|i| Entry::GuestFile(p, i))
            }
            _ => None,
        }
    }

    /// The fixed children of a directory (node, process and guest
    /// directories are listed by the caller, who knows which exist).
    pub fn fixed_children(self) -> Vec<Entry> {
        let count = |len: usize| 0..len as u8;
        match self {
            Entry::Root => vec![
                Entry::Admin,
                Entry::Nodes,
                Entry::Decay,
                Entry::Pids,
                Entry::SelfLink,
                Entry::Remote,
            ],
            Entry::Admin => count(ADMIN_FILES.len()).map(Entry::AdminFile).collect(),
            Entry::Node(n) => count(NODE_FILES.len())
                .map(|i| Entry::NodeFile(n, i))
                .collect(),
            Entry::Decay => count(DECAY_FILES.len()).map(Entry::DecayFile).collect(),
            Entry::Pid(p) => count(PID_FILES.len())
                .map(|i| Entry::PidFile(p, i))
                .collect(),
            Entry::Guest(p) => count(GUEST_FILES.len())
                .map(|i| Entry::GuestFile(p, i))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The directory holding this entry.
    pub fn parent(self) -> Entry {
        match self {
            Entry::Root
            | Entry::Admin
            | Entry::Nodes
            | Entry::Decay
            | Entry::Pids
            | Entry::SelfLink
            | Entry::Remote => Entry::Root,
            Entry::AdminFile(_) => Entry::Admin,
            Entry::Node(_) => Entry::Nodes,
            Entry::NodeFile(n, _) => Entry::Node(n),
            Entry::DecayFile(_) => Entry::Decay,
            Entry::Pid(_) => Entry::Pids,
            Entry::PidFile(p, _) => Entry::Pid(p),
            Entry::Guest(_) => Entry::Remote,
            Entry::GuestFile(p, _) => Entry::Guest(p),
        }
    }
}

/// A decimal id without sign, leading zeros or other decoration.
fn parse_id<T: std::str::FromStr>(name: &str) -> Option<T> {
    let canonical = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name == "0" || !name.starts_with('0'));
    canonical.then(|| name.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_shape() -> Vec<Entry> {
        let mut all = vec![Entry::Root];
        for dir in Entry::Root.fixed_children() {
            all.push(dir);
            all.extend(dir.fixed_children());
        }
        for dir in [Entry::Node(65535), Entry::Pid(4_194_304), Entry::Guest(7)] {
            all.push(dir);
            all.extend(dir.fixed_children());
        }
        all
    }

    #[test]
    fn inode_numbers_map_back_to_their_entries() {
        let all = every_shape();
        let mut seen = std::collections::HashSet::new();
        for entry in all {
            assert!(seen.insert(entry.ino()), "{entry:?} shares an inode");
            assert_eq!(Entry::from_ino(entry.ino()), Some(entry));
        }
        assert_eq!(Entry::from_ino(0), None);
        assert_eq!(Entry::from_ino((2 << 56) | 200), None, "no admin file 200");
    }

    #[test]
    fn children_are_found_by_name_and_know_their_parent() {
        for entry in every_shape() {
            if entry == Entry::Root {
                continue;
            }
            let parent = entry.parent();
            let name = match entry {
                Entry::Node(n) => n.to_string(),
                Entry::Pid(p) | Entry::Guest(p) => p.to_string(),
                other => other.name().to_string(),
            };
            assert_eq!(parent.child(&name), Some(entry), "{name} in {parent:?}");
        }
    }

    #[test]
    fn ids_are_plain_decimal_numbers() {
        assert_eq!(Entry::Pids.child("42"), Some(Entry::Pid(42)));
        for bad in ["", "042", "+42", "-1", "4x", "99999999999"] {
            assert_eq!(Entry::Pids.child(bad), None, "{bad:?} was taken as a pid");
        }
        assert_eq!(Entry::Nodes.child("65536"), None);
    }
}
