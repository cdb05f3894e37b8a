//! The bank benchmark's Redis backend, over the YCSB driver's RESP client. Account `n` is the
//! string key `bank:n` holding its balance in decimal. Three rows:
//! - `transfer lua`: a Lua script loaded once (`SCRIPT LOAD`) and run with `EVALSHA`, one
//!   round trip; Redis runs a script alone, so it never aborts. Redis's fastest atomic
//!   transfer.
//! - `transfer watch`: optimistic, the way a client without scripts does it: `WATCH` both keys
//!   and `MGET` them (one round trip), then `MULTI`, two `SET`s, `EXEC` (one round trip); EXEC
//!   answers nil when another client changed a watched key, and the transfer is retried.
//! - `read-only 4`: one `MGET` of four keys (a single command is atomic).

use super::{Attempt, Backend, Client, Kind, Total, Work};
use crate::ycsb::redis::RedisBackend;
use crate::ycsb::redis::resp::{Connection, Reply};
use anyhow::Context;

/// The transfer: moves up to ARGV[1] from KEYS[1] to KEYS[2] (less if KEYS[1] holds less), as
/// `Bank::transfer` does. Lua numbers are doubles, exact for integers up to 2^53, far above
/// any balance the bench makes.
const TRANSFER_SCRIPT: &str = "\
local a = tonumber(redis.call('GET', KEYS[1]))
local b = tonumber(redis.call('GET', KEYS[2]))
if a == nil or b == nil then
  return redis.error_reply('ERR no such account: ' .. KEYS[1] .. ' or ' .. KEYS[2])
end
local moved = math.max(0, math.min(tonumber(ARGV[1]), a))
redis.call('SET', KEYS[1], a - moved)
redis.call('SET', KEYS[2], b + moved)
return moved
";

/// Accounts set per MSET, and keys read per MGET of the total.
const KEYS_PER_COMMAND: usize = 1000;

const LUA: Kind = Kind {
    name: "transfer lua",
    work: Work::Transfer,
};
const WATCH: Kind = Kind {
    name: "transfer watch",
    work: Work::Transfer,
};
const READ_ONLY: Kind = Kind {
    name: "read-only 4",
    work: Work::Read4,
};

fn key(account: usize) -> Vec<u8> {
    format!("bank:{account}").into_bytes()
}

/// A Redis database holding the bank.
pub struct RedisBank {
    redis: RedisBackend,
    url: String,
    description: String,
    /// The transfer script's SHA1, once loaded.
    script: Option<String>,
    count: usize,
}

impl RedisBank {
    /// Connects to `url` (`redis://HOST[:PORT][/DB]`) and checks its database is empty; with
    /// `flush`, empties it first (`FLUSHDB`, that database only).
    pub fn connect(url: &str, flush: bool) -> anyhow::Result<RedisBank> {
        let redis =
            RedisBackend::connect(url).with_context(|| format!("cannot reach redis at {url}"))?;
        if flush {
            redis.flush().context("flush the redis database")?;
        }
        let keys = redis
            .key_count()
            .context("count the keys of the redis database")?;
        anyhow::ensure!(
            keys == 0,
            "redis database {} at {url} holds {keys} keys: pass --flush to empty it (FLUSHDB), \
             or use an empty database (redis://HOST:PORT/DB)",
            redis.url().database
        );
        let description = describe(&mut redis.connection()?, &redis);
        Ok(RedisBank {
            redis,
            url: url.to_string(),
            description,
            script: None,
            count: 0,
        })
    }
}

/// The server's version and persistence settings, as far as it tells them.
fn describe(connection: &mut Connection, redis: &RedisBackend) -> String {
    let version = match connection.command(&[b"INFO", b"server"]) {
        Ok(Reply::Bulk(info)) => String::from_utf8_lossy(&info)
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .map(|version| version.trim().to_string()),
        _ => None,
    };
    let mut config = |name: &str| match connection.command(&[b"CONFIG", b"GET", name.as_bytes()]) {
        Ok(Reply::Array(pair)) => match pair.get(1) {
            Some(Reply::Bulk(value)) => format!("{name} {:?}", String::from_utf8_lossy(value)),
            _ => format!("{name} unknown"),
        },
        _ => format!("{name} unknown"),
    };
    let persistence = [config("appendonly"), config("appendfsync"), config("save")].join(", ");
    format!(
        "Redis {} at {} database {} ({persistence})",
        version.as_deref().unwrap_or("(version unknown)"),
        redis.url().address(),
        redis.url().database
    )
}

/// `reply` as a balance: a bulk string of decimal digits.
fn balance(reply: &Reply, account: &str) -> anyhow::Result<i64> {
    match reply {
        Reply::Bulk(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .with_context(|| format!("{account} holds {bytes:?}, not a balance")),
        Reply::Nil => anyhow::bail!("{account} does not exist"),
        other => anyhow::bail!("reading {account}, redis answered {other:?}"),
    }
}

/// The replies of an MGET.
fn values(reply: Reply, count: usize) -> anyhow::Result<Vec<Reply>> {
    match reply {
        Reply::Array(values) if values.len() == count => Ok(values),
        other => anyhow::bail!("MGET of {count} keys answered {other:?}"),
    }
}

fn expect_ok(reply: &Reply, command: &str) -> anyhow::Result<()> {
    match reply {
        Reply::Status(status) if status == "OK" || status == "QUEUED" => Ok(()),
        other => anyhow::bail!("{command} answered {other:?}"),
    }
}

impl Backend for RedisBank {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn kinds(&self) -> Vec<Kind> {
        vec![LUA, WATCH, READ_ONLY]
    }

    fn create(&mut self, count: usize, initial_balance: i64) -> anyhow::Result<()> {
        let mut connection = self.redis.connection()?;
        let balance = initial_balance.to_string();
        for start in (0..count).step_by(KEYS_PER_COMMAND) {
            let keys: Vec<Vec<u8>> = (start..count.min(start + KEYS_PER_COMMAND))
                .map(key)
                .collect();
            let mut command: Vec<&[u8]> = vec![b"MSET"];
            for key in &keys {
                command.push(key);
                command.push(balance.as_bytes());
            }
            expect_ok(&connection.command(&command)?, "MSET")?;
        }
        self.script = Some(
            match connection.command(&[b"SCRIPT", b"LOAD", TRANSFER_SCRIPT.as_bytes()])? {
                Reply::Bulk(sha) => String::from_utf8(sha).context("the script's SHA1")?,
                other => anyhow::bail!("SCRIPT LOAD answered {other:?}"),
            },
        );
        self.count = count;
        Ok(())
    }

    fn client(&self) -> anyhow::Result<Box<dyn Client>> {
        Ok(Box::new(RedisTeller {
            connection: self
                .redis
                .connection()
                .with_context(|| format!("connect to {}", self.url))?,
            script: self
                .script
                .clone()
                .expect("the driver creates the accounts before it asks for clients"),
        }))
    }

    fn total(&self) -> anyhow::Result<Total> {
        let mut connection = self.redis.connection()?;
        let mut total = Total {
            sum: 0,
            negative: None,
        };
        for start in (0..self.count).step_by(KEYS_PER_COMMAND) {
            let accounts = start..self.count.min(start + KEYS_PER_COMMAND);
            let keys: Vec<Vec<u8>> = accounts.clone().map(key).collect();
            let mut command: Vec<&[u8]> = vec![b"MGET"];
            command.extend(keys.iter().map(Vec::as_slice));
            let replies = values(connection.command(&command)?, keys.len())?;
            for (account, reply) in accounts.zip(&replies) {
                let balance = balance(reply, &format!("bank:{account}"))?;
                total.sum += balance;
                if balance < 0 && total.negative.is_none() {
                    total.negative = Some(balance);
                }
            }
        }
        Ok(total)
    }
}

/// One thread's connection. A reply that cannot be read ends the run (the driver reports it),
/// so the connection never goes on out of step.
struct RedisTeller {
    connection: Connection,
    script: String,
}

impl RedisTeller {
    fn lua(&mut self, from: &[u8], to: &[u8], amount: &[u8]) -> anyhow::Result<Attempt> {
        match self.connection.command(&[
            b"EVALSHA",
            self.script.as_bytes(),
            b"2",
            from,
            to,
            amount,
        ])? {
            Reply::Integer(_) => Ok(Attempt::Committed),
            other => anyhow::bail!("the transfer script answered {other:?}"),
        }
    }

    fn watch(&mut self, from: &[u8], to: &[u8], amount: i64) -> anyhow::Result<Attempt> {
        let connection = &mut self.connection;
        connection.send(&[b"WATCH", from, to])?;
        connection.send(&[b"MGET", from, to])?;
        connection.flush()?;
        expect_ok(&connection.receive()?, "WATCH")?;
        let read = values(connection.receive()?, 2)?;
        let name = |key: &[u8]| String::from_utf8_lossy(key).into_owned();
        let a = balance(&read[0], &name(from))?;
        let b = balance(&read[1], &name(to))?;
        let moved = amount.min(a).max(0);
        let (a, b) = ((a - moved).to_string(), (b + moved).to_string());
        connection.send(&[b"MULTI"])?;
        connection.send(&[b"SET", from, a.as_bytes()])?;
        connection.send(&[b"SET", to, b.as_bytes()])?;
        connection.send(&[b"EXEC"])?;
        connection.flush()?;
        expect_ok(&connection.receive()?, "MULTI")?;
        expect_ok(&connection.receive()?, "SET")?;
        expect_ok(&connection.receive()?, "SET")?;
        match connection.receive()? {
            Reply::Array(replies) if replies.len() == 2 => {
                replies
                    .iter()
                    .try_for_each(|reply| expect_ok(reply, "SET in EXEC"))?;
                Ok(Attempt::Committed)
            }
            // A watched key changed: nothing was written (EXEC also unwatched the keys).
            Reply::Nil => Ok(Attempt::Aborted),
            other => anyhow::bail!("EXEC answered {other:?}"),
        }
    }
}

impl Client for RedisTeller {
    fn transfer(
        &mut self,
        kind: Kind,
        from: usize,
        to: usize,
        amount: i64,
    ) -> anyhow::Result<Attempt> {
        let (from, to) = (key(from), key(to));
        if kind == LUA {
            self.lua(&from, &to, amount.to_string().as_bytes())
        } else {
            self.watch(&from, &to, amount)
        }
    }

    fn read(&mut self, _: Kind, accounts: [usize; 4]) -> anyhow::Result<Attempt> {
        let keys = accounts.map(key);
        let mut command: Vec<&[u8]> = vec![b"MGET"];
        command.extend(keys.iter().map(Vec::as_slice));
        for (reply, key) in values(self.connection.command(&command)?, 4)?
            .iter()
            .zip(&keys)
        {
            balance(reply, &String::from_utf8_lossy(key))?;
        }
        Ok(Attempt::Committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balances_decode_and_anything_else_is_an_error() {
        assert_eq!(balance(&Reply::Bulk(b"-12".to_vec()), "k").ok(), Some(-12));
        for (reply, what) in [
            (Reply::Bulk(b"1x".to_vec()), "not a balance"),
            (Reply::Nil, "does not exist"),
            (Reply::Integer(3), "redis answered"),
        ] {
            let error = balance(&reply, "bank:1").expect_err("not a balance");
            assert!(error.to_string().contains(what), "{reply:?}: {error}");
        }
    }
}
