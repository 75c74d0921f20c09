//! The `sqlserver` checkpoint store: SQL Server 2019 and later, through tiberius.
//!
//! All of Strom's SQL is in this file. It keeps to a plain subset of T-SQL (no
//! `MERGE`, no vendor extensions beyond `sp_getapplock`), every value is a
//! parameter (`@P1`, … through `sp_executesql`), and each statement says which
//! SQL Server behaviour it relies on.
//!
//! ```text
//! strom.schema_version     (id = 1, version, updated_at)     the schema's version
//! strom.checkpoints        one row per checkpoint: position, meta (JSON), complete
//! strom.checkpoint_chunks  (checkpoint_id, chunk, data VARBINARY(MAX))
//! strom.packages           one row per package: sha256, size, complete
//! strom.package_chunks     (sha256, chunk, data VARBINARY(MAX))
//! ```
//!
//! **Transactions and locks.** Every write runs in one transaction on one
//! connection with `XACT_ABORT ON` (any error rolls the whole transaction back; a
//! lost connection does too, on the server's side). Writers serialize on
//! application locks owned by the transaction (`sp_getapplock`, released at
//! commit or rollback), always taken in this order:
//!
//! 1. `strom:checkpoints:<cluster id>` — exclusive for a checkpoint write and for
//!    retention of that cluster: fencing is decided under it.
//! 2. `strom:packages` — shared for storing a package and for a checkpoint write
//!    (which checks its packages are there), exclusive for retention (which
//!    deletes the packages no checkpoint references). So retention never deletes a
//!    package a concurrent write is about to reference, whatever the database's
//!    isolation settings (`READ_COMMITTED_SNAPSHOT` included).
//!
//! A pooled connection whose operation did not finish (an error, a deadline, a
//! dropped future) is closed, never reused with a transaction half done.

use std::sync::Arc;
use std::time::Duration;

use tiberius::{Client, Config, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::{
    chunks, fence, reassemble, retention, verify, CheckpointError, CheckpointMeta, CheckpointStore,
    Retained, CHUNK,
};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 1;

/// How long connecting (TCP, TLS, login) may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long one store operation may take in all (a 40 MiB package over a slow
/// link included); past it the connection is closed and the transaction rolled back.
const OPERATION_DEADLINE: Duration = Duration::from_secs(300);
/// How long a statement waits for a row lock or an application lock.
const LOCK_TIMEOUT_MS: i32 = 20_000;
/// How long one round trip may take (tiberius' own deadline): longer than a lock
/// wait, so the server's lock timeout (a clean error) always comes first.
const ROUND_TRIP_DEADLINE: Duration = Duration::from_secs(120);

/// One step of the schema: the statements that take it from `version - 1` to
/// `version`. Each is idempotent (guarded by an existence check), so a step that
/// was interrupted can run again.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub statements: &'static [&'static str],
}

/// Every step, in order. A new version appends a step; a released step never changes.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    statements: &[
        // CREATE SCHEMA must be alone in its batch: EXEC runs it as one.
        "IF SCHEMA_ID(N'strom') IS NULL EXEC(N'CREATE SCHEMA strom')",
        "IF OBJECT_ID(N'strom.checkpoints', N'U') IS NULL
         CREATE TABLE strom.checkpoints (
             id           NVARCHAR(200) NOT NULL CONSTRAINT pk_checkpoints PRIMARY KEY,
             cluster_id   NVARCHAR(128) NOT NULL,
             term         BIGINT        NOT NULL,
             log_index    BIGINT        NOT NULL,
             created_ms   BIGINT        NOT NULL,
             state_sha256 CHAR(64)      NOT NULL,
             state_size   BIGINT        NOT NULL,
             meta         NVARCHAR(MAX) NOT NULL,
             complete     BIT           NOT NULL
         )",
        "IF NOT EXISTS (SELECT 1 FROM sys.indexes
                        WHERE name = N'ix_checkpoints_position'
                          AND object_id = OBJECT_ID(N'strom.checkpoints'))
         CREATE INDEX ix_checkpoints_position
             ON strom.checkpoints (cluster_id, complete, term, log_index)",
        "IF OBJECT_ID(N'strom.checkpoint_chunks', N'U') IS NULL
         CREATE TABLE strom.checkpoint_chunks (
             checkpoint_id NVARCHAR(200)  NOT NULL,
             chunk         INT            NOT NULL,
             data          VARBINARY(MAX) NOT NULL,
             CONSTRAINT pk_checkpoint_chunks PRIMARY KEY (checkpoint_id, chunk)
         )",
        // Package ids are NCHAR: tiberius sends text parameters as NVARCHAR, and a
        // CHAR column would be converted for the comparison (a scan under SQL_*
        // collations, with range locks over the whole table).
        "IF OBJECT_ID(N'strom.packages', N'U') IS NULL
         CREATE TABLE strom.packages (
             sha256    NCHAR(64) NOT NULL CONSTRAINT pk_packages PRIMARY KEY,
             size      BIGINT   NOT NULL,
             complete  BIT      NOT NULL,
             stored_ms BIGINT   NOT NULL
         )",
        "IF OBJECT_ID(N'strom.package_chunks', N'U') IS NULL
         CREATE TABLE strom.package_chunks (
             sha256 NCHAR(64)      NOT NULL,
             chunk  INT            NOT NULL,
             data   VARBINARY(MAX) NOT NULL,
             CONSTRAINT pk_package_chunks PRIMARY KEY (sha256, chunk)
         )",
    ],
}];

/// The steps that bring a schema at `current` (0: none) to [`SCHEMA_VERSION`];
/// an error if the database's schema is newer than this build understands.
pub fn migration_plan(current: i32) -> Result<&'static [Migration], String> {
    if current > SCHEMA_VERSION {
        return Err(format!(
            "the database's strom schema is version {current}, newer than this build \
             understands ({SCHEMA_VERSION}); upgrade Strom before pointing it at this database"
        ));
    }
    if current < 0 {
        return Err(format!(
            "the database's strom schema version {current} is not valid"
        ));
    }
    let from = MIGRATIONS
        .iter()
        .position(|m| m.version > current)
        .unwrap_or(MIGRATIONS.len());
    Ok(&MIGRATIONS[from..])
}

/// A connection string checked and parsed: what to connect to and how to name it
/// in messages (server and database; never the credentials).
#[derive(Clone)]
pub struct Target {
    config: Config,
    describe: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

/// The keys a connection string may hold (lower case); anything else is most
/// likely a typo that would otherwise be ignored silently.
const KNOWN_KEYS: &[&str] = &[
    "server",
    "data source",
    "uid",
    "username",
    "user",
    "user id",
    "password",
    "pwd",
    "database",
    "databasename",
    "initial catalog",
    "trustservercertificate",
    "trustservercertificateca",
    "encrypt",
    "application name",
    "applicationname",
    "hostnameincertificate",
    "hostname in certificate",
    "workstationid",
    "workstation id",
    "integratedsecurity",
    "integrated security",
    "multisubnetfailover",
    "applicationintent",
];

/// Check and parse an ADO.NET connection string
/// (`server=tcp:host,1433;database=strom;user id=…;password=…;encrypt=true`).
/// Errors name the problem, never a value (a password may be in it).
pub fn parse_connection_string(s: &str) -> Result<Target, CheckpointError> {
    let bad = |message: String| CheckpointError::Store {
        store: "sqlserver".into(),
        message: format!("the connection string is not valid: {message}"),
    };
    let s = s.trim();
    if s.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let pairs = split_pairs(s).map_err(bad)?;
    let get = |keys: &[&str]| {
        pairs
            .iter()
            .find(|(k, _)| keys.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    };
    if let Some((key, _)) = pairs
        .iter()
        .find(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
    {
        return Err(bad(format!(
            "unknown key `{key}` (known: {})",
            KNOWN_KEYS.join(", ")
        )));
    }
    if get(&["server", "data source"]).is_none_or(|v| v.trim().is_empty()) {
        return Err(bad("no `server` (e.g. server=tcp:db.example,1433)".into()));
    }
    let integrated = get(&["integratedsecurity", "integrated security"]).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "sspi" | "true" | "yes"
        )
    });
    if integrated && !cfg!(windows) {
        return Err(bad(
            "`Integrated Security` (Windows authentication) works only on Windows nodes; \
             use SQL authentication (user id and password) here"
                .into(),
        ));
    }
    if !integrated && get(&["uid", "username", "user", "user id"]).is_none_or(str::is_empty) {
        return Err(bad(
            "no `user id` (SQL authentication needs a login and a password)".into(),
        ));
    }
    if let Some(enc) = get(&["encrypt"]) {
        if enc.trim().eq_ignore_ascii_case("danger_plaintext") {
            return Err(bad(
                "`encrypt=DANGER_PLAINTEXT` would send the login in clear; use encrypt=true".into(),
            ));
        }
    }
    let config = Config::from_ado_string(s).map_err(|e| bad(e.to_string()))?;
    let database = get(&["database", "databasename", "initial catalog"]).unwrap_or("(default)");
    Ok(Target {
        describe: format!("sqlserver:{}/{}", config.get_addr(), database.trim()),
        config,
    })
}

/// `key=value` pairs of an ADO.NET connection string, keys lower case. Values may
/// be quoted with `'…'`, `"…"` (a doubled quote stands for itself) or `{…}`.
fn split_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ';' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                // Not named: it may be part of a password with an unquoted `;`.
                Some(';') | None => {
                    return Err(format!(
                        "pair {} has no `=` (pairs are key=value, separated by `;`; quote a \
                         value that holds a `;`: password='a;b')",
                        out.len() + 1
                    ))
                }
                Some(c) => key.push(c),
            }
        }
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err("a pair has no key".into());
        }
        while chars.peek().is_some_and(|c| *c == ' ') {
            chars.next();
        }
        let mut value = String::new();
        match chars.peek().copied() {
            Some(q @ ('\'' | '"')) => {
                chars.next();
                loop {
                    match chars.next() {
                        Some(c) if c == q => {
                            if chars.peek() == Some(&q) {
                                chars.next();
                                value.push(q);
                            } else {
                                break;
                            }
                        }
                        Some(c) => value.push(c),
                        None => return Err(format!("the value of `{key}` has no closing {q}")),
                    }
                }
            }
            Some('{') => {
                chars.next();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => value.push(c),
                        None => return Err(format!("the value of `{key}` has no closing }}")),
                    }
                }
            }
            _ => {
                while let Some(c) = chars.peek().copied() {
                    if c == ';' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim_end().to_string();
            }
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(if KNOWN_KEYS.contains(&key.as_str()) {
                format!("`{key}` is given twice")
            } else {
                format!("pair {} repeats an earlier key", out.len() + 1)
            });
        }
        while chars.peek().is_some_and(|c| *c == ' ') {
            chars.next();
        }
        match chars.next() {
            Some(';') | None => {}
            Some(_) => return Err(format!("text after the quoted value of `{key}`")),
        }
        out.push((key, value));
    }
}

type Sql = Client<Compat<TcpStream>>;

/// A pooled connection in use: unless [`Busy::done`] is called, dropping it closes
/// the connection (taken out of the pool) rather than returning it.
struct Busy(Option<deadpool::managed::Object<Manager>>);

impl Busy {
    fn new(mut conn: deadpool::managed::Object<Manager>) -> Busy {
        conn.busy = true;
        Busy(Some(conn))
    }

    fn client(&mut self) -> &mut Sql {
        &mut self.0.as_mut().expect("a connection in use").client
    }

    /// The operation finished cleanly: back to the pool.
    fn done(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.busy = false;
        }
        self.0 = None;
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Out of the pool and dropped: its socket closes now.
            drop(deadpool::managed::Object::take(conn));
        }
    }
}

/// A pooled connection; `busy` is set while an operation runs (a connection that
/// is somehow returned busy is closed when next recycled).
pub struct Conn {
    client: Sql,
    busy: bool,
}

pub struct Manager {
    target: Target,
}

impl deadpool::managed::Manager for Manager {
    type Type = Conn;
    type Error = CheckpointError;

    async fn create(&self) -> Result<Conn, CheckpointError> {
        let store = &self.target.describe;
        let connect = async {
            use tiberius::SqlBrowser;
            // Resolves a named instance (`host\instance`) through the SQL Browser
            // service; otherwise connects to host:port.
            let tcp = TcpStream::connect_named(&self.target.config)
                .await
                .map_err(|e| sql_error(store, "connecting", e))?;
            tcp.set_nodelay(true).ok();
            let mut config = self.target.config.clone();
            config.command_timeout(Some(ROUND_TRIP_DEADLINE));
            let mut client = Client::connect(config, tcp.compat_write())
                .await
                .map_err(|e| sql_error(store, "logging in", e))?;
            // XACT_ABORT ON: a run-time error in a transaction rolls all of it back
            // (SQL Server otherwise may roll back only the failing statement).
            // LOCK_TIMEOUT: a statement waiting on a row lock fails with 1222
            // instead of waiting forever.
            client
                .simple_query(format!(
                    "SET XACT_ABORT ON; SET LOCK_TIMEOUT {LOCK_TIMEOUT_MS};"
                ))
                .await
                .map_err(|e| sql_error(store, "setting up the session", e))?
                .into_results()
                .await
                .map_err(|e| sql_error(store, "setting up the session", e))?;
            Ok(Conn {
                client,
                busy: false,
            })
        };
        match tokio::time::timeout(CONNECT_DEADLINE, connect).await {
            Ok(r) => r,
            Err(_) => Err(CheckpointError::Store {
                store: store.clone(),
                message: format!(
                    "no answer within {}s (is the server reachable and listening on that port?)",
                    CONNECT_DEADLINE.as_secs()
                ),
            }),
        }
    }

    /// A connection whose last operation did not finish is closed; any other is
    /// checked with a round trip before it is handed out again.
    async fn recycle(
        &self,
        conn: &mut Conn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<CheckpointError> {
        if conn.busy {
            return Err(deadpool::managed::RecycleError::Message(
                "its last operation did not finish".into(),
            ));
        }
        conn.client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| sql_error(&self.target.describe, "checking a connection", e))?
            .into_results()
            .await
            .map_err(|e| sql_error(&self.target.describe, "checking a connection", e))?;
        Ok(())
    }
}

/// A SQL Server error as the store's error, with what it means for an operator.
fn sql_error(store: &str, doing: &str, e: tiberius::error::Error) -> CheckpointError {
    let message = match &e {
        tiberius::error::Error::Server(t) => {
            let hint = match t.code() {
                18456 => " (login failed: check the user id and password, and that the server allows SQL authentication)",
                4060 => " (the database does not exist or the login may not open it)",
                229 | 230 | 262 | 297 | 300 | 15247 | 1088 | 15151 => {
                    " (permission denied: docs/operations.md lists the permissions Strom needs)"
                }
                1205 => " (chosen as a deadlock victim; the operation is retried later)",
                1222 => " (a lock was not granted in time; the operation is retried later)",
                _ => "",
            };
            format!(
                "{doing}: SQL Server error {}: {}{hint}",
                t.code(),
                t.message()
            )
        }
        tiberius::error::Error::Tls(m) => format!(
            "{doing}: TLS: {m} (the server's certificate must be trusted: install its CA in the \
             system store, or name it with TrustServerCertificateCA=<path>)"
        ),
        tiberius::error::Error::Io { message, .. } => format!("{doing}: {message}"),
        other => format!("{doing}: {other}"),
    };
    CheckpointError::Store {
        store: store.to_string(),
        message,
    }
}

/// The SQL Server store: a pool of up to four connections to one database.
pub struct SqlServerStore {
    pool: deadpool::managed::Pool<Manager>,
    describe: String,
    migrated: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for SqlServerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl SqlServerStore {
    /// A store for `connection_string`; nothing is connected until first use (a
    /// node starts whether or not the server is reachable).
    pub fn new(connection_string: &str) -> Result<SqlServerStore, CheckpointError> {
        let target = parse_connection_string(connection_string)?;
        let describe = target.describe.clone();
        // A refused login or an unreachable server is answered at once (the
        // pool creates connections in the caller's `get`), with SQL Server's reason.
        let pool = deadpool::managed::Pool::builder(Manager { target })
            .max_size(4)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(OPERATION_DEADLINE))
            .create_timeout(Some(CONNECT_DEADLINE + Duration::from_secs(2)))
            .recycle_timeout(Some(CONNECT_DEADLINE))
            .build()
            .map_err(|e| CheckpointError::Store {
                store: describe.clone(),
                message: format!("building its connection pool: {e}"),
            })?;
        Ok(SqlServerStore {
            pool,
            describe,
            migrated: tokio::sync::OnceCell::new(),
        })
    }

    fn err(&self, doing: &str) -> impl Fn(tiberius::error::Error) -> CheckpointError + '_ {
        let doing = doing.to_string();
        move |e| sql_error(&self.describe, &doing, e)
    }

    /// Run `op` on a pooled connection, within the operation deadline; the schema
    /// is created or migrated first (once per store). A connection whose operation
    /// did not finish cleanly (a store error, the deadline, a dropped future) is
    /// closed at once, so the server rolls its transaction back and frees its
    /// locks instead of an idle pooled session holding them.
    async fn with<T>(
        &self,
        op: impl for<'c> FnOnce(
            &'c mut Sql,
            &'c SqlServerStore,
        ) -> futures::future::BoxFuture<'c, Result<T, CheckpointError>>,
    ) -> Result<T, CheckpointError> {
        let run = async {
            self.migrated
                .get_or_try_init(|| async {
                    let mut conn = Busy::new(self.connection().await?);
                    self.migrate(conn.client()).await?;
                    conn.done();
                    Ok::<(), CheckpointError>(())
                })
                .await?;
            let mut conn = Busy::new(self.connection().await?);
            let out = op(conn.client(), self).await;
            // A refusal (stale, not found, corrupt) comes after a clean rollback
            // (see `transaction`): the connection goes back to the pool. A store
            // error may have left it in any state: closed.
            if !matches!(out, Err(CheckpointError::Store { .. })) {
                conn.done();
            }
            out
        };
        match tokio::time::timeout(OPERATION_DEADLINE, run).await {
            Ok(r) => r,
            Err(_) => Err(CheckpointError::Store {
                store: self.describe.clone(),
                message: format!(
                    "the operation did not finish within {}s; its connection was closed \
                     (the server rolls its transaction back)",
                    OPERATION_DEADLINE.as_secs()
                ),
            }),
        }
    }

    /// [`with`](Self::with) one transaction around `body`.
    async fn in_transaction<T: Send + 'static>(
        &self,
        body: impl for<'x> FnOnce(
                &'x mut Sql,
                &'x SqlServerStore,
            )
                -> futures::future::BoxFuture<'x, Result<T, CheckpointError>>
            + Send
            + 'static,
    ) -> Result<T, CheckpointError> {
        self.with(move |c, s| Box::pin(transaction(c, s, body)))
            .await
    }

    async fn connection(&self) -> Result<deadpool::managed::Object<Manager>, CheckpointError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool::managed::PoolError::Backend(e) => e,
            other => CheckpointError::Store {
                store: self.describe.clone(),
                message: format!("no connection: {other}"),
            },
        })
    }

    /// Create or migrate the schema: under an exclusive application lock, so two
    /// nodes starting at once do not both run the DDL.
    async fn migrate(&self, c: &mut Sql) -> Result<(), CheckpointError> {
        transaction(c, self, |c, s| {
            Box::pin(async move {
                applock(c, s, "strom:schema", "Exclusive").await?;
                // The version table first, on its own: the rest depends on it.
                exec(
                    c,
                    s,
                    "creating the schema",
                    "IF SCHEMA_ID(N'strom') IS NULL EXEC(N'CREATE SCHEMA strom')",
                    &[],
                )
                .await?;
                exec(
                    c,
                    s,
                    "creating the schema",
                    "IF OBJECT_ID(N'strom.schema_version', N'U') IS NULL
                     CREATE TABLE strom.schema_version (
                         id         INT          NOT NULL CONSTRAINT pk_schema_version PRIMARY KEY
                                                 CONSTRAINT ck_schema_version_one CHECK (id = 1),
                         version    INT          NOT NULL,
                         updated_at DATETIME2(3) NOT NULL
                     )",
                    &[],
                )
                .await?;
                // UPDLOCK, HOLDLOCK: the row (or the gap where it will be) stays
                // locked to this transaction until commit.
                let current = c
                    .query(
                        "SELECT version FROM strom.schema_version WITH (UPDLOCK, HOLDLOCK) WHERE id = 1",
                        &[],
                    )
                    .await
                    .map_err(s.err("reading the schema version"))?
                    .into_row()
                    .await
                    .map_err(s.err("reading the schema version"))?
                    .and_then(|r| r.get::<i32, _>(0))
                    .unwrap_or(0);
                let plan = migration_plan(current).map_err(|m| CheckpointError::Store {
                    store: s.describe.clone(),
                    message: m,
                })?;
                for step in plan {
                    for statement in step.statements {
                        exec(c, s, &format!("migrating the schema to version {}", step.version), statement, &[]).await?;
                    }
                }
                if !plan.is_empty() {
                    // Upsert without MERGE: UPDATE, and INSERT if no row was there
                    // (the row is locked by the SELECT above).
                    let n = exec(
                        c,
                        s,
                        "recording the schema version",
                        "UPDATE strom.schema_version SET version = @P1, updated_at = SYSUTCDATETIME() WHERE id = 1",
                        &[&SCHEMA_VERSION],
                    )
                    .await?;
                    if n == 0 {
                        exec(
                            c,
                            s,
                            "recording the schema version",
                            "INSERT INTO strom.schema_version (id, version, updated_at) VALUES (1, @P1, SYSUTCDATETIME())",
                            &[&SCHEMA_VERSION],
                        )
                        .await?;
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// For the conformance suite: a checkpoint whose writing stopped before it was
    /// complete (its row not marked complete, its last chunk missing) — what an
    /// engine without transactions, or a bug, could leave.
    pub async fn write_torn(
        &self,
        meta: &CheckpointMeta,
        state: &[u8],
    ) -> Result<(), CheckpointError> {
        let (meta, state) = (meta.clone(), state.to_vec());
        self.in_transaction(move |c, s| {
            Box::pin(async move {
                insert_checkpoint_row(c, s, &meta).await?;
                let mut parts = chunks(&state, CHUNK);
                parts.pop();
                insert_checkpoint_chunks(c, s, &meta.id, parts).await?;
                Ok(())
            })
        })
        .await
    }

    /// For the conformance suite: flip a byte of a stored checkpoint's state.
    pub async fn corrupt_state(&self, id: &str) -> Result<(), CheckpointError> {
        let id = id.to_string();
        self.with(move |c, s| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT data FROM strom.checkpoint_chunks WHERE checkpoint_id = @P1 AND chunk = 0",
                        &[&id.as_str()],
                    )
                    .await
                    .map_err(s.err("corrupting"))?
                    .into_first_result()
                    .await
                    .map_err(s.err("corrupting"))?;
                let mut data = rows
                    .first()
                    .and_then(|r| r.get::<&[u8], _>(0))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| CheckpointError::NotFound(id.clone()))?;
                if let Some(b) = data.first_mut() {
                    *b ^= 0xff;
                }
                exec(
                    c,
                    s,
                    "corrupting",
                    "UPDATE strom.checkpoint_chunks SET data = @P2 WHERE checkpoint_id = @P1 AND chunk = 0",
                    &[&id.as_str(), &data],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }
}

/// Run `body` in a transaction: committed if it succeeds, rolled back if not (and
/// `XACT_ABORT ON` has rolled back already on most errors).
async fn transaction<T>(
    c: &mut Sql,
    s: &SqlServerStore,
    body: impl for<'x> FnOnce(
        &'x mut Sql,
        &'x SqlServerStore,
    ) -> futures::future::BoxFuture<'x, Result<T, CheckpointError>>,
) -> Result<T, CheckpointError> {
    c.begin_transaction()
        .await
        .map_err(s.err("beginning a transaction"))?;
    match body(c, s).await {
        Ok(v) => {
            c.commit_transaction().await.map_err(s.err("committing"))?;
            Ok(v)
        }
        Err(e) => {
            // `IF @@TRANCOUNT > 0`: XACT_ABORT may have rolled back already, and a
            // ROLLBACK without a transaction is error 3903.
            let rollback = async {
                c.simple_query("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION")
                    .await?
                    .into_results()
                    .await
            };
            match rollback.await {
                Ok(_) => Err(e),
                // The connection is unusable: a store error (so it is closed),
                // naming what failed first.
                Err(r) => Err(CheckpointError::Store {
                    store: s.describe.clone(),
                    message: format!("{e}; then rolling back failed too: {r}"),
                }),
            }
        }
    }
}

/// `sp_getapplock` owned by the current transaction (released at its end). It
/// answers 0 (granted at once) or 1 (granted after waiting); -1 timeout, -2
/// cancelled, -3 deadlock victim, -999 a parameter error.
async fn applock(
    c: &mut Sql,
    s: &SqlServerStore,
    resource: &str,
    mode: &str,
) -> Result<(), CheckpointError> {
    let row = c
        .query(
            "DECLARE @r INT;
             EXEC @r = sp_getapplock @Resource = @P1, @LockMode = @P2,
                                     @LockOwner = 'Transaction', @LockTimeout = @P3;
             SELECT @r;",
            &[&resource, &mode, &LOCK_TIMEOUT_MS],
        )
        .await
        .map_err(s.err(&format!("taking the lock {resource}")))?
        .into_row()
        .await
        .map_err(s.err(&format!("taking the lock {resource}")))?;
    let code = row.and_then(|r| r.get::<i32, _>(0)).unwrap_or(-999);
    if code >= 0 {
        return Ok(());
    }
    let why = match code {
        -1 => format!(
            "not granted within {} ms (another writer holds it)",
            LOCK_TIMEOUT_MS
        ),
        -2 => "the request was cancelled".to_string(),
        -3 => "chosen as a deadlock victim".to_string(),
        _ => format!("sp_getapplock answered {code}"),
    };
    Err(CheckpointError::Store {
        store: s.describe.clone(),
        message: format!("taking the lock {resource}: {why}; the operation is retried later"),
    })
}

/// Run a statement; answers the rows it affected.
async fn exec(
    c: &mut Sql,
    s: &SqlServerStore,
    doing: &str,
    sql: &str,
    params: &[&dyn ToSql],
) -> Result<u64, CheckpointError> {
    Ok(c.execute(sql, params).await.map_err(s.err(doing))?.total())
}

async fn rows(
    c: &mut Sql,
    s: &SqlServerStore,
    doing: &str,
    sql: &str,
    params: &[&dyn ToSql],
) -> Result<Vec<Row>, CheckpointError> {
    c.query(sql, params)
        .await
        .map_err(s.err(doing))?
        .into_first_result()
        .await
        .map_err(s.err(doing))
}

fn to_i64(what: &str, v: u64) -> Result<i64, CheckpointError> {
    i64::try_from(v).map_err(|_| CheckpointError::Store {
        store: "sqlserver".into(),
        message: format!("{what} {v} does not fit a BIGINT"),
    })
}

async fn insert_checkpoint_row(
    c: &mut Sql,
    s: &SqlServerStore,
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    let json = serde_json::to_string(meta).map_err(|e| CheckpointError::Store {
        store: s.describe.clone(),
        message: e.to_string(),
    })?;
    let (term, index, size) = (
        to_i64("term", meta.term)?,
        to_i64("index", meta.index)?,
        to_i64("size", meta.state_size)?,
    );
    exec(
        c,
        s,
        "writing the checkpoint",
        "INSERT INTO strom.checkpoints
             (id, cluster_id, term, log_index, created_ms, state_sha256, state_size, meta, complete)
         VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, 0)",
        &[
            &meta.id.as_str(),
            &meta.cluster_id.as_str(),
            &term,
            &index,
            &meta.created_ms,
            &meta.state_sha256.as_str(),
            &size,
            &json.as_str(),
        ],
    )
    .await?;
    Ok(())
}

/// A checkpoint's state chunks (as [`insert_chunk`]).
async fn insert_checkpoint_chunks(
    c: &mut Sql,
    s: &SqlServerStore,
    id: &str,
    parts: Vec<&[u8]>,
) -> Result<(), CheckpointError> {
    for (i, part) in parts.into_iter().enumerate() {
        insert_chunk(
            c,
            s,
            "strom.checkpoint_chunks",
            "checkpoint_id",
            id,
            i,
            part,
        )
        .await?;
    }
    Ok(())
}

/// One chunk as one `VARBINARY(MAX)` parameter (tiberius sends a byte slice over
/// 8000 bytes as `varbinary(max)`).
async fn insert_chunk(
    c: &mut Sql,
    s: &SqlServerStore,
    table: &str,
    key_column: &str,
    key: &str,
    chunk: usize,
    data: &[u8],
) -> Result<(), CheckpointError> {
    let chunk = i32::try_from(chunk).unwrap_or(i32::MAX);
    // Table and column names are this module's constants, never input.
    let sql = format!("INSERT INTO {table} ({key_column}, chunk, data) VALUES (@P1, @P2, @P3)");
    exec(c, s, "writing a chunk", &sql, &[&key, &chunk, &data]).await?;
    Ok(())
}

fn parse_meta(s: &SqlServerStore, row: &Row) -> Result<CheckpointMeta, CheckpointError> {
    let json = row.get::<&str, _>("meta").unwrap_or_default();
    serde_json::from_str(json).map_err(|e| CheckpointError::Store {
        store: s.describe.clone(),
        message: format!("a checkpoint's meta is unreadable: {e}"),
    })
}

fn numbered_chunks(rows: Vec<Row>) -> Vec<(u32, Vec<u8>)> {
    rows.iter()
        .map(|r| {
            (
                r.get::<i32, _>(0).unwrap_or(-1).max(0) as u32,
                r.get::<&[u8], _>(1).map(<[u8]>::to_vec).unwrap_or_default(),
            )
        })
        .collect()
}

fn check_sha(sha256: &str) -> Result<String, CheckpointError> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CheckpointError::PackageNotFound(format!(
            "{sha256} (not a SHA-256)"
        )));
    }
    Ok(sha256.to_ascii_lowercase())
}

#[async_trait::async_trait]
impl CheckpointStore for SqlServerStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn has_package(&self, sha256: &str) -> Result<bool, CheckpointError> {
        let sha = check_sha(sha256)?;
        self.with(move |c, s| {
            Box::pin(async move {
                // READ COMMITTED (no transaction): a package another writer is
                // storing is absent until it commits; storing it again then waits
                // on that writer's key lock and finds it complete.
                let found = rows(
                    c,
                    s,
                    "looking up a package",
                    "SELECT 1 FROM strom.packages WHERE sha256 = @P1 AND complete = 1",
                    &[&sha.as_str()],
                )
                .await?;
                Ok(!found.is_empty())
            })
        })
        .await
    }

    async fn put_package(&self, sha256: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        verify(&format!("package {sha256}"), sha256, bytes)?;
        let sha = check_sha(sha256)?;
        let size = to_i64("size", bytes.len() as u64)?;
        let bytes = Arc::new(bytes.to_vec());
        self.in_transaction(move |c, s| {
            Box::pin(async move {
                        applock(c, s, "strom:packages", "Shared").await?;
                        // UPDLOCK, HOLDLOCK: a second writer of the same package waits
                        // here until this one commits, then finds it complete.
                        let existing = rows(
                            c,
                            s,
                            "looking up a package",
                            "SELECT complete FROM strom.packages WITH (UPDLOCK, HOLDLOCK) WHERE sha256 = @P1",
                            &[&sha.as_str()],
                        )
                        .await?;
                        if existing.first().and_then(|r| r.get::<bool, _>(0)) == Some(true) {
                            return Ok(());
                        }
                        // Leftovers of an incomplete package go first (its row is
                        // locked by the SELECT above, so no one else writes it).
                        exec(c, s, "storing a package", "DELETE FROM strom.package_chunks WHERE sha256 = @P1", &[&sha.as_str()]).await?;
                        exec(c, s, "storing a package", "DELETE FROM strom.packages WHERE sha256 = @P1", &[&sha.as_str()]).await?;
                        let now = chrono::Utc::now().timestamp_millis();
                        exec(
                            c,
                            s,
                            "storing a package",
                            "INSERT INTO strom.packages (sha256, size, complete, stored_ms) VALUES (@P1, @P2, 0, @P3)",
                            &[&sha.as_str(), &size, &now],
                        )
                        .await?;
                        for (i, part) in chunks(&bytes, CHUNK).into_iter().enumerate() {
                            insert_chunk(c, s, "strom.package_chunks", "sha256", &sha, i, part).await?;
                        }
                        exec(c, s, "storing a package", "UPDATE strom.packages SET complete = 1 WHERE sha256 = @P1", &[&sha.as_str()]).await?;
                        Ok(())
            })
        })
        .await
    }

    async fn get_package(&self, sha256: &str) -> Result<Vec<u8>, CheckpointError> {
        let sha = check_sha(sha256)?;
        self.in_transaction(move |c, s| {
            Box::pin(async move {
                        // Shared: retention (exclusive) cannot delete it while read.
                        applock(c, s, "strom:packages", "Shared").await?;
                        let found = rows(c, s, "reading a package", "SELECT 1 FROM strom.packages WHERE sha256 = @P1 AND complete = 1", &[&sha.as_str()]).await?;
                        if found.is_empty() {
                            return Err(CheckpointError::PackageNotFound(sha.clone()));
                        }
                        let parts = rows(c, s, "reading a package", "SELECT chunk, data FROM strom.package_chunks WHERE sha256 = @P1 ORDER BY chunk", &[&sha.as_str()]).await?;
                        reassemble(&format!("package {sha}"), numbered_chunks(parts), &sha)
            })
        })
        .await
    }

    async fn write(&self, meta: &CheckpointMeta, state: &[u8]) -> Result<(), CheckpointError> {
        verify(
            &format!("checkpoint {}'s state", meta.id),
            &meta.state_sha256,
            state,
        )?;
        let (meta, state) = (Arc::new(meta.clone()), Arc::new(state.to_vec()));
        self.in_transaction(move |c, s| {
            Box::pin(async move {
                applock(
                    c,
                    s,
                    &format!("strom:checkpoints:{}", meta.cluster_id),
                    "Exclusive",
                )
                .await?;
                applock(c, s, "strom:packages", "Shared").await?;
                // Fencing, decided under the cluster's lock: the newest complete
                // checkpoint of this cluster.
                let newest = rows(
                    c,
                    s,
                    "fencing",
                    "SELECT TOP (1) meta FROM strom.checkpoints
                             WHERE cluster_id = @P1 AND complete = 1
                             ORDER BY term DESC, log_index DESC",
                    &[&meta.cluster_id.as_str()],
                )
                .await?;
                let stored = newest
                    .iter()
                    .map(|r| parse_meta(s, r))
                    .collect::<Result<Vec<_>, _>>()?;
                fence(&meta, &stored)?;
                for p in &meta.packages {
                    let sha = check_sha(&p.sha256)?;
                    let found = rows(
                        c,
                        s,
                        "checking packages",
                        "SELECT 1 FROM strom.packages WHERE sha256 = @P1 AND complete = 1",
                        &[&sha.as_str()],
                    )
                    .await?;
                    if found.is_empty() {
                        return Err(CheckpointError::PackageNotFound(sha));
                    }
                }
                // Leftovers of an incomplete write of the same checkpoint (no
                // writer of this cluster runs: we hold its lock).
                exec(
                    c,
                    s,
                    "writing the checkpoint",
                    "DELETE FROM strom.checkpoint_chunks WHERE checkpoint_id = @P1",
                    &[&meta.id.as_str()],
                )
                .await?;
                exec(
                    c,
                    s,
                    "writing the checkpoint",
                    "DELETE FROM strom.checkpoints WHERE id = @P1 AND complete = 0",
                    &[&meta.id.as_str()],
                )
                .await?;
                insert_checkpoint_row(c, s, &meta).await?;
                insert_checkpoint_chunks(c, s, &meta.id, chunks(&state, CHUNK)).await?;
                // Marked complete last, in the same transaction: listed and
                // readable only once whole.
                exec(
                    c,
                    s,
                    "writing the checkpoint",
                    "UPDATE strom.checkpoints SET complete = 1 WHERE id = @P1",
                    &[&meta.id.as_str()],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn list(&self, cluster_id: Option<&str>) -> Result<Vec<CheckpointMeta>, CheckpointError> {
        let cluster = cluster_id.map(str::to_string);
        self.with(move |c, s| {
            Box::pin(async move {
                // Committed, complete rows only (under READ_COMMITTED_SNAPSHOT,
                // the last committed version: a write in progress is not listed).
                let found = match &cluster {
                    Some(id) => rows(c, s, "listing checkpoints", "SELECT meta FROM strom.checkpoints WHERE complete = 1 AND cluster_id = @P1", &[&id.as_str()]).await?,
                    None => rows(c, s, "listing checkpoints", "SELECT meta FROM strom.checkpoints WHERE complete = 1", &[]).await?,
                };
                let mut out = found.iter().map(|r| parse_meta(s, r)).collect::<Result<Vec<_>, _>>()?;
                out.sort_by_key(|m| std::cmp::Reverse((m.created_ms, m.position())));
                Ok(out)
            })
        })
        .await
    }

    async fn read(&self, id: &str) -> Result<(CheckpointMeta, Vec<u8>), CheckpointError> {
        let id = id.to_string();
        self.in_transaction(move |c, s| {
            Box::pin(async move {
                        // HOLDLOCK: the row stays share-locked to the end of this
                        // transaction, so retention (which deletes the row before its
                        // chunks) waits until the chunks are read.
                        let found = rows(c, s, "reading a checkpoint", "SELECT meta FROM strom.checkpoints WITH (HOLDLOCK) WHERE id = @P1 AND complete = 1", &[&id.as_str()]).await?;
                        let Some(row) = found.first() else {
                            return Err(CheckpointError::NotFound(id.clone()));
                        };
                        let meta = parse_meta(s, row)?;
                        let parts = rows(c, s, "reading a checkpoint", "SELECT chunk, data FROM strom.checkpoint_chunks WHERE checkpoint_id = @P1 ORDER BY chunk", &[&id.as_str()]).await?;
                        let state = reassemble(&format!("checkpoint {id}'s state"), numbered_chunks(parts), &meta.state_sha256)?;
                        Ok((meta, state))
            })
        })
        .await
    }

    async fn retain(&self, cluster_id: &str, keep: usize) -> Result<Retained, CheckpointError> {
        let cluster = cluster_id.to_string();
        self.in_transaction(move |c, s| {
            Box::pin(async move {
                        applock(c, s, &format!("strom:checkpoints:{cluster}"), "Exclusive").await?;
                        applock(c, s, "strom:packages", "Exclusive").await?;
                        // Under the cluster's lock and the exclusive packages lock: no
                        // writer of any cluster is between its package check and its
                        // commit, so what is unreferenced here stays unreferenced.
                        let all = rows(c, s, "retention", "SELECT meta FROM strom.checkpoints WHERE complete = 1", &[]).await?;
                        let all = all.iter().map(|r| parse_meta(s, r)).collect::<Result<Vec<_>, _>>()?;
                        let stored: Vec<String> = rows(c, s, "retention", "SELECT sha256 FROM strom.packages", &[])
                            .await?
                            .iter()
                            .filter_map(|r| r.get::<&str, _>(0).map(str::to_string))
                            .collect();
                        let plan = retention(&cluster, &all, &stored, keep);
                        for id in &plan.checkpoints {
                            // The row first (readers hold it share-locked), then its chunks.
                            exec(c, s, "retention", "DELETE FROM strom.checkpoints WHERE id = @P1", &[&id.as_str()]).await?;
                            exec(c, s, "retention", "DELETE FROM strom.checkpoint_chunks WHERE checkpoint_id = @P1", &[&id.as_str()]).await?;
                        }
                        // Incomplete checkpoints of this cluster: no writer of it is
                        // running (we hold its lock), so they are leftovers.
                        exec(
                            c,
                            s,
                            "retention",
                            "DELETE FROM strom.checkpoint_chunks WHERE checkpoint_id IN
                                 (SELECT id FROM strom.checkpoints WHERE cluster_id = @P1 AND complete = 0)",
                            &[&cluster.as_str()],
                        )
                        .await?;
                        exec(c, s, "retention", "DELETE FROM strom.checkpoints WHERE cluster_id = @P1 AND complete = 0", &[&cluster.as_str()]).await?;
                        for p in &plan.packages {
                            exec(c, s, "retention", "DELETE FROM strom.packages WHERE sha256 = @P1", &[&p.as_str()]).await?;
                            exec(c, s, "retention", "DELETE FROM strom.package_chunks WHERE sha256 = @P1", &[&p.as_str()]).await?;
                        }
                        Ok(plan)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse_connection_string(s).unwrap_err().to_string()
    }

    #[test]
    fn a_connection_string_is_parsed_and_named_without_its_secrets() {
        let t = parse_connection_string(
            "server=tcp:db.example,1433;database=strom;user id=strom;password='p@ss;w=rd';\
             encrypt=true;trustServerCertificate=false",
        )
        .unwrap();
        assert_eq!(t.describe, "sqlserver:db.example:1433/strom");
        assert!(!format!("{t:?}").contains("p@ss"));
        // Braces, double quotes and a trailing `;` are fine too.
        parse_connection_string("Server=db;User ID=u;Password={a;b};Database=\"x\"\"y\";").unwrap();
    }

    #[test]
    fn a_bad_connection_string_names_what_is_wrong_and_never_a_value() {
        for (s, want) in [
            ("", "empty"),
            ("database=strom;user id=u;password=secret1", "no `server`"),
            ("server=db;password=secret1", "no `user id`"),
            (
                "server=db;user id=u;password=secret1;trustservercertifcate=true",
                "unknown key `trustservercertifcate`",
            ),
            ("server=db;user id=u;password='secret1", "no closing '"),
            ("server=db;user id=u;secret1", "has no `=`"),
            (
                "server=db;user id=u;user id=v;password=secret1",
                "given twice",
            ),
            (
                "server=db;user id=u;password=secret1;encrypt=DANGER_PLAINTEXT",
                "in clear",
            ),
            (
                "server=db;user id=u;password=secret1;encrypt=maybe",
                "not valid",
            ),
            ("server=db,notaport;user id=u;password=secret1", "not valid"),
        ] {
            let e = err(s);
            assert!(e.contains(want), "{s}: {e}");
            assert!(!e.contains("secret1") && !e.contains("cret1"), "{s}: {e}");
        }
        if !cfg!(windows) {
            let e = err("server=db;Integrated Security=SSPI");
            assert!(e.contains("only on Windows"), "{e}");
        }
    }

    #[test]
    fn the_migration_plan_runs_what_is_missing_and_refuses_a_newer_schema() {
        assert_eq!(migration_plan(0).unwrap().len(), MIGRATIONS.len());
        assert!(migration_plan(SCHEMA_VERSION).unwrap().is_empty());
        let e = migration_plan(SCHEMA_VERSION + 1).unwrap_err();
        assert!(e.contains("newer than this build"), "{e}");
        assert!(migration_plan(-1).is_err());
        // Versions are consecutive from 1 and end at SCHEMA_VERSION.
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
        }
        assert_eq!(MIGRATIONS.last().unwrap().version, SCHEMA_VERSION);
        // Every statement is guarded, so a step can run again; none uses MERGE.
        for m in MIGRATIONS {
            for st in m.statements {
                assert!(st.trim_start().starts_with("IF "), "{st}");
                assert!(!st.to_ascii_uppercase().contains("MERGE"), "{st}");
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_naming_it() {
        // A port nothing listens on, on the loopback.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = SqlServerStore::new(&format!(
            "server=tcp:127.0.0.1,{port};database=strom;user id=u;password=secret1"
        ))
        .unwrap();
        let e = store.list(None).await.unwrap_err().to_string();
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(!e.contains("secret1"), "{e}");
    }
}
