//! The process runtime against a real handler (python3, standard library): the
//! environment it is started with, readiness, log capture, exit detection, graceful
//! stop of the whole process group, and orphan cleanup.

#![cfg(unix)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use strom_actors::readiness::wait_ready;
use strom_actors::runtime::process::{reap_orphans, ProcessRuntime};
use strom_actors::runtime::{ExitInfo, InstanceRuntime, InstanceSpec, LogStream};
use strom_proto::ids::{AppName, VersionId};
use strom_proto::manifest::CustomHandler;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers `GET /` (ready) and `GET /env` (its environment as `K=V` lines); on
/// `GET /child` starts a long-running child in its process group; `GET /exit`
/// exits with code 7. Prints a line to stdout and stderr at start.
const HANDLER: &str = r#"
import os, sys, subprocess
from http.server import BaseHTTPRequestHandler, HTTPServer
print("started", sys.argv[1:], flush=True)
print("to stderr", file=sys.stderr, flush=True)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/exit":
            os._exit(7)
        body = b"ok"
        if self.path == "/env":
            body = "\n".join(f"{k}={v}" for k, v in os.environ.items()).encode()
        if self.path == "/child":
            p = subprocess.Popen(["sleep", "300"])
            body = str(p.pid).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])), H).serve_forever()
"#;

fn spec(root: &Path) -> InstanceSpec {
    std::fs::write(root.join("handler.py"), HANDLER).unwrap();
    InstanceSpec {
        app: AppName::parse("rt-test").unwrap(),
        version: VersionId::of_bytes(b"v1"),
        instance_id: "rt-test-1".into(),
        app_root: root.to_path_buf(),
        handler: CustomHandler {
            default_executable_path: "python3".into(),
            arguments: vec!["handler.py".into(), "--mode=%MODE%".into()],
            working_directory: None,
            enable_forwarding_http_request: false,
        },
        settings: BTreeMap::from([("MODE".to_string(), "fast".to_string())]),
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn t60_the_handler_starts_as_azure_starts_it_and_stops_with_its_group() {
    let root = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(run.path()).unwrap();
    let mut started = runtime.start(&spec(root.path())).await.unwrap();
    let mut logs = started.logs.subscribe();
    let mut exited = started.exited.clone();
    wait_ready(started.endpoint, &mut exited, Duration::from_secs(30))
        .await
        .expect("ready");

    let env = get(started.endpoint, "/env").await;
    let port = started.endpoint.port().to_string();
    for expected in [
        format!("FUNCTIONS_CUSTOMHANDLER_PORT={port}"),
        format!("FUNCTIONS_HTTPWORKER_PORT={port}"),
        "FUNCTIONS_CUSTOMHANDLER_WORKER_ID=rt-test-1".to_string(),
        format!("FUNCTIONS_APP_ROOT_PATH={}", root.path().display()),
        "MODE=fast".to_string(),
    ] {
        assert!(
            env.lines().any(|l| l == expected),
            "missing {expected} in:\n{env}"
        );
    }
    let first = logs.recv().await.unwrap();
    let second = logs.recv().await.unwrap();
    let mut lines = [first, second];
    lines.sort_by_key(|l| l.stream == LogStream::Stderr);
    assert_eq!(
        lines[0].text, "started ['--mode=fast']",
        "arguments with %SETTING% expanded"
    );
    assert_eq!(lines[1].stream, LogStream::Stderr);

    let child: u32 = get(started.endpoint, "/child")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(alive(child));
    let pid = started.pid.unwrap();
    assert!(
        run.path().join(format!("{pid}.json")).is_file(),
        "pid file written"
    );
    let info = started.control.stop(Duration::from_secs(5)).await;
    assert_eq!(
        info,
        ExitInfo::Signal(15),
        "stopped by SIGTERM within the grace"
    );
    for _ in 0..100 {
        if !alive(child) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !alive(child),
        "the handler's child went with its process group"
    );
    assert!(
        !run.path().join(format!("{pid}.json")).exists(),
        "pid file removed"
    );
}

#[tokio::test]
async fn t61_an_exit_is_reported_with_its_code() {
    let root = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(run.path()).unwrap();
    let started = runtime.start(&spec(root.path())).await.unwrap();
    let mut exited = started.exited.clone();
    wait_ready(started.endpoint, &mut exited, Duration::from_secs(30))
        .await
        .unwrap();
    let _ = tokio::net::TcpStream::connect(started.endpoint)
        .await
        .unwrap()
        .write_all(b"GET /exit HTTP/1.0\r\n\r\n")
        .await;
    let info = tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|e| e.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(info, Some(ExitInfo::Code(7)));
}

#[tokio::test]
async fn t62_a_missing_executable_is_a_clear_error_and_orphans_are_reaped() {
    let root = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(run.path()).unwrap();
    let mut s = spec(root.path());
    s.handler.default_executable_path = "no-such-handler-binary".into();
    let err = runtime.start(&s).await.err().expect("cannot start");
    assert!(err.to_string().contains("no-such-handler-binary"), "{err}");

    // A handler whose node went away without stopping it: the pid file remains.
    let started = runtime.start(&spec(root.path())).await.unwrap();
    let pid = started.pid.unwrap();
    std::mem::forget(started.control);
    let killed = reap_orphans(run.path());
    assert_eq!(killed, vec![pid]);
    for _ in 0..100 {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(pid));
    // A pid file whose process is gone (or was reused) kills nothing.
    std::fs::write(
        run.path().join("999999.json"),
        r#"{"pid":999999,"start_ticks":1,"instance":"x"}"#,
    )
    .unwrap();
    assert!(reap_orphans(run.path()).is_empty());
}

#[tokio::test]
async fn t63_a_packaged_handler_starts_from_a_relative_data_dir() {
    // `strom up` defaults to `--data-dir ./.strom`: app folders are relative.
    let dir = tempfile::tempdir_in(".").unwrap();
    let rel = Path::new(".").join(dir.path().file_name().unwrap());
    let root = rel.as_path();
    let run = tempfile::tempdir().unwrap();
    let mut s = spec(root);
    let script = root.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\nexec python3 handler.py \"$@\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.handler.default_executable_path = "run.sh".into();
    s.handler.arguments = vec![];
    let runtime = ProcessRuntime::new(run.path()).unwrap();
    let mut started = runtime
        .start(&s)
        .await
        .expect("the packaged handler starts");
    let mut exited = started.exited.clone();
    wait_ready(started.endpoint, &mut exited, Duration::from_secs(30))
        .await
        .expect("ready");
    let env = get(started.endpoint, "/env").await;
    let absolute = std::path::absolute(root).unwrap();
    assert!(
        env.lines()
            .any(|l| l == format!("FUNCTIONS_APP_ROOT_PATH={}", absolute.display())),
        "the app root is given as an absolute path:\n{env}"
    );
    started.control.stop(Duration::from_secs(5)).await;
}
