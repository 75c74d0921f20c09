//! Free ports on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

/// A free port on 127.0.0.1 for a node to bind (and bind again after a restart),
/// below the kernel's ephemeral range: an ephemeral port may meanwhile become the
/// source port of some connection, and a restarted node would find it in use. Never
/// one handed out before in this process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u64..10_000 {
        let mut h = random.build_hasher();
        h.write_u64(attempt);
        let port = low + (h.finish() % u64::from(high - low)) as u16;
        let mut given = GIVEN.lock().unwrap();
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port below {high}")
}

/// Wait (up to 10 s) until something accepts connections at `addr`.
pub async fn wait_port(addr: SocketAddr) -> Result<(), String> {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("{addr} did not open"))
}
