//! A YCSB backend in a `Mutex<BTreeMap>`, counting the calls it gets, for the driver's tests;
//! and one whose every operation fails.

use acre_benches::ycsb::{Backend, Client, Fields, OpKind};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The table and the calls of each kind, shared by every client.
#[derive(Default)]
pub struct Shared {
    pub table: Mutex<BTreeMap<String, Fields>>,
    calls: [AtomicU64; OpKind::ALL.len()],
    pub clients_opened: AtomicU64,
    /// Every key read.
    pub read_keys: Mutex<BTreeSet<String>>,
}

/// An in-memory table; clones share it.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    pub shared: Arc<Shared>,
}

impl MemoryBackend {
    pub fn table(&self) -> MutexGuard<'_, BTreeMap<String, Fields>> {
        self.shared.table.lock().expect("table lock")
    }

    /// Calls of `kind` so far.
    pub fn calls(&self, kind: OpKind) -> u64 {
        self.shared.calls[kind.index()].load(Ordering::Relaxed)
    }

    pub fn total_calls(&self) -> u64 {
        OpKind::ALL.iter().map(|&kind| self.calls(kind)).sum()
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> String {
        "memory".into()
    }

    fn client(&self) -> anyhow::Result<Box<dyn Client>> {
        self.shared.clients_opened.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(self.clone()))
    }
}

impl MemoryBackend {
    fn count(&self, kind: OpKind) {
        self.shared.calls[kind.index()].fetch_add(1, Ordering::Relaxed);
    }
}

impl Client for MemoryBackend {
    fn insert(&mut self, key: &str, fields: &Fields) -> anyhow::Result<()> {
        self.count(OpKind::Insert);
        let previous = self.table().insert(key.to_string(), fields.clone());
        anyhow::ensure!(previous.is_none(), "{key} inserted twice");
        Ok(())
    }

    fn read(&mut self, key: &str) -> anyhow::Result<Option<Fields>> {
        self.count(OpKind::Read);
        let mut read_keys = self.shared.read_keys.lock().expect("read keys lock");
        read_keys.insert(key.to_string());
        Ok(self.table().get(key).cloned())
    }

    fn update(&mut self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool> {
        self.count(OpKind::Update);
        Ok(match self.table().get_mut(key) {
            Some(fields) => {
                fields[field] = value.to_vec();
                true
            }
            None => false,
        })
    }

    fn read_modify_write(&mut self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool> {
        self.count(OpKind::ReadModifyWrite);
        Ok(match self.table().get_mut(key) {
            Some(fields) => {
                fields[field] = value.to_vec();
                true
            }
            None => false,
        })
    }

    fn scan(&mut self, start: &str, count: usize) -> anyhow::Result<Vec<Fields>> {
        self.count(OpKind::Scan);
        Ok(self
            .table()
            .range(start.to_string()..)
            .take(count)
            .map(|(_, fields)| fields.clone())
            .collect())
    }
}

/// A backend whose every operation fails, as when the server has died.
pub struct DeadBackend;

impl Backend for DeadBackend {
    fn name(&self) -> String {
        "dead".into()
    }

    fn client(&self) -> anyhow::Result<Box<dyn Client>> {
        Ok(Box::new(DeadBackend))
    }
}

impl Client for DeadBackend {
    fn insert(&mut self, _: &str, _: &Fields) -> anyhow::Result<()> {
        anyhow::bail!("connection refused")
    }

    fn read(&mut self, _: &str) -> anyhow::Result<Option<Fields>> {
        anyhow::bail!("connection refused")
    }

    fn update(&mut self, _: &str, _: usize, _: &[u8]) -> anyhow::Result<bool> {
        anyhow::bail!("connection refused")
    }

    fn read_modify_write(&mut self, _: &str, _: usize, _: &[u8]) -> anyhow::Result<bool> {
        anyhow::bail!("connection refused")
    }

    fn scan(&mut self, _: &str, _: usize) -> anyhow::Result<Vec<Fields>> {
        anyhow::bail!("connection refused")
    }
}
