//! The checkpoint store conformance suite: what every `CheckpointStore` must do,
//! run against each implementation (today `local`). Each case uses its own
//! cluster id, so cases do not see each other's checkpoints.

use std::sync::Arc;

use strom_control_plane::checkpoint::local::LocalStore;
use strom_control_plane::checkpoint::sqlserver::SqlServerStore;
use strom_control_plane::checkpoint::{
    sha256_hex, CheckpointError, CheckpointMeta, CheckpointStore, PackageRef,
};

/// What the suite needs beyond the trait: a way to break the store as a crash or a
/// disk would.
#[async_trait::async_trait]
trait Faults: Send + Sync {
    fn store(&self) -> Arc<dyn CheckpointStore>;
    /// A checkpoint whose writing stopped before it was complete.
    async fn write_torn(&self, meta: &CheckpointMeta, state: &[u8]);
    /// Damage a complete checkpoint's stored state.
    async fn corrupt(&self, id: &str);
    /// The cluster id a case uses: unique to this run where the store outlives it.
    fn cluster(&self, name: &str) -> String {
        name.to_string()
    }
    /// Package bytes unique to this run (so retention's answer is this run's).
    fn unique(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.extend_from_slice(self.cluster("").as_bytes());
        bytes
    }
}

struct Local(Arc<LocalStore>, tempfile::TempDir);

impl Local {
    fn new() -> Local {
        let dir = tempfile::tempdir().unwrap();
        Local(Arc::new(LocalStore::open(dir.path()).unwrap()), dir)
    }
}

#[async_trait::async_trait]
impl Faults for Local {
    fn store(&self) -> Arc<dyn CheckpointStore> {
        self.0.clone()
    }
    async fn write_torn(&self, meta: &CheckpointMeta, state: &[u8]) {
        self.0.write_torn(meta, state).unwrap();
    }
    async fn corrupt(&self, id: &str) {
        self.0.corrupt_state(id).unwrap();
    }
}

/// A SQL Server store named by `STROM_MSSQL_URL` (an ADO.NET connection string);
/// it outlives the run, so each run's clusters carry a run id.
struct Sql {
    store: Arc<SqlServerStore>,
    run: String,
}

#[async_trait::async_trait]
impl Faults for Sql {
    fn store(&self) -> Arc<dyn CheckpointStore> {
        self.store.clone()
    }
    async fn write_torn(&self, meta: &CheckpointMeta, state: &[u8]) {
        self.store.write_torn(meta, state).await.unwrap();
    }
    async fn corrupt(&self, id: &str) {
        self.store.corrupt_state(id).await.unwrap();
    }
    fn cluster(&self, name: &str) -> String {
        format!("{name}-{}", self.run)
    }
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

async fn checkpoint(
    store: &dyn CheckpointStore,
    cluster: &str,
    term: u64,
    index: u64,
    packages: &[&[u8]],
) -> Result<CheckpointMeta, CheckpointError> {
    let mut refs = Vec::new();
    for p in packages {
        let sha = sha256_hex(p);
        if !store.has_package(&sha).await? {
            store.put_package(&sha, p).await?;
        }
        refs.push(PackageRef {
            sha256: sha,
            size: p.len() as u64,
        });
    }
    let state = bytes(4096 + index as usize, index as u8);
    let meta = CheckpointMeta::new(cluster, term, index, index as i64, &state, refs);
    store.write(&meta, &state).await?;
    Ok(meta)
}

async fn round_trip_of_a_big_checkpoint(f: &dyn Faults) {
    let store = f.store();
    // Larger than ten SQL chunks: a package of 41 MiB.
    let big = bytes(41 * 1024 * 1024, 7);
    let small = bytes(1000, 9);
    let meta = checkpoint(&*store, &f.cluster("rt"), 1, 10, &[&big, &small])
        .await
        .unwrap();
    let (read, state) = store.read(&meta.id).await.unwrap();
    assert_eq!(read, meta);
    assert_eq!(sha256_hex(&state), meta.state_sha256);
    assert_eq!(store.get_package(&sha256_hex(&big)).await.unwrap(), big);
    assert_eq!(
        store.list(Some(&f.cluster("rt"))).await.unwrap(),
        vec![meta.clone()]
    );
    // A package already stored is recognized (not sent again); a wrong hash is
    // refused on arrival.
    assert!(store.has_package(&sha256_hex(&big)).await.unwrap());
    let wrong = store.put_package(&sha256_hex(b"other"), &small).await;
    assert!(
        matches!(wrong, Err(CheckpointError::Corrupt { .. })),
        "{wrong:?}"
    );
    assert!(matches!(
        store.get_package(&sha256_hex(b"absent")).await,
        Err(CheckpointError::PackageNotFound(_))
    ));
    // A checkpoint naming a package the store lacks is refused.
    let state = bytes(10, 1);
    let orphan = CheckpointMeta::new(
        &f.cluster("rt"),
        2,
        1,
        0,
        &state,
        vec![PackageRef {
            sha256: sha256_hex(b"absent"),
            size: 6,
        }],
    );
    assert!(store.write(&orphan, &state).await.is_err());
}

async fn fencing(f: &dyn Faults) {
    let store = f.store();
    let newest = checkpoint(&*store, &f.cluster("fence"), 3, 100, &[])
        .await
        .unwrap();
    for (term, index) in [(3, 100), (3, 99), (2, 500)] {
        match checkpoint(&*store, &f.cluster("fence"), term, index, &[]).await {
            Err(CheckpointError::Stale { newest: n, .. }) => assert_eq!(n, newest.id),
            other => panic!("({term}, {index}): {other:?}"),
        }
    }
    checkpoint(&*store, &f.cluster("fence"), 3, 101, &[])
        .await
        .unwrap();
    checkpoint(&*store, &f.cluster("fence"), 4, 1, &[])
        .await
        .unwrap();
    // Another cluster is fenced apart.
    checkpoint(&*store, &f.cluster("fence-other"), 1, 1, &[])
        .await
        .unwrap();
    let listed: Vec<(u64, u64)> = store
        .list(Some(&f.cluster("fence")))
        .await
        .unwrap()
        .iter()
        .map(|m| m.position())
        .collect();
    assert_eq!(listed.len(), 3);
    assert!(listed.contains(&(4, 1)) && !listed.contains(&(2, 500)));
}

async fn a_torn_write_is_invisible(f: &dyn Faults) {
    let store = f.store();
    let done = checkpoint(&*store, &f.cluster("torn"), 1, 5, &[])
        .await
        .unwrap();
    let state = bytes(50_000, 3);
    let torn = CheckpointMeta::new(&f.cluster("torn"), 1, 6, 6, &state, vec![]);
    f.write_torn(&torn, &state).await;
    assert_eq!(
        store.list(Some(&f.cluster("torn"))).await.unwrap(),
        vec![done]
    );
    assert!(matches!(
        store.read(&torn.id).await,
        Err(CheckpointError::NotFound(_))
    ));
    // It does not fence: the same checkpoint can be written whole afterwards.
    store.write(&torn, &state).await.unwrap();
    assert_eq!(store.read(&torn.id).await.unwrap().1, state);
}

async fn corruption_is_detected(f: &dyn Faults) {
    let store = f.store();
    let older = checkpoint(&*store, &f.cluster("rot"), 1, 1, &[])
        .await
        .unwrap();
    let newer = checkpoint(&*store, &f.cluster("rot"), 1, 2, &[])
        .await
        .unwrap();
    f.corrupt(&newer.id).await;
    let e = store.read(&newer.id).await.unwrap_err();
    assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains(&newer.id), "{e}");
    // The previous one is whole.
    assert!(store.read(&older.id).await.is_ok());
}

async fn retention(f: &dyn Faults) {
    let store = f.store();
    let (a, b, c) = (
        f.unique(bytes(3000, 1)),
        f.unique(bytes(3000, 2)),
        f.unique(bytes(3000, 3)),
    );
    let first = checkpoint(&*store, &f.cluster("keep"), 1, 1, &[&a, &b])
        .await
        .unwrap();
    checkpoint(&*store, &f.cluster("keep"), 1, 2, &[&b])
        .await
        .unwrap();
    checkpoint(&*store, &f.cluster("keep"), 1, 3, &[&b, &c])
        .await
        .unwrap();
    let gone = store.retain(&f.cluster("keep"), 2).await.unwrap();
    assert_eq!(gone.checkpoints, vec![first.id.clone()]);
    // `a` goes (in a store shared with other runs, their orphans may go too).
    assert!(gone.packages.contains(&sha256_hex(&a)), "{gone:?}");
    assert!(!gone.packages.contains(&sha256_hex(&b)) && !gone.packages.contains(&sha256_hex(&c)));
    assert_eq!(store.list(Some(&f.cluster("keep"))).await.unwrap().len(), 2);
    assert!(!store.has_package(&sha256_hex(&a)).await.unwrap());
    assert!(store.has_package(&sha256_hex(&b)).await.unwrap());
    assert!(matches!(
        store.read(&first.id).await,
        Err(CheckpointError::NotFound(_))
    ));
}

async fn concurrent_writers_are_serialized(f: &dyn Faults) {
    let store = f.store();
    let mut tasks = Vec::new();
    let race = f.cluster("race");
    for i in 1..=8u64 {
        let (store, race) = (store.clone(), race.clone());
        tasks.push(tokio::spawn(async move {
            // Interleave positions: 8, 1, 7, 2, …
            let index = if i % 2 == 0 { 9 - i / 2 } else { i.div_ceil(2) };
            (index, checkpoint(&*store, &race, 1, index, &[]).await)
        }));
    }
    let mut accepted = Vec::new();
    for t in tasks {
        let (index, r) = t.await.unwrap();
        match r {
            Ok(_) => accepted.push(index),
            Err(CheckpointError::Stale { .. }) => {}
            Err(e) => panic!("{index}: {e}"),
        }
    }
    let stored: Vec<u64> = store
        .list(Some(&f.cluster("race")))
        .await
        .unwrap()
        .iter()
        .map(|m| m.index)
        .collect();
    accepted.sort();
    let mut sorted = stored.clone();
    sorted.sort();
    assert!(!accepted.is_empty());
    assert_eq!(sorted, accepted, "every accepted write is stored, no other");
    let newest = *accepted.last().unwrap();
    assert!(checkpoint(&*store, &f.cluster("race"), 1, newest, &[])
        .await
        .is_err());
}

async fn conformance(f: &dyn Faults) {
    round_trip_of_a_big_checkpoint(f).await;
    fencing(f).await;
    a_torn_write_is_invisible(f).await;
    corruption_is_detected(f).await;
    retention(f).await;
    concurrent_writers_are_serialized(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_store_conforms() {
    let local = Local::new();
    conformance(&local).await;
}

/// Against a real SQL Server whenever `STROM_MSSQL_URL` is set (an ADO.NET
/// connection string to a database the login may create a schema in; see
/// docs/operations.md). `STROM_REQUIRE_MSSQL=1` makes a missing URL a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlserver_store_conforms() {
    let Ok(url) = std::env::var("STROM_MSSQL_URL") else {
        assert!(
            std::env::var("STROM_REQUIRE_MSSQL").as_deref() != Ok("1"),
            "STROM_REQUIRE_MSSQL=1 but STROM_MSSQL_URL is not set"
        );
        eprintln!("skipped: STROM_MSSQL_URL is not set (no SQL Server to test against)");
        return;
    };
    let sql = Sql {
        store: Arc::new(SqlServerStore::new(&url).expect("STROM_MSSQL_URL")),
        run: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
    };
    conformance(&sql).await;
}

#[tokio::test]
async fn a_local_store_answers_bad_names_as_absent() {
    let local = Local::new();
    let store = local.store();
    for bad in ["../x", "a/b", "", ".hidden"] {
        assert!(
            matches!(store.read(bad).await, Err(CheckpointError::NotFound(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        store.get_package("../../etc/passwd").await,
        Err(CheckpointError::PackageNotFound(_))
    ));
    // A leftover of a torn write goes with retention.
    let state = bytes(100, 1);
    let torn = CheckpointMeta::new("left", 1, 1, 0, &state, vec![]);
    local.write_torn(&torn, &state).await;
    store.retain("left", 1).await.unwrap();
    let left: Vec<_> = std::fs::read_dir(local.1.path().join("checkpoints"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // What it made is its owner's alone (checkpoints hold keys in clear).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let fresh = local.1.path().join("new").join("store");
        let store = LocalStore::open(&fresh).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join("checkpoints")), 0o700);
        let state = bytes(10, 2);
        let meta = CheckpointMeta::new("modes", 1, 1, 0, &state, vec![]);
        store.write(&meta, &state).await.unwrap();
        let file = fresh.join("checkpoints").join(format!("{}.state", meta.id));
        assert_eq!(mode(&file), 0o600);
    }
}
