//! The rows of TPC-C's nine tables (clause 1.3) and the initial population (clause 4.3.3.1),
//! generated warehouse by warehouse so the load can run on several threads.
//!
//! Money is in cents (`i64`), tax and discount rates in ten-thousandths (`u32`), dates in
//! seconds since the Unix epoch; a NULL carrier or delivery date is `None`.

use super::input::{
    self, CUSTOMERS_PER_DISTRICT, Constants, DISTRICTS_PER_WAREHOUSE, FIRST_UNDELIVERED_ORDER,
    INITIAL_ORDERS_PER_DISTRICT, ITEM_COUNT, a_string, cents, data_with_original, last_name,
    n_string, uniform, zip,
};
use crate::ycsb::generator::Rng;

/// A street, city, state and zip: the address columns of WAREHOUSE, DISTRICT and CUSTOMER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub street_1: String,
    pub street_2: String,
    pub city: String,
    pub state: String,
    pub zip: String,
}

impl Address {
    fn random(rng: &mut Rng) -> Address {
        let state: String = (0..2)
            .map(|_| char::from(b'A' + rng.below(26) as u8))
            .collect();
        Address {
            street_1: a_string(rng, 10, 20),
            street_2: a_string(rng, 10, 20),
            city: a_string(rng, 10, 20),
            state,
            zip: zip(rng),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub i_id: u32,
    pub im_id: u32,
    pub name: String,
    pub price: i64,
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warehouse {
    pub w_id: u32,
    pub name: String,
    pub address: Address,
    pub tax: u32,
    pub ytd: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stock {
    pub i_id: u32,
    pub w_id: u32,
    pub quantity: u32,
    /// S_DIST_01 to S_DIST_10.
    pub dist: [String; DISTRICTS_PER_WAREHOUSE as usize],
    pub ytd: u32,
    pub order_cnt: u32,
    pub remote_cnt: u32,
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct District {
    pub w_id: u32,
    pub d_id: u32,
    pub name: String,
    pub address: Address,
    pub tax: u32,
    pub ytd: i64,
    pub next_o_id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Customer {
    pub w_id: u32,
    pub d_id: u32,
    pub c_id: u32,
    pub first: String,
    pub middle: String,
    pub last: String,
    pub address: Address,
    pub phone: String,
    pub since: i64,
    /// "GC" (good) or "BC" (bad credit).
    pub credit: String,
    pub credit_lim: i64,
    pub discount: u32,
    pub balance: i64,
    pub ytd_payment: i64,
    pub payment_cnt: u32,
    pub delivery_cnt: u32,
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    pub c_id: u32,
    pub c_d_id: u32,
    pub c_w_id: u32,
    pub d_id: u32,
    pub w_id: u32,
    pub date: i64,
    pub amount: i64,
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub w_id: u32,
    pub d_id: u32,
    pub o_id: u32,
    pub c_id: u32,
    pub entry_d: i64,
    pub carrier_id: Option<u32>,
    pub ol_cnt: u32,
    pub all_local: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderLine {
    pub w_id: u32,
    pub d_id: u32,
    pub o_id: u32,
    pub number: u32,
    pub i_id: u32,
    pub supply_w_id: u32,
    pub delivery_d: Option<i64>,
    pub quantity: u32,
    pub amount: i64,
    pub dist_info: String,
}

/// The rows of one district: the district, its customers with their history rows, and its
/// orders with their lines; NEW-ORDER holds the orders whose carrier is `None`.
#[derive(Clone, Debug)]
pub struct DistrictRows {
    pub district: District,
    pub customers: Vec<Customer>,
    pub history: Vec<History>,
    pub orders: Vec<Order>,
    pub order_lines: Vec<OrderLine>,
}

impl DistrictRows {
    /// The order ids in NEW-ORDER.
    pub fn new_orders(&self) -> impl Iterator<Item = u32> + '_ {
        self.orders
            .iter()
            .filter(|order| order.carrier_id.is_none())
            .map(|order| order.o_id)
    }
}

/// The ITEM table, items `first..=last` (the load splits it among threads).
pub fn items(rng: &mut Rng, first: u32, last: u32) -> Vec<Item> {
    assert!(
        1 <= first && last <= ITEM_COUNT,
        "first={first} last={last}"
    );
    (first..=last)
        .map(|i_id| Item {
            i_id,
            im_id: uniform(rng, 1, 10_000),
            name: a_string(rng, 14, 24),
            price: cents(rng, 100, 10_000),
            data: data_with_original(rng),
        })
        .collect()
}

pub fn warehouse(rng: &mut Rng, w_id: u32) -> Warehouse {
    Warehouse {
        w_id,
        name: a_string(rng, 6, 10),
        address: Address::random(rng),
        tax: uniform(rng, 0, 2000),
        ytd: 30_000_000,
    }
}

/// Stock rows `first..=last` of warehouse `w_id`.
pub fn stock(rng: &mut Rng, w_id: u32, first: u32, last: u32) -> Vec<Stock> {
    (first..=last)
        .map(|i_id| Stock {
            i_id,
            w_id,
            quantity: uniform(rng, 10, 100),
            dist: std::array::from_fn(|_| a_string(rng, 24, 24)),
            ytd: 0,
            order_cnt: 0,
            remote_cnt: 0,
            data: data_with_original(rng),
        })
        .collect()
}

/// District `d_id` of warehouse `w_id` with its customers, history and orders, as loaded at
/// time `now` with the load's last-name constant.
pub fn district(
    rng: &mut Rng,
    constants: &Constants,
    w_id: u32,
    d_id: u32,
    now: i64,
) -> DistrictRows {
    let district = District {
        w_id,
        d_id,
        name: a_string(rng, 6, 10),
        address: Address::random(rng),
        tax: uniform(rng, 0, 2000),
        ytd: 3_000_000,
        next_o_id: INITIAL_ORDERS_PER_DISTRICT + 1,
    };
    let mut customers = Vec::with_capacity(CUSTOMERS_PER_DISTRICT as usize);
    let mut history = Vec::with_capacity(CUSTOMERS_PER_DISTRICT as usize);
    for c_id in 1..=CUSTOMERS_PER_DISTRICT {
        // The first 1,000 customers take every name once, the rest NURand's choice.
        let name_number = if c_id <= 1000 {
            c_id - 1
        } else {
            input::nurand(rng, input::A_LAST, constants.last_load, 0, 999)
        };
        customers.push(Customer {
            w_id,
            d_id,
            c_id,
            first: a_string(rng, 8, 16),
            middle: "OE".into(),
            last: last_name(name_number),
            address: Address::random(rng),
            phone: n_string(rng, 16, 16),
            since: now,
            credit: if rng.below(10) == 0 { "BC" } else { "GC" }.into(),
            credit_lim: 5_000_000,
            discount: uniform(rng, 0, 5000),
            balance: -1000,
            ytd_payment: 1000,
            payment_cnt: 1,
            delivery_cnt: 0,
            data: a_string(rng, 300, 500),
        });
        history.push(History {
            c_id,
            c_d_id: d_id,
            c_w_id: w_id,
            d_id,
            w_id,
            date: now,
            amount: 1000,
            data: a_string(rng, 12, 24),
        });
    }
    // O_C_ID is a random permutation of the customers.
    let mut owners: Vec<u32> = (1..=CUSTOMERS_PER_DISTRICT).collect();
    for index in (1..owners.len()).rev() {
        let other = rng.below(index as u64 + 1) as usize;
        owners.swap(index, other);
    }
    let mut orders = Vec::with_capacity(INITIAL_ORDERS_PER_DISTRICT as usize);
    let mut order_lines = Vec::new();
    for o_id in 1..=INITIAL_ORDERS_PER_DISTRICT {
        let delivered = o_id < FIRST_UNDELIVERED_ORDER;
        let ol_cnt = uniform(rng, input::ORDER_LINES_MIN, input::ORDER_LINES_MAX);
        orders.push(Order {
            w_id,
            d_id,
            o_id,
            c_id: owners[o_id as usize - 1],
            entry_d: now,
            carrier_id: delivered.then(|| uniform(rng, 1, 10)),
            ol_cnt,
            all_local: true,
        });
        for number in 1..=ol_cnt {
            order_lines.push(OrderLine {
                w_id,
                d_id,
                o_id,
                number,
                i_id: uniform(rng, 1, ITEM_COUNT),
                supply_w_id: w_id,
                delivery_d: delivered.then_some(now),
                quantity: 5,
                amount: if delivered { 0 } else { cents(rng, 1, 999_999) },
                dist_info: a_string(rng, 24, 24),
            });
        }
    }
    DistrictRows {
        district,
        customers,
        history,
        orders,
        order_lines,
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_district_is_populated_as_clause_4_3_3_1_says() {
        let mut rng = Rng::from_seed(3);
        let constants = Constants::draw(&mut rng);
        let rows = district(&mut rng, &constants, 2, 7, 1000);
        assert_eq!(rows.district.next_o_id, 3001);
        assert_eq!(rows.customers.len(), 3000);
        assert_eq!(rows.history.len(), 3000);
        assert_eq!(rows.orders.len(), 3000);
        assert_eq!(rows.new_orders().count(), 900);
        assert_eq!(rows.new_orders().next(), Some(2101));
        let lines: u32 = rows.orders.iter().map(|order| order.ol_cnt).sum();
        assert_eq!(lines as usize, rows.order_lines.len());
        // Every name of the syllable table is used by the first thousand customers.
        let names: std::collections::BTreeSet<&str> = rows.customers[..1000]
            .iter()
            .map(|c| c.last.as_str())
            .collect();
        assert_eq!(names.len(), 1000);
        let bad = rows.customers.iter().filter(|c| c.credit == "BC").count();
        assert!((200..400).contains(&bad), "bad={bad}");
        let mut owners: Vec<u32> = rows.orders.iter().map(|o| o.c_id).collect();
        owners.sort_unstable();
        assert_eq!(owners, (1..=3000).collect::<Vec<_>>(), "a permutation");
        for line in &rows.order_lines {
            let delivered = line.o_id < 2101;
            assert_eq!(line.delivery_d.is_some(), delivered);
            assert_eq!(line.amount == 0, delivered, "{line:?}");
        }
    }

    #[test]
    fn items_and_stock_have_their_ranges() {
        let mut rng = Rng::from_seed(4);
        let items = items(&mut rng, 1, 1000);
        assert!(items.iter().all(|i| (100..=10_000).contains(&i.price)));
        let stock = stock(&mut rng, 3, 1, 1000);
        assert!(stock.iter().all(|s| (10..=100).contains(&s.quantity)));
        assert!(stock.iter().all(|s| s.dist.iter().all(|d| d.len() == 24)));
    }
}
