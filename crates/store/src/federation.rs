//! Federation's two mutable tables (`user_links`, `upstream_tokens`): which user an upstream
//! identity signs in as, and each user's upstream tokens, sealed. Both are deleted with the
//! person at erasure.

use crate::Result;
use crate::database::{Pool, Store};
use grantline_ledger::Sealed;

/// Reads and writes `user_links` and `upstream_tokens`.
#[derive(Clone)]
pub struct Federation {
    store: Store,
}

/// A user's upstream tokens as stored: sealed, with their expiry in the clear (it is not
/// personal data, and the refresh decision needs it without opening anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTokens {
    pub sealed: Sealed,
    pub expires_at: Option<i64>,
}

fn now() -> i64 {
    grantline_ledger::Timestamp::now().0 / 1_000_000
}

impl Federation {
    pub fn new(store: &Store) -> Federation {
        Federation {
            store: store.clone(),
        }
    }

    /// The user (provider, issuer, subject) signs in as. A link made before links named
    /// their issuer (`''`) is claimed by the issuer of its next sign-in: from then on it is
    /// that issuer's.
    pub async fn linked_user(
        &self,
        provider: &str,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<String>> {
        if let Some(user) = self.exact_link(provider, issuer, subject).await? {
            return Ok(Some(user));
        }
        if issuer.is_empty() {
            return Ok(None);
        }
        // Unless a row of this issuer has appeared meanwhile (a concurrent claim or first
        // sign-in): the claim then changes nothing and that row answers.
        match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query(
                    "UPDATE user_links SET issuer = ?1 \
                     WHERE provider = ?2 AND issuer = '' AND subject = ?3 \
                     AND NOT EXISTS (SELECT 1 FROM user_links \
                     WHERE provider = ?2 AND issuer = ?1 AND subject = ?3)",
                )
                .bind(issuer)
                .bind(provider)
                .bind(subject)
                .execute(p)
                .await?;
            }
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query(
                        "UPDATE user_links SET issuer = $1 \
                         WHERE provider = $2 AND issuer = '' AND subject = $3 \
                         AND NOT EXISTS (SELECT 1 FROM user_links \
                         WHERE provider = $2 AND issuer = $1 AND subject = $3)",
                    )
                    .bind(issuer)
                    .bind(provider)
                    .bind(subject)
                    .execute(p))
                    .await?;
            }
        }
        self.exact_link(provider, issuer, subject).await
    }

    /// Gives the links of `provider` made before links named their issuer (`''`) the
    /// provider's `issuer`, at start, so that none is left to be claimed by whichever server
    /// the provider id points at next. Returns how many it named.
    pub async fn name_unnamed_links(&self, provider: &str, issuer: &str) -> Result<u64> {
        if issuer.is_empty() {
            return Ok(0);
        }
        Ok(match &self.store.pool {
            Pool::Sqlite(p) => sqlx::query(
                "UPDATE user_links SET issuer = ?1 WHERE provider = ?2 AND issuer = '' \
                 AND NOT EXISTS (SELECT 1 FROM user_links AS l \
                 WHERE l.provider = ?2 AND l.issuer = ?1 AND l.subject = user_links.subject)",
            )
            .bind(issuer)
            .bind(provider)
            .execute(p)
            .await?
            .rows_affected(),
            Pool::Postgres(p) => self
                .store
                .pg(sqlx::query(
                    "UPDATE user_links SET issuer = $1 WHERE provider = $2 AND issuer = '' \
                     AND NOT EXISTS (SELECT 1 FROM user_links AS l \
                     WHERE l.provider = $2 AND l.issuer = $1 AND l.subject = user_links.subject)",
                )
                .bind(issuer)
                .bind(provider)
                .execute(p))
                .await?
                .rows_affected(),
        })
    }

    async fn exact_link(
        &self,
        provider: &str,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<String>> {
        let row: Option<(String,)> = match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT user_id FROM user_links WHERE provider = ?1 AND issuer = ?2 AND subject = ?3",
                )
                    .bind(provider)
                    .bind(issuer)
                    .bind(subject)
                    .fetch_optional(p)
                    .await?
            }
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query_as(
                        "SELECT user_id FROM user_links WHERE provider = $1 AND issuer = $2 AND subject = $3",
                    )
                        .bind(provider)
                        .bind(issuer)
                        .bind(subject)
                        .fetch_optional(p))
                    .await?
            }
        };
        Ok(row.map(|r| r.0))
    }

    /// Links (provider, issuer, subject) to `user_id` unless it is linked already; returns the
    /// user the link names afterwards (another one when a concurrent first sign-in won).
    pub async fn link(
        &self,
        provider: &str,
        issuer: &str,
        subject: &str,
        user_id: &str,
    ) -> Result<String> {
        Ok(self.link_first(provider, issuer, subject, user_id).await?.0)
    }

    /// As [`Federation::link`], and whether this call made the link (false: a concurrent
    /// sign-in of the same person made it first).
    pub async fn link_first(
        &self,
        provider: &str,
        issuer: &str,
        subject: &str,
        user_id: &str,
    ) -> Result<(String, bool)> {
        let made = match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query(
                    "INSERT INTO user_links (provider, issuer, subject, user_id, created) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (provider, issuer, subject) DO NOTHING",
                )
                    .bind(provider)
                    .bind(issuer)
                    .bind(subject)
                    .bind(user_id)
                    .bind(now())
                    .execute(p)
                    .await?
                    .rows_affected()
            }
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query(
                        "INSERT INTO user_links (provider, issuer, subject, user_id, created) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, issuer, subject) DO NOTHING",
                    )
                        .bind(provider)
                        .bind(issuer)
                        .bind(subject)
                        .bind(user_id)
                        .bind(now())
                        .execute(p))
                    .await?
                    .rows_affected()
            }
        } == 1;
        let user = self
            .exact_link(provider, issuer, subject)
            .await?
            .unwrap_or_else(|| user_id.to_string());
        Ok((user, made))
    }

    /// The (issuer, subject) pairs linked to `user_id` at `provider`: one, unless sign-ins of
    /// several upstream identities wrote rows for the same account.
    pub async fn links_of(&self, provider: &str, user_id: &str) -> Result<Vec<(String, String)>> {
        Ok(match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT issuer, subject FROM user_links WHERE provider = ?1 AND user_id = ?2",
                )
                .bind(provider)
                .bind(user_id)
                .fetch_all(p)
                .await?
            }
            Pool::Postgres(p) => self
                .store
                .pg(sqlx::query_as(
                    "SELECT issuer, subject FROM user_links WHERE provider = $1 AND user_id = $2",
                )
                .bind(provider)
                .bind(user_id)
                .fetch_all(p))
                .await?,
        })
    }

    /// Removes the link of (provider, issuer, subject) to `user_id`, and only that: a link row
    /// written for a sign-in that was then refused or not recorded.
    pub async fn unlink(
        &self,
        provider: &str,
        issuer: &str,
        subject: &str,
        user_id: &str,
    ) -> Result<()> {
        match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query(
                    "DELETE FROM user_links \
                     WHERE provider = ?1 AND issuer = ?2 AND subject = ?3 AND user_id = ?4",
                )
                .bind(provider)
                .bind(issuer)
                .bind(subject)
                .bind(user_id)
                .execute(p)
                .await?;
            }
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query(
                        "DELETE FROM user_links \
                         WHERE provider = $1 AND issuer = $2 AND subject = $3 AND user_id = $4",
                    )
                    .bind(provider)
                    .bind(issuer)
                    .bind(subject)
                    .bind(user_id)
                    .execute(p))
                    .await?;
            }
        }
        Ok(())
    }

    /// The user's upstream tokens from `provider`, sealed.
    pub async fn tokens(&self, user_id: &str, provider: &str) -> Result<Option<StoredTokens>> {
        let row: Option<(String, Option<i64>)> = match &self.store.pool {
            Pool::Sqlite(p) => sqlx::query_as(
                "SELECT sealed, expires_at FROM upstream_tokens WHERE user_id = ? AND provider = ?",
            )
            .bind(user_id)
            .bind(provider)
            .fetch_optional(p)
            .await?,
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query_as(
                        "SELECT sealed, expires_at FROM upstream_tokens WHERE user_id = $1 AND provider = $2",
                    )
                    .bind(user_id)
                    .bind(provider)
                    .fetch_optional(p))
                    .await?
            }
        };
        let Some((sealed, expires_at)) = row else {
            return Ok(None);
        };
        let sealed: Sealed = serde_json::from_str(&sealed)
            .map_err(|e| crate::StoreError::Invalid(format!("upstream_tokens: {e}")))?;
        Ok(Some(StoredTokens { sealed, expires_at }))
    }

    /// Stores (replaces) the user's upstream tokens from `provider`.
    pub async fn put_tokens(&self, user_id: &str, provider: &str, t: &StoredTokens) -> Result<()> {
        let sealed = serde_json::to_string(&t.sealed)
            .map_err(|e| crate::StoreError::Invalid(e.to_string()))?;
        match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query(
                    "INSERT INTO upstream_tokens (user_id, provider, sealed, expires_at, updated) VALUES (?, ?, ?, ?, ?) \
                     ON CONFLICT (user_id, provider) DO UPDATE SET sealed = excluded.sealed, \
                     expires_at = excluded.expires_at, updated = excluded.updated",
                )
                .bind(user_id)
                .bind(provider)
                .bind(sealed)
                .bind(t.expires_at)
                .bind(now())
                .execute(p)
                .await?;
            }
            Pool::Postgres(p) => {
                self.store.pg(sqlx::query(
                    "INSERT INTO upstream_tokens (user_id, provider, sealed, expires_at, updated) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (user_id, provider) DO UPDATE SET sealed = excluded.sealed, \
                     expires_at = excluded.expires_at, updated = excluded.updated",
                )
                .bind(user_id)
                .bind(provider)
                .bind(sealed)
                .bind(t.expires_at)
                .bind(now())
                .execute(p))
                .await?;
            }
        }
        Ok(())
    }

    /// Forgets the user's upstream tokens from `provider` (the upstream refused them).
    pub async fn drop_tokens(&self, user_id: &str, provider: &str) -> Result<()> {
        match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query("DELETE FROM upstream_tokens WHERE user_id = ? AND provider = ?")
                    .bind(user_id)
                    .bind(provider)
                    .execute(p)
                    .await?;
            }
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query(
                        "DELETE FROM upstream_tokens WHERE user_id = $1 AND provider = $2",
                    )
                    .bind(user_id)
                    .bind(provider)
                    .execute(p))
                    .await?;
            }
        }
        Ok(())
    }

    /// Every upstream token of the user goes (an administrator revoked everything of theirs).
    pub async fn drop_all_tokens(&self, user_id: &str) -> Result<u64> {
        Ok(match &self.store.pool {
            Pool::Sqlite(p) => sqlx::query("DELETE FROM upstream_tokens WHERE user_id = ?")
                .bind(user_id)
                .execute(p)
                .await?
                .rows_affected(),
            Pool::Postgres(p) => self
                .store
                .pg(
                    sqlx::query("DELETE FROM upstream_tokens WHERE user_id = $1")
                        .bind(user_id)
                        .execute(p),
                )
                .await?
                .rows_affected(),
        })
    }

    /// Erasure: the user's links and upstream tokens go.
    pub async fn forget_user(&self, user_id: &str) -> Result<()> {
        match &self.store.pool {
            Pool::Sqlite(p) => {
                sqlx::query("DELETE FROM user_links WHERE user_id = ?")
                    .bind(user_id)
                    .execute(p)
                    .await?;
                sqlx::query("DELETE FROM upstream_tokens WHERE user_id = ?")
                    .bind(user_id)
                    .execute(p)
                    .await?;
            }
            Pool::Postgres(p) => {
                self.store
                    .pg(sqlx::query("DELETE FROM user_links WHERE user_id = $1")
                        .bind(user_id)
                        .execute(p))
                    .await?;
                self.store
                    .pg(
                        sqlx::query("DELETE FROM upstream_tokens WHERE user_id = $1")
                            .bind(user_id)
                            .execute(p),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}
