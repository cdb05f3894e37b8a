//! The whole interface between the YCSB driver and a database: a [`Backend`] hands out one
//! [`Client`] session per client thread, and a record is its [`Fields`].

/// One record: YCSB's fields, in order.
pub type Fields = Vec<Vec<u8>>;

/// A database the driver can load and run against. Shared by all client threads.
pub trait Backend: Send + Sync {
    /// Short name for reports ("acre", "redis").
    fn name(&self) -> String;
    /// One connection/session for one client thread.
    fn client(&self) -> anyhow::Result<Box<dyn Client>>;
}

/// One client thread's session. Every method is one YCSB operation; retries of conflicts happen
/// inside.
pub trait Client: Send {
    fn insert(&mut self, key: &str, fields: &Fields) -> anyhow::Result<()>;
    /// All fields of the record, or None if the key does not exist.
    fn read(&mut self, key: &str) -> anyhow::Result<Option<Fields>>;
    /// Overwrites field `field` (0-based) of an existing record; false if the key does not
    /// exist.
    fn update(&mut self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool>;
    /// Reads the record and overwrites one field atomically (a transaction); false if missing.
    fn read_modify_write(&mut self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool>;
    /// Up to `count` records with keys >= `start`, in key order (byte order of the key
    /// strings).
    fn scan(&mut self, start: &str, count: usize) -> anyhow::Result<Vec<Fields>>;
}
