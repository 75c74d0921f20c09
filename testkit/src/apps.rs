//! App folders, zips and validated manifests for tests.

use std::collections::BTreeMap;
use std::path::Path;

use strom_proto::manifest::{pack_dir, validate_app, AppManifest, AppPackage, ZipLimits};

/// host.json of an app whose handler is `sh` (never started by these tests).
pub const HOST: &str =
    r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"sh"}}}"#;

/// Write an app folder: `host.json` and one `function.json` per `(name, json)`.
pub fn write_app(dir: &Path, host: &str, functions: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("host.json"), host).unwrap();
    for (name, json) in functions {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("function.json"), json).unwrap();
    }
}

/// function.json of an HTTP function at `route` (function key required).
pub fn http_fn(route: &str) -> String {
    format!(
        r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","authLevel":"function","route":"{route}"}},{{"type":"http","direction":"out","name":"res"}}]}}"#
    )
}

/// The zip of a minimal valid app: one HTTP function `f` at `route`.
pub fn app_zip(route: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path(), HOST, &[("f", &http_fn(route))]);
    pack_dir(dir.path()).unwrap()
}

/// The validated manifest of an app with this host.json and these functions.
pub fn manifest(host: &str, functions: &[(&str, &str)]) -> AppManifest {
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path(), host, functions);
    // [`HOST`]'s `sh` in the package: validation finds it there on every platform
    // (Windows has no `sh` on PATH).
    std::fs::write(dir.path().join("sh"), "").unwrap();
    let zip = pack_dir(dir.path()).unwrap();
    let pkg = AppPackage::from_zip_bytes(&zip, &ZipLimits::default()).unwrap();
    validate_app(&pkg, &BTreeMap::new()).unwrap()
}
