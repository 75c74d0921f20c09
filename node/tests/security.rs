//! The node's defences as a local user, a network client or a slow client would
//! meet them, through the `strom` binary: internal services want the cluster's
//! proof (not its id), hop metadata from clients is ignored, the data dir is the
//! owner's alone, and the function port bounds slow and idle connections.

// Unix only: not run on Windows yet (signals, `sh` handlers, Unix modes, or
// untried there); on Windows `.ci/windows/run` runs `e2e.rs` and the smoke test
// under Wine (docs/windows.md).
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{curl, eventually, http, test_handler_host, write_app, Up};
use strom_control_plane::internal_auth::{ClusterSecret, PROOF_METADATA};
use strom_proto::internal_v1::blob_service_client::BlobServiceClient;
use strom_proto::internal_v1::cluster_service_client::ClusterServiceClient;
use strom_proto::internal_v1::worker_service_client::WorkerServiceClient;
use strom_proto::internal_v1::{
    GetBlobRequest, LiveWorkersRequest, ProposeRequest, ReadIndexRequest,
};

fn fwd_app(dir: &Path) {
    write_app(
        dir,
        &test_handler_host(r#","enableForwardingHttpRequest":true"#),
        &[(
            "fwd",
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"fwd/{*rest}"},{"type":"http","direction":"out","name":"res"}]}"#,
        )],
    );
}

/// A node (`strom up`) running the forwarding app; the temp dirs live with it.
struct Node {
    up: Up,
    _data: tempfile::TempDir,
    _apps: tempfile::TempDir,
}

fn start(extra: &[&str]) -> Node {
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("fwdapp");
    fwd_app(&app);
    let up = Up::start(data.path(), &[&app], extra);
    Node {
        up,
        _data: data,
        _apps: apps,
    }
}

/// A new cluster switches to the protocol that requires the proof on its own.
fn wait_for_protocol_4(up: &Up) {
    eventually(Duration::from_secs(30), "cluster protocol 4", || {
        (up.json(&["cluster", "status"])["protocol"].as_u64()? >= 4).then_some(())
    });
}

/// The first string value named `key` anywhere in `v`.
fn find(v: &serde_json::Value, key: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .and_then(|x| x.as_str().map(str::to_string))
            .or_else(|| m.values().find_map(|x| find(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find(x, key)),
        _ => None,
    }
}

fn with_proof<T>(message: T, proof: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(p) = proof {
        r.metadata_mut().insert(PROOF_METADATA, p.parse().unwrap());
    }
    r
}

#[test]
fn internal_services_want_the_clusters_proof_not_its_id() {
    let Node {
        up,
        _data: data,
        _apps,
    } = start(&[]);
    wait_for_protocol_4(&up);
    let status = up.json(&["cluster", "status"]);
    let cluster_id = status["cluster_id"].as_str().unwrap().to_string();
    let version = find(&up.json(&["app", "show", "fwdapp"]), "active_version").unwrap();
    let secret = ClusterSecret::default();
    secret.load(data.path());
    let proof = secret
        .proof()
        .expect("join.token in the data dir")
        .to_string();
    assert!(
        !up.stdout.iter().any(|l| l.contains(&proof)),
        "the proof is never printed"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(up.server.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut cluster = ClusterServiceClient::new(channel.clone());
        let mut blobs = BlobServiceClient::new(channel.clone());
        let mut workers = WorkerServiceClient::new(channel);
        let read = |p: Option<&str>| {
            with_proof(
                ReadIndexRequest {
                    cluster_id: cluster_id.clone(),
                },
                p,
            )
        };
        let blob = |p: Option<&str>| {
            with_proof(
                GetBlobRequest {
                    cluster_id: cluster_id.clone(),
                    sha256: version.clone(),
                },
                p,
            )
        };
        // The cluster id alone, or a wrong proof, opens nothing.
        for p in [None, Some(""), Some("not-the-proof"), Some(&cluster_id[..])] {
            let code = |r: Result<(), tonic::Status>| r.unwrap_err().code();
            assert_eq!(
                code(cluster.read_index(read(p)).await.map(|_| ())),
                tonic::Code::Unauthenticated,
                "ReadIndex with {p:?}"
            );
            assert_eq!(
                code(blobs.get_blob(blob(p)).await.map(|_| ())),
                tonic::Code::Unauthenticated,
                "GetBlob with {p:?}"
            );
            assert_eq!(
                code(
                    workers
                        .live_workers(with_proof(
                            LiveWorkersRequest {
                                cluster_id: cluster_id.clone()
                            },
                            p
                        ))
                        .await
                        .map(|_| ())
                ),
                tonic::Code::Unauthenticated,
                "LiveWorkers with {p:?}"
            );
            assert_eq!(
                code(
                    cluster
                        .propose(with_proof(
                            ProposeRequest {
                                cluster_id: cluster_id.clone(),
                                command: vec![0; 8],
                            },
                            p
                        ))
                        .await
                        .map(|_| ())
                ),
                tonic::Code::Unauthenticated,
                "Propose with {p:?}"
            );
        }
        // A node (which knows the join token) is let in.
        cluster.read_index(read(Some(&proof))).await.unwrap();
        let mut stream = blobs
            .get_blob(blob(Some(&proof)))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().expect("a chunk");
        assert!(!first.data.is_empty());
    });
    // The app still serves: the node's own internal calls carry the proof.
    let r = http("GET", &up.http, "/api/fwd/x", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    up.stop();
}

#[test]
fn hop_metadata_from_a_client_reaches_nothing_more() {
    let Node { up, _data, _apps } = start(&[]);
    wait_for_protocol_4(&up);
    let plain = http("GET", &up.http, "/api/fwd/x", &[], b"");
    assert_eq!(plain.status, 200, "{}", plain.text());
    let forged: &[&[(&str, &str)]] = &[
        // An app this node does not run: a peer would be told "undelivered".
        &[("x-strom-hop-app", "ghost")],
        &[("x-strom-hop-app", "not an app!")],
        &[
            ("x-strom-hop-app", "fwdapp"),
            ("x-strom-hop-host", "evil.example"),
            ("x-strom-hop-from", "7"),
            (PROOF_METADATA, "guess"),
        ],
    ];
    for headers in forged {
        let r = http("GET", &up.http, "/api/fwd/x", headers, b"");
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
        assert!(r.header("x-strom-undelivered").is_none(), "{headers:?}");
        let seen = r.json()["headers"].clone();
        for (name, _) in *headers {
            assert!(
                seen.get(*name).is_none(),
                "the handler must not see {name}: {seen}"
            );
        }
        assert_ne!(seen["host"], serde_json::json!(["evil.example"]));
    }
    up.stop();
}

#[cfg(unix)]
#[test]
fn the_data_dir_is_the_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("node");
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("fwdapp");
    fwd_app(&app);
    let up = Up::start(&dir, &[&app], &[]);
    up.stop();
    for p in ["", "raft", "blobs"] {
        assert_eq!(mode(&dir.join(p)), 0o700, "{p}/");
    }
    for f in [
        "raft/log.redb",
        "worker.json",
        "node.json",
        "join.token",
        "admin.token",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }

    // A data dir from an older build, open to everyone, is closed on start.
    for p in ["", "raft"] {
        std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in ["raft/log.redb", "worker.json"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let up = Up::start(&dir, &[&app], &[]);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("raft")), 0o700);
    assert_eq!(mode(&dir.join("raft/log.redb")), 0o600);
    assert_eq!(mode(&dir.join("worker.json")), 0o600);
    up.stop();
}

/// Read until the server closes the connection (or `limit`); what it sent.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<String> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&out).into_owned())
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn slow_and_idle_clients_are_cut_off() {
    let Node { up, _data, _apps } = start(&[
        "--http-header-timeout-secs",
        "1",
        "--http-body-timeout-secs",
        "1",
        "--http-idle-timeout-secs",
        "2",
    ]);
    let addr = up.http.trim_start_matches("http://").to_string();

    // Headers at a trickle: the connection is closed.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /api/fwd/x HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut s, Duration::from_secs(20));
    assert!(answer.is_some(), "a half-sent head is not held open");
    assert!(started.elapsed() < Duration::from_secs(15));

    // A body that never arrives: 408.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"POST /api/fwd/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(20)).expect("closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // An idle keep-alive connection is closed after its request was answered.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /api/fwd/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(20)).expect("closed when idle");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    up.stop();
}

#[test]
fn connections_beyond_the_limit_get_503() {
    let Node { up, _data, _apps } = start(&["--http-max-connections", "2"]);
    let addr = up.http.trim_start_matches("http://").to_string();
    // Accepted in the order they arrive: the third finds both slots taken.
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let mut extra = TcpStream::connect(&addr).unwrap();
    let answer = read_until_closed(&mut extra, Duration::from_secs(10)).expect("closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    drop(held);
    // Freed slots serve again.
    eventually(Duration::from_secs(10), "a free slot", || {
        let r = http("GET", &up.http, "/api/fwd/x", &[], b"");
        (r.status == 200).then_some(())
    });
    up.stop();
}

#[test]
fn an_http2_body_over_the_limit_gets_413_not_a_reset() {
    let Some(_) = curl() else { return };
    let Node { up, _data, _apps } = start(&["--max-request-body-bytes", "1000"]);
    let files = tempfile::tempdir().unwrap();
    let big = files.path().join("big");
    // Far beyond HTTP/2's first flow-control window: curl is still sending when
    // the gateway answers.
    std::fs::write(&big, vec![b'a'; 300_000]).unwrap();
    for extra in [&[][..], &["-H", "Transfer-Encoding: chunked"][..]] {
        let out = curl()
            .unwrap()
            .args(["-sS", "--http2-prior-knowledge", "-X", "POST"])
            .args(["-w", "\nstatus %{http_code}"])
            .args(extra)
            .arg("--data-binary")
            .arg(format!("@{}", big.display()))
            .arg(format!("{}/api/fwd/x", up.http))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{extra:?}: {stderr}");
        assert!(
            stdout.ends_with("status 413"),
            "{extra:?}: {stdout} {stderr}"
        );
        assert!(stdout.contains("PayloadTooLarge"), "{stdout}");
    }
    up.stop();
}
