//! When a node stops, and how its supervisor learns that it has started.
//!
//! A node stops on Ctrl-C, on SIGTERM (Unix), or when something in the process asks
//! it to ([`request_stop`]: the Windows service's control handler, on a service stop
//! or a system shutdown). A second request while the node waits out its shutdown
//! delay skips the rest of it, whichever way each request came.
//!
//! [`started`] is told once the node serves (its ports are open and it has reported
//! its apps); a supervisor that must say when the node is up (the Windows service
//! reports "running") waits for it with [`wait_started`].

use std::sync::LazyLock;

use tokio::sync::watch;

/// Stop requests made in this process so far.
static REQUESTS: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// Whether the node of this process serves.
static STARTED: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::Sender::new(false));

/// Ask the node of this process to stop (as Ctrl-C would).
pub fn request_stop() {
    REQUESTS.send_modify(|n| *n += 1);
}

/// The node serves.
pub fn started() {
    STARTED.send_replace(true);
}

/// Wait until the node serves (at once if it does already).
pub async fn wait_started() {
    let mut rx = STARTED.subscribe();
    // The sender is static: `wait_for` cannot fail.
    let _ = rx.wait_for(|s| *s).await;
}

/// The stop requests a node has seen; each [`StopRequests::next`] waits for a new
/// one. Requests made before the node began to wait count too.
#[derive(Debug, Default)]
pub struct StopRequests {
    seen: u64,
}

impl StopRequests {
    /// Wait for the next request: Ctrl-C, SIGTERM, or [`request_stop`].
    pub async fn next(&mut self) {
        let mut rx = REQUESTS.subscribe();
        let requested = async {
            // The sender is static: `wait_for` cannot fail.
            let n = rx.wait_for(|n| *n > self.seen).await.map(|n| *n);
            n.unwrap_or(self.seen + 1)
        };
        tokio::select! {
            n = requested => self.seen = n,
            _ = os_signal() => {}
        }
    }
}

async fn os_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // One test: the requests are the process's, shared by every test in it.
    #[tokio::test]
    async fn requests_before_and_during_the_wait_each_count_once() {
        let mut stops = StopRequests::default();
        // Made before the node waits: not lost.
        request_stop();
        tokio::time::timeout(Duration::from_secs(5), stops.next())
            .await
            .expect("an earlier request ends the first wait");
        // Seen: the next wait needs a new one.
        let mut second = Box::pin(stops.next());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "a request counts once"
        );
        request_stop();
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("a new request ends the second wait");

        let waiting = tokio::spawn(wait_started());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        started();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("told once the node serves")
            .unwrap();
        // And at once afterwards.
        tokio::time::timeout(Duration::from_secs(5), wait_started())
            .await
            .unwrap();
    }
}
