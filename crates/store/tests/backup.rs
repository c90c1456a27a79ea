//! Backups of an SQLite ledger: what is written verifies and restores; a backup that does not
//! verify, or does not match its manifest, is refused and nothing is restored.

mod common;

use common::*;
use grantline_ledger::*;
use grantline_store::backup::{self, Manifest};
use grantline_store::{Database, Store};
use std::path::Path;

/// Twelve events, checkpoints at 10 and 12 (the scene of the tampering tests).
async fn ledger() -> grantline_store::testing::TestDb {
    let db = grantline_store::testing::sqlite().await;
    let ledger = open_with(&db, quiet()).await;
    append_one(&ledger, client_registered("c1")).await;
    for i in 2..=10 {
        append_one(&ledger, tool_call(i)).await;
    }
    ledger.checkpoint().await.unwrap();
    append_one(&ledger, tool_call(11)).await;
    append_one(&ledger, tool_call(12)).await;
    ledger.shutdown().await;
    db
}

fn key() -> NoteVerifier {
    grantline_store::testing::signer().verifier()
}

/// Rewrites a backup with `db_file` as its database and a manifest whose digest matches it:
/// a forger who knows the format.
fn repack(manifest: &Manifest, db_file: &Path, out: &Path) {
    let (digest, bytes) = {
        let data = std::fs::read(db_file).unwrap();
        (blake3::hash(&data).to_hex().to_string(), data.len() as u64)
    };
    let m = Manifest {
        database_blake3: digest,
        database_bytes: bytes,
        ..manifest.clone()
    };
    let mut tar = tar::Builder::new(std::fs::File::create(out).unwrap());
    let json = serde_json::to_vec(&m).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(json.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    tar.append_data(&mut h, "manifest.json", &json[..]).unwrap();
    tar.append_path_with_name(db_file, "grantline.db").unwrap();
    tar.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_verifies_restores_and_refuses_what_does_not() {
    let db = ledger().await;
    let src = db.sqlite_path().unwrap().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ledger.backup");

    let done = backup::backup_sqlite(&src, &[key()], Some(&key()), &out)
        .await
        .unwrap();
    let m = done.manifest.clone();
    assert_eq!((m.head_seq, done.summary.events), (12, 12));
    assert_eq!(done.summary.checkpoints, 2);
    let head = Store::connect(&db.db, false)
        .await
        .unwrap()
        .head()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.head_hash, head.1.to_hex());
    assert!(
        m.newest_checkpoint.as_deref().unwrap().contains("\n12\n"),
        "{m:?}"
    );
    assert_eq!(m.checkpoint_keys, vec![key().to_string()]);
    assert_eq!(backup::read_manifest(&out).unwrap(), m);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup holds personal-data keys");
    }
    // Never over an existing file.
    let again = backup::backup_sqlite(&src, &[key()], None, &out).await;
    assert!(again.unwrap_err().to_string().contains("exists"));

    // Restored: the same events, verifying under the key.
    let dest = dir.path().join("restored.db");
    let r = backup::restore_sqlite(&out, &dest, &[key()]).await.unwrap();
    assert_eq!(r.manifest, m);
    let restored = Store::connect(&Database::Sqlite(dest.clone()), false)
        .await
        .unwrap();
    assert_eq!(restored.head().await.unwrap().unwrap(), head);
    assert_eq!(verify(&restored).await.unwrap().events, 12);
    restored.close().await;

    // Over an existing ledger: refused, the ledger untouched.
    let before = std::fs::read(&dest).unwrap();
    let e = backup::restore_sqlite(&out, &dest, &[key()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    assert_eq!(std::fs::read(&dest).unwrap(), before);

    let refused = |name: &str| dir.path().join(name);
    // Where only the database was moved away, the write-ahead log left beside it would be
    // applied to the restored one: refused, the log untouched.
    let wal = dir.path().join("e.db-wal");
    std::fs::write(&wal, b"frames of another ledger").unwrap();
    let e = backup::restore_sqlite(&out, &refused("e.db"), &[key()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("e.db-wal is left"), "{e}");
    assert!(!refused("e.db").exists());
    assert_eq!(std::fs::read(&wal).unwrap(), b"frames of another ledger");

    // Under a key that did not sign it: refused.
    let stranger = NoteSigner::from_seed("grantline.test/ledger", [7u8; 32])
        .unwrap()
        .verifier();
    let e = backup::restore_sqlite(&out, &refused("a.db"), &[stranger])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not trusted"), "{e}");
    assert!(!refused("a.db").exists() && !dir.path().join("a.db.restoring").exists());

    // A byte of the database changed in the file: its digest no longer matches.
    let mut bytes = std::fs::read(&out).unwrap();
    let at = bytes.len() - 4096;
    bytes[at] ^= 0x55;
    let flipped = dir.path().join("flipped.backup");
    std::fs::write(&flipped, &bytes).unwrap();
    let e = backup::restore_sqlite(&flipped, &refused("b.db"), &[key()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("digest"), "{e}");
    assert!(!refused("b.db").exists());

    // An event rewritten and the manifest's digest recomputed: the chain gives it away.
    let forged_db = dir.path().join("forged.db");
    std::fs::copy(&dest, &forged_db).unwrap();
    {
        let store = Store::connect(&Database::Sqlite(forged_db.clone()), false)
            .await
            .unwrap();
        drop_guards(&store).await;
        let row = store.raw_rows(4, 1).await.unwrap().remove(0);
        let mut env = decode(&row.body).unwrap();
        if let Payload::ToolCalled(t) = &mut env.payload {
            t.outcome = ToolOutcome::Denied;
        }
        set_bytes(&store, "body", 5, &encode(&env).unwrap()).await;
        store.close().await;
    }
    let forged = dir.path().join("forged.backup");
    repack(&m, &forged_db, &forged);
    let e = backup::restore_sqlite(&forged, &refused("c.db"), &[key()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not intact"), "{e}");
    assert!(!refused("c.db").exists());

    // An intact database, but not the one the manifest names (an older copy, say).
    let older = grantline_store::testing::sqlite().await;
    {
        let l = open_with(&older, quiet()).await;
        append_one(&l, client_registered("c1")).await;
        l.shutdown().await;
    }
    // A standalone copy of it (the write-ahead log folded in).
    let older_file = dir.path().join("older.db");
    let store = Store::connect(&older.db, false).await.unwrap();
    exec(&store, &format!("VACUUM INTO '{}'", older_file.display()))
        .await
        .unwrap();
    store.close().await;
    let older_backup = dir.path().join("older.backup");
    repack(&m, &older_file, &older_backup);
    let e = backup::restore_sqlite(&older_backup, &refused("d.db"), &[key()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("manifest names head 12"), "{e}");
    assert!(!refused("d.db").exists());
}
