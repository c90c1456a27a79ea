//! Federation's tables on both backends: a link names one user for good (a concurrent first
//! sign-in gets the winner), upstream tokens are stored sealed and replaced, and erasure
//! deletes both.

#[allow(unused_imports)]
mod common;

use grantline_ledger::pii::user_subject;
use grantline_store::testing::TestDb;
use grantline_store::{Federation, Keyring, StoredTokens};

/// The user (provider, issuer, subject) signs in as.
async fn linked(f: &Federation, provider: &str, issuer: &str, subject: &str) -> Option<String> {
    f.linked_user(provider, issuer, subject).await.unwrap()
}

async fn exercise(db: TestDb) {
    let ledger = common::open(&db).await;
    let f = Federation::new(ledger.store());
    let keys = Keyring::new(ledger.store());
    const OKTA: &str = "https://corp.okta.com";
    const GH: &str = "https://api.github.com";
    assert_eq!(linked(&f, "okta", OKTA, "00u1").await, None);
    assert_eq!(
        f.link("okta", OKTA, "00u1", "usr_a").await.unwrap(),
        "usr_a"
    );
    // A second first sign-in of the same person loses: the link keeps its user.
    assert_eq!(
        f.link("okta", OKTA, "00u1", "usr_b").await.unwrap(),
        "usr_a"
    );
    // The same subject at another provider is another identity.
    assert_eq!(
        f.link("github", GH, "00u1", "usr_c").await.unwrap(),
        "usr_c"
    );
    // And at another issuer under the same provider id (github.com, then a GitHub
    // Enterprise server whose numeric ids overlap): not the first issuer's person.
    let ghe = "https://ghe.corp.example";
    assert_eq!(linked(&f, "github", ghe, "00u1").await, None);
    assert_eq!(
        f.link("github", ghe, "00u1", "usr_e").await.unwrap(),
        "usr_e"
    );
    assert_eq!(
        linked(&f, "github", GH, "00u1").await.as_deref(),
        Some("usr_c")
    );
    // Who made the link: the first call, not one that found it made (a concurrent first
    // sign-in of the same person signs in to that person's account, not one found by email).
    assert_eq!(
        f.link_first("google", "https://accounts.google.com", "g1", "usr_d")
            .await
            .unwrap(),
        ("usr_d".to_string(), true)
    );
    assert_eq!(
        f.link_first("google", "https://accounts.google.com", "g1", "usr_d")
            .await
            .unwrap(),
        ("usr_d".to_string(), false)
    );
    // The identities linked to an account at a provider.
    f.link("okta", OKTA, "00u2", "usr_a").await.unwrap();
    let mut rows = f.links_of("okta", "usr_a").await.unwrap();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (OKTA.to_string(), "00u1".to_string()),
            (OKTA.to_string(), "00u2".to_string())
        ]
    );
    assert!(f.links_of("okta", "usr_nobody").await.unwrap().is_empty());
    f.unlink("okta", OKTA, "00u2", "usr_a").await.unwrap();
    // Unlinking removes that link only, and only when it names that user.
    f.unlink("google", "https://accounts.google.com", "g1", "usr_x")
        .await
        .unwrap();
    assert_eq!(
        linked(&f, "google", "https://accounts.google.com", "g1")
            .await
            .as_deref(),
        Some("usr_d")
    );
    f.unlink("google", "https://accounts.google.com", "g1", "usr_d")
        .await
        .unwrap();
    assert_eq!(
        linked(&f, "google", "https://accounts.google.com", "g1").await,
        None
    );
    assert_eq!(
        linked(&f, "okta", OKTA, "00u1").await.as_deref(),
        Some("usr_a")
    );
    // A link made before links named their issuer ('' after the migration) is claimed by the
    // issuer of its next sign-in, and is that issuer's alone from then on.
    f.link("keycloak", "", "kc1", "usr_f").await.unwrap();
    let realm = "https://sso.example/realms/corp";
    assert_eq!(
        linked(&f, "keycloak", realm, "kc1").await.as_deref(),
        Some("usr_f")
    );
    assert_eq!(
        linked(&f, "keycloak", "https://other.example/realms/x", "kc1").await,
        None
    );
    assert_eq!(
        linked(&f, "keycloak", realm, "kc1").await.as_deref(),
        Some("usr_f")
    );

    let sealed = keys
        .seal(&user_subject("usr_a"), "gho_secret")
        .await
        .unwrap();
    let stored = StoredTokens {
        sealed: sealed.clone(),
        expires_at: Some(1_900_000_000),
    };
    f.put_tokens("usr_a", "okta", &stored).await.unwrap();
    assert_eq!(f.tokens("usr_a", "okta").await.unwrap(), Some(stored));
    let replaced = StoredTokens {
        sealed: keys
            .seal(&user_subject("usr_a"), "gho_newer")
            .await
            .unwrap(),
        expires_at: None,
    };
    f.put_tokens("usr_a", "okta", &replaced).await.unwrap();
    let got = f.tokens("usr_a", "okta").await.unwrap().unwrap();
    assert_eq!(got, replaced);
    assert_eq!(keys.open(&got.sealed).await.unwrap().unwrap(), "gho_newer");

    f.forget_user("usr_a").await.unwrap();
    assert_eq!(linked(&f, "okta", OKTA, "00u1").await, None);
    assert_eq!(f.tokens("usr_a", "okta").await.unwrap(), None);
    assert_eq!(
        linked(&f, "github", GH, "00u1").await.as_deref(),
        Some("usr_c")
    );
    ledger.shutdown().await;
}

/// Links made before links named their issuer: the migration keeps them (issuer `''`), and
/// the first sign-in after it claims each for its issuer.
async fn links_survive_the_migration(db: TestDb) {
    let old = "INSERT INTO user_links (provider, subject, user_id, created) VALUES ('corp', '00u1', 'usr_old', 1)";
    match &db.db {
        grantline_store::Database::Sqlite(path) => {
            let url = format!("sqlite:{}?mode=rwc", path.display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::migrate!("../../migrations/sqlite")
                .run_to(3, &pool)
                .await
                .unwrap();
            sqlx::query(old).execute(&pool).await.unwrap();
            pool.close().await;
        }
        grantline_store::Database::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::migrate!("../../migrations/postgres")
                .run_to(3, &pool)
                .await
                .unwrap();
            sqlx::query(old).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
    let ledger = common::open(&db).await;
    let f = Federation::new(ledger.store());
    let corp = "https://corp.example";
    // At start each provider names its old links with its issuer: a server the provider id
    // points at later finds none to claim.
    assert_eq!(f.name_unnamed_links("corp", corp).await.unwrap(), 1);
    assert_eq!(f.name_unnamed_links("corp", corp).await.unwrap(), 0);
    assert_eq!(
        linked(&f, "corp", "https://elsewhere.example", "00u1").await,
        None,
        "named for the first issuer, and only it"
    );
    assert_eq!(
        linked(&f, "corp", corp, "00u1").await.as_deref(),
        Some("usr_old")
    );
    // The key is (provider, issuer, subject): the other issuer's person links apart.
    assert_eq!(
        f.link("corp", "https://elsewhere.example", "00u1", "usr_new")
            .await
            .unwrap(),
        "usr_new"
    );
    assert_eq!(
        linked(&f, "corp", corp, "00u1").await.as_deref(),
        Some("usr_old")
    );
    ledger.shutdown().await;
}

/// An account an administrator made for an email address, found by the address a provider
/// verified whatever the case of its letters; never when two accounts would match.
async fn accounts_by_email(db: TestDb) {
    let ledger = common::open(&db).await;
    let c = grantline_store::Credentials::new(ledger.store());
    let add = |id: &str, name: &str| grantline_store::Credential {
        user_id: id.into(),
        username: name.into(),
        password_hash: "!federated".into(),
    };
    c.insert(&add("usr_a", "Alice@Corp.com")).await.unwrap();
    let found = |email: &'static str| {
        let c = c.clone();
        async move { c.by_email_username(email).await.unwrap().map(|c| c.user_id) }
    };
    assert_eq!(found("alice@corp.com").await.as_deref(), Some("usr_a"));
    assert_eq!(found("ALICE@CORP.COM").await.as_deref(), Some("usr_a"));
    assert_eq!(found("bob@corp.com").await, None);
    // Two accounts that differ only in case: neither is plainly the person's, unless one is
    // exactly the address.
    c.insert(&add("usr_b", "BOB@corp.com")).await.unwrap();
    c.insert(&add("usr_c", "bob@CORP.com")).await.unwrap();
    assert_eq!(found("bob@corp.com").await, None);
    assert_eq!(found("bob@CORP.com").await.as_deref(), Some("usr_c"));
    ledger.shutdown().await;
}

grantline_store::backend_tests! {
    async fn an_account_is_found_by_its_email_whatever_its_case(db: TestDb) {
        accounts_by_email(db).await;
    }

    async fn links_and_upstream_tokens(db: TestDb) {
        exercise(db).await;
    }

    async fn links_made_before_they_named_their_issuer_survive_the_migration(db: TestDb) {
        links_survive_the_migration(db).await;
    }
}
