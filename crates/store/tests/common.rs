#![allow(dead_code)]
//! Shared helpers for the store tests.

use grantline_ledger::*;
use grantline_store::testing::{self, TestDb};
use grantline_store::{Database, GroupCommit, Ledger, LedgerOptions, Pool, Store};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub async fn open(db: &TestDb) -> Ledger {
    open_with(db, LedgerOptions::default()).await
}

pub async fn open_with(db: &TestDb, options: LedgerOptions) -> Ledger {
    Ledger::open(&db.db, testing::signer(), options)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", db.backend))
}

pub fn quiet() -> LedgerOptions {
    LedgerOptions {
        checkpoint_interval: Duration::from_secs(3600),
        ..LedgerOptions::default()
    }
}

/// Options that record every group commit.
pub fn recording() -> (LedgerOptions, Arc<Mutex<Vec<GroupCommit>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let options = LedgerOptions {
        on_group_commit: Some(Arc::new(move |c: &GroupCommit| {
            sink.lock().unwrap().push(*c)
        })),
        ..quiet()
    };
    (options, seen)
}

pub use grantline_store::testing::tool_call;

pub fn client_registered(id: &str) -> NewEvent {
    NewEvent::new(
        StreamId::client(id),
        Actor::System,
        ClientRegistered {
            request: None,
            client_id: id.into(),
            client_name: format!("client {id}"),
            method: RegistrationMethod::Dynamic,
            application_type: ApplicationType::Native,
            token_endpoint_auth_method: AuthMethod::None,
            redirect_uris: vec!["http://127.0.0.1/cb".into()],
            grant_types: vec![GrantType::AuthorizationCode],
            scope: None,
            software_id: None,
            software_version: None,
            client_uri: None,
            logo_uri: None,
            metadata_document_url: None,
            secret_digest: None,
            expires_at: None,
        },
    )
}

pub async fn append_one(ledger: &Ledger, e: NewEvent) -> Recorded {
    ledger
        .append(Append::new(vec![e]))
        .await
        .unwrap_or_else(|e| panic!("append: {e}"))
        .remove(0)
}

/// Runs statements as the database owner (what an attacker with file or superuser access can do).
pub async fn exec(store: &Store, sql: &str) -> Result<u64, sqlx::Error> {
    match store.pool() {
        Pool::Sqlite(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
        Pool::Postgres(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
    }
}

/// Removes the append-only guard rails, as an attacker going around them would.
pub async fn drop_guards(store: &Store) {
    let sql = match store.database() {
        Database::Sqlite(_) => {
            "DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete; \
             DROP TRIGGER checkpoints_no_update; DROP TRIGGER checkpoints_no_delete;"
        }
        Database::Postgres(_) => {
            "DROP TRIGGER events_append_only ON events; DROP TRIGGER events_no_truncate ON events; \
             DROP TRIGGER checkpoints_append_only ON checkpoints;"
        }
    };
    exec(store, sql)
        .await
        .unwrap_or_else(|e| panic!("drop guards: {e}"));
}

/// Sets a bytea/blob column of one row.
pub async fn set_bytes(store: &Store, column: &str, seq: i64, value: &[u8]) {
    match store.pool() {
        Pool::Sqlite(p) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE events SET {column} = ? WHERE seq = ?"
            )))
            .bind(value)
            .bind(seq)
            .execute(p)
            .await
            .unwrap_or_else(|e| panic!("update: {e}"));
        }
        Pool::Postgres(p) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE events SET {column} = $1 WHERE seq = $2"
            )))
            .bind(value)
            .bind(seq)
            .execute(p)
            .await
            .unwrap_or_else(|e| panic!("update: {e}"));
        }
    }
}

pub async fn verify(store: &Store) -> Result<verify::Summary, verify::Finding> {
    grantline_store::verify(store, &[testing::signer().verifier()], |_| {})
        .await
        .unwrap_or_else(|e| panic!("verify could not run: {e}"))
}

/// `grantline verify --from-checkpoint [at]` with the test signer trusted.
pub async fn verify_from(
    store: &Store,
    at: Option<u64>,
) -> Result<verify::Summary, verify::StartError> {
    grantline_store::verify_from_checkpoint(store, &[testing::signer().verifier()], at, |_| {})
        .await
        .unwrap_or_else(|e| panic!("verify --from-checkpoint could not run: {e}"))
}

/// The finding of a walk from a checkpoint (panics on anything else).
pub fn finding(r: Result<verify::Summary, verify::StartError>) -> verify::Finding {
    match r {
        Err(verify::StartError::Finding(f)) => f,
        other => panic!("expected a finding, got {other:?}"),
    }
}

/// The advisory lock key the writer takes on PostgreSQL ("grantlin").
pub const PG_APPEND_LOCK: i64 = 0x6772_616e_746c_696e;

/// The writer's append lock, held by another connection until released.
pub enum Hold {
    Sqlite(rusqlite::Connection),
    Postgres(sqlx::PgConnection),
}

impl Hold {
    pub async fn release(self) {
        match self {
            Hold::Sqlite(c) => c.execute_batch("ROLLBACK").unwrap(),
            Hold::Postgres(mut c) => {
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(PG_APPEND_LOCK)
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
}

pub async fn hold_append_lock(db: &TestDb) -> Hold {
    use sqlx::Connection;
    match &db.db {
        Database::Sqlite(path) => {
            let c = rusqlite::Connection::open(path).unwrap();
            c.execute_batch("BEGIN IMMEDIATE").unwrap();
            Hold::Sqlite(c)
        }
        Database::Postgres(url) => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(PG_APPEND_LOCK)
                .execute(&mut c)
                .await
                .unwrap();
            Hold::Postgres(c)
        }
    }
}
