//! The whole interface between the TPC-C driver and a database: a [`Backend`] hands out one
//! [`Client`] session per thread; a client loads rows, runs each of the five transactions as
//! one call with the inputs the driver drew, and reads what the consistency checks need.
//!
//! The business rules every backend must apply alike (the stock quantity rule, brand-generic,
//! the order total, the bad-credit customer's C_DATA, the middle customer by first name) are
//! functions here, so the backends differ only in how they store and find rows.

use super::input::{DeliveryInput, NewOrderInput, OrderStatusInput, PaymentInput, StockLevelInput};
use super::rows::{DistrictRows, Item, Stock, Warehouse};

/// A database the driver can load, run and check. Shared by all client threads.
pub trait Backend: Send + Sync {
    /// Short name for reports ("acre", "postgres", "memory").
    fn name(&self) -> &'static str;
    /// What the target is, for the report (version, replicas, isolation).
    fn describe(&self) -> String;
    /// Creates the empty tables for `warehouse_count` warehouses (and their indexes).
    fn create(&mut self, warehouse_count: u32) -> anyhow::Result<()>;
    /// One session for one thread.
    fn client(&self) -> anyhow::Result<Box<dyn Client>>;
}

/// The outcome of one attempt at a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt<T> {
    Committed(T),
    /// A conflict (a serialization failure, a deadlock, a lock held): nothing was changed and
    /// the driver tries again with the same inputs.
    Aborted,
}

/// One thread's session. Every transaction method is one attempt at one whole TPC-C
/// transaction; an `Err` is a failure that is not an abort (the database is gone, a row is
/// missing) and stops the run.
pub trait Client: Send {
    fn load_items(&mut self, items: &[Item]) -> anyhow::Result<()>;
    fn load_warehouse(&mut self, warehouse: &Warehouse) -> anyhow::Result<()>;
    fn load_stock(&mut self, stock: &[Stock]) -> anyhow::Result<()>;
    /// A district with its customers, history, orders, order lines and new orders.
    fn load_district(&mut self, rows: &DistrictRows) -> anyhow::Result<()>;

    fn new_order(&mut self, input: &NewOrderInput) -> anyhow::Result<Attempt<NewOrderOutcome>>;
    fn payment(&mut self, input: &PaymentInput) -> anyhow::Result<Attempt<PaymentOutput>>;
    fn order_status(
        &mut self,
        input: &OrderStatusInput,
    ) -> anyhow::Result<Attempt<OrderStatusOutput>>;
    fn delivery(&mut self, input: &DeliveryInput) -> anyhow::Result<Attempt<DeliveryOutput>>;
    /// The number of distinct items of the district's last 20 orders whose stock is below
    /// the threshold.
    fn stock_level(&mut self, input: &StockLevelInput) -> anyhow::Result<Attempt<u32>>;

    /// W_YTD of warehouse `w_id`, for the checks (run while nothing else runs).
    fn read_warehouse_ytd(&mut self, w_id: u32) -> anyhow::Result<i64>;
    /// What the checks read of one district (run while nothing else runs).
    fn read_district(&mut self, w_id: u32, d_id: u32) -> anyhow::Result<DistrictState>;
}

/// What a New-Order came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewOrderOutcome {
    Placed(NewOrderOutput),
    /// The 1% with an unused item id: rolled back on purpose, nothing changed (clause
    /// 2.4.2.3). It counts as a completed New-Order.
    RolledBack,
}

/// What a New-Order shows its terminal (clause 2.4.3.3), the parts tests check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrderOutput {
    pub o_id: u32,
    pub lines: Vec<LineOutput>,
    /// sum(OL_AMOUNT) * (1 - C_DISCOUNT) * (1 + W_TAX + D_TAX), in cents.
    pub total: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineOutput {
    pub i_price: i64,
    /// S_QUANTITY after the order.
    pub s_quantity: u32,
    /// 'B' if both I_DATA and S_DATA contain "ORIGINAL", else 'G'.
    pub brand_generic: char,
    pub amount: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentOutput {
    pub c_id: u32,
    /// C_BALANCE after the payment.
    pub balance: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderStatusOutput {
    pub c_id: u32,
    pub balance: i64,
    /// The customer's latest order, None if it has none.
    pub order: Option<OrderSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderSummary {
    pub o_id: u32,
    pub carrier_id: Option<u32>,
    /// (OL_I_ID, OL_SUPPLY_W_ID, OL_QUANTITY, OL_AMOUNT, OL_DELIVERY_D) by OL_NUMBER.
    pub lines: Vec<(u32, u32, u32, i64, Option<i64>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryOutput {
    /// (district, order) of each district that had an undelivered order.
    pub delivered: Vec<(u32, u32)>,
}

/// What the checks read of one district: its row, its orders, NEW-ORDER rows and order
/// lines, its customers' balances, and the HISTORY rows of payments made at it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DistrictState {
    pub ytd: i64,
    pub next_o_id: u32,
    pub orders: Vec<OrderState>,
    pub new_orders: Vec<u32>,
    pub order_lines: Vec<LineState>,
    pub customers: Vec<CustomerState>,
    /// The rows whose H_W_ID and H_D_ID are this district.
    pub history: Vec<HistoryState>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderState {
    pub o_id: u32,
    pub c_id: u32,
    pub carrier_id: Option<u32>,
    pub ol_cnt: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineState {
    pub o_id: u32,
    pub number: u32,
    pub delivery_d: Option<i64>,
    pub amount: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerState {
    pub c_id: u32,
    pub balance: i64,
    pub ytd_payment: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryState {
    pub c_w_id: u32,
    pub c_d_id: u32,
    pub c_id: u32,
    pub amount: i64,
}

/// S_QUANTITY after ordering `ordered` (clause 2.4.2.2): down by the order if 10 or more
/// remain, else restocked by 91.
pub fn stock_after(quantity: u32, ordered: u32) -> u32 {
    if quantity >= ordered + 10 {
        quantity - ordered
    } else {
        quantity + 91 - ordered
    }
}

/// 'B' when both the item's and the stock's data contain "ORIGINAL" (clause 2.4.2.2).
pub fn brand_generic(i_data: &str, s_data: &str) -> char {
    if i_data.contains("ORIGINAL") && s_data.contains("ORIGINAL") {
        'B'
    } else {
        'G'
    }
}

/// The order's total in cents: sum * (1 - discount) * (1 + w_tax + d_tax), rates in
/// ten-thousandths, rounded down.
pub fn new_order_total(amount_sum: i64, discount: u32, w_tax: u32, d_tax: u32) -> i64 {
    let total = i128::from(amount_sum)
        * i128::from(10_000 - i64::from(discount))
        * i128::from(10_000 + i64::from(w_tax) + i64::from(d_tax))
        / 100_000_000;
    total as i64
}

/// C_DATA of a bad-credit customer after a payment (clause 2.5.2.2): the payment's ids and
/// amount put in front, the whole cut to 500 characters.
pub fn bad_credit_data(input: &PaymentInput, c_id: u32, data: &str) -> String {
    let mut updated = format!(
        "{} {} {} {} {} {}.{:02} ",
        c_id,
        input.c_d_id,
        input.c_w_id,
        input.d_id,
        input.w_id,
        input.h_amount / 100,
        input.h_amount % 100
    );
    updated.push_str(data);
    updated.truncate(500);
    updated
}

/// H_DATA of a payment: W_NAME and D_NAME separated by four spaces (clause 2.5.2.2).
pub fn history_data(w_name: &str, d_name: &str) -> String {
    format!("{w_name}    {d_name}")
}

/// Of the customers with one last name, sorted by first name, the one at position ceil(n / 2)
/// (1-based; clause 2.5.2.2): index (n - 1) / 2. None if there are none.
pub fn middle_index(count: usize) -> Option<usize> {
    (count > 0).then(|| (count - 1) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_business_rules_compute_what_the_spec_says() {
        assert_eq!(stock_after(50, 5), 45);
        assert_eq!(stock_after(15, 5), 10);
        assert_eq!(stock_after(14, 5), 100);
        assert_eq!(brand_generic("xORIGINALy", "ORIGINAL"), 'B');
        assert_eq!(brand_generic("xORIGINALy", "ORIGINA"), 'G');
        // 100.00 with a 10% discount and 5% + 5% taxes: 100 * 0.9 * 1.1 = 99.00.
        assert_eq!(new_order_total(10_000, 1000, 500, 500), 9900);
        assert_eq!(middle_index(0), None);
        assert_eq!(middle_index(1), Some(0));
        assert_eq!(middle_index(4), Some(1), "ceil(4/2) = 2nd");
        assert_eq!(middle_index(5), Some(2), "ceil(5/2) = 3rd");
        let input = PaymentInput {
            w_id: 1,
            d_id: 2,
            c_w_id: 3,
            c_d_id: 4,
            customer: super::super::input::CustomerChoice::Id(5),
            h_amount: 12_345,
            h_date: 0,
        };
        let data = bad_credit_data(&input, 5, &"x".repeat(500));
        assert!(data.starts_with("5 4 3 2 1 123.45 x"), "{data}");
        assert_eq!(data.len(), 500);
    }
}
