//! [`Table`]: a string-keyed map in shards, for the maps that grow with every token issued.
//!
//! A hash map that outgrows its capacity rehashes every entry at once. For the token maps of
//! [`State`](crate::State), folded on the ledger's writer thread before any appender is
//! answered, one such rehash of a few hundred thousand tokens stopped every append for
//! ~400 ms (`grantline-bench refresh`, max latency). Here each value lives in a box of its
//! own, so a rehash moves a key and a pointer (32 bytes) rather than a token's ~200, and the
//! map is 256 shards, so each rehash moves a 256th of the entries.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

const SHARDS: usize = 256;
/// The shard is the top bits of the router's hash: as many as `SHARDS` needs.
const SHARD_SHIFT: u32 = 64 - SHARDS.trailing_zeros();
const _: () = assert!(SHARDS.is_power_of_two());

/// A `String`-keyed map of boxed values split into 256 shards by a keyed hash of the key.
/// Compares, prints, serialises and iterates like a `HashMap` (in no particular order); reading
/// one refuses a key that appears twice, where a `HashMap` would keep the last.
#[derive(Clone)]
pub struct Table<V> {
    /// Picks the shard; each shard's own map hashes with keys of its own, so the bits that
    /// chose the shard do not crowd its buckets.
    router: RandomState,
    shards: Box<[HashMap<String, Box<V>>]>,
    len: usize,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            router: RandomState::new(),
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            len: 0,
        }
    }
}

impl<V> Table<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.router.hash_one(key) >> SHARD_SHIFT) as usize
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value under `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard(key)].get(key).map(|v| &**v)
    }

    /// The value under `key`, to change.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard(key);
        self.shards[i].get_mut(key).map(|v| &mut **v)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Puts `value` under `key`; returns the value it replaces.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        let i = self.shard(key.as_str());
        let old = self.shards[i].insert(key, Box::new(value));
        if old.is_none() {
            self.len += 1;
        }
        old.map(|v| *v)
    }

    /// Takes the value under `key` out.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard(key);
        let old = self.shards[i].remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old.map(|v| *v)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (k, &**v)))
    }

    /// Keeps only the entries for which `keep` is true; returns how many were taken out.
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &V) -> bool) -> usize {
        let before = self.len;
        for shard in self.shards.iter_mut() {
            shard.retain(|k, v| keep(k, v));
        }
        self.len = self.shards.iter().map(HashMap::len).sum();
        before - self.len
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values().map(|v| &**v))
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.shards.iter().flat_map(|s| s.keys())
    }
}

impl<'a, V> IntoIterator for &'a Table<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a String, &'a V)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<V> FromIterator<(String, V)> for Table<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut t = Table::new();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

impl<Q, V> std::ops::Index<&Q> for Table<V>
where
    String: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    type Output = V;
    /// Panics when `key` has no value, as `HashMap`'s does.
    fn index(&self, key: &Q) -> &V {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no entry for the key in the table"),
        }
    }
}

/// The same entries with equal values: the shards two tables put a key in may differ.
impl<V: PartialEq> PartialEq for Table<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for Table<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A map, exactly as a `HashMap<String, V>` is written: snapshots do not change.
impl<V: Serialize> Serialize for Table<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Refuses a key that appears twice: no table Grantline writes has one, so such input is
/// damaged or forged (a snapshot refused this way is not used; the fold starts from seq 1).
impl<'de, V: Deserialize<'de>> Deserialize<'de> for Table<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = Table<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings to entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Table<V>, A::Error> {
                let mut t = Table::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    if t.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom("a key appears twice"));
                    }
                }
                Ok(t)
            }
        }
        deserializer.deserialize_map(Entries(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_spread_over_all_shards() {
        // The point of the table: each shard, hence each rehash, holds a 256th of the entries.
        let t: Table<()> = (0..256_000).map(|i| (format!("digest-{i}"), ())).collect();
        let largest = t.shards.iter().map(HashMap::len).max().unwrap_or(0);
        let smallest = t.shards.iter().map(HashMap::len).min().unwrap_or(0);
        assert!(
            largest < 2 * 1_000 && smallest > 1_000 / 2,
            "{smallest}..{largest}"
        );
    }
}
