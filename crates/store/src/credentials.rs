//! Sign-in credentials (`user_credentials`): usernames and password hashes, kept outside the
//! ledger so that they can change and be erased.

use crate::database::{Pool, Store};
use crate::{Result, StoreError};

/// A user's sign-in record. `Debug` hides the hash.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub user_id: String,
    pub username: String,
    pub password_hash: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Reads and writes `user_credentials`.
#[derive(Clone)]
pub struct Credentials {
    store: Store,
}

type Row = (String, String, String);

impl Credentials {
    pub fn new(store: &Store) -> Credentials {
        Credentials {
            store: store.clone(),
        }
    }

    fn to_credential(r: Row) -> Credential {
        Credential {
            user_id: r.0,
            username: r.1,
            password_hash: r.2,
        }
    }

    /// The credential for a username (exact match).
    pub async fn by_username(&self, username: &str) -> Result<Option<Credential>> {
        let row: Option<Row> = match &self.store.pool {
            Pool::Sqlite(p) => sqlx::query_as(
                "SELECT user_id, username, password_hash FROM user_credentials WHERE username = ?",
            )
            .bind(username)
            .fetch_optional(p)
            .await?,
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query_as(
                        "SELECT user_id, username, password_hash FROM user_credentials WHERE username = $1",
                    )
                    .bind(username)
                    .fetch_optional(p))
                    .await?
            }
        };
        Ok(row.map(Self::to_credential))
    }

    /// The one credential whose username is `email` whatever the case of its ASCII letters
    /// (an administrator may have typed `Alice@Corp.com` for the address a provider gives as
    /// `alice@corp.com`); `None` when there is none, or more than one, so that no one is
    /// linked to an account that is not plainly theirs. An exact match wins.
    pub async fn by_email_username(&self, email: &str) -> Result<Option<Credential>> {
        if let Some(c) = self.by_username(email).await? {
            return Ok(Some(c));
        }
        let rows: Vec<Row> = match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT user_id, username, password_hash FROM user_credentials \
                 WHERE lower(username) = lower(?) LIMIT 8",
                )
                .bind(email)
                .fetch_all(p)
                .await?
            }
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query_as(
                        "SELECT user_id, username, password_hash FROM user_credentials \
                         WHERE lower(username) = lower($1) LIMIT 8",
                    )
                    .bind(email)
                    .fetch_all(p))
                    .await?
            }
        };
        // ASCII letters only on both backends (SQLite's lower() folds no others).
        let same = |u: &str| u.eq_ignore_ascii_case(email);
        let mut rows = rows.into_iter().filter(|r| same(&r.1));
        match (rows.next(), rows.next()) {
            (Some(one), None) => Ok(Some(Self::to_credential(one))),
            _ => Ok(None),
        }
    }

    /// The credential of a user id.
    pub async fn by_user_id(&self, user_id: &str) -> Result<Option<Credential>> {
        let row: Option<Row> = match &self.store.pool {
            Pool::Sqlite(p) => sqlx::query_as(
                "SELECT user_id, username, password_hash FROM user_credentials WHERE user_id = ?",
            )
            .bind(user_id)
            .fetch_optional(p)
            .await?,
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query_as(
                        "SELECT user_id, username, password_hash FROM user_credentials WHERE user_id = $1",
                    )
                    .bind(user_id)
                    .fetch_optional(p))
                    .await?
            }
        };
        Ok(row.map(Self::to_credential))
    }

    /// Every credential, by username.
    pub async fn list(&self) -> Result<Vec<Credential>> {
        let sql = "SELECT user_id, username, password_hash FROM user_credentials ORDER BY username";
        let rows: Vec<Row> = match &self.store.pool {
            Pool::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await?,
            Pool::Postgres(p) => self.store.pg(sqlx::query_as(sql).fetch_all(p)).await?,
        };
        Ok(rows.into_iter().map(Self::to_credential).collect())
    }

    /// Adds a credential; a taken username is `StoreError::Exists`.
    pub async fn insert(&self, c: &Credential) -> Result<()> {
        let now = grantline_ledger::Timestamp::now().0;
        let r = match &self.store.pool {
            Pool::Sqlite(p) => sqlx::query(
                "INSERT INTO user_credentials (user_id, username, password_hash, updated) VALUES (?, ?, ?, ?)",
            )
            .bind(&c.user_id)
            .bind(&c.username)
            .bind(&c.password_hash)
            .bind(now)
            .execute(p)
            .await
            .map(|_| ())
            .map_err(StoreError::from),
            Pool::Postgres(p) => self
                .store
                .pg(sqlx::query(
                    "INSERT INTO user_credentials (user_id, username, password_hash) VALUES ($1, $2, $3)",
                )
                .bind(&c.user_id)
                .bind(&c.username)
                .bind(&c.password_hash)
                .execute(p))
                .await
                .map(|_| ()),
        };
        match r {
            Err(StoreError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                Err(StoreError::Exists(format!("username {}", c.username)))
            }
            other => other,
        }
    }

    /// Replaces a user's password hash `from` with `to`; false when the hash is no longer
    /// `from` (another change came first) or the user has no credential.
    pub async fn replace_password(&self, user_id: &str, from: &str, to: &str) -> Result<bool> {
        let n = match &self.store.pool {
            Pool::Sqlite(p) => sqlx::query(
                "UPDATE user_credentials SET password_hash = ?, updated = ? \
                 WHERE user_id = ? AND password_hash = ?",
            )
            .bind(to)
            .bind(grantline_ledger::Timestamp::now().0)
            .bind(user_id)
            .bind(from)
            .execute(p)
            .await?
            .rows_affected(),
            Pool::Postgres(p) => self
                .store
                .pg(sqlx::query(
                    "UPDATE user_credentials SET password_hash = $1, updated = now() \
                     WHERE user_id = $2 AND password_hash = $3",
                )
                .bind(to)
                .bind(user_id)
                .bind(from)
                .execute(p))
                .await?
                .rows_affected(),
        };
        Ok(n > 0)
    }

    /// Replaces a user's password hash.
    pub async fn set_password(&self, user_id: &str, hash: &str) -> Result<bool> {
        let n = match &self.store.pool {
            Pool::Sqlite(p) => sqlx::query(
                "UPDATE user_credentials SET password_hash = ?, updated = ? WHERE user_id = ?",
            )
            .bind(hash)
            .bind(grantline_ledger::Timestamp::now().0)
            .bind(user_id)
            .execute(p)
            .await?
            .rows_affected(),
            Pool::Postgres(p) => self
                .store
                .pg(sqlx::query(
                    "UPDATE user_credentials SET password_hash = $1, updated = now() WHERE user_id = $2",
                )
                .bind(hash)
                .bind(user_id)
                .execute(p))
                .await?
                .rows_affected(),
        };
        Ok(n > 0)
    }

    /// Deletes a user's credential (erasure).
    pub async fn delete(&self, user_id: &str) -> Result<bool> {
        let n = match &self.store.pool {
            Pool::Sqlite(p) => sqlx::query("DELETE FROM user_credentials WHERE user_id = ?")
                .bind(user_id)
                .execute(p)
                .await?
                .rows_affected(),
            Pool::Postgres(p) => self
                .store
                .pg(
                    sqlx::query("DELETE FROM user_credentials WHERE user_id = $1")
                        .bind(user_id)
                        .execute(p),
                )
                .await?
                .rows_affected(),
        };
        Ok(n > 0)
    }
}
