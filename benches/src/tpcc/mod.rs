//! A TPC-C driver (the TPC Benchmark C, revision 5.11), generic over the database it drives:
//! anything that implements [`Backend`]. The driver draws the spec's inputs, deals the mix,
//! times and reports; a backend implements the five transactions, the load and the reads the
//! consistency checks need, so every target runs the same transactions on the same inputs.
//!
//! What it keeps of the spec, and where it departs from it (each said where it is done):
//! - the nine tables at the spec's cardinalities, populated by clause 4.3.3.1 (NURand with its
//!   constants and the run-vs-load rule for C_LAST, the syllable table, ORIGINAL in 10% of
//!   item and stock data, 3,000 orders per district with the last 900 undelivered, one
//!   history row per customer); a-strings use 62 characters, not the spec's 128 ([`input`]);
//! - the full transactions: New-Order with 5-15 lines, 1% rolled back on an unused item, 1%
//!   of lines from a remote warehouse, S_YTD, S_ORDER_CNT and S_REMOTE_CNT kept; Payment with
//!   15% remote customers and 60% by last name (the middle one by first name); Order-Status
//!   (60% by last name, the customer's latest order); Delivery of the oldest undelivered order
//!   of each of the ten districts, as **one** transaction; Stock-Level over the last 20 orders
//!   (at the same isolation as the others, though clause 3.4 would let it run at a lower one);
//! - the mix 45/43/4/4/4 without keying or think times ([`driver`]);
//! - the consistency conditions of clause 3.3.2 after the load and after a run ([`check`]).
//!
//! - [`input`]: NURand, the strings, and the transactions' inputs; [`rows`]: the rows and
//!   the population; [`backend`]: the interface and the shared business rules; [`driver`]:
//!   load, run, report; [`check`]: the conditions; [`memory`]: the reference model;
//!   [`postgres`]: PostgreSQL; [`acre`]: Acre.

pub mod acre;
pub mod backend;
pub mod check;
pub mod driver;
pub mod input;
pub mod memory;
pub mod postgres;
pub mod rows;

pub use backend::{Attempt, Backend, Client};
pub use check::{CheckReport, check};
pub use driver::{Kind, Loaded, Options, OptionsError, Report, load, run};
