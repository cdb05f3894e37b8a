//! The Redis backend of the YCSB driver, over its own RESP client ([`resp`]).
//!
//! A record is a hash whose fields are named `field0`, `field1`, ...; a sorted set
//! ([`INDEX_KEY`]) holds every record key with score 0, so `ZRANGEBYLEX` walks the keys in byte
//! order for scans. Each operation:
//! - insert: `MULTI`, `HSET key field0 v0 ..`, `ZADD index 0 key`, `EXEC` in one round trip,
//!   so a record and its index entry appear together;
//! - read: `HGETALL` (an empty reply: no such record);
//! - update: one blind `HSET key fieldN v`, like YCSB's Redis binding (one round trip). Its reply
//!   counts the fields it created: 1 means the record did not exist (every record has all its
//!   fields), so the stray field is removed with `HDEL` and the update reports `false`;
//! - read-modify-write: `WATCH key` + `HGETALL key`, then `MULTI`, `HSET`, `EXEC`, repeated
//!   while another client changed the key in between (EXEC answers nil), at most
//!   [`RMW_ATTEMPTS_MAX`] times;
//! - scan: `ZRANGEBYLEX index [start + LIMIT 0 count`, then one `HGETALL` per key, pipelined in
//!   one round trip.
//!
//! The backend never deletes data by itself: [`RedisBackend::flush`] empties the database, for
//! a caller that asks for it.

pub mod resp;

use super::backend::{Backend, Client, Fields};
use anyhow::Context;
use resp::{Connection, Reply, RespError};

/// The sorted set of every record key.
pub const INDEX_KEY: &str = "ycsb:index";
/// Port of a URL that names none.
pub const DEFAULT_PORT: u16 = 6379;
/// Attempts of a read-modify-write whose key other clients keep changing.
pub const RMW_ATTEMPTS_MAX: usize = 100;
/// What every field name starts with (YCSB's `fieldnameprefix`).
const FIELD_PREFIX: &str = "field";

/// Where a Redis server is: `redis://HOST[:PORT][/DB]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    /// The logical database (`SELECT`), 0 by default.
    pub database: u32,
}

/// A URL that is not `redis://HOST[:PORT][/DB]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed redis URL {url:?}: expected redis://HOST[:PORT][/DB] (port {DEFAULT_PORT} and \
     database 0 by default), e.g. redis://127.0.0.1:6379"
)]
pub struct UrlError {
    pub url: String,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, UrlError> {
        let error = || UrlError {
            url: url.to_string(),
        };
        let rest = url.strip_prefix("redis://").ok_or_else(error)?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            // An IPv6 address: [::1]:6379.
            let (host, after) = bracketed.split_once(']').ok_or_else(error)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let valid_host = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
        if !valid_host {
            return Err(error());
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(port) => port
                .parse()
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(error)?,
        };
        let database = match path {
            "" => 0,
            database => database.parse().map_err(|_| error())?,
        };
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            database,
        })
    }

    /// `host:port`, with brackets around an IPv6 host.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A Redis server the driver can run against; each client thread gets its own connection.
#[derive(Clone, Debug)]
pub struct RedisBackend {
    url: RedisUrl,
}

impl RedisBackend {
    /// Parses `url` (`redis://HOST[:PORT][/DB]`) and checks with `PING` that the server answers.
    pub fn connect(url: &str) -> anyhow::Result<RedisBackend> {
        let backend = RedisBackend {
            url: RedisUrl::parse(url)?,
        };
        let mut connection = backend.connection()?;
        match connection.command(&[b"PING"]).context("send PING")? {
            Reply::Status(status) if status == "PONG" => Ok(backend),
            other => anyhow::bail!("PING answered {other:?}"),
        }
    }

    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// A new connection to the server, on the URL's database.
    pub fn connection(&self) -> anyhow::Result<Connection> {
        let address = self.url.address();
        let mut connection =
            Connection::connect(&address).with_context(|| format!("connect to {address}"))?;
        if self.url.database != 0 {
            let database = self.url.database.to_string();
            let reply = connection
                .command(&[b"SELECT", database.as_bytes()])
                .context("send SELECT")?;
            expect_status(reply, "OK").with_context(|| format!("select database {database}"))?;
        }
        Ok(connection)
    }

    /// Deletes every key of the database (`FLUSHDB`), records or not, so a load starts from an
    /// empty table. Never called by the driver itself.
    pub fn flush(&self) -> anyhow::Result<()> {
        let reply = self.connection()?.command(&[b"FLUSHDB"])?;
        expect_status(reply, "OK").context("FLUSHDB")
    }

    /// Keys in the URL's database (`DBSIZE`): a load must start from an empty one.
    pub fn key_count(&self) -> anyhow::Result<u64> {
        match self.connection()?.command(&[b"DBSIZE"])? {
            Reply::Integer(count) => u64::try_from(count).context("DBSIZE is negative"),
            other => anyhow::bail!("DBSIZE answered {other:?}"),
        }
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> String {
        "redis".into()
    }

    fn client(&self) -> anyhow::Result<Box<dyn Client>> {
        Ok(Box::new(RedisClient {
            backend: self.clone(),
            connection: Some(self.connection()?),
        }))
    }
}

/// One client thread's connection. It is dropped when a reply could not be read (the stream is
/// out of step) and opened again by the next operation.
struct RedisClient {
    backend: RedisBackend,
    connection: Option<Connection>,
}

impl RedisClient {
    /// Sends `commands` in one round trip and returns their replies, in order.
    fn pipeline(&mut self, commands: &[&[&[u8]]]) -> anyhow::Result<Vec<Reply>> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self.connection.insert(
                self.backend
                    .connection()
                    .context("connect again after a failed reply")?,
            ),
        };
        let result = (|| -> Result<Vec<Reply>, RespError> {
            for command in commands {
                connection.send(command)?;
            }
            connection.flush()?;
            commands.iter().map(|_| connection.receive()).collect()
        })();
        result.map_err(|error| {
            self.connection = None;
            anyhow::Error::new(error)
        })
    }
}

fn field_name(index: usize) -> String {
    format!("{FIELD_PREFIX}{index}")
}

fn expect_status(reply: Reply, expected: &str) -> anyhow::Result<()> {
    match reply {
        Reply::Status(status) if status == expected => Ok(()),
        Reply::Error(error) => anyhow::bail!("redis answered an error: {error}"),
        other => anyhow::bail!("expected +{expected}, redis answered {other:?}"),
    }
}

fn expect_integer(reply: Reply) -> anyhow::Result<i64> {
    match reply {
        Reply::Integer(n) => Ok(n),
        Reply::Error(error) => anyhow::bail!("redis answered an error: {error}"),
        other => anyhow::bail!("expected an integer, redis answered {other:?}"),
    }
}

fn expect_array(reply: Reply) -> anyhow::Result<Vec<Reply>> {
    match reply {
        Reply::Array(items) => Ok(items),
        Reply::Error(error) => anyhow::bail!("redis answered an error: {error}"),
        other => anyhow::bail!("expected an array, redis answered {other:?}"),
    }
}

/// A record from HGETALL's reply (field names and values alternating): `None` if empty, an
/// error unless the fields are exactly `field0..fieldN`.
fn record(reply: Reply) -> anyhow::Result<Option<Fields>> {
    let items = expect_array(reply)?;
    if items.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        items.len() % 2 == 0,
        "HGETALL answered an odd number ({}) of items",
        items.len()
    );
    let field_count = items.len() / 2;
    let mut fields: Vec<Option<Vec<u8>>> = vec![None; field_count];
    let mut items = items.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        let (Reply::Bulk(name), Reply::Bulk(value)) = (name, value) else {
            anyhow::bail!("HGETALL answered a non-string field");
        };
        let index = std::str::from_utf8(&name)
            .ok()
            .and_then(|name| name.strip_prefix(FIELD_PREFIX))
            .and_then(|digits| digits.parse::<usize>().ok())
            .filter(|&index| index < field_count)
            .with_context(|| {
                format!(
                    "unexpected field {:?} in a record of {field_count} fields",
                    String::from_utf8_lossy(&name)
                )
            })?;
        anyhow::ensure!(fields[index].is_none(), "field {index} twice");
        fields[index] = Some(value);
    }
    // field_count distinct indexes below field_count: every slot is filled.
    Ok(Some(fields.into_iter().flatten().collect()))
}

impl Client for RedisClient {
    fn insert(&mut self, key: &str, fields: &Fields) -> anyhow::Result<()> {
        let names: Vec<String> = (0..fields.len()).map(field_name).collect();
        let mut hset: Vec<&[u8]> = vec![b"HSET", key.as_bytes()];
        for (name, value) in names.iter().zip(fields) {
            hset.push(name.as_bytes());
            hset.push(value);
        }
        let zadd: [&[u8]; 4] = [b"ZADD", INDEX_KEY.as_bytes(), b"0", key.as_bytes()];
        let mut replies = self
            .pipeline(&[&[b"MULTI"], &hset, &zadd, &[b"EXEC"]])?
            .into_iter();
        let mut next = || replies.next().context("a reply is missing");
        expect_status(next()?, "OK").context("MULTI")?;
        expect_status(next()?, "QUEUED").context("queue HSET")?;
        expect_status(next()?, "QUEUED").context("queue ZADD")?;
        let results = expect_array(next()?).context("EXEC")?;
        for result in results {
            expect_integer(result).context("EXEC's HSET or ZADD")?;
        }
        Ok(())
    }

    fn read(&mut self, key: &str) -> anyhow::Result<Option<Fields>> {
        let reply = self.pipeline(&[&[b"HGETALL", key.as_bytes()]])?;
        record(reply.into_iter().next().context("no reply")?)
    }

    fn update(&mut self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool> {
        let name = field_name(field);
        let reply = self.pipeline(&[&[b"HSET", key.as_bytes(), name.as_bytes(), value]])?;
        let created = expect_integer(reply.into_iter().next().context("no reply")?)?;
        if created == 0 {
            return Ok(true);
        }
        // The record did not exist: take back the field this HSET made up.
        let reply = self.pipeline(&[&[b"HDEL", key.as_bytes(), name.as_bytes()]])?;
        expect_integer(reply.into_iter().next().context("no reply")?)?;
        Ok(false)
    }

    fn read_modify_write(&mut self, key: &str, field: usize, value: &[u8]) -> anyhow::Result<bool> {
        let name = field_name(field);
        for _ in 0..RMW_ATTEMPTS_MAX {
            let mut replies = self
                .pipeline(&[&[b"WATCH", key.as_bytes()], &[b"HGETALL", key.as_bytes()]])?
                .into_iter();
            let mut next = || replies.next().context("a reply is missing");
            expect_status(next()?, "OK").context("WATCH")?;
            let current = record(next()?)?;
            let valid_field = current.as_ref().map(|fields| field < fields.len());
            if valid_field != Some(true) {
                let reply = self.pipeline(&[&[b"UNWATCH"]])?;
                expect_status(reply.into_iter().next().context("no reply")?, "OK")?;
                anyhow::ensure!(valid_field.is_none(), "{key} has no field {field}");
                return Ok(false);
            }
            let mut replies = self
                .pipeline(&[
                    &[b"MULTI"],
                    &[b"HSET", key.as_bytes(), name.as_bytes(), value],
                    &[b"EXEC"],
                ])?
                .into_iter();
            let mut next = || replies.next().context("a reply is missing");
            expect_status(next()?, "OK").context("MULTI")?;
            expect_status(next()?, "QUEUED").context("queue HSET")?;
            match next()? {
                Reply::Nil => continue,
                reply => {
                    expect_array(reply).context("EXEC")?;
                    return Ok(true);
                }
            }
        }
        anyhow::bail!("{key} changed under each of {RMW_ATTEMPTS_MAX} read-modify-write attempts")
    }

    fn scan(&mut self, start: &str, count: usize) -> anyhow::Result<Vec<Fields>> {
        let from = format!("[{start}");
        let count = count.to_string();
        let reply = self.pipeline(&[&[
            b"ZRANGEBYLEX",
            INDEX_KEY.as_bytes(),
            from.as_bytes(),
            b"+",
            b"LIMIT",
            b"0",
            count.as_bytes(),
        ]])?;
        let keys = expect_array(reply.into_iter().next().context("no reply")?)?;
        let mut commands: Vec<[&[u8]; 2]> = Vec::with_capacity(keys.len());
        for key in &keys {
            let Reply::Bulk(key) = key else {
                anyhow::bail!("ZRANGEBYLEX answered a non-string key: {key:?}");
            };
            commands.push([b"HGETALL", key]);
        }
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let commands: Vec<&[&[u8]]> = commands.iter().map(|command| &command[..]).collect();
        let mut records = Vec::with_capacity(commands.len());
        for reply in self.pipeline(&commands)? {
            // A key whose record is gone (deleted by someone else) is skipped.
            if let Some(fields) = record(reply)? {
                records.push(fields);
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_malformed_ones_name_the_form() {
        let parsed = |url| RedisUrl::parse(url).expect(url);
        assert_eq!(
            parsed("redis://127.0.0.1:7000"),
            RedisUrl {
                host: "127.0.0.1".into(),
                port: 7000,
                database: 0
            }
        );
        assert_eq!(parsed("redis://localhost").port, DEFAULT_PORT);
        assert_eq!(parsed("redis://localhost/").database, 0);
        assert_eq!(parsed("redis://localhost:6380/15").database, 15);
        let v6 = parsed("redis://[::1]:6390");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 6390));
        assert_eq!(v6.address(), "[::1]:6390");
        assert_eq!(parsed("redis://db.example").address(), "db.example:6379");
        for bad in [
            "",
            "127.0.0.1:6379",
            "http://localhost",
            "redis://",
            "redis://:6379",
            "redis://host:",
            "redis://host:0",
            "redis://host:70000",
            "redis://host:port",
            "redis://user@host",
            "redis://host/db",
            "redis://[::1",
        ] {
            let error = RedisUrl::parse(bad).expect_err(bad).to_string();
            assert!(
                error.contains("expected redis://HOST[:PORT][/DB]"),
                "{error}"
            );
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn records_need_every_field_once() {
        let bulk = |text: &str| Reply::Bulk(text.as_bytes().to_vec());
        let reply = Reply::Array(vec![bulk("field1"), bulk("b"), bulk("field0"), bulk("a")]);
        assert_eq!(
            record(reply).expect("record"),
            Some(vec![b"a".to_vec(), b"b".to_vec()])
        );
        assert_eq!(record(Reply::Array(vec![])).expect("empty"), None);
        for bad in [
            vec![bulk("field0")],
            vec![bulk("field0"), bulk("a"), bulk("field0"), bulk("b")],
            vec![bulk("field0"), bulk("a"), bulk("field2"), bulk("b")],
            vec![bulk("name"), bulk("a")],
            vec![Reply::Integer(1), bulk("a")],
        ] {
            assert!(record(Reply::Array(bad.clone())).is_err(), "{bad:?}");
        }
    }
}
