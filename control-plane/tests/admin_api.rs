//! The gRPC admin API as a client sees it: authentication, error codes, validation
//! details, bad packages that change nothing, and server reflection.

use std::io::Write;
use std::time::Duration;

use strom_control_plane::{control_server, Bootstrap, ManagementConfig, ManagementNode};
use strom_proto::admin_v1 as pb;
use strom_proto::admin_v1::admin_service_client::AdminServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

struct Server {
    node: ManagementNode,
    url: String,
    token: String,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn serve(max_package: u64) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let listener = control_server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config =
        ManagementConfig::new(dir.path(), 1, &addr.to_string(), "http://127.0.0.1:7071");
    config.package_limits.max_compressed_bytes = max_package;
    config.package_limits.max_uncompressed_bytes = 1_000_000;
    let node = ManagementNode::start(config).await.unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(control_server::serve(
        node.clone(),
        strom_control_plane::admin_service::AdminApi::new(node.clone()),
        listener,
        strom_control_plane::health::Health::new(1),
        cancel.clone(),
    ));
    let Bootstrap::Created { admin_token } = node.bootstrap(Duration::from_secs(20)).await.unwrap()
    else {
        panic!("new cluster expected")
    };
    Server {
        node,
        url: format!("http://{addr}"),
        token: admin_token,
        cancel,
        _dir: dir,
    }
}

impl Server {
    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn client(
        &self,
        token: Option<&str>,
    ) -> AdminServiceClient<
        tonic::service::interceptor::InterceptedService<
            Channel,
            impl tonic::service::Interceptor + Clone,
        >,
    > {
        let header = token.map(|t| {
            format!("Bearer {t}")
                .parse::<tonic::metadata::MetadataValue<_>>()
                .unwrap()
        });
        AdminServiceClient::with_interceptor(
            self.channel().await,
            move |mut req: tonic::Request<()>| {
                if let Some(h) = &header {
                    req.metadata_mut().insert("authorization", h.clone());
                }
                Ok(req)
            },
        )
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.node.shutdown().await;
    }
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

const HOST: &[u8] =
    br#"{"version":"2.0","customHandler":{"description":{"defaultExecutablePath":"sh"}}}"#;
const FUNC: &[u8] = br#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","route":"r/{id:int}"},{"type":"http","direction":"out","name":"res"}]}"#;
const TIMER: &[u8] =
    br#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"%NIGHTLY%"}]}"#;

fn chunks(
    name: &str,
    zip: Vec<u8>,
) -> impl futures::Stream<Item = pb::DeployAppChunk> + Send + 'static {
    let name = name.to_string();
    let parts: Vec<Vec<u8>> = zip.chunks(1000).map(<[u8]>::to_vec).collect();
    futures::stream::iter(
        parts
            .into_iter()
            .enumerate()
            .map(move |(i, data)| pb::DeployAppChunk {
                app_name: if i == 0 { name.clone() } else { String::new() },
                data,
                total_size: 0,
                settings: Default::default(),
            }),
    )
}

fn details(status: &tonic::Status) -> Vec<String> {
    strom_proto::rich_error::validation_errors(status)
        .into_iter()
        .map(|e| format!("{}|{}|{}", e.file, e.json_path, e.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_missing_or_wrong_token_is_unauthenticated() {
    let s = serve(1 << 20).await;
    let err = s
        .client(None)
        .await
        .list_apps(pb::ListAppsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = s
        .client(Some("strom_not-the-token"))
        .await
        .list_apps(pb::ListAppsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let ok = s
        .client(Some(&s.token))
        .await
        .list_apps(pb::ListAppsRequest {})
        .await;
    assert!(ok.is_ok());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_bad_packages_are_invalid_argument_with_details_and_change_nothing() {
    let s = serve(1 << 20).await;
    let mut c = s.client(Some(&s.token)).await;
    let good = zip_of(&[("host.json", HOST), ("f/function.json", FUNC)]);
    let deployed = c
        .deploy_app(chunks("shop", good))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        deployed.functions[0].url,
        "http://127.0.0.1:7071/api/r/{id:int}"
    );
    let applied_before = s.node.read_local().applied_index();

    let traversal = zip_of(&[
        ("host.json", HOST),
        ("f/function.json", FUNC),
        ("../evil", b"x"),
    ]);
    let absolute = zip_of(&[
        ("host.json", HOST),
        ("f/function.json", FUNC),
        ("/etc/evil", b"x"),
    ]);
    let bomb = zip_of(&[
        ("host.json", HOST),
        ("f/function.json", FUNC),
        ("zeros", &vec![0u8; 5_000_000]),
    ]);
    let not_zip = b"this is not a zip".to_vec();
    let bad_json = zip_of(&[
        ("host.json", HOST),
        ("f/function.json", b"{\"bindings\": ["),
    ]);
    for (what, zip, expected) in [
        ("traversal", traversal, "../evil"),
        ("absolute", absolute, "/etc/evil"),
        ("bomb", bomb, "1000000"),
        ("not a zip", not_zip, "zip"),
        ("malformed json", bad_json, "f/function.json||invalid JSON"),
    ] {
        let err = c.deploy_app(chunks("shop", zip)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        let d = details(&err);
        assert!(d.iter().any(|e| e.contains(expected)), "{what}: {d:?}");
    }
    let err = c.deploy_app(chunks("shop", Vec::new())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .deploy_app(chunks("Not_A_Valid_Name!", zip_of(&[("host.json", HOST)])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("app name"), "{}", err.message());
    let big = zip_of(&[
        ("host.json", HOST),
        ("f/function.json", FUNC),
        ("noise", &noise(2 << 20)),
    ]);
    let err = c.deploy_app(chunks("shop", big)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("upload limit"), "{}", err.message());

    assert_eq!(
        s.node.read_local().applied_index(),
        applied_before,
        "nothing was committed"
    );
    let app = c
        .get_app(pb::GetAppRequest {
            name: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(app.app.unwrap().active_version, deployed.version_id);
    s.stop().await;
}

fn noise(n: usize) -> Vec<u8> {
    let mut x = 88172645463325252u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t32_not_found_settings_disable_and_schedule_settings_are_checked() {
    let s = serve(1 << 20).await;
    let mut c = s.client(Some(&s.token)).await;
    for err in [
        c.get_app(pb::GetAppRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err(),
        c.delete_app(pb::DeleteAppRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err(),
        c.get_app_settings(pb::GetAppSettingsRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err(),
        c.list_functions(pb::ListFunctionsRequest {
            app_name: "nope".into(),
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    let zip = zip_of(&[
        ("host.json", HOST),
        ("f/function.json", FUNC),
        ("nightly/function.json", TIMER),
    ]);
    // A schedule naming a setting that is not set could never run: refused.
    let err = c.deploy_app(chunks("jobs", zip.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("`NIGHTLY`, which is not set"),
        "{}",
        err.message()
    );
    // Deployed with it, it is accepted.
    let mut parts: Vec<pb::DeployAppChunk> =
        futures::executor::block_on_stream(chunks("jobs", zip)).collect();
    parts[0].settings = [("NIGHTLY".to_string(), "0 0 2 * * *".to_string())].into();
    c.deploy_app(futures::stream::iter(parts)).await.unwrap();

    // A setting that a timer schedule refers to must be a valid schedule.
    let err = c
        .set_app_settings(pb::SetAppSettingsRequest {
            name: "jobs".into(),
            set: [("NIGHTLY".to_string(), "every night".to_string())].into(),
            remove: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("nightly"), "{}", err.message());
    // So must the time zone the timers run in (an IANA or a Windows name).
    let zone = |key: &str, value: &str| pb::SetAppSettingsRequest {
        name: "jobs".into(),
        set: [(key.to_string(), value.to_string())].into(),
        remove: vec![],
    };
    let err = c
        .set_app_settings(zone("WEBSITE_TIME_ZONE", "Mars/Olympus"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("`Mars/Olympus`"),
        "{}",
        err.message()
    );
    c.set_app_settings(zone("WEBSITE_TIME_ZONE", "W. Europe Standard Time"))
        .await
        .unwrap();

    let set = c
        .set_app_settings(pb::SetAppSettingsRequest {
            name: "jobs".into(),
            set: [
                ("NIGHTLY".to_string(), "0 0 3 * * *".to_string()),
                ("AzureWebJobs.f.Disabled".to_string(), "true".to_string()),
            ]
            .into(),
            remove: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.settings["NIGHTLY"], "0 0 3 * * *");
    let fns = c
        .list_functions(pb::ListFunctionsRequest {
            app_name: "jobs".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .functions;
    let f = fns.iter().find(|f| f.name == "f").unwrap();
    assert!(f.disabled);
    let err = c
        .set_app_settings(pb::SetAppSettingsRequest {
            name: "jobs".into(),
            set: [("BAD=KEY".to_string(), "v".to_string())].into(),
            remove: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Settings the scheduler reads are checked; a bad one changes nothing.
    // So are the runtime settings a worker reads when it starts an instance.
    for (key, value) in [
        ("STROM_MEMORY_MB", "lots"),
        ("STROM_WORKER_LABELS", "zone"),
        ("STROM_RUNTIME", "podman"),
        ("STROM_CONTAINER_IMAGE", "Not An Image"),
        ("STROM_CONTAINER_CPUS", "0"),
        ("STROM_CONTAINER_PIDS", "many"),
        ("STROM_CONTAINER_USER", "root;x"),
    ] {
        let err = c
            .set_app_settings(pb::SetAppSettingsRequest {
                name: "jobs".into(),
                set: [
                    (key.to_string(), value.to_string()),
                    ("OTHER".to_string(), "x".to_string()),
                ]
                .into(),
                remove: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains(key) && err.message().contains(value),
            "{}",
            err.message()
        );
    }
    let settings = c
        .get_app_settings(pb::GetAppSettingsRequest {
            name: "jobs".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .settings;
    assert!(!settings.contains_key("OTHER"), "{settings:?}");

    c.delete_app(pb::DeleteAppRequest {
        name: "jobs".into(),
    })
    .await
    .unwrap();
    let apps = c
        .list_apps(pb::ListAppsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(apps.apps.is_empty());
    s.stop().await;
}

/// The services server reflection lists, asked through one protocol version
/// (`v1`, or `v1alpha` as Python's grpcio-reflection and older grpcurl ask).
macro_rules! reflected_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new($channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply")
        };
        list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t33_server_reflection_lists_the_admin_service() {
    let s = serve(1 << 20).await;
    let names = reflected_services!(v1, s.channel().await);
    assert!(
        names.contains(&"strom.admin.v1.AdminService".to_string()),
        "{names:?}"
    );
    s.stop().await;
}

/// A node whose Raft has stopped (a shutdown, or after a storage error) cannot
/// serve: the caller gets UNAVAILABLE with the cause, so a client with several
/// members goes on to another (issue 24; before, INTERNAL stopped it there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t34_a_stopped_raft_is_unavailable_with_its_cause() {
    let s = serve(1 << 20).await;
    let mut c = s.client(Some(&s.token)).await;
    let zip = zip_of(&[("host.json", HOST), ("f/function.json", FUNC)]);
    c.deploy_app(chunks("app", zip)).await.unwrap();
    s.node.shutdown().await;
    let err = c
        .set_app_settings(pb::SetAppSettingsRequest {
            name: "app".into(),
            set: [("A".to_string(), "1".to_string())].into(),
            remove: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("raft stopped") && err.message().contains("another member can"),
        "{}",
        err.message()
    );
    let err = c
        .get_app(pb::GetAppRequest { name: "app".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t35_reflection_also_answers_v1alpha() {
    let s = serve(1 << 20).await;
    let names = reflected_services!(v1alpha, s.channel().await);
    assert!(
        names.contains(&"strom.admin.v1.AdminService".to_string()),
        "{names:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t36_a_later_chunk_may_not_rename_the_app() {
    let s = serve(1 << 20).await;
    let mut c = s.client(Some(&s.token)).await;
    let zip = zip_of(&[("host.json", HOST), ("f/function.json", FUNC)]);
    let parts: Vec<Vec<u8>> = zip.chunks(zip.len() / 2 + 1).map(<[u8]>::to_vec).collect();
    assert_eq!(parts.len(), 2);
    let stream =
        futures::stream::iter(
            parts
                .into_iter()
                .enumerate()
                .map(|(i, data)| pb::DeployAppChunk {
                    app_name: if i == 0 { "one".into() } else { "two".into() },
                    data,
                    total_size: 0,
                    settings: Default::default(),
                }),
        );
    let err = c.deploy_app(stream).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("`two`"), "{}", err.message());
    let apps = c
        .list_apps(pb::ListAppsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(apps.apps.is_empty(), "a refused upload changes nothing");
    s.stop().await;
}

/// Bytes as they are, for sending what no protobuf decoder accepts.
#[derive(Debug, Default, Clone, Copy)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t37_garbage_is_invalid_argument_not_internal() {
    let s = serve(1 << 20).await;
    let mut grpc = tonic::client::Grpc::new(s.channel().await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(vec![0xff, 0xff, 0xff, 0xff]);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", s.token).parse().unwrap(),
    );
    let err = grpc
        .unary(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/strom.admin.v1.AdminService/GetApp",
            ),
            Raw,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    s.stop().await;
}
