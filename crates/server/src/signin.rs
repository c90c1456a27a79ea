//! Sign-in behind a small trait, so upstream identity providers can slot in later. The local
//! implementation checks argon2id password hashes kept in `user_credentials`.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use grantline_store::{Credentials, StoreError};
use std::future::Future;
use std::pin::Pin;

/// The outcome of one sign-in attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    SignedIn {
        user_id: String,
    },
    UnknownUser,
    BadPassword {
        user_id: String,
    },
    /// Too many passwords are being checked at once: try again shortly (429).
    Busy,
}

/// The longest username a sign-in takes, in bytes (longer is refused before any lookup).
pub const MAX_USERNAME: usize = grantline_oauth::users::MAX_USERNAME;
/// The longest password a sign-in takes, in bytes (longer is refused before hashing).
pub const MAX_PASSWORD: usize = 1024;
/// Most password hashes computed at once in the process: each argon2id check takes 19 MiB, so
/// this bounds the memory a flood of sign-ins can take whatever its source.
pub const MAX_CONCURRENT_HASHES: usize = 4;
/// How long an attempt waits for a free hashing slot before it is answered 429.
pub const HASH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The password hash of a user who signs in only through an identity provider: not a PHC
/// string, so no password ever verifies against it.
pub const NO_PASSWORD: &str = "!federated";

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way to sign users in.
pub trait SignIn: Send + Sync {
    /// Recorded as `login.succeeded.method`, e.g. `password`.
    fn method(&self) -> &str;
    /// `checking` is set once the password is being checked (a caller that hangs up after
    /// that has had a try).
    fn sign_in<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
        checking: &'a std::sync::atomic::AtomicBool,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>>;
}

/// Local users with argon2id password hashes.
pub struct PasswordSignIn {
    credentials: Credentials,
    /// Verified against when the user is unknown, so both cases take the same time.
    dummy_hash: String,
    /// Slots for concurrent password checks ([`MAX_CONCURRENT_HASHES`]).
    hashing: std::sync::Arc<tokio::sync::Semaphore>,
}

impl PasswordSignIn {
    pub fn new(credentials: Credentials) -> Self {
        PasswordSignIn {
            credentials,
            dummy_hash: hash_password("not a real password").unwrap_or_default(),
            hashing: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HASHES)),
        }
    }
}

/// An argon2id PHC string (default parameters: m=19 MiB, t=2, p=1).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::encode_b64(&crate::random::bytes32()[..16])?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches the PHC `hash` (constant time inside argon2).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

impl SignIn for PasswordSignIn {
    fn method(&self) -> &str {
        "password"
    }

    fn sign_in<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
        checking: &'a std::sync::atomic::AtomicBool,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        Box::pin(async move {
            // No account has a name with a NUL in it (PostgreSQL would refuse to look it up):
            // unknown at once, which tells nothing about any account.
            if username.len() > MAX_USERNAME
                || password.len() > MAX_PASSWORD
                || username.contains('\0')
            {
                return Ok(Outcome::UnknownUser);
            }
            let Ok(Ok(slot)) =
                tokio::time::timeout(HASH_WAIT, self.hashing.clone().acquire_owned()).await
            else {
                return Ok(Outcome::Busy);
            };
            let cred = self.credentials.by_username(username).await?;
            // An account without a password (a federated user's `!federated`) is checked
            // against the dummy hash like an unknown name, and fails: answered as fast as any
            // other wrong password, so the time does not tell such accounts apart.
            let (hash, user_id) = match &cred {
                Some(c) if PasswordHash::new(&c.password_hash).is_ok() => {
                    (c.password_hash.clone(), Some(c.user_id.clone()))
                }
                Some(c) => (self.dummy_hash.clone(), Some(c.user_id.clone())),
                None => (self.dummy_hash.clone(), None),
            };
            let has_password = cred
                .as_ref()
                .is_some_and(|c| PasswordHash::new(&c.password_hash).is_ok());
            let password = password.to_string();
            checking.store(true, std::sync::atomic::Ordering::SeqCst);
            // The slot goes with the hash, not with this future: a caller that hangs up while
            // its password is checked does not free a slot whose hash still runs (the hashes
            // at once, and their memory, stay bounded however often callers hang up).
            let ok = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                verify_password(&hash, &password)
            })
            .await
            .unwrap_or(false);
            Ok(match (user_id, ok && has_password) {
                (None, _) => Outcome::UnknownUser,
                (Some(user_id), false) => Outcome::BadPassword { user_id },
                (Some(user_id), true) => Outcome::SignedIn { user_id },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_hangs_up_does_not_free_the_slot_of_a_hash_still_running() {
        let db = grantline_store::testing::sqlite().await;
        let store = grantline_store::Store::connect(&db.db, true).await.unwrap();
        store.migrate().await.unwrap();
        let signin = std::sync::Arc::new(PasswordSignIn::new(Credentials::new(&store)));
        let free = || signin.hashing.available_permits();
        // One attempt first: the connection is open and the lookup quick afterwards, and it
        // says how long a hash takes here.
        let began = std::time::Instant::now();
        signin
            .sign_in("nobody", "guess", &Default::default())
            .await
            .unwrap();
        let hash_takes = began.elapsed();
        let s = signin.clone();
        let attempt = tokio::spawn(async move {
            let checking = std::sync::atomic::AtomicBool::new(false);
            s.sign_in("nobody", "guess", &checking).await.map(|_| ())
        });
        // Wait until its hash runs (the slot is taken), then hang up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while free() == MAX_CONCURRENT_HASHES {
            assert!(std::time::Instant::now() < deadline, "the hash never began");
            tokio::task::yield_now().await;
        }
        // Past the lookup, well before the hash ends.
        tokio::time::sleep(hash_takes / 4).await;
        attempt.abort();
        let _ = attempt.await;
        assert_eq!(
            free(),
            MAX_CONCURRENT_HASHES - 1,
            "the hash still runs, and holds its slot"
        );
        while free() < MAX_CONCURRENT_HASHES {
            assert!(
                std::time::Instant::now() < deadline,
                "the slot never came back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // A name no account can have is refused before any lookup (PostgreSQL would refuse
        // its NUL byte): an unknown user, not a storage failure.
        assert_eq!(
            signin
                .sign_in("a\0b", "x", &Default::default())
                .await
                .unwrap(),
            Outcome::UnknownUser
        );
    }

    #[test]
    fn argon2id_hash_verifies_only_its_password() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsE"));
        assert!(!verify_password("not a hash", "x"));
    }
}
