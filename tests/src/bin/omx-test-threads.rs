//! A process with two threads (it must stay home): computes for SECONDS.

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let helper =
        std::thread::spawn(move || std::thread::sleep(std::time::Duration::from_secs(seconds)));
    println!("two threads");
    helper.join().expect("helper");
}
