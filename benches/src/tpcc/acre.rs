//! The TPC-C backend for Acre, over the public `Db` API and acre-txn's indexes. Every row is
//! an object; each TPC-C transaction is one Acre transaction (strictly serializable), and an
//! Acre conflict is an abort the driver retries.
//!
//! Where rows are found:
//! - **Primary keys through the hash table** (one table for all, keys a tag byte and the ids
//!   big-endian): `I` i (item), `W` w and `w` w (warehouse), `D`/`d`/`N`/`Q` w d (district),
//!   `C` w d c (customer), `S` w i (stock).
//! - **Ordered and secondary access through B-trees**, keys the ids big-endian so byte order
//!   is id order: customers by name (w d C_LAST C_FIRST c, names zero-padded to 16 bytes so
//!   the entries of one last name sort by first name), orders (w d o: Stock-Level's last 20
//!   orders), orders by customer (w d c !o, so the first entry of a customer is the latest
//!   order), NEW-ORDER (w d o, the value the order's address: the row has no other column)
//!   and history (h_w h_d c_w c_d c n, n the customer's payment count, which makes the key
//!   unique; HISTORY has no primary key in the spec). ORDER, NEW-ORDER and ORDER-LINE are only
//!   ever reached in key order, so their B-trees are their primary key indexes: a hash entry
//!   would be written by every New-Order and read by nothing.
//! - **An order's lines are kept in its object** (`OrderRows`, at most 15 lines of 59 bytes
//!   after the order's 37, within the 1 KiB size class): New-Order creates them together,
//!   Delivery updates them together, Order-Status and Stock-Level read them by order, and
//!   clause 1.4 lets an implementation cluster rows of different tables. One object instead
//!   of eleven is one allocation instead of eleven, which in a cluster of node processes are
//!   eleven messages to the primary.
//!
//! Departures from one-row-one-object, each to keep optimistic transactions from conflicting
//! where a lock-based engine's row locks would not:
//! - WAREHOUSE and DISTRICT are split vertically: the columns New-Order and Payment only read
//!   (name, address, tax: `W`, `D`) are one object, W_YTD (`w`), D_YTD (`d`) and D_NEXT_O_ID
//!   (`N`) one object each. Otherwise every New-Order, which reads W_TAX, would abort whenever
//!   a Payment wrote W_YTD in between.
//! - A district's **delivery cursor** (`Q`): the lowest order id that may still be in
//!   NEW-ORDER. Delivery ranges over the NEW-ORDER tree from it, not from the district's first
//!   key: the B-tree does not merge the leaves Delivery empties, and a range from the start
//!   would walk every one of them (and stop with `TxnTooLarge` past 1,024). Only Delivery
//!   writes it, so it adds no conflict with New-Order.
//!
//! Placement: a warehouse's rows (its stock, districts, customers, orders, order lines,
//! history) are allocated with `alloc_near` its W_YTD object, so they share its region and a
//! transaction on one warehouse touches one primary's regions, as in FaRM. When that region is
//! full the next object goes wherever `alloc_preferably_near` puts it (another region with
//! room, or one the CM adds when every region is full) and the warehouse's rows continue there.
//! The items, read by every warehouse, go wherever `alloc` puts them.
//!
//! After the load the hash table never changes and its rows never move, so a client keeps
//! the address of every row it has found through it and reads the row directly the next time
//! (as FaRM's applications cache addresses); the first lookup of a key reads its bucket.
//!
//! The hash table's capacity is fixed at creation: it is sized for the keys the load inserts,
//! which are all the keys there are (no transaction inserts into it). The B-trees grow with
//! the orders; they never merge, which the cursor above makes harmless.

use super::backend::{
    Attempt, Backend, Client, CustomerState, DeliveryOutput, DistrictState, HistoryState,
    LineOutput, LineState, NewOrderOutcome, NewOrderOutput, OrderState, OrderStatusOutput,
    OrderSummary, PaymentOutput, bad_credit_data, brand_generic, history_data, middle_index,
    new_order_total, stock_after,
};
use super::input::{
    CustomerChoice, DISTRICTS_PER_WAREHOUSE, DeliveryInput, ITEM_COUNT, NewOrderInput,
    ORDER_LINES_MAX, OrderStatusInput, PaymentInput, StockLevelInput,
};
use super::rows::{
    Address, Customer, DistrictRows, History, Item, Order, OrderLine, Stock, Warehouse,
};
use acre_engine::hash::FastMap;
use acre_replication::db::{Addr, CommitError, Db, Error, IndexError, Txn, TxnError};
use acre_txn::index::{BTree, HashTable};
use anyhow::Context;
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};

/// Hash-table keys per warehouse: its two warehouse objects, four per district, its
/// customers and its stock.
pub const KEYS_PER_WAREHOUSE: usize = 2 + 10 * 4 + 30_000 + 100_000;
/// C_DATA's most characters (clause 1.3.1: varchar(500)).
pub const CUSTOMER_DATA_BYTES_MAX: usize = 500;
/// Rows one load transaction writes.
pub const LOAD_ROWS_PER_TXN: usize = 50;
/// Entries one transaction of the checks reads.
pub const CHECK_ENTRIES_PER_TXN: usize = 500;
/// Bytes a warehouse takes once loaded, rounded up. By the size classes (slot = payload
/// rounded up to its class plus 24 bytes of header, sum and trailer): 100,000 stock rows of
/// 332 bytes in 408-byte slots (41 MB), 30,000 customers with room for a 500-byte C_DATA in
/// 792-byte slots (24 MB), 30,000 orders with their lines in 792-byte slots (24 MB), 30,000
/// history rows in 88-byte slots (2.6 MB), its 130,000 hash keys at a fifth of their table's
/// 1 KiB buckets (8 MB) and B-tree leaves (about 7 MB): about 107 MB, and the items' 11 MB
/// once. The rest is room for partly filled blocks and leaves.
pub const LOADED_BYTES_PER_WAREHOUSE: u64 = 160 << 20;
/// Bytes a New-Order adds on average (its order object and three index entries).
pub const BYTES_PER_NEW_ORDER: u64 = 1 << 10;

/// An Acre database holding (or about to hold) the TPC-C tables.
pub struct AcreTpcc {
    db: Db,
    description: String,
    tables: Option<Arc<Tables>>,
}

/// The indexes, and what every client shares.
struct Tables {
    rows: HashTable,
    by_name: BTree,
    by_customer: BTree,
    new_orders: BTree,
    orders: BTree,
    history: BTree,
    /// Per warehouse, the object its rows are allocated near (moves on when a region fills).
    near: Mutex<HashMap<u32, Addr>>,
    /// Addresses of the rows found through the hash table, by [`packed`] key (see
    /// [`Tables::lookup`]).
    located: RwLock<FastMap<u128, Addr>>,
    /// Whether the run's new rows go to the coordinator's own regions (see
    /// [`Tables::alloc_run`]).
    alloc_at_coordinator: bool,
}

const POISONED: &str = "a thread panicked holding the TPC-C backend's maps";

impl AcreTpcc {
    /// `description` says what `db` is (an embedded cluster, the cluster in a directory).
    pub fn new(db: Db, description: String) -> AcreTpcc {
        AcreTpcc {
            db,
            description,
            tables: None,
        }
    }

    /// Bytes of primary memory `warehouse_count` warehouses need once loaded, and after a run
    /// of `new_orders` New-Orders.
    pub fn bytes_needed(warehouse_count: u32, new_orders: u64) -> u64 {
        u64::from(warehouse_count) * LOADED_BYTES_PER_WAREHOUSE
            + new_orders * BYTES_PER_NEW_ORDER
            + (ITEM_COUNT as u64) * 128
    }

    /// Copies of every region: its primary and its backups.
    pub fn replicas(&self) -> usize {
        self.db.config().f + 1
    }

    /// Bytes of primary memory the cluster has (the sum of its regions).
    pub fn bytes_available(&self) -> u64 {
        let config = self.db.config();
        config.regions.len() as u64 * config.region_bytes
    }
}

impl Backend for AcreTpcc {
    fn name(&self) -> &'static str {
        "acre"
    }

    fn describe(&self) -> String {
        format!(
            "{}, {} replicas of every region",
            self.description,
            self.replicas()
        )
    }

    fn create(&mut self, warehouse_count: u32) -> anyhow::Result<()> {
        let capacity = (ITEM_COUNT as usize + warehouse_count as usize * KEYS_PER_WAREHOUSE)
            .saturating_mul(5)
            / 4;
        let rows = HashTable::create(&self.db, capacity).context("create the hash table")?;
        let trees = self
            .db
            .run(|txn| {
                Ok([
                    BTree::create(txn)?,
                    BTree::create(txn)?,
                    BTree::create(txn)?,
                    BTree::create(txn)?,
                    BTree::create(txn)?,
                ])
            })
            .context("create the B-trees")?;
        let [by_name, by_customer, new_orders, orders, history] = trees;
        self.tables = Some(Arc::new(Tables {
            rows,
            by_name,
            by_customer,
            new_orders,
            orders,
            history,
            near: Mutex::new(HashMap::new()),
            located: RwLock::new(FastMap::default()),
            alloc_at_coordinator: self.db.client_id().is_none(),
        }));
        Ok(())
    }

    fn client(&self) -> anyhow::Result<Box<dyn Client>> {
        let tables = self
            .tables
            .clone()
            .context("the tables are created before a client is asked for")?;
        Ok(Box::new(AcreClient {
            db: self.db.clone(),
            tables,
        }))
    }
}

/// One thread's session.
struct AcreClient {
    db: Db,
    tables: Arc<Tables>,
}

// ---- keys ----

fn key(tag: u8, ids: &[u32]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 4 * ids.len());
    key.push(tag);
    for id in ids {
        key.extend_from_slice(&id.to_be_bytes());
    }
    key
}

/// A hash key (a tag and at most three ids: 13 bytes) as one number. Keys of one tag have one
/// length, so two keys that differ pack differently.
fn packed(key: &[u8]) -> u128 {
    assert!(key.len() <= 16, "key={key:?}");
    key.iter()
        .fold(0u128, |packed, &byte| packed << 8 | u128::from(byte))
}

/// A B-tree key: the ids big-endian.
fn tree_key(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_be_bytes()).collect()
}

/// The key just above every key that starts with `prefix`: the prefix plus one, as a
/// big-endian number (ids never reach u32::MAX, so it never overflows).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    for byte in end.iter_mut().rev() {
        if *byte == u8::MAX {
            *byte = 0;
        } else {
            *byte += 1;
            return end;
        }
    }
    panic!("prefix={prefix:?} has no successor");
}

/// A name zero-padded to 16 bytes (C_LAST and C_FIRST are at most 16 characters).
fn padded(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let bytes = name.as_bytes();
    assert!(bytes.len() <= 16, "name={name}");
    out[..bytes.len()].copy_from_slice(bytes);
    out
}

fn name_key(w_id: u32, d_id: u32, last: &str, first: &str, c_id: u32) -> Vec<u8> {
    let mut key = tree_key(&[w_id, d_id]);
    key.extend_from_slice(&padded(last));
    key.extend_from_slice(&padded(first));
    key.extend_from_slice(&c_id.to_be_bytes());
    key
}

fn name_prefix(w_id: u32, d_id: u32, last: &str) -> Vec<u8> {
    let mut key = tree_key(&[w_id, d_id]);
    key.extend_from_slice(&padded(last));
    key
}

// ---- encodings: fields in order, u32 and i64 little-endian, strings with a u16 length,
// options with a flag byte ----

#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u32(&mut self, value: u32) -> &mut Out {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    fn i64(&mut self, value: i64) -> &mut Out {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    fn str(&mut self, value: &str) -> &mut Out {
        let len = u16::try_from(value.len()).expect("row strings are at most 500 bytes");
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(value.as_bytes());
        self
    }
    fn opt_u32(&mut self, value: Option<u32>) -> &mut Out {
        self.0.push(u8::from(value.is_some()));
        self.u32(value.unwrap_or(0))
    }
    fn opt_i64(&mut self, value: Option<i64>) -> &mut Out {
        self.0.push(u8::from(value.is_some()));
        self.i64(value.unwrap_or(0))
    }
    fn address(&mut self, address: &Address) -> &mut Out {
        self.str(&address.street_1)
            .str(&address.street_2)
            .str(&address.city)
            .str(&address.state)
            .str(&address.zip)
    }
}

struct In<'a> {
    addr: Addr,
    bytes: &'a [u8],
}

impl<'a> In<'a> {
    fn new(addr: Addr, bytes: &'a [u8]) -> In<'a> {
        In { addr, bytes }
    }
    fn malformed(&self, reason: String) -> IndexError {
        IndexError::Malformed {
            addr: self.addr,
            reason,
        }
    }
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], IndexError> {
        if self.bytes.len() < len {
            return Err(self.malformed(format!(
                "the row ends before its {what} ({} bytes left, {len} needed)",
                self.bytes.len()
            )));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }
    fn u32(&mut self, what: &str) -> Result<u32, IndexError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self, what: &str) -> Result<i64, IndexError> {
        Ok(i64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn str(&mut self, what: &str) -> Result<String, IndexError> {
        Ok(self.str_ref(what)?.to_string())
    }
    fn str_ref(&mut self, what: &str) -> Result<&'a str, IndexError> {
        let len = u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes"));
        let bytes = self.take(usize::from(len), what)?;
        std::str::from_utf8(bytes).map_err(|_| self.malformed(format!("its {what} is not UTF-8")))
    }
    fn flag(&mut self, what: &str) -> Result<bool, IndexError> {
        match self.take(1, what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.malformed(format!("its {what} flag is {other}"))),
        }
    }
    fn opt_u32(&mut self, what: &str) -> Result<Option<u32>, IndexError> {
        let present = self.flag(what)?;
        let value = self.u32(what)?;
        Ok(present.then_some(value))
    }
    fn opt_i64(&mut self, what: &str) -> Result<Option<i64>, IndexError> {
        let present = self.flag(what)?;
        let value = self.i64(what)?;
        Ok(present.then_some(value))
    }
    fn address(&mut self) -> Result<Address, IndexError> {
        Ok(Address {
            street_1: self.str("street 1")?,
            street_2: self.str("street 2")?,
            city: self.str("city")?,
            state: self.str("state")?,
            zip: self.str("zip")?,
        })
    }
    fn end(&self) -> Result<(), IndexError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.malformed(format!("{} bytes after the row", self.bytes.len())))
        }
    }
}

/// A row kept as one object.
trait Record: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode(input: &mut In<'_>) -> Result<Self, IndexError>;
}

fn decode<R: Record>(addr: Addr, bytes: &[u8]) -> Result<R, IndexError> {
    let mut input = In::new(addr, bytes);
    let row = R::decode(&mut input)?;
    input.end()?;
    Ok(row)
}

impl Record for Item {
    fn encode(&self) -> Vec<u8> {
        let mut out = Out::default();
        out.u32(self.i_id)
            .u32(self.im_id)
            .str(&self.name)
            .i64(self.price)
            .str(&self.data);
        out.0
    }
    fn decode(input: &mut In<'_>) -> Result<Item, IndexError> {
        Ok(Item {
            i_id: input.u32("I_ID")?,
            im_id: input.u32("I_IM_ID")?,
            name: input.str("I_NAME")?,
            price: input.i64("I_PRICE")?,
            data: input.str("I_DATA")?,
        })
    }
}

/// The columns of WAREHOUSE or DISTRICT that New-Order and Payment only read.
#[derive(Clone, Debug)]
struct Fixed {
    name: String,
    address: Address,
    tax: u32,
}

impl Record for Fixed {
    fn encode(&self) -> Vec<u8> {
        let mut out = Out::default();
        out.str(&self.name).address(&self.address).u32(self.tax);
        out.0
    }
    fn decode(input: &mut In<'_>) -> Result<Fixed, IndexError> {
        Ok(Fixed {
            name: input.str("name")?,
            address: input.address()?,
            tax: input.u32("tax")?,
        })
    }
}

impl Record for Stock {
    /// The numbers first ([`STOCK_NUMBERS_BYTES`]), so New-Order and Stock-Level reach them
    /// at fixed offsets without decoding the strings.
    fn encode(&self) -> Vec<u8> {
        let mut out = Out::default();
        out.u32(self.i_id)
            .u32(self.w_id)
            .u32(self.quantity)
            .u32(self.ytd)
            .u32(self.order_cnt)
            .u32(self.remote_cnt);
        for dist in &self.dist {
            out.str(dist);
        }
        out.str(&self.data);
        out.0
    }
    fn decode(input: &mut In<'_>) -> Result<Stock, IndexError> {
        let i_id = input.u32("S_I_ID")?;
        let w_id = input.u32("S_W_ID")?;
        let quantity = input.u32("S_QUANTITY")?;
        let ytd = input.u32("S_YTD")?;
        let order_cnt = input.u32("S_ORDER_CNT")?;
        let remote_cnt = input.u32("S_REMOTE_CNT")?;
        let mut dist: [String; DISTRICTS_PER_WAREHOUSE as usize] = Default::default();
        for slot in &mut dist {
            *slot = input.str("S_DIST")?;
        }
        Ok(Stock {
            i_id,
            w_id,
            quantity,
            dist,
            ytd,
            order_cnt,
            remote_cnt,
            data: input.str("S_DATA")?,
        })
    }
}

/// Bytes of a stock row's numbers: S_I_ID, S_W_ID, S_QUANTITY, S_YTD, S_ORDER_CNT,
/// S_REMOTE_CNT, four bytes each.
const STOCK_NUMBERS_BYTES: usize = 24;

/// A stock row's bytes, read and updated where they lie: what a New-Order line needs
/// (S_QUANTITY and the counters it changes, S_DIST_xx and S_DATA) without decoding the rest.
struct StockBytes {
    addr: Addr,
    bytes: Vec<u8>,
}

impl StockBytes {
    fn new(addr: Addr, bytes: Vec<u8>) -> Result<StockBytes, IndexError> {
        if bytes.len() < STOCK_NUMBERS_BYTES {
            return Err(IndexError::Malformed {
                addr,
                reason: format!("a stock row of {} bytes", bytes.len()),
            });
        }
        Ok(StockBytes { addr, bytes })
    }

    fn number(&self, index: usize) -> u32 {
        let at = 4 * index;
        u32::from_le_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes"))
    }

    fn set_number(&mut self, index: usize, value: u32) {
        let at = 4 * index;
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn quantity(&self) -> u32 {
        self.number(2)
    }

    /// Takes `ordered` units for an order line (clause 2.4.2.2); `remote` if the line's
    /// warehouse is not the order's.
    fn order(&mut self, ordered: u32, remote: bool) {
        self.set_number(2, stock_after(self.quantity(), ordered));
        self.set_number(3, self.number(3) + ordered);
        self.set_number(4, self.number(4) + 1);
        if remote {
            self.set_number(5, self.number(5) + 1);
        }
    }

    /// S_DIST of district `d_id` and S_DATA.
    fn strings(&self, d_id: u32) -> Result<(&str, &str), IndexError> {
        let mut input = In::new(self.addr, &self.bytes[STOCK_NUMBERS_BYTES..]);
        let mut dist = "";
        for index in 1..=DISTRICTS_PER_WAREHOUSE {
            let text = input.str_ref("S_DIST")?;
            if index == d_id {
                dist = text;
            }
        }
        let data = input.str_ref("S_DATA")?;
        input.end()?;
        Ok((dist, data))
    }
}

impl Record for Customer {
    fn encode(&self) -> Vec<u8> {
        let mut out = Out::default();
        out.u32(self.w_id)
            .u32(self.d_id)
            .u32(self.c_id)
            .str(&self.first)
            .str(&self.middle)
            .str(&self.last)
            .address(&self.address)
            .str(&self.phone)
            .i64(self.since)
            .str(&self.credit)
            .i64(self.credit_lim)
            .u32(self.discount)
            .i64(self.balance)
            .i64(self.ytd_payment)
            .u32(self.payment_cnt)
            .u32(self.delivery_cnt)
            .str(&self.data);
        out.0
    }
    fn decode(input: &mut In<'_>) -> Result<Customer, IndexError> {
        Ok(Customer {
            w_id: input.u32("C_W_ID")?,
            d_id: input.u32("C_D_ID")?,
            c_id: input.u32("C_ID")?,
            first: input.str("C_FIRST")?,
            middle: input.str("C_MIDDLE")?,
            last: input.str("C_LAST")?,
            address: input.address()?,
            phone: input.str("C_PHONE")?,
            since: input.i64("C_SINCE")?,
            credit: input.str("C_CREDIT")?,
            credit_lim: input.i64("C_CREDIT_LIM")?,
            discount: input.u32("C_DISCOUNT")?,
            balance: input.i64("C_BALANCE")?,
            ytd_payment: input.i64("C_YTD_PAYMENT")?,
            payment_cnt: input.u32("C_PAYMENT_CNT")?,
            delivery_cnt: input.u32("C_DELIVERY_CNT")?,
            data: input.str("C_DATA")?,
        })
    }
}

impl Record for History {
    fn encode(&self) -> Vec<u8> {
        let mut out = Out::default();
        out.u32(self.c_id)
            .u32(self.c_d_id)
            .u32(self.c_w_id)
            .u32(self.d_id)
            .u32(self.w_id)
            .i64(self.date)
            .i64(self.amount)
            .str(&self.data);
        out.0
    }
    fn decode(input: &mut In<'_>) -> Result<History, IndexError> {
        Ok(History {
            c_id: input.u32("H_C_ID")?,
            c_d_id: input.u32("H_C_D_ID")?,
            c_w_id: input.u32("H_C_W_ID")?,
            d_id: input.u32("H_D_ID")?,
            w_id: input.u32("H_W_ID")?,
            date: input.i64("H_DATE")?,
            amount: input.i64("H_AMOUNT")?,
            data: input.str("H_DATA")?,
        })
    }
}

impl Record for Order {
    fn encode(&self) -> Vec<u8> {
        let mut out = Out::default();
        out.u32(self.w_id)
            .u32(self.d_id)
            .u32(self.o_id)
            .u32(self.c_id)
            .i64(self.entry_d)
            .opt_u32(self.carrier_id)
            .u32(self.ol_cnt)
            .u32(u32::from(self.all_local));
        out.0
    }
    fn decode(input: &mut In<'_>) -> Result<Order, IndexError> {
        Ok(Order {
            w_id: input.u32("O_W_ID")?,
            d_id: input.u32("O_D_ID")?,
            o_id: input.u32("O_ID")?,
            c_id: input.u32("O_C_ID")?,
            entry_d: input.i64("O_ENTRY_D")?,
            carrier_id: input.opt_u32("O_CARRIER_ID")?,
            ol_cnt: input.u32("O_OL_CNT")?,
            all_local: input.u32("O_ALL_LOCAL")? == 1,
        })
    }
}

/// An order and its lines, kept together in one object: the lines of an order are always
/// read and written with it (New-Order creates them together, Delivery updates them
/// together, Order-Status and Stock-Level read them by order), and clause 1.4 lets an
/// implementation cluster the rows of different tables. A line's W, D and O ids are its
/// order's and are not repeated.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OrderRows {
    order: Order,
    lines: Vec<OrderLine>,
}

impl Record for OrderRows {
    fn encode(&self) -> Vec<u8> {
        let mut out = Out(self.order.encode());
        out.u32(self.lines.len() as u32);
        for line in &self.lines {
            out.u32(line.number)
                .u32(line.i_id)
                .u32(line.supply_w_id)
                .opt_i64(line.delivery_d)
                .u32(line.quantity)
                .i64(line.amount)
                .str(&line.dist_info);
        }
        out.0
    }
    fn decode(input: &mut In<'_>) -> Result<OrderRows, IndexError> {
        let order = Order::decode(input)?;
        let count = input.u32("line count")?;
        if count > ORDER_LINES_MAX {
            return Err(input.malformed(format!("{count} order lines")));
        }
        let lines = (0..count)
            .map(|_| {
                Ok(OrderLine {
                    w_id: order.w_id,
                    d_id: order.d_id,
                    o_id: order.o_id,
                    number: input.u32("OL_NUMBER")?,
                    i_id: input.u32("OL_I_ID")?,
                    supply_w_id: input.u32("OL_SUPPLY_W_ID")?,
                    delivery_d: input.opt_i64("OL_DELIVERY_D")?,
                    quantity: input.u32("OL_QUANTITY")?,
                    amount: input.i64("OL_AMOUNT")?,
                    dist_info: input.str("OL_DIST_INFO")?,
                })
            })
            .collect::<Result<_, IndexError>>()?;
        Ok(OrderRows { order, lines })
    }
}

/// An object of one 8-byte integer (W_YTD, D_YTD, D_NEXT_O_ID, the delivery cursor).
fn number(addr: Addr, bytes: &[u8]) -> Result<i64, IndexError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| IndexError::Malformed {
        addr,
        reason: format!("a number of {} bytes", bytes.len()),
    })?;
    Ok(i64::from_le_bytes(bytes))
}

fn missing(what: String) -> Error {
    Error::Index(IndexError::Malformed {
        addr: Addr::from_u64(0),
        reason: format!("{what} is missing"),
    })
}

/// What one attempt's body decided.
enum Finish<T> {
    Commit(T),
    /// Undo everything and report `T` (New-Order's rollback).
    Abort(T),
}

impl Tables {
    /// The address of the row `key` names, through the hash table the first time and from
    /// [`Tables::located`] after: rows with hash keys are never freed or moved, and the hash
    /// table does not change once loaded, so an address found once stays right.
    fn lookup(&self, txn: &mut Txn, key: &[u8]) -> Result<Option<Addr>, Error> {
        let packed = packed(key);
        if let Some(&addr) = self.located.read().expect(POISONED).get(&packed) {
            return Ok(Some(addr));
        }
        let found = self.rows.get(txn, key)?.map(Addr::from_u64);
        if let Some(addr) = found {
            self.located.write().expect(POISONED).insert(packed, addr);
        }
        Ok(found)
    }

    fn find(&self, txn: &mut Txn, key: &[u8], what: impl Fn() -> String) -> Result<Addr, Error> {
        self.lookup(txn, key)?.ok_or_else(|| missing(what()))
    }

    /// The address of a warehouse or district object.
    fn fixed(&self, txn: &mut Txn, key: Vec<u8>) -> Result<Addr, Error> {
        self.find(txn, &key, || format!("the row of key {key:?}"))
    }

    /// Allocates `bytes` near warehouse `w_id`'s rows, moving on to another region when its
    /// region is full.
    fn alloc_near(&self, txn: &mut Txn, w_id: u32, bytes: &[u8]) -> Result<Addr, Error> {
        self.alloc_near_sized(txn, w_id, bytes.len(), bytes)
    }

    /// Allocates a row a transaction of the run inserts (an order with its lines, a history row).
    /// In an embedded cluster the coordinator is a node with regions of its own, chosen by
    /// `Db` in turn, not by warehouse: allocating near the warehouse would cost a message to
    /// its primary per object whenever the coordinator is another node, allocating at the
    /// coordinator costs none. A client of a
    /// cluster of node processes has no regions, so every allocation is a message anyway, and
    /// its rows go near their warehouse.
    fn alloc_run(&self, txn: &mut Txn, w_id: u32, bytes: &[u8]) -> Result<Addr, Error> {
        if !self.alloc_at_coordinator {
            return self.alloc_near(txn, w_id, bytes);
        }
        let addr = txn.alloc(bytes.len())?;
        txn.write(addr, bytes)?;
        Ok(addr)
    }

    /// [`Tables::alloc_near`] with room for `capacity` bytes, for a row that grows.
    fn alloc_near_sized(
        &self,
        txn: &mut Txn,
        w_id: u32,
        capacity: usize,
        bytes: &[u8],
    ) -> Result<Addr, Error> {
        let capacity = capacity.max(bytes.len());
        let near = self.near.lock().expect(POISONED).get(&w_id).copied();
        let addr = match near {
            Some(near) => {
                let addr = txn.alloc_preferably_near(capacity, near)?;
                if addr.region() != near.region() {
                    // The warehouse's region is full: its next rows go near this one.
                    self.near.lock().expect(POISONED).insert(w_id, addr);
                }
                addr
            }
            None => txn.alloc(capacity)?,
        };
        txn.write(addr, bytes)?;
        Ok(addr)
    }

    fn customer_addr(
        &self,
        txn: &mut Txn,
        w_id: u32,
        d_id: u32,
        choice: &CustomerChoice,
    ) -> Result<Addr, Error> {
        match choice {
            CustomerChoice::Id(c_id) => self.find(txn, &key(b'C', &[w_id, d_id, *c_id]), || {
                format!("customer {w_id}/{d_id}/{c_id}")
            }),
            CustomerChoice::LastName(last) => {
                let prefix = name_prefix(w_id, d_id, last);
                let end = prefix_end(&prefix);
                // Fewer than 3,000 customers share a district, far fewer a name.
                let named = self.by_name.range(
                    txn,
                    Bound::Included(&prefix),
                    Bound::Excluded(&end),
                    3_000,
                )?;
                let index = middle_index(named.len()).ok_or_else(|| {
                    missing(format!("a customer named {last} in district {w_id}/{d_id}"))
                })?;
                Ok(Addr::from_u64(named[index].1))
            }
        }
    }

    /// All entries of `tree` with keys in `[lower, upper)`, read in transactions of
    /// [`CHECK_ENTRIES_PER_TXN`], with the objects they point to.
    fn scan_all(
        &self,
        db: &Db,
        tree: BTree,
        lower: Vec<u8>,
        upper: Vec<u8>,
    ) -> anyhow::Result<Vec<(Addr, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = db.run(|txn| {
                let start = match &after {
                    Some(key) => Bound::Excluded(key.as_slice()),
                    None => Bound::Included(lower.as_slice()),
                };
                let entries =
                    tree.range(txn, start, Bound::Excluded(&upper), CHECK_ENTRIES_PER_TXN)?;
                let addrs: Vec<Addr> = entries.iter().map(|e| Addr::from_u64(e.1)).collect();
                let values = txn.read_many(&addrs)?;
                Ok((entries, addrs, values))
            })?;
            let (entries, addrs, values) = chunk;
            let full = entries.len() == CHECK_ENTRIES_PER_TXN;
            after = entries.last().map(|e| e.0.clone());
            out.extend(addrs.into_iter().zip(values));
            if !full {
                return Ok(out);
            }
        }
    }
}

impl AcreClient {
    /// Runs `body` as one attempt: commits what it returns as `Commit`, undoes what it returns
    /// as `Abort`; a conflict (or an error on data that had changed) is an abort.
    fn attempt<T>(
        &self,
        body: impl FnOnce(&Tables, &mut Txn) -> Result<Finish<T>, Error>,
    ) -> anyhow::Result<Attempt<T>> {
        let mut txn = match self.db.begin() {
            Ok(txn) => txn,
            Err(error) if error.is_retryable() => return Ok(Attempt::Aborted),
            Err(error) => return Err(error.into()),
        };
        match body(&self.tables, &mut txn) {
            Ok(Finish::Commit(value)) => match txn.commit() {
                Ok(()) => Ok(Attempt::Committed(value)),
                Err(error) if error.is_retryable() => Ok(Attempt::Aborted),
                Err(error) => Err(error.into()),
            },
            Ok(Finish::Abort(value)) => {
                txn.abort();
                Ok(Attempt::Committed(value))
            }
            Err(error) if error.is_retryable() => Ok(Attempt::Aborted),
            // An index walk or a decode that failed on data a concurrent commit changed.
            Err(error) => match txn.still_valid() {
                Ok(false) => Ok(Attempt::Aborted),
                _ => Err(error.into()),
            },
        }
    }

    /// Runs `body` in transactions of at most [`LOAD_ROWS_PER_TXN`] of `rows` (fewer where a
    /// transaction of that many is too large: [`AcreTpcc::load_chunk`]).
    fn load_rows<R>(
        &self,
        rows: &[R],
        mut body: impl FnMut(&Tables, &mut Txn, &R) -> Result<(), Error>,
    ) -> anyhow::Result<()> {
        for chunk in rows.chunks(LOAD_ROWS_PER_TXN) {
            self.load_chunk(chunk, &mut body)?;
        }
        Ok(())
    }

    /// Loads `chunk` in one transaction, or, if that is too large (its allocations went to
    /// regions on other nodes, each a request: while the warehouse's region is full and the CM
    /// adds regions, they can exceed a transaction's replies), in two halves, and so on.
    fn load_chunk<R>(
        &self,
        chunk: &[R],
        body: &mut impl FnMut(&Tables, &mut Txn, &R) -> Result<(), Error>,
    ) -> anyhow::Result<()> {
        let loaded = self.db.run(|txn| {
            for row in chunk {
                body(&self.tables, txn, row)?;
            }
            Ok(())
        });
        match loaded {
            Err(
                Error::Txn(TxnError::TxnTooLarge { .. })
                | Error::Index(IndexError::Txn(TxnError::TxnTooLarge { .. }))
                | Error::Commit(CommitError::TxnTooLarge { .. }),
            ) if chunk.len() > 1 => {
                let (first, second) = chunk.split_at(chunk.len() / 2);
                self.load_chunk(first, body)?;
                self.load_chunk(second, body)
            }
            other => Ok(other?),
        }
    }

    /// The object warehouse `w_id`'s rows are allocated near (its W_YTD object, created by
    /// whichever load part needs it first).
    fn anchor(&self, w_id: u32) -> anyhow::Result<Addr> {
        let mut near = self.tables.near.lock().expect(POISONED);
        if let Some(&addr) = near.get(&w_id) {
            return Ok(addr);
        }
        let addr = self.db.run(|txn| {
            let addr = txn.alloc(8)?;
            txn.write(addr, &0i64.to_le_bytes())?;
            self.tables
                .rows
                .insert(txn, &key(b'w', &[w_id]), addr.to_u64())?;
            Ok(addr)
        })?;
        near.insert(w_id, addr);
        Ok(addr)
    }

    fn read_number(&self, key: Vec<u8>) -> anyhow::Result<i64> {
        let tables = &self.tables;
        Ok(self.db.run(|txn| {
            let addr = tables.fixed(txn, key.clone())?;
            Ok(number(addr, &txn.read(addr)?)?)
        })?)
    }
}

/// Reads an 8-byte number object and writes it back plus `delta`; returns the old value.
fn add(txn: &mut Txn, addr: Addr, delta: i64) -> Result<i64, Error> {
    let old = number(addr, &txn.read(addr)?)?;
    txn.write(addr, &(old + delta).to_le_bytes())?;
    Ok(old)
}

impl Client for AcreClient {
    fn load_items(&mut self, items: &[Item]) -> anyhow::Result<()> {
        self.load_rows(items, |tables, txn, item| {
            let addr = txn.alloc(item.encode().len())?;
            txn.write(addr, &item.encode())?;
            tables
                .rows
                .insert(txn, &key(b'I', &[item.i_id]), addr.to_u64())?;
            Ok(())
        })
    }

    fn load_warehouse(&mut self, warehouse: &Warehouse) -> anyhow::Result<()> {
        let w_id = warehouse.w_id;
        let ytd = self.anchor(w_id)?;
        let fixed = Fixed {
            name: warehouse.name.clone(),
            address: warehouse.address.clone(),
            tax: warehouse.tax,
        };
        self.db.run(|txn| {
            txn.write(ytd, &warehouse.ytd.to_le_bytes())?;
            let addr = self.tables.alloc_near(txn, w_id, &fixed.encode())?;
            self.tables
                .rows
                .insert(txn, &key(b'W', &[w_id]), addr.to_u64())?;
            Ok(())
        })?;
        Ok(())
    }

    fn load_stock(&mut self, stock: &[Stock]) -> anyhow::Result<()> {
        if let Some(first) = stock.first() {
            self.anchor(first.w_id)?;
        }
        self.load_rows(stock, |tables, txn, row| {
            let addr = tables.alloc_near(txn, row.w_id, &row.encode())?;
            tables
                .rows
                .insert(txn, &key(b'S', &[row.w_id, row.i_id]), addr.to_u64())?;
            Ok(())
        })
    }

    fn load_district(&mut self, rows: &DistrictRows) -> anyhow::Result<()> {
        let district = &rows.district;
        let (w_id, d_id) = (district.w_id, district.d_id);
        self.anchor(w_id)?;
        let fixed = Fixed {
            name: district.name.clone(),
            address: district.address.clone(),
            tax: district.tax,
        };
        // The delivery cursor starts at the oldest undelivered order (or past the last order).
        let cursor = rows.new_orders().min().unwrap_or(district.next_o_id);
        self.db.run(|txn| {
            let tables = &self.tables;
            for (tag, bytes) in [
                (b'D', fixed.encode()),
                (b'd', district.ytd.to_le_bytes().to_vec()),
                (b'N', i64::from(district.next_o_id).to_le_bytes().to_vec()),
                (b'Q', i64::from(cursor).to_le_bytes().to_vec()),
            ] {
                let addr = tables.alloc_near(txn, w_id, &bytes)?;
                tables
                    .rows
                    .insert(txn, &key(tag, &[w_id, d_id]), addr.to_u64())?;
            }
            Ok(())
        })?;
        self.load_rows(&rows.customers, |tables, txn, c| {
            // C_DATA grows to 500 characters with a bad-credit customer's payments: the object
            // has room for that from the start (an object never grows).
            let bytes = c.encode();
            let capacity = bytes.len() - c.data.len() + CUSTOMER_DATA_BYTES_MAX;
            let addr = tables.alloc_near_sized(txn, w_id, capacity, &bytes)?;
            tables
                .rows
                .insert(txn, &key(b'C', &[w_id, d_id, c.c_id]), addr.to_u64())?;
            tables.by_name.insert(
                txn,
                &name_key(w_id, d_id, &c.last, &c.first, c.c_id),
                addr.to_u64(),
            )?;
            Ok(())
        })?;
        // A loaded history row's key ends with its rank among its customer's loaded rows:
        // 1, the customer's payment count as loaded, below any the run's Payments use.
        let mut ranks: HashMap<(u32, u32, u32), u32> = HashMap::new();
        let ranked: Vec<(&History, u32)> = rows
            .history
            .iter()
            .map(|h| {
                let rank = ranks.entry((h.c_w_id, h.c_d_id, h.c_id)).or_default();
                *rank += 1;
                (h, *rank)
            })
            .collect();
        self.load_rows(&ranked, |tables, txn, (h, rank)| {
            let addr = tables.alloc_near(txn, w_id, &h.encode())?;
            let key = tree_key(&[h.w_id, h.d_id, h.c_w_id, h.c_d_id, h.c_id, *rank]);
            tables.history.insert(txn, &key, addr.to_u64())?;
            Ok(())
        })?;
        let new_orders: BTreeSet<u32> = rows.new_orders().collect();
        let mut lines: HashMap<u32, Vec<OrderLine>> = HashMap::new();
        for line in &rows.order_lines {
            lines.entry(line.o_id).or_default().push(line.clone());
        }
        let orders: Vec<OrderRows> = rows
            .orders
            .iter()
            .map(|order| OrderRows {
                order: order.clone(),
                lines: lines.remove(&order.o_id).unwrap_or_default(),
            })
            .collect();
        anyhow::ensure!(
            lines.is_empty(),
            "order lines of orders the district does not have: {:?}",
            lines.keys().collect::<Vec<_>>()
        );
        self.load_rows(&orders, |tables, txn, rows| {
            let o = &rows.order;
            let addr = tables.alloc_near(txn, w_id, &rows.encode())?.to_u64();
            tables
                .orders
                .insert(txn, &tree_key(&[w_id, d_id, o.o_id]), addr)?;
            tables
                .by_customer
                .insert(txn, &tree_key(&[w_id, d_id, o.c_id, !o.o_id]), addr)?;
            if new_orders.contains(&o.o_id) {
                tables
                    .new_orders
                    .insert(txn, &tree_key(&[w_id, d_id, o.o_id]), addr)?;
            }
            Ok(())
        })
    }

    fn new_order(&mut self, input: &NewOrderInput) -> anyhow::Result<Attempt<NewOrderOutcome>> {
        let (w_id, d_id) = (input.w_id, input.d_id);
        self.attempt(|tables, txn| {
            let mut item_addrs = Vec::with_capacity(input.lines.len());
            for line in &input.lines {
                match tables.lookup(txn, &key(b'I', &[line.i_id]))? {
                    Some(addr) => item_addrs.push(addr),
                    // The spec's 1%: the unused item is not found, and everything is undone.
                    None => return Ok(Finish::Abort(NewOrderOutcome::RolledBack)),
                }
            }
            let items: Vec<Item> = txn
                .read_many(&item_addrs)?
                .iter()
                .zip(&item_addrs)
                .map(|(bytes, addr)| decode(*addr, bytes))
                .collect::<Result<_, _>>()?;
            let warehouse = tables.fixed(txn, key(b'W', &[w_id]))?;
            let district = tables.fixed(txn, key(b'D', &[w_id, d_id]))?;
            let next = tables.fixed(txn, key(b'N', &[w_id, d_id]))?;
            let customer = tables.find(txn, &key(b'C', &[w_id, d_id, input.c_id]), || {
                format!("customer {w_id}/{d_id}/{}", input.c_id)
            })?;
            let read = txn.read_many(&[warehouse, district, customer])?;
            let w_tax = decode::<Fixed>(warehouse, &read[0])?.tax;
            let d_tax = decode::<Fixed>(district, &read[1])?.tax;
            let discount = decode::<Customer>(customer, &read[2])?.discount;
            let o_id = add(txn, next, 1)? as u32;
            let mut stock_addrs = Vec::with_capacity(input.lines.len());
            for line in &input.lines {
                stock_addrs.push(tables.find(
                    txn,
                    &key(b'S', &[line.supply_w_id, line.i_id]),
                    || format!("stock {}/{}", line.supply_w_id, line.i_id),
                )?);
            }
            let stock_rows = txn.read_many(&stock_addrs)?;
            let mut lines = Vec::with_capacity(input.lines.len());
            let mut order_lines = Vec::with_capacity(input.lines.len());
            for (index, (line, bytes)) in input.lines.iter().zip(stock_rows).enumerate() {
                // A line may name an item an earlier line named: read it again (the
                // transaction sees its own write).
                let addr = stock_addrs[index];
                let bytes = if stock_addrs[..index].contains(&addr) {
                    txn.read(addr)?
                } else {
                    bytes
                };
                let mut stock = StockBytes::new(addr, bytes)?;
                stock.order(line.quantity, line.supply_w_id != w_id);
                txn.write(addr, &stock.bytes)?;
                let (dist, s_data) = stock.strings(d_id)?;
                let item = &items[index];
                let amount = i64::from(line.quantity) * item.price;
                order_lines.push(OrderLine {
                    w_id,
                    d_id,
                    o_id,
                    number: index as u32 + 1,
                    i_id: line.i_id,
                    supply_w_id: line.supply_w_id,
                    delivery_d: None,
                    quantity: line.quantity,
                    amount,
                    dist_info: dist.to_string(),
                });
                lines.push(LineOutput {
                    i_price: item.price,
                    s_quantity: stock.quantity(),
                    brand_generic: brand_generic(&item.data, s_data),
                    amount,
                });
            }
            let order = OrderRows {
                order: Order {
                    w_id,
                    d_id,
                    o_id,
                    c_id: input.c_id,
                    entry_d: input.entry_d,
                    carrier_id: None,
                    ol_cnt: input.lines.len() as u32,
                    all_local: input.all_local(),
                },
                lines: order_lines,
            };
            let addr = tables.alloc_run(txn, w_id, &order.encode())?.to_u64();
            let order_key = tree_key(&[w_id, d_id, o_id]);
            tables.orders.insert(txn, &order_key, addr)?;
            tables.new_orders.insert(txn, &order_key, addr)?;
            tables
                .by_customer
                .insert(txn, &tree_key(&[w_id, d_id, input.c_id, !o_id]), addr)?;
            let sum = lines.iter().map(|l| l.amount).sum();
            Ok(Finish::Commit(NewOrderOutcome::Placed(NewOrderOutput {
                o_id,
                total: new_order_total(sum, discount, w_tax, d_tax),
                lines,
            })))
        })
    }

    fn payment(&mut self, input: &PaymentInput) -> anyhow::Result<Attempt<PaymentOutput>> {
        let (w_id, d_id) = (input.w_id, input.d_id);
        self.attempt(|tables, txn| {
            let w_ytd = tables.fixed(txn, key(b'w', &[w_id]))?;
            let d_ytd = tables.fixed(txn, key(b'd', &[w_id, d_id]))?;
            let warehouse = tables.fixed(txn, key(b'W', &[w_id]))?;
            let district = tables.fixed(txn, key(b'D', &[w_id, d_id]))?;
            let names = txn.read_many(&[warehouse, district, w_ytd, d_ytd])?;
            let w_name = decode::<Fixed>(warehouse, &names[0])?.name;
            let d_name = decode::<Fixed>(district, &names[1])?.name;
            add(txn, w_ytd, input.h_amount)?;
            add(txn, d_ytd, input.h_amount)?;
            let addr = tables.customer_addr(txn, input.c_w_id, input.c_d_id, &input.customer)?;
            let mut customer: Customer = decode(addr, &txn.read(addr)?)?;
            customer.balance -= input.h_amount;
            customer.ytd_payment += input.h_amount;
            customer.payment_cnt += 1;
            if customer.credit == "BC" {
                customer.data = bad_credit_data(input, customer.c_id, &customer.data);
            }
            txn.write(addr, &customer.encode())?;
            let history = History {
                c_id: customer.c_id,
                c_d_id: input.c_d_id,
                c_w_id: input.c_w_id,
                d_id,
                w_id,
                date: input.h_date,
                amount: input.h_amount,
                data: history_data(&w_name, &d_name),
            };
            let history_addr = tables.alloc_run(txn, w_id, &history.encode())?;
            let key = tree_key(&[
                w_id,
                d_id,
                input.c_w_id,
                input.c_d_id,
                customer.c_id,
                customer.payment_cnt,
            ]);
            tables.history.insert(txn, &key, history_addr.to_u64())?;
            Ok(Finish::Commit(PaymentOutput {
                c_id: customer.c_id,
                balance: customer.balance,
            }))
        })
    }

    fn order_status(
        &mut self,
        input: &OrderStatusInput,
    ) -> anyhow::Result<Attempt<OrderStatusOutput>> {
        let (w_id, d_id) = (input.w_id, input.d_id);
        self.attempt(|tables, txn| {
            let addr = tables.customer_addr(txn, w_id, d_id, &input.customer)?;
            let customer: Customer = decode(addr, &txn.read(addr)?)?;
            let prefix = tree_key(&[w_id, d_id, customer.c_id]);
            let latest = tables.by_customer.range(
                txn,
                Bound::Included(&prefix),
                Bound::Excluded(&prefix_end(&prefix)),
                1,
            )?;
            let order = match latest.first() {
                None => None,
                Some((_, order_addr)) => {
                    let order_addr = Addr::from_u64(*order_addr);
                    let rows: OrderRows = decode(order_addr, &txn.read(order_addr)?)?;
                    Some(OrderSummary {
                        o_id: rows.order.o_id,
                        carrier_id: rows.order.carrier_id,
                        lines: rows
                            .lines
                            .iter()
                            .map(|l| (l.i_id, l.supply_w_id, l.quantity, l.amount, l.delivery_d))
                            .collect(),
                    })
                }
            };
            Ok(Finish::Commit(OrderStatusOutput {
                c_id: customer.c_id,
                balance: customer.balance,
                order,
            }))
        })
    }

    fn delivery(&mut self, input: &DeliveryInput) -> anyhow::Result<Attempt<DeliveryOutput>> {
        let w_id = input.w_id;
        self.attempt(|tables, txn| {
            let mut delivered = Vec::new();
            for d_id in 1..=DISTRICTS_PER_WAREHOUSE {
                let cursor_addr = tables.fixed(txn, key(b'Q', &[w_id, d_id]))?;
                let cursor = number(cursor_addr, &txn.read(cursor_addr)?)? as u32;
                let district_end = tree_key(&[w_id, d_id + 1]);
                let oldest = tables.new_orders.range(
                    txn,
                    Bound::Included(&tree_key(&[w_id, d_id, cursor])),
                    Bound::Excluded(&district_end),
                    1,
                )?;
                let Some((no_key, order_addr)) = oldest.into_iter().next() else {
                    continue;
                };
                tables.new_orders.remove(txn, &no_key)?;
                let order_addr = Addr::from_u64(order_addr);
                let mut rows: OrderRows = decode(order_addr, &txn.read(order_addr)?)?;
                rows.order.carrier_id = Some(input.carrier_id);
                let mut sum = 0;
                for line in &mut rows.lines {
                    line.delivery_d = Some(input.delivery_d);
                    sum += line.amount;
                }
                txn.write(order_addr, &rows.encode())?;
                let order = rows.order;
                txn.write(cursor_addr, &i64::from(order.o_id + 1).to_le_bytes())?;
                let customer_addr =
                    tables.find(txn, &key(b'C', &[w_id, d_id, order.c_id]), || {
                        format!("customer {w_id}/{d_id}/{}", order.c_id)
                    })?;
                let mut customer: Customer = decode(customer_addr, &txn.read(customer_addr)?)?;
                customer.balance += sum;
                customer.delivery_cnt += 1;
                txn.write(customer_addr, &customer.encode())?;
                delivered.push((d_id, order.o_id));
            }
            Ok(Finish::Commit(DeliveryOutput { delivered }))
        })
    }

    fn stock_level(&mut self, input: &StockLevelInput) -> anyhow::Result<Attempt<u32>> {
        let (w_id, d_id) = (input.w_id, input.d_id);
        self.attempt(|tables, txn| {
            let next_addr = tables.fixed(txn, key(b'N', &[w_id, d_id]))?;
            let next = number(next_addr, &txn.read(next_addr)?)? as u32;
            let entries = tables.orders.range(
                txn,
                Bound::Included(&tree_key(&[w_id, d_id, next.saturating_sub(20)])),
                Bound::Excluded(&tree_key(&[w_id, d_id, next])),
                20,
            )?;
            let addrs: Vec<Addr> = entries.iter().map(|e| Addr::from_u64(e.1)).collect();
            let mut items = BTreeSet::new();
            for (bytes, addr) in txn.read_many(&addrs)?.iter().zip(&addrs) {
                let rows: OrderRows = decode(*addr, bytes)?;
                items.extend(rows.lines.iter().map(|line| line.i_id));
            }
            let mut stock_addrs = Vec::with_capacity(items.len());
            for &i_id in &items {
                stock_addrs.push(tables.find(txn, &key(b'S', &[w_id, i_id]), || {
                    format!("stock {w_id}/{i_id}")
                })?);
            }
            let mut low = 0;
            for (bytes, addr) in txn.read_many(&stock_addrs)?.into_iter().zip(&stock_addrs) {
                if StockBytes::new(*addr, bytes)?.quantity() < input.threshold {
                    low += 1;
                }
            }
            Ok(Finish::Commit(low))
        })
    }

    fn read_warehouse_ytd(&mut self, w_id: u32) -> anyhow::Result<i64> {
        self.read_number(key(b'w', &[w_id]))
    }

    fn read_district(&mut self, w_id: u32, d_id: u32) -> anyhow::Result<DistrictState> {
        let tables = &self.tables;
        let db = &self.db;
        let ytd = self.read_number(key(b'd', &[w_id, d_id]))?;
        let next_o_id = self.read_number(key(b'N', &[w_id, d_id]))? as u32;
        let district = tree_key(&[w_id, d_id]);
        let district_end = prefix_end(&district);
        let mut orders = Vec::new();
        let mut order_lines = Vec::new();
        for (addr, bytes) in
            tables.scan_all(db, tables.orders, district.clone(), district_end.clone())?
        {
            let rows: OrderRows = decode(addr, &bytes)?;
            let o = rows.order;
            orders.push(OrderState {
                o_id: o.o_id,
                c_id: o.c_id,
                carrier_id: o.carrier_id,
                ol_cnt: o.ol_cnt,
            });
            order_lines.extend(rows.lines.into_iter().map(|l| LineState {
                o_id: l.o_id,
                number: l.number,
                delivery_d: l.delivery_d,
                amount: l.amount,
            }));
        }
        // NEW-ORDER is read by looking up each order id (and anything past the last), not by a
        // range from the district's start: see the module doc on the leaves Delivery empties.
        let mut new_orders = Vec::new();
        let ids: Vec<u32> = (1..next_o_id).collect();
        for chunk in ids.chunks(CHECK_ENTRIES_PER_TXN) {
            let found = db.run(|txn| {
                let mut found = Vec::new();
                for &o_id in chunk {
                    if tables
                        .new_orders
                        .get(txn, &tree_key(&[w_id, d_id, o_id]))?
                        .is_some()
                    {
                        found.push(o_id);
                    }
                }
                Ok(found)
            })?;
            new_orders.extend(found);
        }
        let beyond = db.run(|txn| {
            Ok(tables.new_orders.range(
                txn,
                Bound::Included(&tree_key(&[w_id, d_id, next_o_id])),
                Bound::Excluded(&district_end),
                CHECK_ENTRIES_PER_TXN,
            )?)
        })?;
        for (key, _) in beyond {
            let o_id = key
                .get(8..12)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u32::from_be_bytes)
                .context("a NEW-ORDER key shorter than 12 bytes")?;
            new_orders.push(o_id);
        }
        let customers = tables
            .scan_all(db, tables.by_name, district.clone(), district_end.clone())?
            .into_iter()
            .map(|(addr, bytes)| {
                let c: Customer = decode(addr, &bytes)?;
                Ok(CustomerState {
                    c_id: c.c_id,
                    balance: c.balance,
                    ytd_payment: c.ytd_payment,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let history = tables
            .scan_all(db, tables.history, district, district_end)?
            .into_iter()
            .map(|(addr, bytes)| {
                let h: History = decode(addr, &bytes)?;
                Ok(HistoryState {
                    c_w_id: h.c_w_id,
                    c_d_id: h.c_d_id,
                    c_id: h.c_id,
                    amount: h.amount,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(DistrictState {
            ytd,
            next_o_id,
            orders,
            new_orders,
            order_lines,
            customers,
            history,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_replication::db::RegionId;

    #[test]
    fn rows_round_trip_through_their_encodings() {
        let mut rng = crate::ycsb::generator::Rng::from_seed(8);
        let constants = super::super::input::Constants::draw(&mut rng);
        let rows = super::super::rows::district(&mut rng, &constants, 3, 4, 99);
        let addr = Addr::new(RegionId(1), 64);
        let c = &rows.customers[7];
        assert_eq!(&decode::<Customer>(addr, &c.encode()).unwrap(), c);
        let order = OrderRows {
            order: rows.orders[0].clone(),
            lines: rows
                .order_lines
                .iter()
                .filter(|l| l.o_id == 1)
                .cloned()
                .collect(),
        };
        assert_eq!(decode::<OrderRows>(addr, &order.encode()).unwrap(), order);
        // Fifteen lines fit the 1 KiB size class.
        let mut full = order.clone();
        full.lines = (1..=15).map(|_| order.lines[0].clone()).collect();
        assert!(full.encode().len() + acre_txn::value::LEN_BYTES <= 1024);
        let h = &rows.history[0];
        assert_eq!(&decode::<History>(addr, &h.encode()).unwrap(), h);
        let s = &super::super::rows::stock(&mut rng, 3, 1, 1)[0];
        assert_eq!(&decode::<Stock>(addr, &s.encode()).unwrap(), s);
        // New-Order's update in place is the spec's rule on the decoded row.
        let mut bytes = StockBytes::new(addr, s.encode()).unwrap();
        bytes.order(5, true);
        bytes.order(2, false);
        let (dist, data) = bytes.strings(4).unwrap();
        assert_eq!((dist, data), (s.dist[3].as_str(), s.data.as_str()));
        let updated: Stock = decode(addr, &bytes.bytes).unwrap();
        let expected = Stock {
            quantity: stock_after(stock_after(s.quantity, 5), 2),
            ytd: 7,
            order_cnt: 2,
            remote_cnt: 1,
            ..s.clone()
        };
        assert_eq!(updated, expected);
        let bytes = c.encode();
        assert!(decode::<Customer>(addr, &bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<Customer>(addr, &longer).is_err());
        // Names sort by last name, then first name, as zero-padded keys.
        assert!(name_key(1, 1, "BAR", "Al", 9) < name_key(1, 1, "BAR", "Ala", 1));
        assert!(name_key(1, 1, "BAR", "Zed", 9) < name_key(1, 1, "BARA", "Al", 1));
        assert_eq!(prefix_end(&[1, 2, 3]), vec![1, 2, 4]);
        assert_eq!(prefix_end(&[0, 0, 11, 255]), vec![0, 0, 12, 0]);
    }
}
