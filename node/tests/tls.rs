//! TLS with certificates made in the test (rcgen): two `strom serve` nodes with
//! `--tls-cert/--tls-key/--tls-ca` serve TLS on both ports, join and replicate over
//! mutual TLS, route function requests between them over the TLS hop; the CLI needs
//! `--ca-cert` for an `https://` server; internal services refuse a client without a
//! node certificate; plain HTTP is not served.

// Unix only: not run on Windows yet (signals, `sh` handlers, Unix modes, or
// untried there); on Windows `.ci/windows/run` runs `e2e.rs` and the smoke test
// under Wine (docs/windows.md).
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{cli, eventually, free_port, write_app, Up};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA and, per name, a node certificate for 127.0.0.1 and localhost.
    fn new(nodes: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (curl) takes a certificate whose issuer is
        // its own subject for self-signed.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "strom test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for name in nodes {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("strom node {name}"));
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn flags(&self, node: &str) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path(&format!("{node}.pem")).display().to_string(),
            "--tls-key".into(),
            self.path(&format!("{node}.key")).display().to_string(),
            "--tls-ca".into(),
            self.path("ca.pem").display().to_string(),
        ]
    }
}

/// GET over HTTPS, verifying the server against `ca`; (status, body).
fn https_get(base: &str, path: &str, ca: &Path) -> Result<(u16, String), String> {
    let addr = base.trim_start_matches("https://");
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // A peer closing without close_notify is fine for this test.
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

#[test]
fn t95_tls_everywhere_with_mutual_tls_between_nodes() {
    let pki = Pki::new(&["n1", "n2"]);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let mut args1: Vec<String> = vec!["--node-id".into(), "1".into(), "--bootstrap".into()];
    args1.extend(pki.flags("n1"));
    let a1: Vec<&str> = args1.iter().map(String::as_str).collect();
    let n1 = Up::serve(dirs[0].path(), ports[0], &a1);
    assert!(n1.server.starts_with("https://"), "{}", n1.server);
    assert!(n1.http.starts_with("https://"), "{}", n1.http);
    let token = std::fs::read_to_string(dirs[0].path().join("join.token")).unwrap();
    let seed = format!("https://127.0.0.1:{}", ports[0]);
    let mut args2: Vec<String> = vec![
        "--node-id".into(),
        "2".into(),
        "--join".into(),
        seed,
        "--join-token".into(),
        token.trim().into(),
    ];
    args2.extend(pki.flags("n2"));
    let a2: Vec<&str> = args2.iter().map(String::as_str).collect();
    let n2 = Up::serve(dirs[1].path(), ports[1], &a2);

    let admin = std::fs::read_to_string(dirs[0].path().join("admin.token")).unwrap();
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let auth = ["--token", admin.trim(), "--ca-cert", ca];

    // The CLI verifies the server with the CA; without it, a clear error.
    let out = cli(
        &n2.server,
        &["cluster", "members", "--output", "json"],
        &auth,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let members: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    let out = cli(
        &n2.server,
        &["cluster", "members"],
        &["--token", admin.trim()],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--ca-cert"), "{}", out.stderr);

    // Deploy through the follower (the package travels between nodes over mutual
    // TLS), one instance: the other node's gateway reaches it over the TLS hop.
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("secure");
    write_app(
        &app,
        &common::test_handler_host(""),
        &[(
            "hello",
            r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"hello/{id:int}"},{"type":"http","direction":"out","name":"res"}]}"#,
        )],
    );
    let out = cli(&n2.server, &["app", "deploy", app.to_str().unwrap()], &auth);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cli(&n1.server, &["app", "scale", "secure", "1"], &auth);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for n in [&n1, &n2] {
        let (status, body) = eventually(Duration::from_secs(30), "HTTPS on both nodes", || {
            https_get(&n.http, "/api/hello/5", Path::new(ca))
                .ok()
                .filter(|(s, _)| *s == 200)
        });
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"id\":\"5\""), "{body}");
    }

    // The publishing endpoint on the control port, HTTPS with HTTP/1.1 and HTTP/2
    // (curl verifying the node against the CA), through the follower.
    if common::curl().is_some() {
        let v2 = apps.path().join("v2");
        write_app(
            &v2,
            &common::test_handler_host(""),
            &[(
                "hello",
                r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","route":"hello2/{id:int}"},{"type":"http","direction":"out","name":"res"}]}"#,
            )],
        );
        let zip = apps.path().join("v2.zip");
        std::fs::write(&zip, strom_proto::manifest::pack_dir(&v2).unwrap()).unwrap();
        for (version, query) in [("--http1.1", "message=h1"), ("--http2", "message=h2")] {
            let out = std::process::Command::new("curl")
                .args([
                    "-sS",
                    version,
                    "--cacert",
                    ca,
                    "-w",
                    "\n%{http_code} %{http_version}",
                ])
                .args(["-u", &format!("$strom:{}", admin.trim())])
                .args(["-H", "Content-Type: application/zip", "--data-binary"])
                .arg(format!("@{}", zip.display()))
                .arg(format!(
                    "{}/apps/secure/scm/api/zipdeploy?{query}",
                    n2.server
                ))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let want = if version == "--http2" {
                "200 2"
            } else {
                "200 1.1"
            };
            assert!(text.trim_end().ends_with(want), "{version}: {text}");
        }
        let (status, _) = eventually(Duration::from_secs(30), "v2 over HTTPS", || {
            https_get(&n1.http, "/api/hello2/5", Path::new(ca))
                .ok()
                .filter(|(s, _)| *s == 200)
        });
        assert_eq!(status, 200);

        // The portal over HTTPS on the follower: a Secure session cookie, and the
        // test panel reaching the function through the node's TLS function port.
        let curl = |args: &[&str]| {
            let out = std::process::Command::new("curl")
                .args(["-sS", "-i", "--cacert", ca])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let signed = curl(&[
            "--data-urlencode",
            &format!("token={}", admin.trim()),
            &format!("{}/portal/signin", n2.server),
        ]);
        let set_cookie = signed
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .unwrap_or_else(|| panic!("no session cookie: {signed}"));
        assert!(set_cookie.contains("; Secure"), "{set_cookie}");
        let cookie = set_cookie
            .split_once(':')
            .unwrap()
            .1
            .trim()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let page = curl(&[
            "-b",
            &cookie,
            &format!("{}/portal/apps/secure/functions/hello", n2.server),
        ]);
        let csrf = page
            .split("name=\"csrf-token\" content=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no CSRF token: {page}"))
            .to_string();
        let tested = curl(&[
            "-b",
            &cookie,
            "-H",
            &format!("Origin: {}", n2.server),
            "--data-urlencode",
            &format!("csrf={csrf}"),
            "--data-urlencode",
            "method=GET",
            "--data-urlencode",
            "path=/api/hello2/7",
            &format!("{}/portal/apps/secure/functions/hello/test", n2.server),
        ]);
        assert!(
            tested.starts_with("HTTP/1.1 200") || tested.starts_with("HTTP/2 200"),
            "{tested}"
        );
        assert!(
            tested.contains("id=\"test-status\" class=\"ok\">200<"),
            "{tested}"
        );
    }

    // Plain HTTP is not served on the function port.
    let plain =
        std::net::TcpStream::connect(n1.http.trim_start_matches("https://")).map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"GET /api/hello/5 HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
    assert!(
        !plain.unwrap_or_default().contains("200 OK"),
        "plain HTTP must not be served"
    );

    // Internal services refuse a TLS client without a node certificate.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(std::fs::read(ca).unwrap()),
        );
        let channel = tonic::transport::Channel::from_shared(n1.server.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c =
            strom_proto::internal_v1::cluster_service_client::ClusterServiceClient::new(channel);
        c.read_index(strom_proto::internal_v1::ReadIndexRequest {
            cluster_id: String::new(),
        })
        .await
        .unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    n2.stop();
    n1.stop();
}

/// A frozen management node under TLS (SIGSTOP: its kernel accepts the TCP
/// connection, nothing answers the TLS handshake) holds no caller: a worker
/// whose first seed it is registers through the next one, and the CLI moves on.
#[test]
fn t108_a_frozen_member_under_tls_holds_neither_a_joining_worker_nor_the_cli() {
    let pki = Pki::new(&["n1", "n2", "n3", "w4"]);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let url = |i: usize| format!("https://127.0.0.1:{}", ports[i]);
    let start = |i: usize, extra: &[&str]| {
        let id = (i + 1).to_string();
        let name = if i == 3 {
            "w4".to_string()
        } else {
            format!("n{}", i + 1)
        };
        let mut args: Vec<String> = vec!["--node-id".into(), id];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(pki.flags(&name));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        Up::serve(dirs[i].path(), ports[i], &a)
    };
    let n1 = start(0, &["--bootstrap", "--roles", "management"]);
    let token = std::fs::read_to_string(dirs[0].path().join("join.token")).unwrap();
    let token = token.trim().to_string();
    let join = |seeds: String| {
        vec![
            "--join".to_string(),
            seeds,
            "--join-token".to_string(),
            token.clone(),
        ]
    };
    let j = join(url(0));
    let mut a: Vec<&str> = j.iter().map(String::as_str).collect();
    a.extend(["--roles", "management"]);
    let n2 = start(1, &a);
    let n3 = start(2, &a);
    let admin = std::fs::read_to_string(dirs[0].path().join("admin.token")).unwrap();
    let ca = pki.path("ca.pem");
    let auth = ["--token", admin.trim(), "--ca-cert", ca.to_str().unwrap()];
    eventually(Duration::from_secs(30), "three members", || {
        let out = cli(
            &n1.server,
            &["cluster", "members", "--output", "json"],
            &auth,
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        (v["members"].as_array()?.len() == 3).then_some(())
    });

    // Freeze node 3, a follower (node 1 bootstrapped and leads).
    let pid = n3.child.id().to_string();
    let kill = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    kill("-STOP");
    // A worker whose first seed is the frozen node: the handshake there gives up,
    // it registers through node 1 and serves (Up::serve waits for "Ready.").
    let j = join(format!("{},{}", url(2), url(0)));
    let mut a: Vec<&str> = j.iter().map(String::as_str).collect();
    a.extend(["--roles", "worker"]);
    let started = std::time::Instant::now();
    let w4 = start(3, &a);
    assert!(started.elapsed() < Duration::from_secs(60));
    eventually(Duration::from_secs(30), "worker 4 up", || {
        let out = cli(
            &n1.server,
            &["cluster", "status", "--output", "json"],
            &auth,
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let w = v["workers"]
            .as_array()?
            .iter()
            .find(|w| w["node_id"] == 4)?;
        (w["status"] == "Up").then_some(())
    });
    // The CLI: alone, the frozen node is a clear failure within the deadline;
    // in a list, the next member answers.
    let mut with_timeout = auth.to_vec();
    with_timeout.extend(["--timeout", "2"]);
    let out = cli(&url(2), &["cluster", "status"], &with_timeout);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains(&url(2)), "{}", out.stderr);
    let out = cli(
        &format!("{},{}", url(2), url(1)),
        &["app", "list"],
        &with_timeout,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    kill("-CONT");
    for up in [w4, n3, n2, n1] {
        up.stop();
    }
}
