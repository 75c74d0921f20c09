//! A small blocking HTTP/1.1 client for tests (one request per connection), and a
//! background load that records every outcome.

use std::time::Duration;

use crate::eventually;

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

/// Each request's target gateway and its status and body (or why there was none).
type Outcomes = Vec<(String, Result<(u16, String), String>)>;

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
                        let r = try_get(&t, &path).map(|r| {
                            let body = match r.status {
                                200 => String::new(),
                                _ => String::from_utf8_lossy(&r.body).into_owned(),
                            };
                            (r.status, body)
                        });
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
                    Ok((200, _)) => {}
                    // The body says which path refused it.
                    Ok((s, body)) => {
                        let body: String = body.chars().take(300).collect();
                        failed.push(format!("{target}: HTTP {s}: {body}"))
                    }
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

/// `GET path` on `base`.
pub fn get(base: &str, path: &str) -> HttpResponse {
    http("GET", base, path, &[], b"")
}
