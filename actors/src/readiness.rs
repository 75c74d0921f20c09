//! Readiness, as the Azure host checks it: `GET http://127.0.0.1:{port}/` every
//! 25 ms; any HTTP response (even a 404) means ready; connection errors mean keep
//! waiting; the instance exiting or the start-up limit passing means it failed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::runtime::ExitInfo;

pub const PROBE_INTERVAL: Duration = Duration::from_millis(25);

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
        Some(&buf == b"HTTP/")
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
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = exited.changed() => {}
        }
    }
}
