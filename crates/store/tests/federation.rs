//! Federation's tables on both backends: a link names one user for good (a concurrent first
//! sign-in gets the winner), upstream tokens are stored sealed and replaced, and erasure
//! deletes both.

#[allow(unused_imports)]
mod common;

use grantline_ledger::pii::user_subject;
use grantline_store::testing::{self, TestDb};
use grantline_store::{Federation, Keyring, StoredTokens};

async fn exercise(db: TestDb) {
    let ledger = common::open(&db).await;
    let f = Federation::new(ledger.store());
    let keys = Keyring::new(ledger.store());
    assert_eq!(f.linked_user("okta", "00u1").await.unwrap(), None);
    assert_eq!(f.link("okta", "00u1", "usr_a").await.unwrap(), "usr_a");
    // A second first sign-in of the same person loses: the link keeps its user.
    assert_eq!(f.link("okta", "00u1", "usr_b").await.unwrap(), "usr_a");
    // The same subject at another provider is another identity.
    assert_eq!(f.link("github", "00u1", "usr_c").await.unwrap(), "usr_c");
    // Who made the link: the first call, not one that found it made (a concurrent first
    // sign-in of the same person signs in to that person's account, not one found by email).
    assert_eq!(
        f.link_first("google", "g1", "usr_d").await.unwrap(),
        ("usr_d".to_string(), true)
    );
    assert_eq!(
        f.link_first("google", "g1", "usr_d").await.unwrap(),
        ("usr_d".to_string(), false)
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
    assert_eq!(f.linked_user("okta", "00u1").await.unwrap(), None);
    assert_eq!(f.tokens("usr_a", "okta").await.unwrap(), None);
    assert_eq!(
        f.linked_user("github", "00u1").await.unwrap().as_deref(),
        Some("usr_c")
    );
    ledger.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_upstream_tokens_on_sqlite() {
    exercise(testing::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_upstream_tokens_on_postgres() {
    let Some(db) = testing::postgres().await else {
        return;
    };
    exercise(db).await;
}
