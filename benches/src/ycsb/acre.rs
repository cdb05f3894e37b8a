//! The Acre backend of the YCSB driver: a table of records kept as one
//! object each, found through a transactional hash table (point operations) and a B-tree
//! (scans), both updated in the same transaction as the record they point to.
//!
//! Every operation is one transaction run by [`Db::run`], so conflicts are retried inside the
//! operation and its latency includes them:
//! - read: the key's hash bucket, then the record (a read-only transaction of two objects);
//! - update and read-modify-write: read as above, then write the whole record back with one
//!   field replaced (an object is the unit of writing, so an update is a read-modify-write);
//! - insert: allocate the record, write it, and add the key to both indexes;
//! - scan: the B-tree's leaves from the start key, then each record.
//!
//! A record is its fields, each preceded by its length as a LEB128 varint: ten 100-byte fields
//! take 1,010 bytes, which with the value's length word fits the 1 KiB size class exactly.

use super::backend::{Backend, Client, Fields};
use acre_replication::db::{Addr, Db, Error, IndexError};
use acre_txn::index::{BTree, HashTable};
use anyhow::Context;

/// Keys the tables are sized for beyond twice the loaded records (inserts of the run phase).
pub const INSERT_HEADROOM_KEYS: u64 = 10_000;
/// Fields a record may have (a bound on what decoding trusts).
pub const FIELDS_MAX: usize = 1024;

/// The YCSB table in an Acre cluster.
pub struct AcreBackend {
    db: Db,
    table: HashTable,
    order: BTree,
}

impl AcreBackend {
    /// Creates an empty table in `db` with indexes sized for `records` loaded keys plus as many
    /// inserted during the run (and [`INSERT_HEADROOM_KEYS`]).
    pub fn create(db: Db, records: u64) -> anyhow::Result<AcreBackend> {
        let capacity = records
            .saturating_mul(2)
            .saturating_add(INSERT_HEADROOM_KEYS);
        let capacity = usize::try_from(capacity).context("size the hash table")?;
        let table = HashTable::create(&db, capacity).context("create the hash table")?;
        let order = db
            .run(|txn| Ok(BTree::create(txn)?))
            .context("create the B-tree")?;
        Ok(AcreBackend { db, table, order })
    }
}

impl Backend for AcreBackend {
    fn name(&self) -> String {
        "acre".into()
    }

    fn client(&self) -> anyhow::Result<Box<dyn Client>> {
        Ok(Box::new(AcreClient {
            db: self.db.clone(),
            table: self.table.clone(),
            order: self.order,
        }))
    }
}

/// One client thread's handle on the table.
struct AcreClient {
    db: Db,
    table: HashTable,
    order: BTree,
}

impl AcreClient {
    /// Replaces field `field` of the record at `key` in one transaction; false if missing.
    fn replace_field(&self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool> {
        let found = self.db.run(|txn| {
            let Some(addr) = self.table.get(txn, key.as_bytes())? else {
                return Ok(false);
            };
            let addr = Addr::from_u64(addr);
            let mut fields = decode(addr, &txn.read(addr)?)?;
            let Some(slot) = fields.get_mut(field) else {
                return Err(Error::Index(IndexError::Malformed {
                    addr,
                    reason: format!("the record has no field {field}"),
                }));
            };
            *slot = value.to_vec();
            txn.write(addr, &encode(&fields))?;
            Ok(true)
        })?;
        Ok(found)
    }
}

impl Client for AcreClient {
    fn insert(&mut self, key: &str, fields: &Fields) -> anyhow::Result<()> {
        let record = encode(fields);
        let inserted = self.db.run(|txn| {
            if self.table.get(txn, key.as_bytes())?.is_some() {
                return Ok(false);
            }
            let addr = txn.alloc(record.len())?;
            txn.write(addr, &record)?;
            self.table.insert(txn, key.as_bytes(), addr.to_u64())?;
            self.order.insert(txn, key.as_bytes(), addr.to_u64())?;
            Ok(true)
        })?;
        anyhow::ensure!(inserted, "key {key} already exists");
        Ok(())
    }

    fn read(&mut self, key: &str) -> anyhow::Result<Option<Fields>> {
        let fields = self.db.run(|txn| {
            let Some(addr) = self.table.get(txn, key.as_bytes())? else {
                return Ok(None);
            };
            let addr = Addr::from_u64(addr);
            Ok(Some(decode(addr, &txn.read(addr)?)?))
        })?;
        Ok(fields)
    }

    fn update(&mut self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool> {
        self.replace_field(key, field, value)
    }

    fn read_modify_write(&mut self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool> {
        self.replace_field(key, field, value)
    }

    fn scan(&mut self, start: &str, count: usize) -> anyhow::Result<Vec<Fields>> {
        let records = self.db.run(|txn| {
            let entries = self.order.scan(txn, start.as_bytes(), count)?;
            let mut records = Vec::with_capacity(entries.len());
            for (_, addr) in entries {
                let addr = Addr::from_u64(addr);
                records.push(decode(addr, &txn.read(addr)?)?);
            }
            Ok(records)
        })?;
        Ok(records)
    }
}

/// A record's bytes: each field as a LEB128 length and then its bytes.
pub fn encode(fields: &Fields) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(fields.iter().map(|f| f.len() + 2).sum());
    for field in fields {
        let mut len = field.len() as u64;
        loop {
            let low = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                bytes.push(low);
                break;
            }
            bytes.push(low | 0x80);
        }
        bytes.extend_from_slice(field);
    }
    bytes
}

/// The fields of the record at `addr`, or why its bytes are not a record.
pub fn decode(addr: Addr, mut bytes: &[u8]) -> Result<Fields, IndexError> {
    let malformed = |reason: String| IndexError::Malformed { addr, reason };
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        if fields.len() == FIELDS_MAX {
            return Err(malformed(format!("more than {FIELDS_MAX} fields")));
        }
        let mut len = 0u64;
        let mut shift = 0;
        loop {
            let Some((&byte, rest)) = bytes.split_first() else {
                return Err(malformed("a field length runs past the end".into()));
            };
            bytes = rest;
            if shift > 28 {
                return Err(malformed("a field length is longer than 4 bytes".into()));
            }
            len |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if len > bytes.len() as u64 {
            return Err(malformed(format!(
                "a field of {len} bytes runs past the {} left",
                bytes.len()
            )));
        }
        let (field, rest) = bytes.split_at(len as usize);
        fields.push(field.to_vec());
        bytes = rest;
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_replication::db::RegionId;

    #[test]
    fn records_round_trip_and_ten_100_byte_fields_fit_1_kib() {
        let addr = Addr::new(RegionId(1), 64);
        let fields: Fields = (0..10u8).map(|i| vec![i; 100]).collect();
        let bytes = encode(&fields);
        assert_eq!(bytes.len(), 1010);
        assert!(bytes.len() + acre_txn::value::LEN_BYTES <= 1024);
        assert_eq!(decode(addr, &bytes).unwrap(), fields);
        for fields in [
            vec![],
            vec![vec![]],
            vec![vec![7; 300], vec![1; 127], vec![2; 128]],
        ] {
            assert_eq!(decode(addr, &encode(&fields)).unwrap(), fields);
        }
    }

    #[test]
    fn malformed_records_are_errors() {
        let addr = Addr::new(RegionId(1), 64);
        for bytes in [
            &[5u8, 1, 2][..],
            &[0x80],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 1],
        ] {
            assert!(
                matches!(decode(addr, bytes), Err(IndexError::Malformed { .. })),
                "{bytes:?}"
            );
        }
    }
}
