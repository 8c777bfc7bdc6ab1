//! Reading and writing another process's memory through /proc/PID/mem,
//! which (unlike process_vm_writev) can also fill read-only pages of a
//! stopped tracee.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The memory of one process.
pub struct ProcessMemory {
    file: File,
    pid: i32,
}

impl ProcessMemory {
    pub fn open(pid: i32) -> io::Result<ProcessMemory> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        Ok(ProcessMemory { file, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Fills `buf` from address `addr`; fails if any of it is unmapped.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    /// Copies as much of `buf` as the process can read from `addr` on,
    /// in one copy (`process_vm_readv`; /proc/PID/mem copies each page
    /// twice). Stops at the first page the process itself may not read,
    /// which only [`read`](Self::read) can reach; returns the bytes copied.
    pub fn read_readable(&self, addr: u64, buf: &mut [u8]) -> usize {
        let len = buf.len();
        let mut local = [std::io::IoSliceMut::new(buf)];
        let remote = [nix::sys::uio::RemoteIoVec {
            base: addr as usize,
            len,
        }];
        nix::sys::uio::process_vm_readv(nix::unistd::Pid::from_raw(self.pid), &mut local, &remote)
            .unwrap_or(0)
    }

    pub fn read_vec(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut bytes = [0u8; 8];
        self.read(addr, &mut bytes)?;
        Ok(u64::from_ne_bytes(bytes))
    }

    /// Reads a NUL-terminated string of at most `max` bytes (without the NUL).
    pub fn read_c_string(&self, addr: u64, max: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        while out.len() < max {
            // Never read across a page boundary we have not reached: the
            // next page may be unmapped.
            let page_left = 4096 - ((addr as usize + out.len()) % 4096);
            let want = chunk.len().min(page_left).min(max - out.len() + 1);
            self.read(addr + out.len() as u64, &mut chunk[..want])?;
            if let Some(nul) = chunk[..want].iter().position(|b| *b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..want]);
        }
        Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG))
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, addr)
    }
}
