//! A management node keeps everything across restarts, builds and reloads
//! snapshots, and never re-initializes an existing cluster.

use std::time::Duration;
use strom_testkit::apps::app_zip;

use strom_control_plane::admin_service::AdminApi;
use strom_control_plane::{Bootstrap, ManagementConfig, ManagementNode};
use strom_proto::command::Command;
use strom_proto::ids::AppName;

const WAIT: Duration = Duration::from_secs(20);

async fn start(dir: &std::path::Path) -> (ManagementNode, Bootstrap) {
    let node = ManagementNode::start(ManagementConfig::new(
        dir,
        1,
        "127.0.0.1:1",
        "http://127.0.0.1:7071",
    ))
    .await
    .unwrap();
    let b = node.bootstrap(WAIT).await.unwrap();
    (node, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_state_survives_restart_without_reinitialization() {
    let dir = tempfile::tempdir().unwrap();
    let (node, boot) = start(dir.path()).await;
    let Bootstrap::Created { admin_token } = boot else {
        panic!("first start creates the cluster")
    };
    let token_file = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    assert_eq!(token_file.trim(), admin_token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let cluster_id = node.read_local().state.cluster.clone().unwrap().cluster_id;

    let api = AdminApi::new(node.clone());
    let deployed = api
        .deploy_bytes(
            AppName::parse("orders").unwrap(),
            app_zip("orders"),
            Default::default(),
        )
        .await
        .unwrap();
    assert!(deployed.changed);
    node.shutdown().await;
    drop(api);
    drop(node);

    let (node, boot) = start(dir.path()).await;
    assert_eq!(
        boot,
        Bootstrap::Existing,
        "a restart must not initialize again"
    );
    let view = node.read_linearizable().await.unwrap();
    let cluster = view.state.cluster.clone().unwrap();
    assert_eq!(cluster.cluster_id, cluster_id);
    assert!(cluster.admin_token_hash.matches(&admin_token));
    let orders = &view.state.apps[&AppName::parse("orders").unwrap()];
    assert_eq!(orders.active_version.as_str(), deployed.version_id);
    assert!(node.blobs.contains(&orders.active_version));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_snapshot_is_built_and_state_is_reloaded_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = start(dir.path()).await;
    let api = AdminApi::new(node.clone());
    api.deploy_bytes(
        AppName::parse("a1").unwrap(),
        app_zip("a1"),
        Default::default(),
    )
    .await
    .unwrap();
    node.raft.trigger().snapshot().await.unwrap();
    let snap_index = node
        .raft
        .wait(Some(WAIT))
        .metrics(|m| m.snapshot.is_some(), "a snapshot")
        .await
        .unwrap()
        .snapshot
        .unwrap()
        .index;
    assert!(dir.path().join("raft/snapshots/snapshot.bin").is_file());
    // More writes after the snapshot: replayed from the log on restart.
    for i in 0..3 {
        let app = format!("b{i}");
        api.deploy_bytes(
            AppName::parse(&app).unwrap(),
            app_zip(&app),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let (idx, _) = node
        .propose(Command::SetAppSettings {
            app: AppName::parse("a1").unwrap(),
            set: [("K".to_string(), "V".to_string())].into(),
            remove: vec![],
            at_ms: 1,
        })
        .await
        .unwrap();
    assert!(idx > snap_index);
    node.shutdown().await;
    drop(api);
    drop(node);

    let (node, boot) = start(dir.path()).await;
    assert_eq!(boot, Bootstrap::Existing);
    let view = node.read_linearizable().await.unwrap();
    let names: Vec<_> = view.state.apps.keys().map(|a| a.to_string()).collect();
    assert_eq!(names, ["a1", "b0", "b1", "b2"]);
    assert_eq!(
        view.state.apps[&AppName::parse("a1").unwrap()].settings["K"],
        "V"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t12_a_data_dir_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = start(dir.path()).await;
    node.shutdown().await;
    drop(node);
    let err = ManagementNode::start(ManagementConfig::new(
        dir.path(),
        2,
        "127.0.0.1:1",
        "http://127.0.0.1:7071",
    ))
    .await
    .err()
    .expect("node 2 must not open node 1's data dir");
    assert!(err.to_string().contains("belongs to node 1"), "{err}");
}
