//! Test harness shared by the `strom` binary tests: a `strom up` process, client
//! commands against it, app folders, and a small HTTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const STROM: &str = env!("CARGO_BIN_EXE_strom");

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A running `strom up`.
pub struct Up {
    pub child: Child,
    pub server: String,
    pub http: String,
    pub stdout: Vec<String>,
    pub data_dir: PathBuf,
}

impl Up {
    pub fn start(data_dir: &Path, apps: &[&Path], extra: &[&str]) -> Up {
        Self::start_with(data_dir, apps, extra, true)
    }

    /// `pick_http_port`: pass `--http-addr 127.0.0.1:0` (else Strom chooses).
    pub fn start_with(data_dir: &Path, apps: &[&Path], extra: &[&str], pick_http_port: bool) -> Up {
        let mut cmd = Command::new(STROM);
        cmd.arg("up")
            .args(apps)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--control-addr", "127.0.0.1:0"])
            .args(if pick_http_port {
                &["--http-addr", "127.0.0.1:0"][..]
            } else {
                &[][..]
            })
            .args(extra);
        Self::spawn(cmd, data_dir)
    }

    /// `strom serve` with these arguments (data dir and ports added).
    pub fn serve(data_dir: &Path, control_port: u16, args: &[&str]) -> Up {
        let mut cmd = Command::new(STROM);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--control-addr", &format!("127.0.0.1:{control_port}")])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(args);
        Self::spawn(cmd, data_dir)
    }

    fn spawn(mut cmd: Command, data_dir: &Path) -> Up {
        cmd.env("STROM_LOG", "error,openraft=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn strom");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let mut server = None;
        let mut http = None;
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix("control:") {
                        server = rest.split_whitespace().next().map(str::to_string);
                    }
                    if let Some(rest) = line.trim().strip_prefix("functions:") {
                        http = rest.split_whitespace().next().map(str::to_string);
                    }
                    let ready = line.starts_with("Ready.");
                    lines.push(line);
                    if ready {
                        break;
                    }
                }
                Err(_) => panic!("strom up did not become ready; output so far: {lines:#?}"),
            }
        }
        Up {
            child,
            // A worker-only node has no control port.
            server: server.unwrap_or_default(),
            http: http.expect("strom up prints its function address"),
            stdout: lines,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn strom(&self, args: &[&str]) -> Out {
        self.strom_with(args, &[])
    }

    pub fn strom_with(&self, args: &[&str], extra: &[&str]) -> Out {
        let out = Command::new(STROM)
            .args(args)
            .args(["--server", &self.server, "--data-dir"])
            .arg(&self.data_dir)
            .args(extra)
            .output()
            .expect("run strom");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.strom_with(args, &["--output", "json"]);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        serde_json::from_str(&out.stdout).expect("json output")
    }

    pub fn stop(mut self) {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
        #[cfg(not(unix))]
        let _ = self.child.kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("strom did not stop within 90 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "strom up exits cleanly on SIGTERM: {status:?}"
        );
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    /// A test that fails midway still stops the node cleanly (SIGTERM), so its
    /// handlers do not outlive the test; SIGKILL only if it does not stop in time.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client command against `server` (control URL) with extra arguments.
pub fn cli(server: &str, args: &[&str], extra: &[&str]) -> Out {
    let out = Command::new(STROM)
        .args(args)
        .args(["--server", server])
        .args(extra)
        .output()
        .expect("run strom");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn write_app(dir: &Path, host: &str, functions: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("host.json"), host).unwrap();
    for (name, json) in functions {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("function.json"), json).unwrap();
    }
}

pub const HOST: &str =
    r#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"sh"}}}"#;

pub fn http_fn(route: &str) -> String {
    format!(
        r#"{{"bindings":[{{"type":"httpTrigger","direction":"in","name":"req","authLevel":"function","route":"{route}"}},{{"type":"http","direction":"out","name":"res"}}]}}"#
    )
}

/// The Rust test handler (see `examples/test-handler/main.rs` for its contract).
pub const TEST_HANDLER: &str = env!("CARGO_BIN_EXE_strom-test-handler");

/// host.json for an app run by the test handler.
pub fn test_handler_host(extra: &str) -> String {
    format!(
        r#"{{"version":"2.0","customHandler":{{"description":{{"defaultExecutablePath":"{TEST_HANDLER}"}}{extra}}}}}"#
    )
}

/// A small blocking HTTP/1.1 client for tests (one request per connection).
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `base` is `http://host:port`; `path` starts with `/`.
pub fn http(
    method: &str,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the function port");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    parse_response(&raw)
}

/// Like [`get`], but a failure to connect or read is an error, not a panic.
pub fn try_get(base: &str, path: &str) -> Result<HttpResponse, String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read {addr}: {e}"))?;
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(format!("{addr} closed the connection without an answer"));
    }
    Ok(parse_response(&raw))
}

/// Each request's target gateway and its status (or why there was none).
type Outcomes = Vec<(String, Result<u16, String>)>;

/// Requests sent in a loop from background threads, each outcome recorded.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Requests completed so far (any outcome).
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Outcomes>>,
}

impl Load {
    /// One thread per target gateway, each sending `path` back to back.
    pub fn start(targets: &[String], path: &str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads = targets
            .iter()
            .map(|t| {
                let (t, path, stop) = (t.clone(), path.to_string(), stop.clone());
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r = try_get(&t, &path).map(|r| r.status);
                        out.push((t.clone(), r));
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    out
                })
            })
            .collect();
        Load {
            stop,
            done,
            threads,
        }
    }

    /// Wait until `more` further requests have completed (the load is running
    /// before a fault, and still running after it).
    pub fn wait_for(&self, more: usize) {
        let target = self.done.load(std::sync::atomic::Ordering::Relaxed) + more;
        eventually(Duration::from_secs(60), "requests of the load", || {
            (self.done.load(std::sync::atomic::Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Stop; returns (requests, failures as "target: outcome").
    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = 0;
        let mut failed = Vec::new();
        for t in self.threads {
            for (target, r) in t.join().unwrap() {
                total += 1;
                match r {
                    Ok(200) => {}
                    Ok(s) => failed.push(format!("{target}: HTTP {s}")),
                    Err(e) => failed.push(format!("{target}: {e}")),
                }
            }
        }
        (total, failed)
    }
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// A free TCP port on 127.0.0.1.
/// A free port on 127.0.0.1 for a node to bind (and bind again after a restart),
/// below the kernel's ephemeral range: an ephemeral port may meanwhile become the
/// source port of some connection, and a restarted node would find it in use. Never
/// one handed out before in this process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u64..10_000 {
        let mut h = random.build_hasher();
        h.write_u64(attempt);
        let port = low + (h.finish() % u64::from(high - low)) as u16;
        let mut given = GIVEN.lock().unwrap();
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port below {high}")
}

pub fn get(base: &str, path: &str) -> HttpResponse {
    http("GET", base, path, &[], b"")
}

/// Poll `f` until it returns `Some`, or panic after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
