//! Per-app request limits from `host.json`: `maxOutstandingRequests` (over it:
//! 429 at once) and `maxConcurrentRequests` (over it: the request waits its turn).
//! One limiter per app and serving version; a new version starts with fresh
//! counters. In memory only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use strom_proto::ids::{AppName, VersionId};
use strom_proto::manifest::HostConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Limiter {
    outstanding: AtomicUsize,
    max_outstanding: Option<usize>,
    concurrency: Option<Arc<Semaphore>>,
    /// `strom_gateway_requests_in_flight` and `_queued` of the app (shared by
    /// its versions' limiters).
    in_flight: metrics::Gauge,
    queued: metrics::Gauge,
}

/// A request counted against its app's limits until dropped.
pub struct Admitted {
    _outstanding: Outstanding,
    _permit: Option<OwnedSemaphorePermit>,
}

struct Outstanding(Arc<Limiter>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.0.in_flight.decrement(1.0);
    }
}

/// A request waiting for its turn; counted as queued until dropped.
struct Queued<'a>(&'a metrics::Gauge);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Limiter {
    fn new(app: &AppName, host: &HostConfig) -> Limiter {
        Limiter {
            in_flight: metrics::gauge!("strom_gateway_requests_in_flight", "app" => app.to_string()),
            queued: metrics::gauge!("strom_gateway_requests_queued", "app" => app.to_string()),
            outstanding: AtomicUsize::new(0),
            max_outstanding: host.max_outstanding_requests.map(|n| n as usize),
            concurrency: host
                .max_concurrent_requests
                .map(|n| Arc::new(Semaphore::new(n as usize))),
        }
    }

    /// Count a request in; `None` when `maxOutstandingRequests` is reached (429).
    /// Waits for a turn under `maxConcurrentRequests`.
    pub async fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let outstanding = self.outstanding.fetch_add(1, Ordering::AcqRel) + 1;
        self.in_flight.increment(1.0);
        let guard = Outstanding(self.clone());
        if self.max_outstanding.is_some_and(|max| outstanding > max) {
            return None;
        }
        let permit = match &self.concurrency {
            Some(sem) => Some(match sem.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.queued.increment(1.0);
                    let _queued = Queued(&self.queued);
                    sem.clone().acquire_owned().await.expect("never closed")
                }
            }),
            None => None,
        };
        Some(Admitted {
            _outstanding: guard,
            _permit: permit,
        })
    }
}

/// The limiters of every app served here.
#[derive(Default)]
pub struct Limiters {
    by_app: RwLock<HashMap<AppName, (VersionId, Arc<Limiter>)>>,
}

impl Limiters {
    pub fn of(&self, app: &AppName, version: &VersionId, host: &HostConfig) -> Arc<Limiter> {
        if let Some((v, l)) = self.by_app.read().expect("limiter lock").get(app) {
            if v == version {
                return l.clone();
            }
        }
        let mut map = self.by_app.write().expect("limiter lock");
        if let Some((v, l)) = map.get(app) {
            if v == version {
                return l.clone();
            }
        }
        let limiter = Arc::new(Limiter::new(app, host));
        map.insert(app.clone(), (version.clone(), limiter.clone()));
        limiter
    }
}
