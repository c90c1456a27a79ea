//! `Table`, the sharded map of the state's token maps: a map in every way its users see, and
//! written exactly as the `HashMap` it replaced, so snapshots keep their format.

use grantline_state::Table;
use std::collections::HashMap;

#[test]
fn behaves_as_a_map_and_compares_by_content() {
    let mut a: Table<u32> = Table::new();
    let mut model: HashMap<String, u32> = HashMap::new();
    for i in 0..5_000u32 {
        let k = format!("k{}", i % 3_000);
        assert_eq!(a.insert(k.clone(), i), model.insert(k, i));
    }
    for i in (0..3_000u32).step_by(7) {
        let k = format!("k{i}");
        assert_eq!(a.remove(k.as_str()), model.remove(&k));
        assert_eq!(a.remove(k.as_str()), None);
    }
    assert_eq!(a.len(), model.len());
    for (k, v) in &model {
        assert_eq!(a.get(k.as_str()), Some(v));
        assert!(a.contains_key(k.as_str()));
    }
    assert!(!a.contains_key("k7"));
    *a.get_mut("k1").expect("present") += 1;
    assert_eq!(a["k1"], model["k1"] + 1);
    assert_eq!(a.iter().count(), model.len());
    assert_eq!(a.values().map(|v| *v as u64).sum::<u64>(), {
        model.values().map(|v| *v as u64).sum::<u64>() + 1
    });

    // Another table routes keys with other hash keys; equal contents are still equal.
    let b: Table<u32> = a.iter().map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(a, b);
    let mut c = b.clone();
    c.insert("k1".into(), 0);
    assert_ne!(a, c);
    c.remove("k1");
    assert_ne!(a, c);
}

#[test]
fn serialises_as_the_hash_map_it_replaces() {
    let map: HashMap<String, Vec<u8>> = (0..300)
        .map(|i| (format!("key {i}"), vec![i as u8; i % 5]))
        .collect();
    let table: Table<Vec<u8>> = map.clone().into_iter().collect();
    let mut bytes = Vec::new();
    ciborium::into_writer(&table, &mut bytes).expect("encode");
    let back: HashMap<String, Vec<u8>> = ciborium::from_reader(&bytes[..]).expect("decode");
    assert_eq!(back, map);
    let mut old = Vec::new();
    ciborium::into_writer(&map, &mut old).expect("encode");
    let read: Table<Vec<u8>> = ciborium::from_reader(&old[..]).expect("decode");
    assert_eq!(read, table);
    assert_eq!(format!("{:?}", Table::<u8>::new()), "{}");

    // The same through cbor4ii, which snapshots use: the bytes of a one-entry map are equal.
    let one: HashMap<String, Vec<u8>> = [("k".to_string(), vec![1, 2])].into();
    let one_table: Table<Vec<u8>> = one.clone().into_iter().collect();
    let a = cbor4ii::serde::to_vec(Vec::new(), &one).expect("encode");
    let b = cbor4ii::serde::to_vec(Vec::new(), &one_table).expect("encode");
    assert_eq!(a, b);
    let big = cbor4ii::serde::to_vec(Vec::new(), &map).expect("encode");
    let read: Table<Vec<u8>> = cbor4ii::serde::from_slice(&big).expect("decode");
    assert_eq!(read, table);
}

#[test]
fn a_key_that_appears_twice_is_refused() {
    // {"a": 1, "a": 2}: a HashMap keeps the 2; a table of tokens must not guess.
    let twice = [0xa2, 0x61, b'a', 0x01, 0x61, b'a', 0x02];
    let as_map: HashMap<String, u8> = cbor4ii::serde::from_slice(&twice).expect("decode");
    assert_eq!(as_map["a"], 2);
    assert!(cbor4ii::serde::from_slice::<Table<u8>>(&twice).is_err());
    let once = [0xa2, 0x61, b'a', 0x01, 0x61, b'b', 0x02];
    let t: Table<u8> = cbor4ii::serde::from_slice(&once).expect("decode");
    assert_eq!((t["a"], t["b"], t.len()), (1, 2, 2));
}
