//! `strom-actors`: the worker role as a library.
//!
//! ```text
//! NodeSupervisor                root: assignments in, routing snapshot + statuses out
//!  └─ AppSupervisor(app, ver)   one per deployment; restart policy (one-for-one)
//!      └─ InstanceActor #n      owns one handler process (or container)
//! ```
//!
//! - [`restart_policy`]: the pure restart decision (immediate, backoff, CrashLooping);
//!   [`serving`]: make-before-break and availability (pure); [`rescale`]: slots
//!   (pure); [`stop_reason`]: why an instance stopped, as a value.
//! - [`runtime`]: the instance runtime trait and the process runtime.
//! - [`readiness`]: the 25 ms `GET /` readiness probe.
//! - [`routing`]: the immutable routing snapshot the gateway reads lock-free;
//!   [`handler_conns`]: each Ready endpoint's own connections to its handler.
//!
//! Actors own lifecycle, never the request path: the gateway reads Ready endpoints
//! from the routing snapshot and talks to handlers directly.
//!
//! Why hand-written supervision rather than `ractor-supervisor`: our policy keeps
//! retrying a crash-looping app at the capped backoff and reports it, where OTP
//! (and `ractor-supervisor`) gives up and escalates after `max_restarts`; and the
//! app supervisor also owns scaling, draining and status reporting. A small
//! supervisor over ractor's supervision events, with the policy as a pure
//! function, is the clearer of the two.

pub mod app_supervisor;
pub mod handler_conns;
pub mod image_build;
pub mod instance_actor;
pub mod log_ring;
pub mod node_supervisor;
pub mod readiness;
pub mod rescale;
pub mod restart_policy;
pub mod routing;
pub mod runtime;
pub mod serving;
pub mod stop_reason;

pub use app_supervisor::Lifecycle;
pub use node_supervisor::{Assignment, NodeArgs, NodeMsg, NodeSupervisor};
pub use routing::{Endpoint, RoutingSnapshot, RoutingTable, ServingApp};
