//! The bank checked: transfers move money between accounts and never make or lose any, so
//! every read of all the balances that took effect (`ok`, the final reads included) must show
//! the configured total, no negative balance and no balance above the total.
//!
//! Balances are `u64` in the history. A negative balance that the code under test wrapped
//! round shows as a value of 2^63 or more, which no real balance reaches (the total is far
//! smaller): such a value is reported as the negative number it is, and the sum is taken over
//! signed values so that one wrapped balance does not hide another's excess.
//!
//! Lost writes are not meaningful per transfer: a transfer's effect shows only in balances that
//! later transfers change again, and the totals every read checks are what a lost or
//! duplicated transfer breaks. The verdict's notes say so.

use super::{Checked, Operation, list_text};
use crate::history::{Kind, Value};
use crate::results::{Finding, Verdict};

/// A balance at or above this is a negative number wrapped round.
const WRAPPED_MIN: u64 = 1 << 63;

/// Checks every `ok` read of the balances of `accounts` accounts holding `total`.
pub fn check(operations: &[Operation<'_>], accounts: u32, total: u64) -> Checked {
    let mut findings = Vec::new();
    let mut read_count = 0;
    let mut transfer_counts = [0u64; 3];
    let mut foreign_count = 0;
    let mut notes = Vec::new();
    for operation in operations {
        match (operation.value(), operation.outcome()) {
            (Value::Transfer { .. }, outcome) => {
                let slot = match outcome {
                    Kind::Ok => 0,
                    Kind::Fail => 1,
                    Kind::Info | Kind::Invoke => 2,
                };
                transfer_counts[slot] += 1;
            }
            (Value::ReadBalances { balances }, Kind::Ok) => {
                let Some(balances) = balances else {
                    notes.push(format!(
                        "op {} completed ok with no balances ({}): not checked",
                        operation.index(),
                        operation.describe_when()
                    ));
                    continue;
                };
                read_count += 1;
                check_read(operation, balances, accounts, total, &mut findings);
            }
            (Value::ReadBalances { .. }, _) => {}
            _ => foreign_count += 1,
        }
    }
    let [ok, fail, info] = transfer_counts;
    notes.insert(
        0,
        format!(
            "{read_count} reads of the balances checked against the total {total}; transfers: \
             {ok} ok, {fail} failed, {info} of unknown outcome"
        ),
    );
    if read_count == 0 {
        notes.push("no read of the balances completed: nothing was checked".into());
    }
    if foreign_count > 0 {
        notes.push(format!(
            "{foreign_count} operations that are not the bank's were ignored"
        ));
    }
    notes.push(
        "lost writes are not checked per transfer: a lost or repeated transfer shows as a \
         wrong total in the reads"
            .into(),
    );
    Checked {
        verdicts: vec![Verdict {
            checker: "bank".into(),
            valid: findings.is_empty(),
            notes,
        }],
        findings,
        lost_writes: Vec::new(),
    }
}

fn check_read(
    operation: &Operation<'_>,
    balances: &[u64],
    accounts: u32,
    total: u64,
    findings: &mut Vec<Finding>,
) {
    let what = || {
        format!(
            "op {} ({}) read the balances {}",
            operation.index(),
            operation.describe_when(),
            list_text(balances)
        )
    };
    let mut finding = |class: &str, text: String| {
        findings.push(Finding {
            class: class.into(),
            checker: "bank".into(),
            text,
        });
    };
    if balances.len() != accounts as usize {
        finding(
            "wrong-account-count",
            format!("{}: {} accounts, not {accounts}", what(), balances.len()),
        );
    }
    for (account, &balance) in balances.iter().enumerate() {
        if balance >= WRAPPED_MIN {
            finding(
                "negative-balance",
                format!(
                    "{}: account {account} holds {}, a negative balance",
                    what(),
                    balance as i64
                ),
            );
        } else if balance > total {
            finding(
                "balance-above-total",
                format!(
                    "{}: account {account} holds {balance}, more than the total {total}",
                    what()
                ),
            );
        }
    }
    let sum: i128 = balances.iter().map(|&b| i128::from(b as i64)).sum();
    if sum != i128::from(total) {
        finding(
            "wrong-total",
            format!("{}: they sum to {sum}, not the total {total}", what()),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::check::test_history::Builder;
    use crate::check::{Checked, Workload, check};
    use crate::history::{Kind, Value};

    const TOTAL: u64 = 100;

    fn read(balances: &[u64]) -> Value {
        Value::ReadBalances {
            balances: Some(balances.to_vec()),
        }
    }

    fn unread() -> Value {
        Value::ReadBalances { balances: None }
    }

    fn transfer(from: u32, to: u32, amount: u64) -> Value {
        Value::Transfer { from, to, amount }
    }

    /// A history of transfers and reads that ends with the final read of `last`, after a
    /// read by a client of `middle`.
    fn history(middle: &[u64], last: &[u64]) -> Checked {
        let mut history = Builder::default();
        history.run(0, Kind::Ok, transfer(0, 1, 10), transfer(0, 1, 10));
        history.run(1, Kind::Fail, transfer(1, 2, 500), transfer(1, 2, 500));
        history.run(1, Kind::Info, transfer(2, 0, 5), transfer(2, 0, 5));
        history.run(2, Kind::Ok, unread(), read(middle));
        history.run(2, Kind::Fail, unread(), unread());
        history.final_read(0, unread(), read(last));
        check(
            &Workload::Bank {
                accounts: 3,
                total: TOTAL,
            },
            &history.ops,
        )
    }

    #[test]
    fn reads_that_add_up_are_valid() {
        let checked = history(&[40, 60, 0], &[30, 65, 5]);
        assert!(checked.valid(), "{checked:#?}");
        let notes = &checked.verdicts[0].notes;
        assert!(
            notes[0].starts_with("2 reads of the balances checked against the total 100"),
            "{notes:?}"
        );
        assert!(
            notes[0].ends_with("1 ok, 1 failed, 1 of unknown outcome"),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("lost writes are not checked"))
        );
    }

    #[test]
    fn a_wrong_total_is_found() {
        let checked = history(&[40, 60, 0], &[30, 60, 5]);
        assert!(!checked.valid());
        assert_eq!(checked.classes(), ["wrong-total"], "{checked:#?}");
        let text = &checked.findings[0].text;
        assert!(text.contains("final reader 0"), "{text}");
        assert!(
            text.ends_with("read the balances [30 60 5]: they sum to 95, not the total 100"),
            "{text}"
        );
    }

    #[test]
    fn a_negative_balance_is_found_even_when_the_total_is_right() {
        let minus_five = 5u64.wrapping_neg();
        let checked = history(&[45, 60, minus_five], &[30, 65, 5]);
        assert_eq!(checked.classes(), ["negative-balance"], "{checked:#?}");
        assert!(
            checked.findings[0].text.contains("account 2 holds -5"),
            "{checked:#?}"
        );
    }

    #[test]
    fn a_balance_above_the_total_and_a_missing_account_are_found() {
        let checked = history(&[101, 0, 0], &[100, 0]);
        assert_eq!(
            checked.classes(),
            ["balance-above-total", "wrong-account-count", "wrong-total"],
            "{checked:#?}"
        );
    }
}
