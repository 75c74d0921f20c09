//! The conformance handler (`assets/conformance_handler.rs`): a static binary
//! that both runtimes run the same way, an app folder around it, its local
//! `FROM scratch` image, and the Docker check shared by every suite that needs an
//! engine.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bollard::Docker;

/// The handler's source (built by [`handler_binary`]).
pub const HANDLER_SOURCE: &str = include_str!("../assets/conformance_handler.rs");

/// The handler's file name in an app folder (a Windows program ends in `.exe`).
pub const HANDLER_FILE: &str = if cfg!(windows) {
    "conformance-handler.exe"
} else {
    "conformance-handler"
};

/// Set to a prebuilt handler, the suite uses it instead of building one: a Windows
/// build run under Wine cannot run the host's `rustc` (`.ci/windows/run` cross-builds
/// the handler and sets this).
pub const PREBUILT_ENV: &str = "STROM_CONFORMANCE_HANDLER";

/// The handler as a statically linked binary, built once per source version (about a
/// second with `rustc`), cached under `dir`; or the one [`PREBUILT_ENV`] names.
pub fn handler_binary(dir: &Path) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(prebuilt) = std::env::var_os(PREBUILT_ENV) {
                let path = PathBuf::from(prebuilt);
                assert!(
                    path.is_file(),
                    "{PREBUILT_ENV}={}: no such file",
                    path.display()
                );
                return path;
            }
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            HANDLER_SOURCE.hash(&mut h);
            let out = dir.join(format!(
                "conformance-handler-{:016x}{}",
                h.finish(),
                std::env::consts::EXE_SUFFIX
            ));
            if out.is_file() {
                return out;
            }
            std::fs::create_dir_all(dir).unwrap();
            let src = dir.join(format!("conformance-handler-{}.rs", std::process::id()));
            std::fs::write(&src, HANDLER_SOURCE).unwrap();
            let tmp = dir.join(format!("conformance-handler-{}.tmp", std::process::id()));
            let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
            let status = std::process::Command::new(rustc)
                .args([
                    "--edition",
                    "2021",
                    "-O",
                    "-C",
                    "target-feature=+crt-static",
                    "-o",
                ])
                .arg(&tmp)
                .arg(&src)
                .status()
                .expect("rustc runs");
            assert!(status.success(), "building the conformance handler failed");
            // Another test binary may be doing the same: the rename is atomic.
            std::fs::rename(&tmp, &out).unwrap();
            let _ = std::fs::remove_file(&src);
            out
        })
        .clone()
}

/// An app folder: host.json (custom handler [`HANDLER_FILE`], forwarding on),
/// one HTTP function `hello`, and the handler binary.
pub fn write_app(dir: &Path, handler: &Path) {
    std::fs::create_dir_all(dir.join("hello")).unwrap();
    std::fs::write(
        dir.join("host.json"),
        format!(
            r#"{{"version":"2.0","customHandler":{{"description":{{"defaultExecutablePath":"{HANDLER_FILE}","arguments":["--mode=%MODE%"]}},"enableForwardingHttpRequest":true}}}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("hello").join("function.json"),
        r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","methods":["get","post"],"route":"hello/{*rest}"},{"type":"http","direction":"out","name":"res"}]}"#,
    )
    .unwrap();
    std::fs::copy(handler, dir.join(HANDLER_FILE)).unwrap();
}

/// Whether tests that need a Docker engine run: yes when one answers; with
/// `STROM_REQUIRE_DOCKER=1` (CI) a missing engine fails the test instead of skipping.
pub async fn docker_or_skip(test: &str) -> Option<Docker> {
    let found = async {
        let d = Docker::connect_with_defaults().ok()?;
        let d = d.negotiate_version().await.ok()?;
        d.ping().await.ok()?;
        Some(d)
    }
    .await;
    if found.is_none() {
        if std::env::var("STROM_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
            panic!("{test}: no Docker engine answers, and STROM_REQUIRE_DOCKER=1");
        }
        eprintln!("SKIPPED {test}: no Docker engine answers (set STROM_REQUIRE_DOCKER=1 to make this an error)");
    }
    found
}

/// Windows containers' isolation for the suite (`process`, `hyperv`; default: the
/// engine's).
pub const ISOLATION_ENV: &str = "STROM_CONFORMANCE_ISOLATION";

/// The isolation [`ISOLATION_ENV`] names.
pub fn isolation() -> strom_actors::runtime::docker::Isolation {
    match std::env::var(ISOLATION_ENV) {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("{ISOLATION_ENV}: {e}")),
        Err(_) => Default::default(),
    }
}

/// The base of the suite's image: `scratch` unless this names another (a Windows
/// engine needs a Windows base, e.g. `mcr.microsoft.com/windows/nanoserver:ltsc2022`,
/// present on the host: nothing is pulled).
pub const BASE_ENV: &str = "STROM_CONFORMANCE_BASE";

/// The suite's image: `FROM scratch` (or [`BASE_ENV`]) with the app folder (so the
/// handler is also in the image), built locally with `strom image build`'s code; no
/// pull.
pub async fn conformance_image(docker: &Docker, scratch_dir: &Path) -> String {
    static TAG: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TAG.get_or_init(|| async {
        let handler = handler_binary(scratch_dir);
        let app = tempfile::tempdir().unwrap();
        write_app(app.path(), &handler);
        let base = std::env::var(BASE_ENV).unwrap_or_else(|_| "scratch".into());
        // One tag per handler and base.
        let tag = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&handler).unwrap().hash(&mut h);
            base.hash(&mut h);
            format!("strom-conformance:{:012x}", h.finish() & 0xffff_ffff_ffff)
        };
        strom_actors::image_build::build_image(
            docker,
            &strom_actors::image_build::ImageBuild {
                app_dir: app.path().to_path_buf(),
                base,
                tag: tag.clone(),
                pull: false,
            },
        )
        .await
        .expect("building the conformance image");
        tag
    })
    .await
    .clone()
}

/// Names of the containers (any state) carrying `label=value`, as `docker ps` sees
/// them (the tests check the engine's view, not the runtime's).
pub fn containers_labeled(label: &str, value: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={label}={value}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
