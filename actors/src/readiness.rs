//! Readiness, as the Azure host checks it: `GET http://127.0.0.1:{port}/`; any
//! HTTP response (even a 404) means ready; connection errors mean keep waiting; the
//! instance exiting or the start-up limit passing means it failed. The Azure host
//! probes every 25 ms; Strom probes every 1 ms for the first 10 ms, then at
//! doubling intervals up to 25 ms ([`probe_delay`]), so a handler that is ready in
//! 4 ms is not found 25 ms later (a refused probe on loopback costs microseconds).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::runtime::ExitInfo;

/// The longest wait between two probes (the Azure host's interval).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(25);

/// Probes 1 ms apart at first (a compiled handler is ready within a few ms).
const QUICK_PROBES: u32 = 10;

/// The wait before probe number `attempt` + 1, after `attempt` failed probes:
/// 1 ms for the first 10, then 2, 4, 8, 16, and 25 ms from then on.
pub fn probe_delay(attempt: u32) -> Duration {
    let doubling = attempt.saturating_sub(QUICK_PROBES - 1).min(5);
    Duration::from_millis(1u64 << doubling).min(PROBE_INTERVAL)
}

/// How long a successful probe waits for the rest of the answer before it closes.
const DRAIN_LIMIT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the handler {0} before it became ready")]
    Exited(ExitInfo),
    #[error("the handler did not answer on its port within the start-up limit of {0:?}")]
    Timeout(Duration),
}

/// One probe: does anything answer HTTP on `addr`?
pub async fn probe(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.ok()?;
        if &buf != b"HTTP/" {
            return Some(false);
        }
        // Read the rest of the answer before closing. Closing a socket with unread
        // data resets the connection, and the handler would see an error (a Python
        // traceback in its log) for a probe that succeeded. A handler that keeps the
        // connection open despite `Connection: close` is only waited for briefly.
        let mut rest = [0u8; 4096];
        let drain = async { while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
        Some(true)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// Probe until ready, the instance exits, or `limit` passes. Returns the time it took.
pub async fn wait_ready(
    addr: SocketAddr,
    exited: &mut watch::Receiver<Option<ExitInfo>>,
    limit: Duration,
) -> Result<Duration, NotReady> {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        if let Some(info) = exited.borrow().clone() {
            return Err(NotReady::Exited(info));
        }
        if probe(addr).await {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= limit {
            return Err(NotReady::Timeout(limit));
        }
        tokio::select! {
            _ = tokio::time::sleep(probe_delay(attempt)) => {}
            _ = exited.changed() => {}
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn probes_start_1_ms_apart_and_back_off_to_the_azure_interval() {
        let waits: Vec<u64> = (0..17).map(|a| probe_delay(a).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 4, 8, 16, 25, 25, 25]
        );
        assert_eq!(probe_delay(u32::MAX), PROBE_INTERVAL);
    }

    /// A handler that answers in pieces must see every write succeed: the probe reads
    /// the whole answer instead of resetting the connection after "HTTP/".
    #[tokio::test]
    async fn a_probe_reads_the_whole_answer_and_the_handler_sees_no_reset() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request).await.unwrap();
            s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let body = s.write_all(b"ok").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let more = s.write_all(b"\r\n").await;
            (body.is_ok() && more.is_ok(), body, more)
        });
        assert!(probe(addr).await, "the probe must see the HTTP answer");
        let (clean, body, more) = handler.await.unwrap();
        assert!(clean, "the handler's writes failed: {body:?}, {more:?}");
    }

    #[tokio::test]
    async fn something_that_is_not_http_is_not_ready() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.write_all(b"SSH-2.0-OpenSSH\r\n").await;
        });
        assert!(!probe(addr).await);
    }
}
