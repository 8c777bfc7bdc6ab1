//! Conversions between the kernel's structures and the image's bytes.

/// `struct sigaction` as the kernel's rt_sigaction takes it on x86_64.
pub const SIGACTION_LEN: usize = 32;
pub const SIGINFO_LEN: usize = 128;
/// Resource limits the image carries (RLIMIT_CPU ..= RLIMIT_RTTIME).
pub const RLIMIT_COUNT: u32 = 16;

/// A 64-bit FNV-1a hash, to compare vDSO builds.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
