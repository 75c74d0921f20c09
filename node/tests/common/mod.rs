//! Test harness shared by the `strom` binary tests: the shared kit
//! (`strom-testkit`) and what only these tests need (the Rust test handler).
#![allow(dead_code, unused_imports)]

pub use strom_testkit::apps::{http_fn, write_app, HOST};
pub use strom_testkit::eventually;
pub use strom_testkit::http::{get, http, try_get, HttpResponse, Load};
pub use strom_testkit::node::{cli, examples, Out, Up};
pub use strom_testkit::ports::free_port;

pub const STROM: &str = env!("CARGO_BIN_EXE_strom");

/// The Rust test handler (see `examples/test-handler/main.rs` for its contract).
pub const TEST_HANDLER: &str = env!("CARGO_BIN_EXE_strom-test-handler");

/// host.json for an app run by the test handler (its absolute path: under Wine
/// cargo's `/…` path gets its drive letter).
pub fn test_handler_host(extra: &str) -> String {
    let path = std::path::absolute(TEST_HANDLER).expect("the test handler's path");
    let path = serde_json::to_string(&path.to_string_lossy()).expect("a string");
    format!(
        r#"{{"version":"2.0","customHandler":{{"description":{{"defaultExecutablePath":{path}}}{extra}}}}}"#
    )
}

/// curl, as a user would run it (CI installs it; elsewhere a missing curl skips
/// the test with a message).
pub fn curl() -> Option<std::process::Command> {
    match std::process::Command::new("curl").arg("--version").output() {
        Ok(o) if o.status.success() => Some(std::process::Command::new("curl")),
        _ if std::env::var_os("STROM_REQUIRE_DOCKER").is_some() => {
            panic!("curl is required in CI (.ci/run installs it)")
        }
        _ => {
            eprintln!("skipped: curl is not installed");
            None
        }
    }
}
