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

/// host.json for an app run by the test handler.
pub fn test_handler_host(extra: &str) -> String {
    format!(
        r#"{{"version":"2.0","customHandler":{{"description":{{"defaultExecutablePath":"{TEST_HANDLER}"}}{extra}}}}}"#
    )
}
