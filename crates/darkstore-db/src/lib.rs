//! Durable storage for darkstore, through sqlx, on SQLite (a file; the embedded default) or
//! PostgreSQL (production).
//!
//! Both backends run the same SQL through sqlx's `Any` driver: the statements here use only what
//! both understand (`$n` placeholders, `ON CONFLICT … DO UPDATE`, `CAST(SUM(…) AS BIGINT)`), and
//! each backend has its own migrations (`migrations/sqlite`, `migrations/postgres`).
//!
//! The server never writes row by row. It hands [`Write`]s to the [`Committer`], whose single task
//! takes whatever has queued up while the previous transaction committed and commits it as one
//! transaction of multi-row statements (group commit). A caller is answered only after its writes
//! are committed, so a 201 always means "on disk".
//!
//! Invariants: this crate is the only one that knows SQL; it holds no domain state of its own;
//! stock is never stored as a number, only as ledger rows whose sums per lot are the stock.

mod committer;
mod load;
mod write;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use committer::{CommitStats, Committer, Fencer};
pub use load::{
    KeyRow, LotSum, OrderFilter, OrderHold, OrderLineRow, OrderRow, ProductRow, RiderRow, Since, Snapshot, StoreRow,
};
pub use write::{CHECKPOINT_MAX_ROWS, LedgerRow, MAX_UNITS_PER_LINE, NewOrder, OrderStatusChange, Write};

/// How long a caller waits for a connection before its work fails as unavailable.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Which database the URL selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A storage failure. Cloneable, because one commit answers many callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// The URL is not one this server can use.
    BadUrl(String),
    /// The database could not be reached.
    Unavailable(String),
    /// The database refused this work (a constraint, a bad value): other work may still succeed.
    Rejected(String),
    /// A row with the same unique key is already stored (for an order: its customer's
    /// idempotency key).
    Conflict(String),
    /// The group-commit task has stopped (the server is shutting down).
    Closed,
    /// Cluster mode: this node does not hold the region's lease (any more): a newer owner moved
    /// the region's epoch past it, or the lease lapsed. Nothing was written.
    Fenced(String),
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::BadUrl(m) => write!(f, "bad database url: {m}"),
            DbError::Unavailable(m) => write!(f, "database unavailable: {m}"),
            DbError::Conflict(m) => write!(f, "already stored: {m}"),
            DbError::Rejected(m) => write!(f, "refused by the database: {m}"),
            DbError::Closed => write!(f, "the commit queue is closed"),
            DbError::Fenced(region) => write!(f, "this node does not own region {region}"),
        }
    }
}

impl std::error::Error for DbError {}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::error::ErrorKind;
        match e.as_database_error().map(|d| d.kind()) {
            Some(ErrorKind::UniqueViolation) => DbError::Conflict(e.to_string()),
            // A constraint the row breaks: other work may still succeed.
            Some(ErrorKind::ForeignKeyViolation | ErrorKind::NotNullViolation | ErrorKind::CheckViolation) => {
                DbError::Rejected(e.to_string())
            }
            _ => DbError::Unavailable(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for DbError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        DbError::Unavailable(format!("migration failed: {e}"))
    }
}

/// A connected, migrated database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

impl Db {
    /// Connects to `url` (`sqlite://FILE` or `postgres://…`), creating a SQLite file if missing,
    /// and applies the migrations.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let mut url = format!("sqlite:{rest}");
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
            }
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(DbError::BadUrl(format!("{url:?} is neither sqlite:// nor postgres://")));
        };
        let options = AnyConnectOptions::from_str(&url).map_err(|e| DbError::BadUrl(e.to_string()))?;
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 2 } else { 4 })
            // A database that went away is answered 503 within about two seconds.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL with synchronous=FULL: every commit is fsynced, like PostgreSQL's
                        // synchronous_commit=on.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("../../migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("../../migrations/postgres").run(&pool).await?,
        }
        Ok(Db { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// A value from the settings table.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, DbError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.0))
    }

    /// Stores `value` under `key` unless a value is there already; returns the value that is kept.
    pub async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, DbError> {
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(self.setting(key).await?.unwrap_or_else(|| value.to_owned()))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Scratch databases for tests: a fresh SQLite file, or a fresh PostgreSQL database created on
/// the server that `DARKSTORE_TEST_POSTGRES` names (dropped again by [`ScratchDb::drop_database`]).
pub mod scratch {
    use sqlx::{Connection, Executor};

    /// The environment variable that enables PostgreSQL runs of the tests.
    pub const POSTGRES_ENV: &str = "DARKSTORE_TEST_POSTGRES";

    pub struct ScratchDb {
        pub url: String,
        admin_url: Option<String>,
        name: String,
    }

    fn unique_name(prefix: &str) -> String {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("{prefix}_{}_{nanos}", std::process::id())
    }

    impl ScratchDb {
        /// A new SQLite file under the system temp directory.
        pub fn sqlite(prefix: &str) -> ScratchDb {
            let name = unique_name(prefix);
            let path = std::env::temp_dir().join(format!("{name}.db"));
            ScratchDb { url: format!("sqlite://{}", path.display()), admin_url: None, name }
        }

        /// A new PostgreSQL database, when `DARKSTORE_TEST_POSTGRES` is set.
        pub async fn postgres(prefix: &str) -> Option<ScratchDb> {
            let admin_url = std::env::var(POSTGRES_ENV).ok().filter(|u| !u.is_empty())?;
            sqlx::any::install_default_drivers();
            let name = unique_name(prefix);
            let mut conn = sqlx::AnyConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={admin_url}: {e}"));
            conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create database");
            let base = match admin_url.rfind('/') {
                Some(i) if admin_url[..i].ends_with(|c: char| c != '/') => &admin_url[..i],
                _ => admin_url.as_str(),
            };
            Some(ScratchDb { url: format!("{base}/{name}"), admin_url: Some(admin_url), name })
        }

        /// Removes the database (or the SQLite file and its WAL).
        pub async fn drop_database(self) {
            match &self.admin_url {
                Some(admin) => {
                    if let Ok(mut conn) = sqlx::AnyConnection::connect(admin).await {
                        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                        let _ = conn.execute(sql.as_str()).await;
                    }
                }
                None => {
                    let path = self.url.trim_start_matches("sqlite://").to_owned();
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{path}{suffix}"));
                    }
                }
            }
        }
    }
}
