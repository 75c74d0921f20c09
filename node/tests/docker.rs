//! Apps in containers through the `strom` binary: `strom image build` (and its bad
//! input), `strom up --default-runtime docker`, requests through the gateway,
//! container output in invocation records, an out-of-memory kill reported in the
//! invocation record and the status, and no container outliving a `kill -9` of the
//! node (the restart removes them) or a clean stop.
//!
//! Skips with a message without a Docker engine; `STROM_REQUIRE_DOCKER=1` (CI)
//! makes that a failure.

#![cfg(target_os = "linux")]

mod common;
use strom_testkit::handler as support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{eventually, try_get, Up, STROM};

fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn strom(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(STROM).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Names of the containers (any state) of `app`.
fn containers_of(app: &str) -> Vec<String> {
    support::containers_labeled("strom.app", app)
}

/// Removes the test's containers and image even when it fails midway.
struct Cleanup {
    app: String,
    tag: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = containers_of(&self.app);
        if !names.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&names)
                .output();
        }
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t100_apps_run_in_containers_built_without_a_registry() {
    if support::docker_or_skip("t100_apps_run_in_containers_built_without_a_registry")
        .await
        .is_none()
    {
        return;
    }
    let suffix = &uuid_like()[..8];
    let app = format!("boxed{suffix}");
    let tag = format!("strom-t100:{suffix}");
    let _cleanup = Cleanup {
        app: app.clone(),
        tag: tag.clone(),
    };
    let root = tempfile::tempdir().unwrap();
    let app_dir = root.path().join(&app);
    support::write_app(&app_dir, &support::handler_binary(&scratch()));
    let dir = app_dir.to_str().unwrap();

    // Bad input is refused with exit 2 and names what is wrong.
    let (code, _, err) = strom(&["image", "build", "/nonexistent/app", "--tag", "x:1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/app"), "{err}");
    let (code, _, err) = strom(&["image", "build", dir, "--tag", "Bad Tag"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tag"), "{err}");
    let (code, _, err) = strom(&[
        "image",
        "build",
        dir,
        "--tag",
        "x:1",
        "--base",
        "strom-no-such-base:1",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`strom-no-such-base:1` is not on this Docker engine"),
        "{err}"
    );

    // The image: FROM scratch with the static handler; no pull.
    let (code, out, err) = strom(&["image", "build", dir, "--tag", &tag]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("built {tag} (sha256:")), "{out}");

    let data = tempfile::tempdir().unwrap();
    let flags = [
        "--default-runtime",
        "docker",
        "--container-image",
        tag.as_str(),
        "--container-memory-mb",
        "64",
    ];
    let up = Up::start(data.path(), &[app_dir.as_path()], &flags);
    let hello = eventually(Duration::from_secs(60), "the app answers", || {
        try_get(&up.http, "/api/hello/x")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(
        hello.text().starts_with(&format!("hello from {app}-")),
        "{}",
        hello.text()
    );
    assert!(!containers_of(&app).is_empty(), "it runs in a container");

    // Container output is in the invocation record, like a process's.
    let logs = eventually(Duration::from_secs(10), "the invocation record", || {
        let out = up.strom(&["fn", "logs", &app, "hello"]);
        out.stdout
            .contains("request api/hello/x")
            .then_some(out.stdout)
    });
    assert!(
        logs.contains("Succeeded") || logs.contains("succeeded"),
        "{logs}"
    );

    // Out of memory (the worker default of 64 MiB): the invocation fails and its
    // record and the instance's status say why; a new instance serves again.
    let r = try_get(&up.http, "/api/hello/x?action=hog").unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    let logs = eventually(
        Duration::from_secs(20),
        "the failed invocation's record",
        || {
            let out = up.strom(&["fn", "logs", &app, "hello"]);
            out.stdout.contains("out of memory").then_some(out.stdout)
        },
    );
    assert!(
        logs.contains("the instance ended: killed: out of memory"),
        "{logs}"
    );
    let show = eventually(Duration::from_secs(30), "the status", || {
        let out = up.strom(&["app", "show", &app]);
        out.stdout.contains("out of memory").then_some(out.stdout)
    });
    assert!(show.contains("out of memory"), "{show}");
    eventually(Duration::from_secs(60), "serving again", || {
        try_get(&up.http, "/api/hello/x")
            .ok()
            .filter(|r| r.status == 200)
    });

    // kill -9: the containers stay behind; the restart removes them.
    let before = containers_of(&app);
    assert!(!before.is_empty());
    up.kill9();
    assert_eq!(containers_of(&app), before, "nothing stopped them");
    let up = Up::start(data.path(), &[], &flags);
    eventually(Duration::from_secs(60), "serving after the restart", || {
        try_get(&up.http, "/api/hello/x")
            .ok()
            .filter(|r| r.status == 200)
    });
    let after = containers_of(&app);
    for old in &before {
        assert!(
            !after.contains(old),
            "{old} was left from the killed run: {after:?}"
        );
    }
    // A clean stop leaves nothing.
    up.stop();
    assert!(containers_of(&app).is_empty(), "{:?}", containers_of(&app));
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}
