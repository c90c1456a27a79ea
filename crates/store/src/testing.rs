//! Test support: a throwaway ledger database on each backend.
//!
//! PostgreSQL tests use `GRANTLINE_TEST_DATABASE_URL` (a server where the user may create
//! databases); each test gets a fresh database. Without the variable they are skipped with a
//! printed reason — except under `CI=true`, where a missing database is a failure.

use crate::Database;
use grantline_ledger::NoteSigner;

/// Environment variable naming the PostgreSQL server for tests.
pub const PG_ENV: &str = "GRANTLINE_TEST_DATABASE_URL";

/// A database for one test; the SQLite directory is removed when dropped.
pub struct TestDb {
    pub db: Database,
    pub backend: &'static str,
    /// Admin URL and database name, for tests that need to act as the owner.
    pub pg_admin: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// The SQLite file, if this is SQLite.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.db {
            Database::Sqlite(p) => Some(p),
            Database::Postgres(_) => None,
        }
    }

    /// A URL string for the CLI (`--database`).
    pub fn url(&self) -> String {
        match &self.db {
            Database::Sqlite(p) => format!("sqlite:{}", p.display()),
            Database::Postgres(u) => u.clone(),
        }
    }
}

/// Runs `sql` on the test database, as someone with access to it would (tampering, faults).
pub async fn exec(db: &TestDb, sql: &str) {
    let store = crate::Store::connect(&db.db, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    match store.pool() {
        crate::Pool::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        crate::Pool::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{e}"));
    store.close().await;
}

/// Makes every insert into the ledger fail, as a full disk would: a trigger on `events`.
pub async fn block_appends(db: &TestDb) {
    let sql = match &db.db {
        Database::Sqlite(_) => {
            "CREATE TRIGGER block_appends BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        }
        Database::Postgres(_) => {
            "CREATE FUNCTION block_appends() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$; \
             CREATE TRIGGER block_appends BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION block_appends()"
        }
    };
    exec(db, sql).await;
}

/// Undoes [`block_appends`].
pub async fn unblock_appends(db: &TestDb) {
    let sql = match &db.db {
        Database::Sqlite(_) => "DROP TRIGGER block_appends",
        Database::Postgres(_) => {
            "DROP TRIGGER block_appends ON events; DROP FUNCTION block_appends()"
        }
    };
    exec(db, sql).await;
}

/// The stored checkpoint of tree size `size` whose note opens under `key`, if any.
pub async fn signed_checkpoint(
    store: &crate::Store,
    key: &grantline_ledger::NoteVerifier,
    size: u64,
) -> Option<grantline_ledger::Checkpoint> {
    store
        .checkpoints()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter_map(|c| grantline_ledger::Checkpoint::open(&c.note, std::slice::from_ref(key)).ok())
        .find(|c| c.size == size)
}

/// A fixed checkpoint signer for tests.
pub fn signer() -> NoteSigner {
    NoteSigner::from_seed("grantline.test/ledger", [42u8; 32]).unwrap_or_else(|e| panic!("{e}"))
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    TestDb {
        db: Database::in_data_dir(dir.path()),
        backend: "sqlite",
        pg_admin: None,
        _dir: Some(dir),
    }
}

/// A fresh PostgreSQL database, or `None` (with a printed reason) when none is configured.
pub async fn postgres() -> Option<TestDb> {
    use sqlx::Connection;
    let Ok(admin) = std::env::var(PG_ENV) else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but {PG_ENV} is not set: PostgreSQL tests must run in CI");
        }
        eprintln!("skipping PostgreSQL test: {PG_ENV} is not set");
        return None;
    };
    let name = format!("gl_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connect {admin}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("create database: {e}"));
    let _ = conn.close().await;
    let url = replace_db(&admin, &name);
    Some(TestDb {
        db: Database::Postgres(url),
        backend: "postgres",
        pg_admin: Some(admin),
        _dir: None,
    })
}

/// `admin` with its database name replaced by `name`.
pub fn replace_db(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    format!("{host}/{name}{query}")
}

/// A tool call event on one of a few resource streams.
pub fn tool_call(i: u64) -> grantline_ledger::NewEvent {
    let resource = format!("https://mcp.test/mcp/r{}", i % 3);
    grantline_ledger::NewEvent::new(
        grantline_ledger::StreamId::resource(&resource),
        grantline_ledger::Actor::User { id: "usr_1".into() },
        grantline_ledger::ToolCalled {
            request_id: format!("req_{i}"),
            trace_id: None,
            resource,
            tool: "search".into(),
            user_id: Some("usr_1".into()),
            client_id: Some("cli_1".into()),
            credential: grantline_ledger::Credential {
                kind: grantline_ledger::CredentialKind::AccessToken,
                id: "at_1".into(),
            },
            outcome: grantline_ledger::ToolOutcome::Ok,
            reason: None,
            error_code: None,
            duration_us: 100 + i,
            arguments_digest: grantline_ledger::secret_digest(&i.to_be_bytes()),
            intent: None,
            sealed_intent: None,
            source_ip: None,
        },
    )
}

/// A `user.created` (by the CLI) with the username and email sealed under the user's key.
pub async fn user_created(
    k: &crate::Keyring,
    id: &str,
    name: &str,
    email: &str,
) -> grantline_ledger::NewEvent {
    let s = grantline_ledger::pii::user_subject(id);
    grantline_ledger::NewEvent::new(
        grantline_ledger::StreamId::user(id),
        grantline_ledger::Actor::Operator,
        grantline_ledger::UserCreated {
            user_id: id.into(),
            username: k.seal(&s, name).await.expect("sealing"),
            email: Some(k.seal(&s, email).await.expect("sealing")),
            display_name: None,
            role: "user".into(),
            source: grantline_ledger::UserSource::Cli,
            provider: None,
        },
    )
}

/// A `user.erased` (by the operator).
pub fn user_erased(id: &str) -> grantline_ledger::NewEvent {
    grantline_ledger::NewEvent::new(
        grantline_ledger::StreamId::user(id),
        grantline_ledger::Actor::Operator,
        grantline_ledger::UserErased { user_id: id.into() },
    )
}

/// Declares each test twice, `sqlite::name` and `postgres::name`, with `db: TestDb`.
#[macro_export]
macro_rules! backend_tests {
    ($( $(#[$meta:meta])* async fn $name:ident($db:ident: TestDb) $body:block )*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$meta])* #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let $db = $crate::testing::sqlite().await;
                $body
            } )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$meta])* #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some($db) = $crate::testing::postgres().await else { return };
                $body
            } )*
        }
    };
}
