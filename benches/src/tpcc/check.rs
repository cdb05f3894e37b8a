//! The consistency conditions of clause 3.3.2, checked by reading the whole database through
//! a [`Client`] while nothing else runs (after the load and after a run). Each condition is
//! reported as holding or violated with the first offending row found.
//!
//! Conditions 1-10 and 12 are checked. Condition 11 (count(ORDER) - count(NEW-ORDER) = 2,100
//! per district) is a property of the initial population only, since every Delivery changes
//! it: it is checked only when `initial` is set.
//!
//! Where NEW-ORDER has no row for a district (every order delivered), conditions 2 and 3 say
//! nothing about NEW-ORDER's ids, and only D_NEXT_O_ID - 1 = max(O_ID) is checked.

use super::backend::{Client, DistrictState};
use super::input::{DISTRICTS_PER_WAREHOUSE, FIRST_UNDELIVERED_ORDER};
use std::collections::HashMap;

/// The conditions, by number, as the report prints them.
pub const CONDITIONS: [(u8, &str); 12] = [
    (1, "W_YTD = sum(D_YTD)"),
    (2, "D_NEXT_O_ID - 1 = max(O_ID) = max(NO_O_ID)"),
    (3, "max(NO_O_ID) - min(NO_O_ID) + 1 = count(NEW-ORDER)"),
    (4, "sum(O_OL_CNT) = count(ORDER-LINE)"),
    (
        5,
        "O_CARRIER_ID is null exactly for the orders in NEW-ORDER",
    ),
    (6, "O_OL_CNT = the order's count(ORDER-LINE)"),
    (
        7,
        "OL_DELIVERY_D is null exactly when its order's O_CARRIER_ID is",
    ),
    (8, "W_YTD = sum(H_AMOUNT) of its payments"),
    (9, "D_YTD = sum(H_AMOUNT) of its payments"),
    (
        10,
        "C_BALANCE = sum(delivered OL_AMOUNT) - sum(H_AMOUNT) of the customer",
    ),
    (
        11,
        "count(ORDER) - count(NEW-ORDER) = 2100 (initial population only)",
    ),
    (
        12,
        "C_BALANCE + C_YTD_PAYMENT = sum(delivered OL_AMOUNT) of the customer",
    ),
];

/// What the checks found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// (condition number, first offending row) of each violated condition, by number.
    pub violations: Vec<(u8, String)>,
    /// The conditions checked, by number.
    pub checked: Vec<u8>,
}

impl CheckReport {
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }

    /// The first offending row of condition `number`, if it is violated.
    pub fn violation(&self, number: u8) -> Option<&str> {
        self.violations
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, row)| row.as_str())
    }

    /// One line per condition checked: "holds" or "VIOLATED" and the first offending row.
    pub fn print(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        for (number, text) in CONDITIONS {
            if !self.checked.contains(&number) {
                continue;
            }
            match self.violation(number) {
                None => writeln!(out, "  condition {number:>2} holds     {text}")?,
                Some(row) => writeln!(out, "  condition {number:>2} VIOLATED  {text}: {row}")?,
            }
        }
        Ok(())
    }
}

/// Accumulates the first violation of each condition.
#[derive(Default)]
struct Findings {
    first: HashMap<u8, String>,
}

impl Findings {
    fn check(&mut self, number: u8, holds: bool, describe: impl FnOnce() -> String) {
        if !holds {
            self.first.entry(number).or_insert_with(describe);
        }
    }
}

/// What condition 10 and 12 need of one customer.
#[derive(Default)]
struct CustomerSums {
    delivered_amount: i64,
    history_amount: i64,
}

/// Reads warehouses `1..=warehouse_count` and checks every condition; `initial` adds
/// condition 11, which holds only for the data as loaded.
pub fn check(
    client: &mut dyn Client,
    warehouse_count: u32,
    initial: bool,
) -> anyhow::Result<CheckReport> {
    let mut findings = Findings::default();
    let mut sums: HashMap<(u32, u32, u32), CustomerSums> = HashMap::new();
    let mut customers: Vec<((u32, u32, u32), i64, i64)> = Vec::new();
    for w_id in 1..=warehouse_count {
        let w_ytd = client.read_warehouse_ytd(w_id)?;
        let mut d_ytd_sum = 0;
        let mut w_history_sum = 0;
        for d_id in 1..=DISTRICTS_PER_WAREHOUSE {
            let state = client.read_district(w_id, d_id)?;
            d_ytd_sum += state.ytd;
            let h_sum: i64 = state.history.iter().map(|h| h.amount).sum();
            w_history_sum += h_sum;
            findings.check(9, state.ytd == h_sum, || {
                format!(
                    "district {w_id}/{d_id}: D_YTD {} but its payments sum to {h_sum}",
                    state.ytd
                )
            });
            for h in &state.history {
                sums.entry((h.c_w_id, h.c_d_id, h.c_id))
                    .or_default()
                    .history_amount += h.amount;
            }
            check_district(&mut findings, w_id, d_id, &state, initial, &mut sums);
            for c in &state.customers {
                customers.push(((w_id, d_id, c.c_id), c.balance, c.ytd_payment));
            }
        }
        findings.check(1, w_ytd == d_ytd_sum, || {
            format!("warehouse {w_id}: W_YTD {w_ytd} but sum(D_YTD) {d_ytd_sum}")
        });
        findings.check(8, w_ytd == w_history_sum, || {
            format!("warehouse {w_id}: W_YTD {w_ytd} but its payments sum to {w_history_sum}")
        });
    }
    for (key, balance, ytd_payment) in customers {
        let sums = sums.remove(&key).unwrap_or_default();
        let (w_id, d_id, c_id) = key;
        let expected = sums.delivered_amount - sums.history_amount;
        findings.check(10, balance == expected, || {
            format!(
                "customer {w_id}/{d_id}/{c_id}: C_BALANCE {balance} but delivered {} - paid {} \
                 = {expected}",
                sums.delivered_amount, sums.history_amount
            )
        });
        findings.check(12, balance + ytd_payment == sums.delivered_amount, || {
            format!(
                "customer {w_id}/{d_id}/{c_id}: C_BALANCE {balance} + C_YTD_PAYMENT \
                 {ytd_payment} but delivered {}",
                sums.delivered_amount
            )
        });
    }
    // Payments or orders of customers that do not exist break 10 as well.
    if let Some((key, _)) = sums
        .iter()
        .find(|(_, s)| s.history_amount != 0 || s.delivered_amount != 0)
    {
        findings.check(10, false, || {
            format!("customer {key:?} has payments or deliveries but no CUSTOMER row")
        });
    }
    let mut violations: Vec<(u8, String)> = findings.first.into_iter().collect();
    violations.sort();
    Ok(CheckReport {
        violations,
        checked: CONDITIONS
            .iter()
            .map(|(number, _)| *number)
            .filter(|&number| initial || number != 11)
            .collect(),
    })
}

/// Conditions 2-7 and 11 of one district, and its delivered amounts per customer.
fn check_district(
    findings: &mut Findings,
    w_id: u32,
    d_id: u32,
    state: &DistrictState,
    initial: bool,
    sums: &mut HashMap<(u32, u32, u32), CustomerSums>,
) {
    let at = format!("district {w_id}/{d_id}");
    let max_o_id = state.orders.iter().map(|o| o.o_id).max().unwrap_or(0);
    findings.check(2, state.next_o_id - 1 == max_o_id, || {
        format!(
            "{at}: D_NEXT_O_ID {} but max(O_ID) {max_o_id}",
            state.next_o_id
        )
    });
    let max_no = state.new_orders.iter().copied().max();
    let min_no = state.new_orders.iter().copied().min();
    if let (Some(max_no), Some(min_no)) = (max_no, min_no) {
        findings.check(2, max_no == max_o_id, || {
            format!("{at}: max(NO_O_ID) {max_no} but max(O_ID) {max_o_id}")
        });
        let count = state.new_orders.len() as u32;
        findings.check(3, max_no - min_no + 1 == count, || {
            format!("{at}: NEW-ORDER ids {min_no}..={max_no} but {count} rows")
        });
    }
    let ol_cnt_sum: u64 = state.orders.iter().map(|o| u64::from(o.ol_cnt)).sum();
    findings.check(4, ol_cnt_sum == state.order_lines.len() as u64, || {
        format!(
            "{at}: sum(O_OL_CNT) {ol_cnt_sum} but {} ORDER-LINE rows",
            state.order_lines.len()
        )
    });
    let new_orders: std::collections::HashSet<u32> = state.new_orders.iter().copied().collect();
    // Per order: (lines, lines with a delivery date, delivered amount).
    let mut lines: HashMap<u32, (u32, u32, i64)> = HashMap::new();
    for line in &state.order_lines {
        let entry = lines.entry(line.o_id).or_default();
        entry.0 += 1;
        if line.delivery_d.is_some() {
            entry.1 += 1;
            entry.2 += line.amount;
        }
    }
    let owners: HashMap<u32, u32> = state.orders.iter().map(|o| (o.o_id, o.c_id)).collect();
    for order in &state.orders {
        let o_id = order.o_id;
        let in_new_order = new_orders.contains(&o_id);
        findings.check(5, order.carrier_id.is_none() == in_new_order, || {
            format!(
                "{at} order {o_id}: O_CARRIER_ID {:?} and {} NEW-ORDER",
                order.carrier_id,
                if in_new_order { "in" } else { "not in" }
            )
        });
        let (count, dated, _) = lines.get(&o_id).copied().unwrap_or_default();
        findings.check(6, order.ol_cnt == count, || {
            format!(
                "{at} order {o_id}: O_OL_CNT {} but {count} lines",
                order.ol_cnt
            )
        });
        let expected_dated = if order.carrier_id.is_some() { count } else { 0 };
        findings.check(7, dated == expected_dated, || {
            format!(
                "{at} order {o_id}: O_CARRIER_ID {:?} and {dated} of {count} lines with a \
                 delivery date",
                order.carrier_id
            )
        });
    }
    for (o_id, (_, _, amount)) in &lines {
        match owners.get(o_id) {
            Some(&c_id) => {
                sums.entry((w_id, d_id, c_id)).or_default().delivered_amount += amount;
            }
            None => findings.check(6, false, || {
                format!("{at}: ORDER-LINE rows of order {o_id}, which has no ORDER row")
            }),
        }
    }
    if let Some(&o_id) = new_orders.iter().find(|o_id| !owners.contains_key(o_id)) {
        findings.check(5, false, || {
            format!("{at}: NEW-ORDER row {o_id} has no ORDER row")
        });
    }
    if initial {
        let difference = state.orders.len() as i64 - state.new_orders.len() as i64;
        let expected = i64::from(FIRST_UNDELIVERED_ORDER) - 1;
        findings.check(11, difference == expected, || {
            format!(
                "{at}: {} orders and {} new orders",
                state.orders.len(),
                state.new_orders.len()
            )
        });
    }
}
