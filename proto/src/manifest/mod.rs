//! The Azure Functions app model: `host.json`, `<function>/function.json` and the app zip,
//! parsed and validated once at the edge (deploy) and trusted inside.
//!
//! Validation is pure: it reads bytes and app settings and returns either the typed
//! [`AppManifest`] or *every* problem found, each naming file, JSON path and what is wrong.
//! Nothing here touches the network; only [`extract_to`] and [`pack_dir`] touch the disk.

mod json_walk;

pub mod app;
pub mod error;
pub mod function_json;
pub mod host_json;
pub mod ncrontab;
pub mod package;
pub mod rabbitmq;
pub mod route_template;
pub mod timespan;

pub use app::{
    find_on_path, is_function_disabled, validate_app, validate_app_for, AppManifest, HandlerCheck,
};
pub use error::{ManifestError, PackageError};
pub use function_json::{
    AuthLevel, BindingSpec, Direction, FunctionContext, FunctionManifest, HttpTrigger, RetryPolicy,
    RetryStrategy, TimerTrigger, Trigger,
};
pub use host_json::{is_legacy_http_worker, CustomHandler, HostConfig, HOST_JSON};
pub use ncrontab::Schedule;
pub use package::{extract_to, pack_dir, AppPackage, PackageFile, ZipLimits};
pub use route_template::{Constraint, RouteParam, RouteTemplate, Segment};
