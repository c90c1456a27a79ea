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

fn signer() -> NoteSigner {
    grantline_store::testing::signer()
}

fn key() -> NoteVerifier {
    signer().verifier()
}

/// Rewrites a backup with `db_file` as its database and a manifest whose digest matches it,
/// with `signature` as its signature entry: a forger who knows the format.
fn repack(manifest: &Manifest, db_file: &Path, out: &Path, signature: Option<&str>) {
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
    put(&mut tar, "manifest.json", &serde_json::to_vec(&m).unwrap());
    if let Some(sig) = signature {
        put(&mut tar, "manifest.sig", sig.as_bytes());
    }
    tar.append_path_with_name(db_file, "grantline.db").unwrap();
    tar.finish().unwrap();
}

/// Appends the entry `name` holding `data` to a backup being written.
fn put(tar: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    tar.append_data(&mut h, name, data).unwrap();
}

/// The text of the entry `name` of the backup `file`.
fn entry(file: &Path, name: &str) -> Option<String> {
    use std::io::Read;
    let mut archive = tar::Archive::new(std::fs::File::open(file).unwrap());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            return Some(text);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_verifies_restores_and_refuses_what_does_not() {
    let db = ledger().await;
    let src = db.sqlite_path().unwrap().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ledger.backup");

    let done = backup::backup_sqlite(&src, &[key()], &signer(), &out)
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
    let again = backup::backup_sqlite(&src, &[key()], &signer(), &out).await;
    assert!(again.unwrap_err().to_string().contains("exists"));

    // Restored: the same events, verifying under the key.
    let dest = dir.path().join("restored.db");
    let r = backup::restore_sqlite(&out, &dest, &[key()], false)
        .await
        .unwrap();
    assert_eq!(r.manifest, m);
    let restored = Store::connect(&Database::Sqlite(dest.clone()), false)
        .await
        .unwrap();
    assert_eq!(restored.head().await.unwrap().unwrap(), head);
    assert_eq!(verify(&restored).await.unwrap().events, 12);
    restored.close().await;

    // Over an existing ledger: refused, the ledger untouched.
    let before = std::fs::read(&dest).unwrap();
    let e = backup::restore_sqlite(&out, &dest, &[key()], false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    assert_eq!(std::fs::read(&dest).unwrap(), before);

    let refused = |name: &str| dir.path().join(name);
    // Where only the database was moved away, the write-ahead log left beside it would be
    // applied to the restored one: refused, the log untouched.
    let wal = dir.path().join("e.db-wal");
    std::fs::write(&wal, b"frames of another ledger").unwrap();
    let e = backup::restore_sqlite(&out, &refused("e.db"), &[key()], false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("e.db-wal is left"), "{e}");
    assert!(!refused("e.db").exists());
    assert_eq!(std::fs::read(&wal).unwrap(), b"frames of another ledger");

    // Under a key that did not sign it: refused.
    let stranger = NoteSigner::from_seed("grantline.test/ledger", [7u8; 32])
        .unwrap()
        .verifier();
    let e = backup::restore_sqlite(&out, &refused("a.db"), &[stranger], false)
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
    let e = backup::restore_sqlite(&flipped, &refused("b.db"), &[key()], false)
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
    let signature = entry(&out, "manifest.sig").expect("a signed manifest");
    repack(&m, &forged_db, &forged, Some(&signature));
    let e = backup::restore_sqlite(&forged, &refused("c.db"), &[key()], false)
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
    repack(&m, &older_file, &older_backup, Some(&signature));
    let e = backup::restore_sqlite(&older_backup, &refused("d.db"), &[key()], false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("manifest names head 12"), "{e}");
    assert!(!refused("d.db").exists());

    // The ledger intact, a table outside it changed (a password hash set, say), the digest
    // recomputed: only the manifest's signature tells.
    let planted = dir.path().join("planted.db");
    std::fs::copy(&dest, &planted).unwrap();
    {
        let store = Store::connect(&Database::Sqlite(planted.clone()), false)
            .await
            .unwrap();
        exec(
            &store,
            "INSERT INTO user_credentials (user_id, username, password_hash, updated) \
             VALUES ('usr_x', 'mallory', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', 0)",
        )
        .await
        .unwrap();
        store.close().await;
    }
    let planted_backup = dir.path().join("planted.backup");
    repack(&m, &planted, &planted_backup, Some(&signature));
    let e = backup::restore_sqlite(&planted_backup, &refused("f.db"), &[key()], false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("signature is not for this manifest"),
        "{e}"
    );
    assert!(!refused("f.db").exists());
    // Signed again by a key of the forger's: not the ledger's key.
    let forger = NoteSigner::from_seed("grantline.test/ledger", [9u8; 32]).unwrap();
    let forged_manifest = backup::read_manifest(&planted_backup).unwrap();
    let text = format!(
        "grantline backup manifest\nformat {}\ncreated {}\ndatabase {} {}\nhead {} {}\n",
        forged_manifest.format,
        forged_manifest.created_at_us,
        forged_manifest.database_blake3,
        forged_manifest.database_bytes,
        forged_manifest.head_seq,
        forged_manifest.head_hash
    );
    repack(
        &m,
        &planted,
        &planted_backup,
        Some(&forger.sign_note(&text)),
    );
    let e = backup::restore_sqlite(&planted_backup, &refused("f.db"), &[key()], false)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("does not verify under the ledger's key"),
        "{e}"
    );
    // A database entry that would unpack to another size than the manifest names (a sparse
    // entry can unpack to terabytes from a few kilobytes), or that comes before the manifest:
    // refused before anything is written.
    {
        let data = std::fs::read(&dest).unwrap();
        let small = Manifest {
            database_bytes: 4096,
            ..backup::read_manifest(&out).unwrap()
        };
        let sized = dir.path().join("sized.backup");
        let mut tar = tar::Builder::new(std::fs::File::create(&sized).unwrap());
        put(
            &mut tar,
            "manifest.json",
            &serde_json::to_vec(&small).unwrap(),
        );
        put(&mut tar, "manifest.sig", signature.as_bytes());
        put(&mut tar, "grantline.db", &data);
        tar.finish().unwrap();
        let e = backup::restore_sqlite(&sized, &refused("i.db"), &[key()], false)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("not a plain file of the 4096 bytes"),
            "{e}"
        );
        assert!(!dir.path().join("i.db.restoring").exists());

        // A sparse entry: `regions` of `real` bytes stored, zeros between them.
        let sparse_backup =
            |name: &str, manifest: &Manifest, real: u64, regions: &[(u64, &[u8])]| {
                let file = dir.path().join(name);
                let mut tar = tar::Builder::new(std::fs::File::create(&file).unwrap());
                put(
                    &mut tar,
                    "manifest.json",
                    &serde_json::to_vec(manifest).unwrap(),
                );
                put(&mut tar, "manifest.sig", signature.as_bytes());
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::GNUSparse);
                let stored: Vec<u8> = regions.iter().flat_map(|(_, d)| d.to_vec()).collect();
                h.set_size(stored.len() as u64);
                h.set_mode(0o600);
                {
                    let gnu = h.as_gnu_mut().unwrap();
                    gnu.set_real_size(real);
                    for (slot, (at, d)) in gnu.sparse.iter_mut().zip(regions) {
                        slot.set_offset(*at);
                        slot.set_length(d.len() as u64);
                    }
                }
                h.set_cksum();
                tar.append_data(&mut h, "grantline.db", &stored[..])
                    .unwrap();
                tar.finish().unwrap();
                file
            };
        // 512 bytes at the end of a 4 MiB file: megabytes of zeros the archive does not hold.
        let big = Manifest {
            database_bytes: 4 << 20,
            ..backup::read_manifest(&out).unwrap()
        };
        let tail = &data[data.len() - 512..];
        let sparse = sparse_backup("sparse.backup", &big, 4 << 20, &[((4 << 20) - 512, tail)]);
        let e = backup::restore_sqlite(&sparse, &refused("j.db"), &[key()], false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a plain file"), "{e}");
        assert!(!dir.path().join("j.db.restoring").exists());
        // The same with the stored size in a PAX record, which overrides the header's: the
        // header says 4 MiB stored, so no hole would show. Refused: backups carry no PAX.
        let pax = dir.path().join("pax.backup");
        {
            let mut tar = tar::Builder::new(std::fs::File::create(&pax).unwrap());
            put(
                &mut tar,
                "manifest.json",
                &serde_json::to_vec(&big).unwrap(),
            );
            put(&mut tar, "manifest.sig", signature.as_bytes());
            let mut x = tar::Header::new_ustar();
            x.set_entry_type(tar::EntryType::XHeader);
            let record = b"12 size=512\n";
            x.set_size(record.len() as u64);
            x.set_cksum();
            tar.append_data(&mut x, "PaxHeaders/grantline.db", &record[..])
                .unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::GNUSparse);
            h.set_size(4 << 20);
            h.set_mode(0o600);
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.set_real_size(4 << 20);
                gnu.sparse[0].set_offset((4 << 20) - 512);
                gnu.sparse[0].set_length(512);
            }
            h.set_cksum();
            tar.append_data(&mut h, "grantline.db", tail).unwrap();
            tar.finish().unwrap();
        }
        let e = backup::restore_sqlite(&pax, &refused("n.db"), &[key()], false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("PAX records"), "{e}");
        // A backup of a ledger over 1 GiB made before 2026-12-07 holds its database as a
        // sparse entry (SQLite's lock-byte page is a hole): one whose holes are small restores.
        let honest = backup::read_manifest(&out).unwrap();
        let (first, rest) = data.split_at(4096);
        let sparse = sparse_backup(
            "honest-sparse.backup",
            &honest,
            data.len() as u64,
            &[(0, first), (4096, rest)],
        );
        let r = backup::restore_sqlite(&sparse, &refused("m.db"), &[key()], false)
            .await
            .unwrap();
        assert_eq!(r.manifest, honest);

        let first = dir.path().join("first.backup");
        let mut tar = tar::Builder::new(std::fs::File::create(&first).unwrap());
        put(&mut tar, "grantline.db", &data);
        put(
            &mut tar,
            "manifest.json",
            entry(&out, "manifest.json").unwrap().as_bytes(),
        );
        tar.finish().unwrap();
        let e = backup::restore_sqlite(&first, &refused("k.db"), &[key()], false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("comes before its manifest"), "{e}");
    }
    // A database whose `events` is a view (SQL that runs when the walk reads it, before the
    // manifest's signature can be checked): refused for its schema.
    {
        let viewed = dir.path().join("viewed.db");
        std::fs::copy(&dest, &viewed).unwrap();
        let store = Store::connect(&Database::Sqlite(viewed.clone()), false)
            .await
            .unwrap();
        for sql in [
            "ALTER TABLE events RENAME TO events_t",
            "CREATE VIEW events AS SELECT * FROM events_t",
        ] {
            exec(&store, sql).await.unwrap();
        }
        store.close().await;
        let viewed_backup = dir.path().join("viewed.backup");
        repack(&m, &viewed, &viewed_backup, Some(&signature));
        let e = backup::restore_sqlite(&viewed_backup, &refused("l.db"), &[key()], false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("holds views (events)"), "{e}");
        // A virtual table in its place (a module's code reads it): refused too.
        let virt = dir.path().join("virtual.db");
        std::fs::copy(&dest, &virt).unwrap();
        let store = Store::connect(&Database::Sqlite(virt.clone()), false)
            .await
            .unwrap();
        for sql in [
            "ALTER TABLE events RENAME TO events_t",
            "CREATE VIRTUAL TABLE events USING rtree(seq, a, b)",
        ] {
            exec(&store, sql).await.unwrap();
        }
        store.close().await;
        let virt_backup = dir.path().join("virtual.backup");
        repack(&m, &virt, &virt_backup, Some(&signature));
        let e = backup::restore_sqlite(&virt_backup, &refused("o.db"), &[key()], false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no plain table events"), "{e}");
        // A damaged file (a table page claiming more cells than it can hold): named as damaged
        // before any table is walked.
        let mut bytes = std::fs::read(&dest).unwrap();
        let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
        let leaf = (1..bytes.len() / page)
            .rev()
            .find(|n| bytes[n * page] == 0x0d)
            .expect("a table leaf page past the first");
        bytes[leaf * page + 3..leaf * page + 5].copy_from_slice(&[0xff, 0xff]);
        let damaged = dir.path().join("damaged.db");
        std::fs::write(&damaged, &bytes).unwrap();
        let damaged_backup = dir.path().join("damaged.backup");
        repack(&m, &damaged, &damaged_backup, Some(&signature));
        let e = backup::restore_sqlite(&damaged_backup, &refused("p.db"), &[key()], false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("database file is damaged"), "{e}");
        assert!(!refused("p.db").exists());
    }
    // Two manifests: refused (a caller may have read the first, the restore would use
    // another).
    {
        let twice = dir.path().join("twice.backup");
        let mut tar = tar::Builder::new(std::fs::File::create(&twice).unwrap());
        for name in ["manifest.json", "manifest.json", "manifest.sig"] {
            put(&mut tar, name, entry(&out, name).unwrap().as_bytes());
        }
        tar.finish().unwrap();
        let e = backup::restore_sqlite(&twice, &refused("h.db"), &[key()], false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unexpected entry"), "{e}");
    }
    // The signature left out: refused; relabelled as the unsigned format: refused unless the
    // operator accepts an unsigned manifest.
    repack(&m, &planted, &planted_backup, None);
    let e = backup::restore_sqlite(&planted_backup, &refused("f.db"), &[key()], false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not signed"), "{e}");
    let unsigned = Manifest {
        format: backup::FORMAT_UNSIGNED.into(),
        ..m.clone()
    };
    let unsigned_backup = dir.path().join("unsigned.backup");
    repack(&unsigned, &dest, &unsigned_backup, None);
    let e = backup::restore_sqlite(&unsigned_backup, &refused("g.db"), &[key()], false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not signed"), "{e}");
    assert!(!refused("g.db").exists());
    let taken = backup::restore_sqlite(&unsigned_backup, &refused("g.db"), &[key()], true)
        .await
        .unwrap();
    assert!(!taken.signed && r.signed);
    assert_eq!(taken.summary.events, 12);
}
