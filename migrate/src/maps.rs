//! A process's memory areas (/proc/PID/maps) and which of their pages are
//! present (/proc/PID/pagemap).

use std::io;
use std::os::unix::fs::FileExt;

pub const PAGE_SIZE: u64 = 4096;

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub execute: bool,
    pub shared: bool,
    pub offset: u64,
    pub inode: u64,
    /// A file path, a `[name]` for special areas, or empty for anonymous.
    pub path: String,
}

impl MapEntry {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// `[vdso]`, `[vvar]`, `[vvar_vclock]`: kernel mappings that move, not copy.
    pub fn is_vdso_family(&self) -> bool {
        matches!(self.path.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]")
    }

    pub fn is_vsyscall(&self) -> bool {
        self.path == "[vsyscall]"
    }

    pub fn contains(&self, address: u64) -> bool {
        (self.start..self.end).contains(&address)
    }
}

pub fn parse_line(line: &str) -> Option<MapEntry> {
    let mut fields = line.splitn(6, char::is_whitespace);
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _device = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        execute: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        inode,
        path,
    })
}

pub fn read_maps(pid: i32) -> io::Result<Vec<MapEntry>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    text.lines()
        .map(|l| {
            parse_line(l).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unreadable maps line: {l}"),
                )
            })
        })
        .collect()
}

/// Page states from /proc/PID/pagemap.
pub struct PageMap {
    file: std::fs::File,
}

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;

impl PageMap {
    pub fn open(pid: i32) -> io::Result<PageMap> {
        Ok(PageMap {
            file: std::fs::File::open(format!("/proc/{pid}/pagemap"))?,
        })
    }

    /// For each page of `[start, end)`: whether it holds data (present in
    /// memory or swapped out), as opposed to never touched.
    pub fn populated(&self, start: u64, end: u64) -> io::Result<Vec<bool>> {
        let pages = ((end - start) / PAGE_SIZE) as usize;
        let mut raw = vec![0u8; pages * 8];
        self.file.read_exact_at(&mut raw, start / PAGE_SIZE * 8)?;
        Ok(raw
            .chunks_exact(8)
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")) & (PRESENT | SWAPPED) != 0)
            .collect())
    }
}

/// Runs of consecutive `true` pages, as `(first page, page count)`.
pub fn runs(populated: &[bool]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, p) in populated.iter().enumerate() {
        match (start, *p) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                runs.push((s, i - s));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, populated.len() - s));
    }
    runs
}

/// A free range of `size` bytes avoiding all `taken` ranges, searched
/// downward from `below`.
pub fn find_hole(taken: &[(u64, u64)], size: u64, below: u64) -> Option<u64> {
    let mut sorted: Vec<(u64, u64)> = taken.to_vec();
    sorted.sort();
    let mut candidate_end = below;
    for (start, end) in sorted.iter().rev() {
        if *start >= candidate_end {
            continue;
        }
        if *end <= candidate_end && candidate_end - end >= size {
            return Some(candidate_end - size);
        }
        candidate_end = candidate_end.min(*start);
    }
    (candidate_end >= size + 0x10000).then(|| candidate_end - size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let e = parse_line("7f4efbf84000-7f4efbfaa000 r-xp 00001000 fe:00 325843                     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").unwrap();
        assert_eq!(e.start, 0x7f4efbf84000);
        assert!(e.read && !e.write && e.execute && !e.shared);
        assert_eq!(e.offset, 0x1000);
        assert_eq!(e.path, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        let anon = parse_line("7ffcb94d5000-7ffcb94f6000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anon.path, "");
        let vdso = parse_line(
            "7f73f4ca5000-7f73f4ca7000 r-xp 00000000 00:00 0                          [vdso]",
        )
        .unwrap();
        assert!(vdso.is_vdso_family());
        let spaced = parse_line("1000-2000 rw-s 00000000 00:05 12 /dev/shm/a file").unwrap();
        assert_eq!(spaced.path, "/dev/shm/a file");
        assert!(spaced.shared);
    }

    #[test]
    fn reads_own_maps_and_pagemap() {
        let maps = read_maps(std::process::id() as i32).unwrap();
        assert!(maps.iter().any(|m| m.path == "[stack]"));
        let stack = maps.iter().find(|m| m.path == "[stack]").unwrap();
        let pagemap = PageMap::open(std::process::id() as i32).unwrap();
        let populated = pagemap.populated(stack.start, stack.end).unwrap();
        assert!(populated.iter().any(|p| *p), "the stack in use is present");
    }

    #[test]
    fn runs_and_holes() {
        assert_eq!(
            runs(&[true, true, false, true, false, false, true]),
            vec![(0, 2), (3, 1), (6, 1)]
        );
        assert_eq!(runs(&[]), vec![]);
        let taken = [(0x10_0000, 0x20_0000), (0x30_0000, 0x40_0000)];
        assert_eq!(find_hole(&taken, 0x1000, 0x40_0000), Some(0x2f_f000));
        assert_eq!(find_hole(&taken, 0x10_0000, 0x40_0000), Some(0x20_0000));
        assert_eq!(find_hole(&taken, 0x8_0000, 0x40_0000), Some(0x28_0000));
        assert_eq!(find_hole(&taken, 0x20_0000, 0x40_0000), None);
    }
}
