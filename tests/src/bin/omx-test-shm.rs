//! A process with a SysV shared memory segment attached (it must stay
//! home): sleeps for SECONDS.

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    // SAFETY: creating a private segment and attaching it anywhere; the
    // pointer is only written through within its 4096 bytes.
    unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600);
        assert!(id >= 0, "shmget");
        let at = libc::shmat(id, std::ptr::null(), 0);
        assert!(at as isize != -1, "shmat");
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        std::ptr::write_volatile(at as *mut u8, 1);
    }
    println!("shared memory attached");
    std::thread::sleep(std::time::Duration::from_secs(seconds));
}
