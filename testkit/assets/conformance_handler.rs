//! The conformance suite's custom handler: standard library only, so that it builds
//! in about a second as a static binary (`rustc -C target-feature=+crt-static`) and
//! runs unchanged as a process or in a `FROM scratch` container.
//!
//! - Listens on `0.0.0.0:$FUNCTIONS_CUSTOMHANDLER_PORT` (HTTP/1.1, keep-alive);
//!   `CONFORMANCE_MODE=exit-at-once` exits with code 3 at start, `never-ready` never
//!   listens, `loopback-only` listens on 127.0.0.1 only.
//! - Prints `started <args>` to stdout and `to stderr` to stderr at start, and
//!   `request <action>` to stdout per request.
//! - The action is the query parameter `action`, else the path without its leading
//!   `/` (`/api/...` paths answer `hello from <worker id>`):
//!   `env` (its environment, `K=V` lines), `whoami` (the `Uid:` line of
//!   /proc/self/status), `write` (writes the file `path`: `written` or the error),
//!   `sleep` (`ms` milliseconds), `exit` (exits with `code`, no answer), `hog`
//!   (allocates memory until killed), `connect` (a TCP connection to `addr`, 1 s:
//!   `connected` or the error), anything else `ok`.
//! - With `TEST_HANDLER_RECORD` set (an app setting), a JSON-mode invocation (a POST
//!   whose body is a JSON object with `Data`, e.g. a timer run) appends a line
//!   `{"event":"start","function","invocationId","pid","atMs","payload":<body>}` to
//!   that file, waits `TEST_HANDLER_ACTION=sleep=MS` (if set), appends the same
//!   line with `"event":"end"` and no payload, and answers
//!   `{"Outputs":{},"Logs":["ran"]}`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let port: u16 = match std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
    {
        Some(p) => p,
        None => {
            eprintln!("FUNCTIONS_CUSTOMHANDLER_PORT is missing or invalid");
            std::process::exit(2);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("started {}", args.join(" "));
    eprintln!("to stderr");
    let mode = std::env::var("CONFORMANCE_MODE").unwrap_or_default();
    match mode.as_str() {
        "exit-at-once" => {
            eprintln!("exiting at once");
            std::process::exit(3);
        }
        "never-ready" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => {}
    }
    let host = if mode == "loopback-only" { "127.0.0.1" } else { "0.0.0.0" };
    let listener = match TcpListener::bind((host, port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}

fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut length = 0usize;
        let mut invocation = String::new();
        let mut close = line.ends_with("HTTP/1.0\r\n");
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    length = v.trim().parse().unwrap_or(0);
                }
                if k == "x-azure-functions-invocationid" {
                    invocation = v.trim().to_string();
                }
                if k == "connection" && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(record) = std::env::var("TEST_HANDLER_RECORD") {
            if line.starts_with("POST ") && body.starts_with(b"{") && body.windows(7).any(|w| w == b"\"Data\":") {
                let function = target.trim_start_matches('/').to_string();
                let json = |event: &str, payload: Option<&[u8]>| {
                    let at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis())
                        .unwrap_or(0);
                    let mut l = format!(
                        "{{\"event\":\"{event}\",\"function\":\"{function}\",\"invocationId\":\"{invocation}\",\"pid\":{},\"atMs\":{at}",
                        std::process::id()
                    );
                    if let Some(p) = payload {
                        l.push_str(",\"payload\":");
                        l.push_str(&String::from_utf8_lossy(p));
                    }
                    l.push_str("}\n");
                    l
                };
                let append = |text: String| {
                    let written = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&record)
                        .and_then(|mut f| f.write_all(text.as_bytes()));
                    if let Err(e) = written {
                        eprintln!("TEST_HANDLER_RECORD {record}: {e}");
                    }
                };
                append(json("start", Some(&body)));
                let sleep = std::env::var("TEST_HANDLER_ACTION")
                    .ok()
                    .and_then(|a| a.strip_prefix("sleep=").and_then(|ms| ms.parse::<u64>().ok()));
                if let Some(ms) = sleep {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                append(json("end", None));
                let answer = "{\"Outputs\":{},\"Logs\":[\"ran\"]}";
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    answer.len()
                );
                if writer.write_all(head.as_bytes()).is_err() || writer.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        let params: HashMap<&str, &str> = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .collect();
        let action = params
            .get("action")
            .copied()
            .unwrap_or_else(|| path.trim_start_matches('/'));
        println!("request {action}");
        let answer = match action {
            "env" => std::env::vars()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            "whoami" => std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_string))
                .unwrap_or_else(|| "unknown".into()),
            "write" => {
                let target = params.get("path").copied().unwrap_or("/written");
                match std::fs::write(target, b"x") {
                    Ok(()) => "written".into(),
                    Err(e) => format!("error: {e}"),
                }
            }
            "connect" => {
                let target = params.get("addr").copied().unwrap_or("");
                match target.parse::<std::net::SocketAddr>() {
                    Ok(a) => match TcpStream::connect_timeout(&a, Duration::from_secs(1)) {
                        Ok(_) => "connected".into(),
                        Err(e) => format!("error: {e}"),
                    },
                    Err(e) => format!("error: {e}"),
                }
            }
            "sleep" => {
                let ms: u64 = params.get("ms").and_then(|m| m.parse().ok()).unwrap_or(1000);
                std::thread::sleep(Duration::from_millis(ms));
                format!("slept {ms}")
            }
            "exit" => {
                let code: i32 = params.get("code").and_then(|c| c.parse().ok()).unwrap_or(7);
                eprintln!("exiting with {code}");
                std::process::exit(code);
            }
            "hog" => {
                eprintln!("allocating");
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                }
            }
            a if a.starts_with("api/") => format!(
                "hello from {}",
                std::env::var("FUNCTIONS_CUSTOMHANDLER_WORKER_ID").unwrap_or_default()
            ),
            _ => "ok".into(),
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            answer.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}
