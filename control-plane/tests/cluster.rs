//! A replicated management group of three: nodes join with the join token (learner,
//! caught up, voter), every member applies the same commands, and the group keeps
//! accepting writes after the leader stops.

use std::time::Duration;
use strom_testkit::apps::app_zip;

use strom_control_plane::admin_service::AdminApi;
use strom_control_plane::{control_server, Bootstrap, ManagementConfig, ManagementNode};
use strom_proto::command::Command;
use strom_proto::ids::AppName;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

struct Member {
    node: ManagementNode,
    url: String,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn member(id: u64) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let listener = control_server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let node = ManagementNode::start(ManagementConfig::new(
        dir.path(),
        id,
        &addr.to_string(),
        "http://127.0.0.1:7071",
    ))
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(control_server::serve(
        node.clone(),
        AdminApi::new(node.clone()),
        listener,
        strom_control_plane::health::Health::new(id),
        cancel.clone(),
    ));
    Member {
        node,
        url: format!("http://{addr}"),
        cancel,
        _dir: dir,
    }
}

/// Member 1 bootstraps a new cluster; members 2 and 3 are started, not joined.
/// Returns them with the join token.
async fn new_cluster_and_two_members() -> (Member, String, Member, Member) {
    let m1 = member(1).await;
    let Bootstrap::Created { .. } = m1.node.bootstrap(WAIT).await.unwrap() else {
        panic!("new cluster")
    };
    let token = std::fs::read_to_string(m1._dir.path().join("join.token")).unwrap();
    (m1, token, member(2).await, member(3).await)
}

async fn settle(members: &[&Member], what: &str, f: impl Fn(&ManagementNode) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !members.iter().all(|m| f(&m.node)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader_of(members: &[&Member]) -> ManagementNode {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for m in members {
            let metrics = m.node.raft.metrics().borrow().clone();
            if metrics.current_leader == Some(m.node.config.node_id) {
                return m.node.clone();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t70_three_members_replicate_and_survive_the_loss_of_the_leader() {
    let (m1, token, m2, m3) = new_cluster_and_two_members().await;

    // A wrong token is refused and changes nothing.
    let err = m2
        .node
        .join(std::slice::from_ref(&m1.url), "strom_wrong", WAIT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid join token"), "{err}");

    m2.node
        .join(std::slice::from_ref(&m1.url), token.trim(), WAIT)
        .await
        .unwrap();
    // Through a follower: it points to the leader.
    m3.node
        .join(std::slice::from_ref(&m2.url), token.trim(), WAIT)
        .await
        .unwrap();
    let all = [&m1, &m2, &m3];
    settle(&all, "three voters everywhere", |n| {
        n.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count()
            == 3
    })
    .await;
    let cluster_id = m1
        .node
        .read_local()
        .state
        .cluster
        .clone()
        .unwrap()
        .cluster_id;
    for m in &all {
        assert_eq!(
            m.node
                .read_local()
                .state
                .cluster
                .as_ref()
                .unwrap()
                .cluster_id,
            cluster_id
        );
    }

    // A write on the leader is applied by every member.
    AdminApi::new(m1.node.clone())
        .deploy_bytes(
            AppName::parse("shared").unwrap(),
            app_zip("f"),
            Default::default(),
        )
        .await
        .unwrap();
    settle(&all, "the app on every member", |n| {
        n.read_local()
            .state
            .apps
            .contains_key(&AppName::parse("shared").unwrap())
    })
    .await;
    // The package was pushed to a majority before the commit, and reaches all.
    let version = m1.node.read_local().state.apps[&AppName::parse("shared").unwrap()]
        .active_version
        .clone();
    settle(&all, "the package on every member", |n| {
        n.blobs.contains(&version)
    })
    .await;

    // A member that joins later fetches the package from a peer when it needs it.
    let m4 = member(4).await;
    m4.node
        .join(std::slice::from_ref(&m3.url), token.trim(), WAIT)
        .await
        .unwrap();
    assert!(!m4.node.blobs.contains(&version));
    let fetched = m4.node.blob(&version).await.unwrap();
    assert_eq!(strom_proto::ids::VersionId::of_bytes(&fetched), version);
    assert!(m4.node.blobs.contains(&version), "stored after the fetch");
    // A follower forwards writes to the leader: acknowledged after commit, and a
    // linearizable read on any member sees them at once.
    let (index, result) = m2
        .node
        .propose(Command::SetScale {
            app: AppName::parse("shared").unwrap(),
            instances: 2,
            at_ms: 1,
        })
        .await
        .unwrap();
    assert_eq!(result, strom_proto::command::CommandResult::Applied);
    for m in &all {
        let view = m.node.read_linearizable().await.unwrap();
        assert!(view.applied_index() >= index);
        assert_eq!(
            view.state.apps[&AppName::parse("shared").unwrap()].scale,
            Some(2)
        );
    }
    // A deploy through a follower: the package is replicated, the version committed.
    let through_follower = AdminApi::new(m3.node.clone())
        .deploy_bytes(
            AppName::parse("second").unwrap(),
            app_zip("second"),
            Default::default(),
        )
        .await
        .unwrap();
    let v2 = strom_proto::ids::VersionId::parse(&through_follower.version_id).unwrap();
    assert!(
        m1.node.blobs.contains(&v2),
        "the leader holds the package it committed"
    );

    // A planned hand-over: the leader asks a follower to take over, then steps back.
    let new_leader = m1.node.hand_over_leadership(WAIT).await.unwrap();
    assert!(matches!(new_leader, Some(id) if id != 1), "{new_leader:?}");
    let leader = leader_of(&all).await;
    assert_ne!(leader.config.node_id, 1);
    leader
        .propose(Command::SetScale {
            app: AppName::parse("shared").unwrap(),
            instances: 4,
            at_ms: 3,
        })
        .await
        .unwrap();

    // The old leader goes away; the others keep committing.
    m1.cancel.cancel();
    m1.node.shutdown().await;
    let survivors = [&m2, &m3, &m4];
    let leader = leader_of(&survivors).await;
    assert_ne!(leader.config.node_id, 1);
    let (index, _) = leader
        .propose(Command::SetScale {
            app: AppName::parse("shared").unwrap(),
            instances: 3,
            at_ms: 2,
        })
        .await
        .unwrap();
    settle(&survivors, "the new write on both survivors", |n| {
        n.read_local().applied_index() >= index
            && n.read_local().state.apps[&AppName::parse("shared").unwrap()].scale == Some(3)
    })
    .await;
    // The lost member is removed (joint consensus), through any member.
    let voters = m3.node.remove_member(1).await.unwrap();
    assert_eq!(voters, vec![2, 3, 4]);
    settle(&survivors, "node 1 gone from every membership", |n| {
        n.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&1)
            .is_none()
    })
    .await;
    let e = m2.node.remove_member(9).await.unwrap_err();
    assert!(e.to_string().contains("not a member"), "{e}");
    for m in survivors {
        m.cancel.cancel();
        m.node.shutdown().await;
    }
}

/// A hand-over whose caller gives up half-way (a StepDown call past its deadline,
/// held by a frozen follower: its port accepts, nothing answers) leaves the
/// leader as it was — campaigning, heartbeating and taking writes — never paused
/// for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t72_a_hand_over_given_up_half_way_leaves_the_leader_taking_writes() {
    let (m1, token, m2, m3) = new_cluster_and_two_members().await;
    for m in [&m2, &m3] {
        m.node
            .join(std::slice::from_ref(&m1.url), token.trim(), WAIT)
            .await
            .unwrap();
    }
    let all = [&m1, &m2, &m3];
    settle(&all, "three voters, caught up", |n| {
        let m = n.raft.metrics().borrow().clone();
        m.membership_config.membership().voter_ids().count() == 3
            && m.last_applied.map(|l| l.index) == m.last_log_index
    })
    .await;
    assert_eq!(leader_of(&all).await.config.node_id, 1);
    // Node 2, the first the leader would ask, freezes: its port is taken by a
    // listener that accepts and never answers.
    let port: u16 = m2.url.rsplit(':').next().unwrap().parse().unwrap();
    m2.cancel.cancel();
    m2.node.shutdown().await;
    let frozen = eventually_bind(port).await;
    // The caller gives up while the leader waits for node 2's answer.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(700),
        m1.node.hand_over_leadership(WAIT),
    )
    .await;
    assert!(gave_up.is_err(), "the hand-over ended: {gave_up:?}");
    assert!(
        !m1.node
            .handing_over
            .load(std::sync::atomic::Ordering::SeqCst),
        "the leader still holds writes back"
    );
    // It takes writes again (with node 3 for a majority).
    let (index, _) = tokio::time::timeout(
        WAIT,
        leader_of(&[&m1, &m3]).await.propose(Command::SetScale {
            app: AppName::parse("nope").unwrap(),
            instances: 1,
            at_ms: 1,
        }),
    )
    .await
    .expect("a write within the deadline")
    .unwrap();
    assert!(index > 0);
    drop(frozen);
    for m in [&m1, &m3] {
        m.cancel.cancel();
        m.node.shutdown().await;
    }
}

/// Bind `port` once the member that had it let it go.
async fn eventually_bind(port: u16) -> std::net::TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return l,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "port {port}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
