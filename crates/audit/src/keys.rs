//! Subject keys loaded ahead of mapping, so the mapping itself stays synchronous and pure.

use crate::mapping::{Directory, Opener, map};
use grantline_ledger::{Recorded, Sealed, SubjectKey};
use grantline_store::{Keyring, StoreError};
use std::collections::HashMap;

/// How many subjects' keys are kept before the cache starts over (erased ones are kept).
const MAX_KEYS: usize = 100_000;

/// Keys by subject; `None` for a subject known erased.
pub struct KeyCache {
    keyring: Keyring,
    keys: HashMap<String, Option<SubjectKey>>,
}

/// Opens with the cached keys; notes the subjects it has no entry for.
pub struct CachedOpener<'a> {
    keys: &'a HashMap<String, Option<SubjectKey>>,
    pub missing: Vec<String>,
}

impl Opener for CachedOpener<'_> {
    fn open(&mut self, s: &Sealed) -> Option<String> {
        match self.keys.get(&s.subject) {
            Some(Some(k)) => s.open(k).ok(),
            Some(None) => None,
            None => {
                self.missing.push(s.subject.clone());
                None
            }
        }
    }
}

impl KeyCache {
    pub fn new(keyring: Keyring) -> KeyCache {
        KeyCache {
            keyring,
            keys: HashMap::new(),
        }
    }

    /// Loads the key of every subject whose data `event` seals.
    pub async fn prepare(&mut self, event: &Recorded) -> Result<(), StoreError> {
        let mut opener = self.opener();
        map(event, &mut Directory::default(), &mut opener);
        let missing = opener.missing;
        if missing.is_empty() {
            return Ok(());
        }
        if self.keys.len() > MAX_KEYS {
            self.keys.retain(|_, k| k.is_none());
        }
        for (s, key) in self.keyring.keys(&missing).await? {
            self.keys.insert(s, key);
        }
        Ok(())
    }

    /// Loads the keys of `subjects` (those an opener found missing).
    pub async fn load(&mut self, subjects: Vec<String>) -> Result<(), StoreError> {
        if self.keys.len() > MAX_KEYS {
            self.keys.retain(|_, k| k.is_none());
        }
        let mut wanted: Vec<String> = subjects
            .into_iter()
            .filter(|s| !self.keys.contains_key(s))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        for (s, key) in self.keyring.keys(&wanted).await? {
            self.keys.insert(s, key);
        }
        Ok(())
    }

    /// Maps `event` with every key it needs: mapped once when its keys are cached (the common
    /// case), again after loading them when not. Kinds that update the directory are tried
    /// against a scratch directory first, so a name is never remembered as erased for want of a key.
    pub async fn map(
        &mut self,
        event: &Recorded,
        dir: &mut Directory,
    ) -> Result<crate::AuditRecord, StoreError> {
        use grantline_ledger::Kind;
        let updates = matches!(
            event.envelope.kind(),
            Kind::UserCreated | Kind::UserErased | Kind::ClientRegistered | Kind::ClientUpdated
        );
        for _ in 0..4 {
            let mut opener = self.opener();
            // An empty scratch directory: the one that names users is large, and these kinds
            // only add to it.
            let record = if updates {
                map(event, &mut Directory::default(), &mut opener)
            } else {
                map(event, dir, &mut opener)
            };
            let missing = opener.missing;
            if missing.is_empty() {
                return Ok(if updates {
                    map(event, dir, &mut self.opener())
                } else {
                    record
                });
            }
            self.load(missing).await?;
        }
        Ok(map(event, dir, &mut self.opener()))
    }

    /// An opener over the loaded keys (what is not loaded reads as erased).
    pub fn opener(&self) -> CachedOpener<'_> {
        CachedOpener {
            keys: &self.keys,
            missing: Vec::new(),
        }
    }

    /// From now on, `subject` reads as erased (its `user.erased` was seen).
    pub fn forget(&mut self, subject: &str) {
        self.keys.insert(subject.to_string(), None);
        self.keyring.forget(subject);
    }

    /// Drops every loaded key.
    pub fn clear(&mut self) {
        self.keys.clear();
    }
}
