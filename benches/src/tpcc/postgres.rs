//! The TPC-C backend for PostgreSQL, over the crate's own wire-protocol client
//! ([`crate::postgres`]): the spec's nine tables with their primary keys, and the two secondary
//! indexes the transactions need (customers by last and first name, orders by customer).
//! Money is `numeric(12,2)`, rates `numeric(4,4)`, dates `timestamp`, as in the spec; the
//! ORDER table is called `oorder` because ORDER is an SQL keyword.
//!
//! Every transaction is an interactive transaction of prepared statements at SERIALIZABLE (or
//! READ COMMITTED with `--isolation read-committed`), sent in as few round trips as the data
//! dependencies allow: one for New-Order's reads and stock updates and one for its inserts;
//! one for a Payment by id and two by last name; two for Order-Status; three for Delivery
//! (the oldest new orders, the updates, COMMIT); one for Stock-Level. A serialization failure or a deadlock (SQLSTATE
//! 40001, 40P01) anywhere is an abort: the transaction is rolled back and the driver runs it
//! again. Under READ COMMITTED a Delivery that finds its oldest new order already taken by a
//! concurrent Delivery (its DELETE removes no row) is rolled back and counted as an abort too.
//!
//! The backend touches only the nine tables: `--flush` drops them if they exist, and without it
//! a database that has any of them is refused.

use super::backend::{
    Attempt, Backend, Client, CustomerState, DeliveryOutput, DistrictState, HistoryState,
    LineOutput, LineState, NewOrderOutcome, NewOrderOutput, OrderState, OrderStatusOutput,
    OrderSummary, PaymentOutput, bad_credit_data, brand_generic, middle_index, new_order_total,
};
use super::input::{
    CustomerChoice, DISTRICTS_PER_WAREHOUSE, DeliveryInput, NewOrderInput, OrderStatusInput,
    PaymentInput, StockLevelInput,
};
use super::rows::{Address, DistrictRows, Item, Stock, Warehouse};
use crate::postgres::message::TxnStatus;
use crate::postgres::{Batch, Connection, PgError, PgUrl};
use anyhow::Context;

/// The tables, the only ones the backend creates or drops.
pub const TABLES: [&str; 9] = [
    "warehouse",
    "district",
    "customer",
    "history",
    "oorder",
    "new_order",
    "order_line",
    "item",
    "stock",
];

/// Rows one INSERT of the load carries.
const INSERT_ROWS_MAX: usize = 1000;

const SCHEMA: &str = "
CREATE TABLE warehouse (w_id int PRIMARY KEY, w_name varchar(10), w_street_1 varchar(20),
  w_street_2 varchar(20), w_city varchar(20), w_state char(2), w_zip char(9),
  w_tax numeric(4,4), w_ytd numeric(12,2));
CREATE TABLE district (d_w_id int, d_id int, d_name varchar(10), d_street_1 varchar(20),
  d_street_2 varchar(20), d_city varchar(20), d_state char(2), d_zip char(9),
  d_tax numeric(4,4), d_ytd numeric(12,2), d_next_o_id int, PRIMARY KEY (d_w_id, d_id));
CREATE TABLE customer (c_w_id int, c_d_id int, c_id int, c_first varchar(16),
  c_middle char(2), c_last varchar(16), c_street_1 varchar(20), c_street_2 varchar(20),
  c_city varchar(20), c_state char(2), c_zip char(9), c_phone char(16), c_since timestamp,
  c_credit char(2), c_credit_lim numeric(12,2), c_discount numeric(4,4),
  c_balance numeric(12,2), c_ytd_payment numeric(12,2), c_payment_cnt int,
  c_delivery_cnt int, c_data varchar(500), PRIMARY KEY (c_w_id, c_d_id, c_id));
CREATE INDEX customer_by_name ON customer (c_w_id, c_d_id, c_last, c_first);
CREATE TABLE history (h_c_id int, h_c_d_id int, h_c_w_id int, h_d_id int, h_w_id int,
  h_date timestamp, h_amount numeric(6,2), h_data varchar(24));
CREATE INDEX history_by_district ON history (h_w_id, h_d_id);
CREATE TABLE oorder (o_w_id int, o_d_id int, o_id int, o_c_id int, o_entry_d timestamp,
  o_carrier_id int, o_ol_cnt int, o_all_local int, PRIMARY KEY (o_w_id, o_d_id, o_id));
CREATE INDEX oorder_by_customer ON oorder (o_w_id, o_d_id, o_c_id, o_id);
CREATE TABLE new_order (no_w_id int, no_d_id int, no_o_id int,
  PRIMARY KEY (no_w_id, no_d_id, no_o_id));
CREATE TABLE order_line (ol_w_id int, ol_d_id int, ol_o_id int, ol_number int, ol_i_id int,
  ol_supply_w_id int, ol_delivery_d timestamp, ol_quantity int, ol_amount numeric(6,2),
  ol_dist_info char(24), PRIMARY KEY (ol_w_id, ol_d_id, ol_o_id, ol_number));
CREATE TABLE item (i_id int PRIMARY KEY, i_im_id int, i_name varchar(24),
  i_price numeric(5,2), i_data varchar(50));
CREATE TABLE stock (s_w_id int, s_i_id int, s_quantity int, s_dist_01 char(24),
  s_dist_02 char(24), s_dist_03 char(24), s_dist_04 char(24), s_dist_05 char(24),
  s_dist_06 char(24), s_dist_07 char(24), s_dist_08 char(24), s_dist_09 char(24),
  s_dist_10 char(24), s_ytd int, s_order_cnt int, s_remote_cnt int, s_data varchar(50),
  PRIMARY KEY (s_w_id, s_i_id));
";

/// The isolation level of every transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    Serializable,
    ReadCommitted,
}

impl Isolation {
    fn sql(self) -> &'static str {
        match self {
            Isolation::Serializable => "SERIALIZABLE",
            Isolation::ReadCommitted => "READ COMMITTED",
        }
    }
}

/// The statements each client prepares, by name.
const STATEMENTS: [(&str, &str); 24] = [
    ("commit", "COMMIT"),
    ("rollback", "ROLLBACK"),
    ("w_tax", "SELECT w_tax FROM warehouse WHERE w_id = $1"),
    (
        "d_next",
        "UPDATE district SET d_next_o_id = d_next_o_id + 1 WHERE d_w_id = $1 AND d_id = $2 \
         RETURNING d_tax, d_next_o_id - 1",
    ),
    (
        "c_discount",
        "SELECT c_discount FROM customer WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3",
    ),
    (
        "items",
        "SELECT i_id, i_price, i_data FROM item WHERE i_id = ANY($1::int[])",
    ),
    (
        "stock_take",
        "UPDATE stock SET s_quantity = CASE WHEN s_quantity >= $3 + 10 THEN s_quantity - $3 \
         ELSE s_quantity - $3 + 91 END, s_ytd = s_ytd + $3, s_order_cnt = s_order_cnt + 1, \
         s_remote_cnt = s_remote_cnt + $4 WHERE s_w_id = $1 AND s_i_id = $2 \
         RETURNING s_quantity, s_data, CASE $5::int WHEN 1 THEN s_dist_01 WHEN 2 THEN s_dist_02 \
         WHEN 3 THEN s_dist_03 WHEN 4 THEN s_dist_04 WHEN 5 THEN s_dist_05 WHEN 6 THEN s_dist_06 \
         WHEN 7 THEN s_dist_07 WHEN 8 THEN s_dist_08 WHEN 9 THEN s_dist_09 ELSE s_dist_10 END",
    ),
    (
        "order_insert",
        "INSERT INTO oorder VALUES ($1, $2, $3, $4, to_timestamp($5), NULL, $6, $7)",
    ),
    (
        "new_order_insert",
        "INSERT INTO new_order VALUES ($1, $2, $3)",
    ),
    (
        "line_insert",
        "INSERT INTO order_line VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, $9)",
    ),
    (
        "w_pay",
        "UPDATE warehouse SET w_ytd = w_ytd + $2 WHERE w_id = $1 RETURNING w_name",
    ),
    (
        "d_pay",
        "UPDATE district SET d_ytd = d_ytd + $3 WHERE d_w_id = $1 AND d_id = $2 \
         RETURNING d_name",
    ),
    (
        "c_by_name",
        "SELECT c_id FROM customer WHERE c_w_id = $1 AND c_d_id = $2 AND c_last = $3 \
         ORDER BY c_first",
    ),
    (
        "c_pay",
        "UPDATE customer SET c_balance = c_balance - $4, c_ytd_payment = c_ytd_payment + $4, \
         c_payment_cnt = c_payment_cnt + 1, c_data = CASE WHEN c_credit = 'BC' THEN \
         substr($5 || c_data, 1, 500) ELSE c_data END \
         WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3 RETURNING c_balance",
    ),
    (
        "h_insert",
        "INSERT INTO history SELECT $1, $2, $3, $4, $5, to_timestamp($6), $7, \
         w_name || '    ' || d_name FROM warehouse, district \
         WHERE w_id = $5 AND d_w_id = $5 AND d_id = $4",
    ),
    (
        "c_balance",
        "SELECT c_balance FROM customer WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3",
    ),
    (
        "latest_order",
        "SELECT o_id, o_carrier_id FROM oorder WHERE o_w_id = $1 AND o_d_id = $2 \
         AND o_c_id = $3 ORDER BY o_id DESC LIMIT 1",
    ),
    (
        "latest_lines",
        "SELECT ol_i_id, ol_supply_w_id, ol_quantity, ol_amount, \
         extract(epoch FROM ol_delivery_d)::bigint FROM order_line \
         WHERE ol_w_id = $1 AND ol_d_id = $2 AND ol_o_id = (SELECT max(o_id) FROM oorder \
         WHERE o_w_id = $1 AND o_d_id = $2 AND o_c_id = $3) ORDER BY ol_number",
    ),
    (
        "oldest_new_order",
        "SELECT min(no_o_id) FROM new_order WHERE no_w_id = $1 AND no_d_id = $2",
    ),
    (
        "new_order_delete",
        "DELETE FROM new_order WHERE no_w_id = $1 AND no_d_id = $2 AND no_o_id = $3",
    ),
    (
        "order_carrier",
        "UPDATE oorder SET o_carrier_id = $4 WHERE o_w_id = $1 AND o_d_id = $2 AND o_id = $3",
    ),
    (
        "lines_deliver",
        "UPDATE order_line SET ol_delivery_d = to_timestamp($4) WHERE ol_w_id = $1 \
         AND ol_d_id = $2 AND ol_o_id = $3",
    ),
    (
        "c_deliver",
        "UPDATE customer SET c_balance = c_balance + (SELECT coalesce(sum(ol_amount), 0) \
         FROM order_line WHERE ol_w_id = $1 AND ol_d_id = $2 AND ol_o_id = $3), \
         c_delivery_cnt = c_delivery_cnt + 1 WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = \
         (SELECT o_c_id FROM oorder WHERE o_w_id = $1 AND o_d_id = $2 AND o_id = $3)",
    ),
    (
        "stock_level",
        "SELECT count(DISTINCT s_i_id) FROM order_line, stock WHERE ol_w_id = $1 \
         AND ol_d_id = $2 AND ol_o_id < (SELECT d_next_o_id FROM district WHERE d_w_id = $1 \
         AND d_id = $2) AND ol_o_id >= (SELECT d_next_o_id - 20 FROM district \
         WHERE d_w_id = $1 AND d_id = $2) AND s_w_id = $1 AND s_i_id = ol_i_id \
         AND s_quantity < $3",
    ),
];

/// A PostgreSQL database holding (or about to hold) the TPC-C tables.
pub struct PgTpcc {
    url: PgUrl,
    isolation: Isolation,
    description: String,
}

impl PgTpcc {
    /// Connects to `url` and checks that none of [`TABLES`] exists; with `flush`, drops them
    /// first (no other table).
    pub fn connect(url: &str, isolation: Isolation, flush: bool) -> anyhow::Result<PgTpcc> {
        let url = PgUrl::parse(url)?;
        let mut connection = Connection::connect(&url)
            .with_context(|| format!("cannot connect to postgres at {}", url.address()))?;
        if flush {
            connection
                .query(&format!("DROP TABLE IF EXISTS {}", TABLES.join(", ")))
                .context("drop the TPC-C tables")?;
        }
        for table in TABLES {
            let exists = connection
                .query(&format!("SELECT to_regclass('{table}') IS NOT NULL"))
                .context("look for the TPC-C tables")?;
            anyhow::ensure!(
                exists != [[Some(b"t".to_vec())]],
                "postgres database {} at {} already has the table {table} (an earlier run's \
                 data): pass --flush to drop the nine TPC-C tables ({}; no other table is \
                 touched)",
                url.database,
                url.address(),
                TABLES.join(", ")
            );
        }
        let description = format!(
            "PostgreSQL {} at {} database {} ({})",
            connection.server_version(),
            url.address(),
            url.database,
            isolation.sql()
        );
        Ok(PgTpcc {
            url,
            isolation,
            description,
        })
    }
}

impl Backend for PgTpcc {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn create(&mut self, _warehouse_count: u32) -> anyhow::Result<()> {
        let mut connection = Connection::connect(&self.url)?;
        connection
            .query(SCHEMA)
            .context("create the TPC-C tables")?;
        Ok(())
    }

    fn client(&self) -> anyhow::Result<Box<dyn Client>> {
        let mut connection = Connection::connect(&self.url)?;
        connection.prepare_all(&STATEMENTS)?;
        let begin = format!("BEGIN ISOLATION LEVEL {}", self.isolation.sql());
        connection
            .prepare("begin", &begin)
            .with_context(|| format!("prepare {begin:?}"))?;
        Ok(Box::new(PgClient {
            connection,
            analyzed: false,
        }))
    }
}

/// One thread's session.
struct PgClient {
    connection: Connection,
    /// Whether the statistics were brought up to date since the load (before the first check).
    analyzed: bool,
}

/// Rows of a result: each column's text, `None` for NULL.
type Rows = Vec<Vec<Option<Vec<u8>>>>;

/// Cents as the text of a numeric(12,2).
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02}", cents / 100, cents % 100)
}

/// A rate in ten-thousandths as the text of a numeric(4,4).
fn rate(rate: u32) -> String {
    format!("0.{rate:04}")
}

/// A numeric's text with `places` decimals as an integer of its smallest unit ("-10.00" with
/// 2 places is -1000).
fn fixed(text: &[u8], places: usize) -> anyhow::Result<i64> {
    let text = std::str::from_utf8(text).context("a numeric that is not UTF-8")?;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    anyhow::ensure!(
        fraction.len() <= places && fraction.bytes().all(|b| b.is_ascii_digit()),
        "{text:?} has more than {places} decimals"
    );
    let mut value: i64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .with_context(|| format!("{text:?} is not a number"))?
    };
    for index in 0..places {
        let digit = fraction
            .as_bytes()
            .get(index)
            .map_or(0, |b| i64::from(b - b'0'));
        value = value * 10 + digit;
    }
    Ok(if negative { -value } else { value })
}

/// Column `column` of `row`, which must not be NULL.
fn column<'a>(row: &'a [Option<Vec<u8>>], column: usize, what: &str) -> anyhow::Result<&'a [u8]> {
    row.get(column)
        .and_then(|value| value.as_deref())
        .with_context(|| format!("{what} is missing or NULL"))
}

fn integer<T: std::str::FromStr>(text: &[u8], what: &str) -> anyhow::Result<T> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .with_context(|| {
            format!(
                "{what} is {:?}, not an integer",
                String::from_utf8_lossy(text)
            )
        })
}

fn optional_integer<T: std::str::FromStr>(
    row: &[Option<Vec<u8>>],
    index: usize,
    what: &str,
) -> anyhow::Result<Option<T>> {
    match row.get(index) {
        Some(Some(text)) => Ok(Some(integer(text, what)?)),
        Some(None) => Ok(None),
        None => anyhow::bail!("{what} is missing"),
    }
}

/// The single row of a result.
fn one_row<'a>(rows: &'a Rows, what: &str) -> anyhow::Result<&'a [Option<Vec<u8>>]> {
    match rows.as_slice() {
        [row] => Ok(row),
        rows => anyhow::bail!("{what}: {} rows, expected one", rows.len()),
    }
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn address(address: &Address) -> String {
    [
        &address.street_1,
        &address.street_2,
        &address.city,
        &address.state,
        &address.zip,
    ]
    .map(|part| quote(part))
    .join(", ")
}

impl PgClient {
    /// What a batch that hit an error comes to: an abort after a serialization failure or a
    /// deadlock (rolled back first if the transaction is still open), an error otherwise.
    fn settle(&mut self, batch: Batch) -> anyhow::Result<Option<Batch>> {
        let Some(error) = batch.error.clone() else {
            return Ok(Some(batch));
        };
        if batch.status != TxnStatus::Idle {
            self.rollback()?;
        }
        if error.is_retryable() {
            Ok(None)
        } else {
            Err(PgError::Server(error).into())
        }
    }

    fn rollback(&mut self) -> anyhow::Result<()> {
        self.connection.push("rollback", &[]);
        let rolled_back = self.connection.run()?;
        if let Some(error) = rolled_back.error {
            return Err(PgError::Server(error)).context("ROLLBACK");
        }
        Ok(())
    }

    /// Pushes `statements` (each a name and its parameters) and runs them as one batch.
    fn batch(&mut self, statements: &[(&str, Vec<String>)]) -> anyhow::Result<Option<Batch>> {
        for (name, parameters) in statements {
            let parameters: Vec<&[u8]> = parameters.iter().map(|p| p.as_bytes()).collect();
            self.connection.push(name, &parameters);
        }
        let batch = self.connection.run()?;
        self.settle(batch)
    }

    /// Runs the last batch of a transaction, which ends with COMMIT.
    fn finish(&mut self, statements: &[(&str, Vec<String>)]) -> anyhow::Result<Option<Batch>> {
        let batch = self.batch(statements)?;
        if let Some(batch) = &batch {
            let tag = batch.outcomes.last().map(|o| o.tag.as_str());
            anyhow::ensure!(tag == Some("COMMIT"), "COMMIT answered {tag:?}");
        }
        Ok(batch)
    }

    /// Inserts `rows` (each a parenthesised list of values) into `table`.
    fn insert(&mut self, table: &str, rows: impl Iterator<Item = String>) -> anyhow::Result<()> {
        let rows: Vec<String> = rows.collect();
        for chunk in rows.chunks(INSERT_ROWS_MAX) {
            self.connection
                .query(&format!("INSERT INTO {table} VALUES {}", chunk.join(", ")))
                .with_context(|| format!("insert into {table}"))?;
        }
        Ok(())
    }

    /// The customer a choice names in a district, found in a transaction already begun: by
    /// name, the middle of those sorted by first name. None if the transaction aborted.
    fn choose_customer(
        &mut self,
        w_id: u32,
        d_id: u32,
        choice: &CustomerChoice,
        mut first: Vec<(&str, Vec<String>)>,
    ) -> anyhow::Result<Option<(u32, Batch)>> {
        let name = match choice {
            CustomerChoice::Id(c_id) => {
                let Some(batch) = self.batch(&first)? else {
                    return Ok(None);
                };
                return Ok(Some((*c_id, batch)));
            }
            CustomerChoice::LastName(name) => name,
        };
        first.push((
            "c_by_name",
            vec![w_id.to_string(), d_id.to_string(), name.clone()],
        ));
        let Some(batch) = self.batch(&first)? else {
            return Ok(None);
        };
        let rows = &batch.outcomes.last().expect("c_by_name ran").rows;
        let Some(index) = middle_index(rows.len()) else {
            self.rollback()?;
            anyhow::bail!("no customer named {name} in district {w_id}/{d_id}");
        };
        let c_id = integer(column(&rows[index], 0, "C_ID")?, "C_ID")?;
        Ok(Some((c_id, batch)))
    }

    /// Brings the planner's statistics up to date once after the load, so the transactions'
    /// lookups are index scans (a sequential scan under SERIALIZABLE takes a predicate lock on
    /// the whole table and makes every pair of transactions conflict).
    fn analyze(&mut self) -> anyhow::Result<()> {
        if !self.analyzed {
            self.connection.query("ANALYZE").context("ANALYZE")?;
            self.analyzed = true;
        }
        Ok(())
    }
}

impl Client for PgClient {
    fn load_items(&mut self, items: &[Item]) -> anyhow::Result<()> {
        self.insert(
            "item",
            items.iter().map(|i| {
                format!(
                    "({}, {}, {}, {}, {})",
                    i.i_id,
                    i.im_id,
                    quote(&i.name),
                    money(i.price),
                    quote(&i.data)
                )
            }),
        )
    }

    fn load_warehouse(&mut self, w: &Warehouse) -> anyhow::Result<()> {
        self.insert(
            "warehouse",
            std::iter::once(format!(
                "({}, {}, {}, {}, {})",
                w.w_id,
                quote(&w.name),
                address(&w.address),
                rate(w.tax),
                money(w.ytd)
            )),
        )
    }

    fn load_stock(&mut self, stock: &[Stock]) -> anyhow::Result<()> {
        self.insert(
            "stock",
            stock.iter().map(|s| {
                let dist: Vec<String> = s.dist.iter().map(|d| quote(d)).collect();
                format!(
                    "({}, {}, {}, {}, {}, {}, {}, {})",
                    s.w_id,
                    s.i_id,
                    s.quantity,
                    dist.join(", "),
                    s.ytd,
                    s.order_cnt,
                    s.remote_cnt,
                    quote(&s.data)
                )
            }),
        )
    }

    fn load_district(&mut self, rows: &DistrictRows) -> anyhow::Result<()> {
        let d = &rows.district;
        self.insert(
            "district",
            std::iter::once(format!(
                "({}, {}, {}, {}, {}, {}, {})",
                d.w_id,
                d.d_id,
                quote(&d.name),
                address(&d.address),
                rate(d.tax),
                money(d.ytd),
                d.next_o_id
            )),
        )?;
        self.insert(
            "customer",
            rows.customers.iter().map(|c| {
                format!(
                    "({}, {}, {}, {}, {}, {}, {}, {}, to_timestamp({}), {}, {}, {}, {}, {}, {}, \
                     {}, {})",
                    c.w_id,
                    c.d_id,
                    c.c_id,
                    quote(&c.first),
                    quote(&c.middle),
                    quote(&c.last),
                    address(&c.address),
                    quote(&c.phone),
                    c.since,
                    quote(&c.credit),
                    money(c.credit_lim),
                    rate(c.discount),
                    money(c.balance),
                    money(c.ytd_payment),
                    c.payment_cnt,
                    c.delivery_cnt,
                    quote(&c.data)
                )
            }),
        )?;
        self.insert(
            "history",
            rows.history.iter().map(|h| {
                format!(
                    "({}, {}, {}, {}, {}, to_timestamp({}), {}, {})",
                    h.c_id,
                    h.c_d_id,
                    h.c_w_id,
                    h.d_id,
                    h.w_id,
                    h.date,
                    money(h.amount),
                    quote(&h.data)
                )
            }),
        )?;
        self.insert(
            "oorder",
            rows.orders.iter().map(|o| {
                format!(
                    "({}, {}, {}, {}, to_timestamp({}), {}, {}, {})",
                    o.w_id,
                    o.d_id,
                    o.o_id,
                    o.c_id,
                    o.entry_d,
                    o.carrier_id.map_or("NULL".into(), |c| c.to_string()),
                    o.ol_cnt,
                    i32::from(o.all_local)
                )
            }),
        )?;
        let (w_id, d_id) = (d.w_id, d.d_id);
        self.insert(
            "new_order",
            rows.new_orders()
                .map(|o_id| format!("({w_id}, {d_id}, {o_id})")),
        )?;
        self.insert(
            "order_line",
            rows.order_lines.iter().map(|l| {
                format!(
                    "({}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                    l.w_id,
                    l.d_id,
                    l.o_id,
                    l.number,
                    l.i_id,
                    l.supply_w_id,
                    l.delivery_d
                        .map_or("NULL".into(), |date| format!("to_timestamp({date})")),
                    l.quantity,
                    money(l.amount),
                    quote(&l.dist_info)
                )
            }),
        )
    }

    fn new_order(&mut self, input: &NewOrderInput) -> anyhow::Result<Attempt<NewOrderOutcome>> {
        let (w, d, c) = (
            input.w_id.to_string(),
            input.d_id.to_string(),
            input.c_id.to_string(),
        );
        let ids: Vec<String> = input.lines.iter().map(|l| l.i_id.to_string()).collect();
        let mut first = vec![
            ("begin", vec![]),
            ("w_tax", vec![w.clone()]),
            ("d_next", vec![w.clone(), d.clone()]),
            ("c_discount", vec![w.clone(), d.clone(), c.clone()]),
            ("items", vec![format!("{{{}}}", ids.join(","))]),
        ];
        // Stock rows are updated in (warehouse, item) order so two New-Orders lock them in
        // the same order and do not deadlock.
        let mut order: Vec<usize> = (0..input.lines.len()).collect();
        order.sort_by_key(|&index| (input.lines[index].supply_w_id, input.lines[index].i_id));
        for &index in &order {
            let line = &input.lines[index];
            first.push((
                "stock_take",
                vec![
                    line.supply_w_id.to_string(),
                    line.i_id.to_string(),
                    line.quantity.to_string(),
                    u32::from(line.supply_w_id != input.w_id).to_string(),
                    d.clone(),
                ],
            ));
        }
        let Some(batch) = self.batch(&first)? else {
            return Ok(Attempt::Aborted);
        };
        let outcomes = &batch.outcomes;
        let w_tax = fixed(column(one_row(&outcomes[1].rows, "W_TAX")?, 0, "W_TAX")?, 4)?;
        let district = one_row(&outcomes[2].rows, "the district")?;
        let d_tax = fixed(column(district, 0, "D_TAX")?, 4)?;
        let o_id: u32 = integer(column(district, 1, "D_NEXT_O_ID")?, "D_NEXT_O_ID")?;
        let discount = fixed(
            column(one_row(&outcomes[3].rows, "the customer")?, 0, "C_DISCOUNT")?,
            4,
        )?;
        let mut items = std::collections::HashMap::new();
        for row in &outcomes[4].rows {
            let i_id: u32 = integer(column(row, 0, "I_ID")?, "I_ID")?;
            let price = fixed(column(row, 1, "I_PRICE")?, 2)?;
            let data = String::from_utf8_lossy(column(row, 2, "I_DATA")?).into_owned();
            items.insert(i_id, (price, data));
        }
        if input.lines.iter().any(|l| !items.contains_key(&l.i_id)) {
            // The spec's rollback: the unused item is not found.
            self.rollback()?;
            return Ok(Attempt::Committed(NewOrderOutcome::RolledBack));
        }
        let mut stock = vec![None; input.lines.len()];
        for (position, &index) in order.iter().enumerate() {
            let row = one_row(&outcomes[5 + position].rows, "a stock row")?;
            let quantity: u32 = integer(column(row, 0, "S_QUANTITY")?, "S_QUANTITY")?;
            let data = String::from_utf8_lossy(column(row, 1, "S_DATA")?).into_owned();
            let dist = String::from_utf8_lossy(column(row, 2, "S_DIST")?).into_owned();
            stock[index] = Some((quantity, data, dist));
        }
        let mut lines = Vec::with_capacity(input.lines.len());
        let mut second = vec![
            (
                "order_insert",
                vec![
                    w.clone(),
                    d.clone(),
                    o_id.to_string(),
                    c.clone(),
                    input.entry_d.to_string(),
                    input.lines.len().to_string(),
                    u32::from(input.all_local()).to_string(),
                ],
            ),
            (
                "new_order_insert",
                vec![w.clone(), d.clone(), o_id.to_string()],
            ),
        ];
        for (index, line) in input.lines.iter().enumerate() {
            let (price, i_data) = &items[&line.i_id];
            let (quantity, s_data, dist) = stock[index].take().expect("every line's stock");
            let amount = i64::from(line.quantity) * price;
            lines.push(LineOutput {
                i_price: *price,
                s_quantity: quantity,
                brand_generic: brand_generic(i_data, &s_data),
                amount,
            });
            second.push((
                "line_insert",
                vec![
                    w.clone(),
                    d.clone(),
                    o_id.to_string(),
                    (index + 1).to_string(),
                    line.i_id.to_string(),
                    line.supply_w_id.to_string(),
                    line.quantity.to_string(),
                    money(amount),
                    dist,
                ],
            ));
        }
        second.push(("commit", vec![]));
        if self.finish(&second)?.is_none() {
            return Ok(Attempt::Aborted);
        }
        let sum = lines.iter().map(|l| l.amount).sum();
        Ok(Attempt::Committed(NewOrderOutcome::Placed(
            NewOrderOutput {
                o_id,
                total: new_order_total(sum, discount as u32, w_tax as u32, d_tax as u32),
                lines,
            },
        )))
    }

    fn payment(&mut self, input: &PaymentInput) -> anyhow::Result<Attempt<PaymentOutput>> {
        let (w, d, amount) = (
            input.w_id.to_string(),
            input.d_id.to_string(),
            money(input.h_amount),
        );
        let first = vec![
            ("begin", vec![]),
            ("w_pay", vec![w.clone(), amount.clone()]),
            ("d_pay", vec![w.clone(), d.clone(), amount.clone()]),
        ];
        let (c_w, c_d) = (input.c_w_id.to_string(), input.c_d_id.to_string());
        // By id the whole transaction is one batch; by name the customer is found first.
        let (c_id, mut rest) = match &input.customer {
            CustomerChoice::Id(c_id) => (*c_id, first),
            choice => {
                let Some((c_id, _)) =
                    self.choose_customer(input.c_w_id, input.c_d_id, choice, first)?
                else {
                    return Ok(Attempt::Aborted);
                };
                (c_id, vec![])
            }
        };
        let c = c_id.to_string();
        rest.push((
            "c_pay",
            vec![
                c_w.clone(),
                c_d.clone(),
                c.clone(),
                amount.clone(),
                bad_credit_data(input, c_id, ""),
            ],
        ));
        rest.push((
            "h_insert",
            vec![c, c_d, c_w, d, w, input.h_date.to_string(), amount],
        ));
        rest.push(("commit", vec![]));
        let position = rest.len() - 3;
        let Some(batch) = self.finish(&rest)? else {
            return Ok(Attempt::Aborted);
        };
        let row = one_row(&batch.outcomes[position].rows, "the paying customer")?;
        Ok(Attempt::Committed(PaymentOutput {
            c_id,
            balance: fixed(column(row, 0, "C_BALANCE")?, 2)?,
        }))
    }

    fn order_status(
        &mut self,
        input: &OrderStatusInput,
    ) -> anyhow::Result<Attempt<OrderStatusOutput>> {
        let Some((c_id, _)) = self.choose_customer(
            input.w_id,
            input.d_id,
            &input.customer,
            vec![("begin", vec![])],
        )?
        else {
            return Ok(Attempt::Aborted);
        };
        let key = vec![
            input.w_id.to_string(),
            input.d_id.to_string(),
            c_id.to_string(),
        ];
        let Some(batch) = self.finish(&[
            ("c_balance", key.clone()),
            ("latest_order", key.clone()),
            ("latest_lines", key),
            ("commit", vec![]),
        ])?
        else {
            return Ok(Attempt::Aborted);
        };
        let balance = fixed(
            column(
                one_row(&batch.outcomes[0].rows, "the customer")?,
                0,
                "C_BALANCE",
            )?,
            2,
        )?;
        let order = match batch.outcomes[1].rows.first() {
            None => None,
            Some(row) => Some(OrderSummary {
                o_id: integer(column(row, 0, "O_ID")?, "O_ID")?,
                carrier_id: optional_integer(row, 1, "O_CARRIER_ID")?,
                lines: batch.outcomes[2]
                    .rows
                    .iter()
                    .map(|row| {
                        Ok((
                            integer(column(row, 0, "OL_I_ID")?, "OL_I_ID")?,
                            integer(column(row, 1, "OL_SUPPLY_W_ID")?, "OL_SUPPLY_W_ID")?,
                            integer(column(row, 2, "OL_QUANTITY")?, "OL_QUANTITY")?,
                            fixed(column(row, 3, "OL_AMOUNT")?, 2)?,
                            optional_integer(row, 4, "OL_DELIVERY_D")?,
                        ))
                    })
                    .collect::<anyhow::Result<_>>()?,
            }),
        };
        Ok(Attempt::Committed(OrderStatusOutput {
            c_id,
            balance,
            order,
        }))
    }

    fn delivery(&mut self, input: &DeliveryInput) -> anyhow::Result<Attempt<DeliveryOutput>> {
        let w = input.w_id.to_string();
        let mut first = vec![("begin", vec![])];
        for d_id in 1..=DISTRICTS_PER_WAREHOUSE {
            first.push(("oldest_new_order", vec![w.clone(), d_id.to_string()]));
        }
        let Some(batch) = self.batch(&first)? else {
            return Ok(Attempt::Aborted);
        };
        let mut delivered = Vec::new();
        let mut second = Vec::new();
        for d_id in 1..=DISTRICTS_PER_WAREHOUSE {
            let row = one_row(&batch.outcomes[d_id as usize].rows, "min(NO_O_ID)")?;
            let Some(o_id) = optional_integer::<u32>(row, 0, "min(NO_O_ID)")? else {
                continue;
            };
            let key = vec![w.clone(), d_id.to_string(), o_id.to_string()];
            let with = |extra: String| {
                let mut parameters = key.clone();
                parameters.push(extra);
                parameters
            };
            second.push(("new_order_delete", key.clone()));
            second.push(("order_carrier", with(input.carrier_id.to_string())));
            second.push(("lines_deliver", with(input.delivery_d.to_string())));
            second.push(("c_deliver", key.clone()));
            delivered.push((d_id, o_id));
        }
        let Some(batch) = self.batch(&second)? else {
            return Ok(Attempt::Aborted);
        };
        // Only READ COMMITTED lets a concurrent Delivery take the order between the two
        // batches: the DELETE then removes nothing, and the whole transaction is undone.
        if batch
            .outcomes
            .iter()
            .any(|outcome| outcome.tag == "DELETE 0")
        {
            self.rollback()?;
            return Ok(Attempt::Aborted);
        }
        if self.finish(&[("commit", vec![])])?.is_none() {
            return Ok(Attempt::Aborted);
        }
        Ok(Attempt::Committed(DeliveryOutput { delivered }))
    }

    fn stock_level(&mut self, input: &StockLevelInput) -> anyhow::Result<Attempt<u32>> {
        let Some(batch) = self.finish(&[
            ("begin", vec![]),
            (
                "stock_level",
                vec![
                    input.w_id.to_string(),
                    input.d_id.to_string(),
                    input.threshold.to_string(),
                ],
            ),
            ("commit", vec![]),
        ])?
        else {
            return Ok(Attempt::Aborted);
        };
        let row = one_row(&batch.outcomes[1].rows, "the stock level")?;
        Ok(Attempt::Committed(integer(
            column(row, 0, "count")?,
            "count",
        )?))
    }

    fn read_warehouse_ytd(&mut self, w_id: u32) -> anyhow::Result<i64> {
        self.analyze()?;
        let rows = self
            .connection
            .query(&format!("SELECT w_ytd FROM warehouse WHERE w_id = {w_id}"))?;
        fixed(column(one_row(&rows, "the warehouse")?, 0, "W_YTD")?, 2)
    }

    fn read_district(&mut self, w_id: u32, d_id: u32) -> anyhow::Result<DistrictState> {
        self.analyze()?;
        let mut query = |sql: String| self.connection.query(&sql);
        let district = query(format!(
            "SELECT d_ytd, d_next_o_id FROM district WHERE d_w_id = {w_id} AND d_id = {d_id}"
        ))?;
        let district = one_row(&district, "the district")?;
        let orders = query(format!(
            "SELECT o_id, o_c_id, o_carrier_id, o_ol_cnt FROM oorder \
             WHERE o_w_id = {w_id} AND o_d_id = {d_id}"
        ))?;
        let new_orders = query(format!(
            "SELECT no_o_id FROM new_order WHERE no_w_id = {w_id} AND no_d_id = {d_id}"
        ))?;
        let lines = query(format!(
            "SELECT ol_o_id, ol_number, extract(epoch FROM ol_delivery_d)::bigint, ol_amount \
             FROM order_line WHERE ol_w_id = {w_id} AND ol_d_id = {d_id}"
        ))?;
        let customers = query(format!(
            "SELECT c_id, c_balance, c_ytd_payment FROM customer \
             WHERE c_w_id = {w_id} AND c_d_id = {d_id}"
        ))?;
        let history = query(format!(
            "SELECT h_c_w_id, h_c_d_id, h_c_id, h_amount FROM history \
             WHERE h_w_id = {w_id} AND h_d_id = {d_id}"
        ))?;
        Ok(DistrictState {
            ytd: fixed(column(district, 0, "D_YTD")?, 2)?,
            next_o_id: integer(column(district, 1, "D_NEXT_O_ID")?, "D_NEXT_O_ID")?,
            orders: orders
                .iter()
                .map(|row| {
                    Ok(OrderState {
                        o_id: integer(column(row, 0, "O_ID")?, "O_ID")?,
                        c_id: integer(column(row, 1, "O_C_ID")?, "O_C_ID")?,
                        carrier_id: optional_integer(row, 2, "O_CARRIER_ID")?,
                        ol_cnt: integer(column(row, 3, "O_OL_CNT")?, "O_OL_CNT")?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            new_orders: new_orders
                .iter()
                .map(|row| integer(column(row, 0, "NO_O_ID")?, "NO_O_ID"))
                .collect::<anyhow::Result<_>>()?,
            order_lines: lines
                .iter()
                .map(|row| {
                    Ok(LineState {
                        o_id: integer(column(row, 0, "OL_O_ID")?, "OL_O_ID")?,
                        number: integer(column(row, 1, "OL_NUMBER")?, "OL_NUMBER")?,
                        delivery_d: optional_integer(row, 2, "OL_DELIVERY_D")?,
                        amount: fixed(column(row, 3, "OL_AMOUNT")?, 2)?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            customers: customers
                .iter()
                .map(|row| {
                    Ok(CustomerState {
                        c_id: integer(column(row, 0, "C_ID")?, "C_ID")?,
                        balance: fixed(column(row, 1, "C_BALANCE")?, 2)?,
                        ytd_payment: fixed(column(row, 2, "C_YTD_PAYMENT")?, 2)?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            history: history
                .iter()
                .map(|row| {
                    Ok(HistoryState {
                        c_w_id: integer(column(row, 0, "H_C_W_ID")?, "H_C_W_ID")?,
                        c_d_id: integer(column(row, 1, "H_C_D_ID")?, "H_C_D_ID")?,
                        c_id: integer(column(row, 2, "H_C_ID")?, "H_C_ID")?,
                        amount: fixed(column(row, 3, "H_AMOUNT")?, 2)?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_and_rates_round_trip_through_their_text() {
        for cents in [0, 1, -1, 99, -1000, 30_000_000, -123_456] {
            assert_eq!(fixed(money(cents).as_bytes(), 2).unwrap(), cents, "{cents}");
        }
        assert_eq!(money(-5), "-0.05");
        assert_eq!(rate(1234), "0.1234");
        assert_eq!(fixed(b"0.1234", 4).unwrap(), 1234);
        assert_eq!(fixed(b".5", 4).unwrap(), 5000);
        assert!(fixed(b"1.234", 2).is_err());
        assert!(fixed(b"x.00", 2).is_err());
    }
}
