//! The bank benchmark's PostgreSQL backend, over the crate's own wire-protocol client
//! ([`crate::postgres`]). The accounts are the rows of one table, [`TABLE`] `(id integer
//! primary key, balance bigint)`. Each client prepares its statements once; then
//! - `transfer` is an interactive SERIALIZABLE transaction, like Acre's: `BEGIN ISOLATION
//!   LEVEL SERIALIZABLE` and the two balances read in one round trip, then the two `UPDATE`s
//!   and `COMMIT` in a second. A serialization failure (SQLSTATE 40001) or a deadlock (40P01),
//!   at any statement or at COMMIT, is an abort: the transaction is rolled back if still open
//!   and the transfer retried;
//! - `read-only 4` is one `SELECT` of four rows (a single statement sees one snapshot).
//!
//! The backend never touches a table but its own: `--flush` drops [`TABLE`] if it exists.

use super::{Attempt, Backend, Client, Kind, Total, Work};
use crate::postgres::message::TxnStatus;
use crate::postgres::{Batch, Connection, PgError, PgUrl};
use anyhow::Context;

/// The bench's table, the only one it creates or drops.
pub const TABLE: &str = "acre_bank";

const TRANSFER: Kind = Kind {
    name: "transfer",
    work: Work::Transfer,
};
const READ_ONLY: Kind = Kind {
    name: "read-only 4",
    work: Work::Read4,
};

/// The statements each client prepares, by name.
const STATEMENTS: [(&str, &str); 6] = [
    ("begin", "BEGIN ISOLATION LEVEL SERIALIZABLE"),
    ("read", "SELECT balance FROM acre_bank WHERE id = $1"),
    ("write", "UPDATE acre_bank SET balance = $2 WHERE id = $1"),
    ("commit", "COMMIT"),
    ("rollback", "ROLLBACK"),
    (
        "read4",
        "SELECT balance FROM acre_bank WHERE id IN ($1, $2, $3, $4)",
    ),
];

/// A PostgreSQL database holding the bank.
pub struct PgBank {
    url: PgUrl,
    description: String,
}

impl PgBank {
    /// Connects to `url` and checks that [`TABLE`] does not exist; with `flush`, drops it
    /// first (`DROP TABLE IF EXISTS`, no other table).
    pub fn connect(url: &str, flush: bool) -> anyhow::Result<PgBank> {
        let url = PgUrl::parse(url)?;
        let mut connection = Connection::connect(&url)
            .with_context(|| format!("cannot connect to postgres at {}", url.address()))?;
        if flush {
            connection
                .query(&format!("DROP TABLE IF EXISTS {TABLE}"))
                .with_context(|| format!("drop the table {TABLE}"))?;
        }
        let exists = connection
            .query(&format!("SELECT to_regclass('{TABLE}') IS NOT NULL"))
            .context("look for the bench's table")?;
        anyhow::ensure!(
            exists != [[Some(b"t".to_vec())]],
            "postgres database {} at {} already has the table {TABLE} (an earlier run's \
             accounts): pass --flush to drop it (DROP TABLE IF EXISTS {TABLE}; no other table \
             is touched)",
            url.database,
            url.address()
        );
        let description = describe(&mut connection, &url)?;
        Ok(PgBank { url, description })
    }
}

fn describe(connection: &mut Connection, url: &PgUrl) -> anyhow::Result<String> {
    let mut settings = Vec::new();
    for name in ["fsync", "synchronous_commit", "full_page_writes"] {
        let rows = connection
            .query(&format!("SHOW {name}"))
            .with_context(|| format!("SHOW {name}"))?;
        let value = rows
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .map(|value| String::from_utf8_lossy(&value).into_owned())
            .unwrap_or_else(|| "unknown".into());
        settings.push(format!("{name} {value}"));
    }
    Ok(format!(
        "PostgreSQL {} at {} database {} (SERIALIZABLE; {})",
        connection.server_version(),
        url.address(),
        url.database,
        settings.join(", ")
    ))
}

/// The one integer column of the one row of a result, as a balance.
fn integer(rows: &[Vec<Option<Vec<u8>>>], what: &str) -> anyhow::Result<i64> {
    match rows {
        [row] => match row.as_slice() {
            [Some(text)] => std::str::from_utf8(text)
                .ok()
                .and_then(|text| text.parse().ok())
                .with_context(|| format!("{what} is {text:?}, not an integer")),
            other => anyhow::bail!("{what}: a row of {other:?}"),
        },
        rows => anyhow::bail!("{what}: {} rows, expected one", rows.len()),
    }
}

impl Backend for PgBank {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn kinds(&self) -> Vec<Kind> {
        vec![TRANSFER, READ_ONLY]
    }

    fn create(&mut self, count: usize, initial_balance: i64) -> anyhow::Result<()> {
        let mut connection = Connection::connect(&self.url)?;
        connection.query(&format!(
            "CREATE TABLE {TABLE} (id integer PRIMARY KEY, balance bigint NOT NULL)"
        ))?;
        connection.query(&format!(
            "INSERT INTO {TABLE} SELECT g, {initial_balance} FROM generate_series(0, {}) g",
            count - 1
        ))?;
        // Statistics, so every lookup by id is an index scan: a sequential scan would take a
        // predicate lock on the whole table and make every pair of transfers conflict.
        connection.query(&format!("ANALYZE {TABLE}"))?;
        Ok(())
    }

    fn client(&self) -> anyhow::Result<Box<dyn Client>> {
        let mut connection = Connection::connect(&self.url)?;
        connection.prepare_all(&STATEMENTS)?;
        Ok(Box::new(PgTeller { connection }))
    }

    fn total(&self) -> anyhow::Result<Total> {
        let mut connection = Connection::connect(&self.url)?;
        let sum = connection.query(&format!("SELECT sum(balance)::bigint FROM {TABLE}"))?;
        let lowest = connection.query(&format!("SELECT min(balance) FROM {TABLE}"))?;
        let lowest = integer(&lowest, "the lowest balance")?;
        Ok(Total {
            sum: integer(&sum, "the sum of the balances")?,
            negative: (lowest < 0).then_some(lowest),
        })
    }
}

/// One thread's session, its statements prepared.
struct PgTeller {
    connection: Connection,
}

impl PgTeller {
    /// What a batch that hit an error comes to: an abort after a serialization failure or a
    /// deadlock (rolled back first if the transaction is still open), an error otherwise.
    fn settle(&mut self, batch: Batch) -> anyhow::Result<Option<Batch>> {
        let Some(error) = batch.error.clone() else {
            return Ok(Some(batch));
        };
        if batch.status != TxnStatus::Idle {
            self.connection.push("rollback", &[]);
            let rolled_back = self.connection.run()?;
            if let Some(error) = rolled_back.error {
                return Err(PgError::Server(error)).context("ROLLBACK");
            }
        }
        if error.is_retryable() {
            Ok(None)
        } else {
            Err(PgError::Server(error).into())
        }
    }
}

impl Client for PgTeller {
    fn transfer(
        &mut self,
        _: Kind,
        from: usize,
        to: usize,
        amount: i64,
    ) -> anyhow::Result<Attempt> {
        let (from, to) = (from.to_string(), to.to_string());
        let connection = &mut self.connection;
        connection.push("begin", &[]);
        connection.push("read", &[from.as_bytes()]);
        connection.push("read", &[to.as_bytes()]);
        let batch = connection.run()?;
        let Some(read) = self.settle(batch)? else {
            return Ok(Attempt::Aborted);
        };
        let a = integer(&read.outcomes[1].rows, "account `from`'s balance")?;
        let b = integer(&read.outcomes[2].rows, "account `to`'s balance")?;
        let moved = amount.min(a).max(0);
        let (a, b) = ((a - moved).to_string(), (b + moved).to_string());
        let connection = &mut self.connection;
        connection.push("write", &[from.as_bytes(), a.as_bytes()]);
        connection.push("write", &[to.as_bytes(), b.as_bytes()]);
        connection.push("commit", &[]);
        let batch = connection.run()?;
        let Some(written) = self.settle(batch)? else {
            return Ok(Attempt::Aborted);
        };
        match written.outcomes[2].tag.as_str() {
            "COMMIT" => Ok(Attempt::Committed),
            tag => anyhow::bail!("COMMIT answered {tag:?}"),
        }
    }

    fn read(&mut self, _: Kind, accounts: [usize; 4]) -> anyhow::Result<Attempt> {
        let ids = accounts.map(|account| account.to_string());
        let parameters: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes()).collect();
        self.connection.push("read4", &parameters);
        let batch = self.connection.run()?;
        let Some(read) = self.settle(batch)? else {
            return Ok(Attempt::Aborted);
        };
        anyhow::ensure!(
            !read.outcomes[0].rows.is_empty(),
            "no account among {accounts:?}"
        );
        Ok(Attempt::Committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_integer_is_read_from_one_row_of_one_column() {
        assert_eq!(integer(&[vec![Some(b"-5".to_vec())]], "x").ok(), Some(-5));
        for (rows, what) in [
            (vec![], "0 rows"),
            (vec![vec![None]], "a row of [None]"),
            (vec![vec![Some(b"1.5".to_vec())]], "not an integer"),
        ] {
            let error = integer(&rows, "the balance").expect_err("not one integer");
            assert!(error.to_string().contains(what), "{rows:?}: {error}");
        }
    }
}
