//! The Acre backend of the YCSB driver on an embedded cluster: its operations checked against
//! what was written.

use acre_benches::ycsb::acre::AcreBackend;
use acre_benches::ycsb::{Backend, Fields};
use acre_replication::db::{Db, EmbeddedOptions};

fn small_db() -> Db {
    Db::embedded(&EmbeddedOptions {
        region_bytes: 8 << 20,
        ..EmbeddedOptions::default()
    })
    .expect("start an embedded cluster")
}

fn record(tag: u8) -> Fields {
    (0..10u8).map(|field| vec![tag ^ field; 100]).collect()
}

#[test]
fn the_acre_backend_reads_updates_and_scans_what_was_inserted() {
    let backend = AcreBackend::create(small_db(), 300).expect("create the table");
    let mut client = backend.client().expect("a client");
    let mut keys: Vec<String> = (0..300u32)
        .map(|n| format!("user{}", n * 7919 % 1000))
        .collect();
    for (n, key) in keys.iter().enumerate() {
        client.insert(key, &record(n as u8)).expect("insert");
    }
    assert!(
        client.insert(&keys[0], &record(0)).is_err(),
        "a second insert of a key fails"
    );
    for (n, key) in keys.iter().enumerate() {
        assert_eq!(
            client.read(key).expect("read"),
            Some(record(n as u8)),
            "{key}"
        );
    }
    assert_eq!(client.read("user-missing").expect("read"), None);

    assert!(client.update(&keys[5], 3, b"three").expect("update"));
    assert!(
        client
            .read_modify_write(&keys[5], 9, b"nine")
            .expect("read-modify-write")
    );
    let mut expected = record(5);
    expected[3] = b"three".to_vec();
    expected[9] = b"nine".to_vec();
    assert_eq!(client.read(&keys[5]).expect("read"), Some(expected.clone()));
    assert!(!client.update("user-missing", 0, b"x").expect("update"));
    assert!(
        !client
            .read_modify_write("user-missing", 0, b"x")
            .expect("rmw")
    );

    // Scans return records in key order from the start key on, across B-tree leaves.
    let by_key: std::collections::BTreeMap<String, Fields> = keys
        .iter()
        .enumerate()
        .map(|(n, key)| {
            (
                key.clone(),
                if n == 5 {
                    expected.clone()
                } else {
                    record(n as u8)
                },
            )
        })
        .collect();
    keys.sort();
    for (start, count) in [(&keys[0], 100), (&keys[123], 50), (&keys[290], 100)] {
        let scanned = client.scan(start, count).expect("scan");
        let wanted: Vec<Fields> = by_key
            .range(start.clone()..)
            .take(count)
            .map(|(_, f)| f.clone())
            .collect();
        assert_eq!(scanned, wanted, "scan from {start} of {count}");
    }
    assert!(client.scan("user999999", 10).expect("scan").is_empty());
}
