//! The random inputs of TPC-C (clause 2.1.5-2.1.6 and 4.3.2): uniform numbers, `NURand(A, x,
//! y)` with its per-run constants C, last names from the syllable table, a-strings and n-strings,
//! zip codes, the `ORIGINAL` mark, and the inputs of the five transactions (clauses 2.4.1,
//! 2.5.1, 2.6.1, 2.7.1, 2.8.1) drawn by a terminal.
//!
//! Money is kept in integer cents and rates (taxes, discounts) in ten-thousandths, so every
//! backend stores and sums exactly the same numbers and the consistency checks can compare
//! with `==` (PostgreSQL's `numeric(12,2)` and `numeric(4,4)` hold the same values).

use crate::ycsb::generator::Rng;

/// Items in the ITEM table (and stock rows per warehouse).
pub const ITEM_COUNT: u32 = 100_000;
/// Districts per warehouse.
pub const DISTRICTS_PER_WAREHOUSE: u32 = 10;
/// Customers per district.
pub const CUSTOMERS_PER_DISTRICT: u32 = 3_000;
/// Orders per district in the initial population.
pub const INITIAL_ORDERS_PER_DISTRICT: u32 = 3_000;
/// The first order of the initial population that is still in NEW-ORDER (the last 900).
pub const FIRST_UNDELIVERED_ORDER: u32 = 2_101;
/// An item id no item has: the 1% of New-Orders that roll back ask for it (clause 2.4.1.4).
pub const UNUSED_ITEM_ID: u32 = ITEM_COUNT + 1;
/// Order lines of a New-Order: 5 to 15 (clause 2.4.1.3).
pub const ORDER_LINES_MIN: u32 = 5;
pub const ORDER_LINES_MAX: u32 = 15;

/// The syllables of a last name (clause 4.3.2.3): a number 0..999 picks one per digit.
pub const SYLLABLES: [&str; 10] = [
    "BAR", "OUGHT", "ABLE", "PRI", "PRES", "ESE", "ANTI", "CALLY", "ATION", "EING",
];

/// The A of NURand for customer last names, customer ids and item ids (clause 2.1.6).
pub const A_LAST: u32 = 255;
pub const A_CUSTOMER_ID: u32 = 1023;
pub const A_ITEM_ID: u32 = 8191;

/// The constants C of NURand for one run (clause 2.1.6). The last name's constant of the run
/// (`last_run`) differs from the one the data was loaded with (`last_load`) by a delta in
/// 65..=119 other than 96 and 112 (clause 2.1.6.1), so the run's popular names are not the
/// load's; the other two may be the same for load and run, and are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Constants {
    pub last_load: u32,
    pub last_run: u32,
    pub customer_id: u32,
    pub item_id: u32,
}

impl Constants {
    /// Draws a set that obeys the delta rule.
    pub fn draw(rng: &mut Rng) -> Constants {
        let last_load = uniform(rng, 0, A_LAST);
        let last_run = loop {
            let candidate = uniform(rng, 0, A_LAST);
            if Constants::valid_delta(last_load, candidate) {
                break candidate;
            }
        };
        Constants {
            last_load,
            last_run,
            customer_id: uniform(rng, 0, A_CUSTOMER_ID),
            item_id: uniform(rng, 0, A_ITEM_ID),
        }
    }

    /// Clause 2.1.6.1: 65 <= |C_run - C_load| <= 119, and neither 96 nor 112.
    pub fn valid_delta(load: u32, run: u32) -> bool {
        let delta = load.abs_diff(run);
        (65..=119).contains(&delta) && delta != 96 && delta != 112
    }
}

/// Uniform in `low..=high`.
pub fn uniform(rng: &mut Rng, low: u32, high: u32) -> u32 {
    assert!(low <= high, "low={low} high={high}");
    low + rng.below(u64::from(high - low) + 1) as u32
}

/// `NURand(A, x, y) = (((random(0, A) | random(x, y)) + C) % (y - x + 1)) + x` (clause
/// 2.1.6): non-uniform, some values far more popular than others.
pub fn nurand(rng: &mut Rng, a: u32, c: u32, x: u32, y: u32) -> u32 {
    let mixed = uniform(rng, 0, a) | uniform(rng, x, y);
    (mixed + c) % (y - x + 1) + x
}

/// The last name of number `number` (0..=999): one syllable per decimal digit, so 371 is
/// "PRICALLYOUGHT".
pub fn last_name(number: u32) -> String {
    assert!(number <= 999, "number={number}");
    let digits = [number / 100, number / 10 % 10, number % 10];
    digits.iter().map(|&d| SYLLABLES[d as usize]).collect()
}

/// A random a-string of `min..=max` characters (clause 4.3.2.2). The spec asks for at least
/// 128 different characters; these are the 62 letters and digits, which keeps every string
/// one byte a character and free of quoting in SQL (a simplification that changes no
/// transaction's work).
pub fn a_string(rng: &mut Rng, min: usize, max: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let len = uniform(rng, min as u32, max as u32) as usize;
    (0..len)
        .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// A random n-string (digits) of `min..=max` characters.
pub fn n_string(rng: &mut Rng, min: usize, max: usize) -> String {
    let len = uniform(rng, min as u32, max as u32) as usize;
    (0..len)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect()
}

/// A zip code: four random digits and "11111" (clause 4.3.2.7).
pub fn zip(rng: &mut Rng) -> String {
    let mut zip = n_string(rng, 4, 4);
    zip.push_str("11111");
    zip
}

/// I_DATA or S_DATA: an a-string of 26..=50 characters, in 10% of rows with "ORIGINAL" at a
/// random position (clause 4.3.3.1).
pub fn data_with_original(rng: &mut Rng) -> String {
    let mut data = a_string(rng, 26, 50);
    if rng.below(10) == 0 {
        let at = rng.below((data.len() - 8 + 1) as u64) as usize;
        data.replace_range(at..at + 8, "ORIGINAL");
    }
    data
}

/// A uniform amount of cents in `low..=high`.
pub fn cents(rng: &mut Rng, low: i64, high: i64) -> i64 {
    low + rng.below((high - low + 1) as u64) as i64
}

/// Which customer a Payment or Order-Status names: by id (40%) or by last name (60%).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomerChoice {
    Id(u32),
    /// All customers of the district with this last name, sorted by first name: the one at
    /// position ceil(n / 2) (clause 2.5.2.2).
    LastName(String),
}

/// The inputs of a New-Order (clause 2.4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrderInput {
    pub w_id: u32,
    pub d_id: u32,
    pub c_id: u32,
    pub lines: Vec<LineInput>,
    /// Seconds since the Unix epoch.
    pub entry_d: i64,
}

impl NewOrderInput {
    /// Whether every line's supply warehouse is the home warehouse (O_ALL_LOCAL).
    pub fn all_local(&self) -> bool {
        self.lines.iter().all(|line| line.supply_w_id == self.w_id)
    }

    /// Whether this is one of the 1% that must roll back (its last item is unused).
    pub fn rolls_back(&self) -> bool {
        self.lines.iter().any(|line| line.i_id == UNUSED_ITEM_ID)
    }
}

/// One line of a New-Order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineInput {
    pub i_id: u32,
    pub supply_w_id: u32,
    pub quantity: u32,
}

/// The inputs of a Payment (clause 2.5.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentInput {
    pub w_id: u32,
    pub d_id: u32,
    pub c_w_id: u32,
    pub c_d_id: u32,
    pub customer: CustomerChoice,
    pub h_amount: i64,
    pub h_date: i64,
}

/// The inputs of an Order-Status (clause 2.6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderStatusInput {
    pub w_id: u32,
    pub d_id: u32,
    pub customer: CustomerChoice,
}

/// The inputs of a Delivery (clause 2.7.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryInput {
    pub w_id: u32,
    pub carrier_id: u32,
    pub delivery_d: i64,
}

/// The inputs of a Stock-Level (clause 2.8.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockLevelInput {
    pub w_id: u32,
    pub d_id: u32,
    pub threshold: u32,
}

/// One client thread's terminal: its home warehouse and district and the run's constants.
#[derive(Clone, Debug)]
pub struct Terminal {
    pub warehouse_count: u32,
    pub w_id: u32,
    /// The district of its Stock-Levels (clause 2.8.1.1: fixed for a terminal).
    pub d_id: u32,
    pub constants: Constants,
}

impl Terminal {
    /// The terminal of client thread `index`: threads are spread over the warehouses first,
    /// then over the districts.
    pub fn new(index: usize, warehouse_count: u32, constants: Constants) -> Terminal {
        let index = index as u32;
        Terminal {
            warehouse_count,
            w_id: index % warehouse_count + 1,
            d_id: index / warehouse_count % DISTRICTS_PER_WAREHOUSE + 1,
            constants,
        }
    }

    fn customer_id(&self, rng: &mut Rng) -> u32 {
        nurand(
            rng,
            A_CUSTOMER_ID,
            self.constants.customer_id,
            1,
            CUSTOMERS_PER_DISTRICT,
        )
    }

    fn customer(&self, rng: &mut Rng) -> CustomerChoice {
        if uniform(rng, 1, 100) <= 60 {
            CustomerChoice::LastName(last_name(nurand(
                rng,
                A_LAST,
                self.constants.last_run,
                0,
                999,
            )))
        } else {
            CustomerChoice::Id(self.customer_id(rng))
        }
    }

    /// A warehouse other than the home one (the home one if it is the only one).
    fn remote_warehouse(&self, rng: &mut Rng) -> u32 {
        if self.warehouse_count == 1 {
            return self.w_id;
        }
        let other = uniform(rng, 1, self.warehouse_count - 1);
        if other >= self.w_id { other + 1 } else { other }
    }

    pub fn new_order(&self, rng: &mut Rng, now: i64) -> NewOrderInput {
        let d_id = uniform(rng, 1, DISTRICTS_PER_WAREHOUSE);
        let c_id = self.customer_id(rng);
        let line_count = uniform(rng, ORDER_LINES_MIN, ORDER_LINES_MAX);
        let rollback = uniform(rng, 1, 100) == 1;
        let lines = (0..line_count)
            .map(|number| {
                let i_id = if rollback && number == line_count - 1 {
                    UNUSED_ITEM_ID
                } else {
                    nurand(rng, A_ITEM_ID, self.constants.item_id, 1, ITEM_COUNT)
                };
                let supply_w_id = if uniform(rng, 1, 100) == 1 {
                    self.remote_warehouse(rng)
                } else {
                    self.w_id
                };
                LineInput {
                    i_id,
                    supply_w_id,
                    quantity: uniform(rng, 1, 10),
                }
            })
            .collect();
        NewOrderInput {
            w_id: self.w_id,
            d_id,
            c_id,
            lines,
            entry_d: now,
        }
    }

    pub fn payment(&self, rng: &mut Rng, now: i64) -> PaymentInput {
        let d_id = uniform(rng, 1, DISTRICTS_PER_WAREHOUSE);
        let (c_w_id, c_d_id) = if uniform(rng, 1, 100) <= 85 || self.warehouse_count == 1 {
            (self.w_id, d_id)
        } else {
            (
                self.remote_warehouse(rng),
                uniform(rng, 1, DISTRICTS_PER_WAREHOUSE),
            )
        };
        PaymentInput {
            w_id: self.w_id,
            d_id,
            c_w_id,
            c_d_id,
            customer: self.customer(rng),
            h_amount: cents(rng, 100, 500_000),
            h_date: now,
        }
    }

    pub fn order_status(&self, rng: &mut Rng) -> OrderStatusInput {
        OrderStatusInput {
            w_id: self.w_id,
            d_id: uniform(rng, 1, DISTRICTS_PER_WAREHOUSE),
            customer: self.customer(rng),
        }
    }

    pub fn delivery(&self, rng: &mut Rng, now: i64) -> DeliveryInput {
        DeliveryInput {
            w_id: self.w_id,
            carrier_id: uniform(rng, 1, 10),
            delivery_d: now,
        }
    }

    pub fn stock_level(&self, rng: &mut Rng) -> StockLevelInput {
        StockLevelInput {
            w_id: self.w_id,
            d_id: self.d_id,
            threshold: uniform(rng, 10, 20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> Rng {
        Rng::from_seed(16)
    }

    #[test]
    fn the_run_constant_of_last_names_keeps_its_distance_from_the_load_one() {
        let mut rng = rng();
        for _ in 0..1000 {
            let c = Constants::draw(&mut rng);
            let delta = c.last_load.abs_diff(c.last_run);
            assert!((65..=119).contains(&delta), "{c:?}");
            assert!(delta != 96 && delta != 112, "{c:?}");
            assert!(
                c.customer_id <= A_CUSTOMER_ID && c.item_id <= A_ITEM_ID,
                "{c:?}"
            );
        }
        assert!(!Constants::valid_delta(0, 96));
        assert!(!Constants::valid_delta(200, 88));
        assert!(Constants::valid_delta(10, 75));
    }

    /// NURand stays in its range, reaches both ends, and is far from uniform: with A = 255 on
    /// 0..999 the values whose low 8 bits OR-ed with anything stay popular get several times
    /// the uniform share.
    #[test]
    fn nurand_covers_its_range_and_is_skewed() {
        let mut rng = rng();
        let mut counts = vec![0u32; 1000];
        let draws = 1_000_000;
        for _ in 0..draws {
            let value = nurand(&mut rng, A_LAST, 123, 0, 999);
            counts[value as usize] += 1;
        }
        assert!(counts[0] > 0 && counts[999] > 0);
        let uniform_share = draws / 1000;
        let max = *counts.iter().max().unwrap();
        let min = *counts.iter().min().unwrap();
        assert!(max > 3 * uniform_share, "max={max}");
        assert!(min < uniform_share / 2, "min={min}");
        let mut ids = vec![0u32; CUSTOMERS_PER_DISTRICT as usize + 1];
        for _ in 0..100_000 {
            ids[nurand(&mut rng, A_CUSTOMER_ID, 7, 1, CUSTOMERS_PER_DISTRICT) as usize] += 1;
        }
        assert_eq!(ids[0], 0, "ids start at 1");
        // A value whose low ten bits are mostly clear is rare (random(0, 1023) must be a
        // subset of them), so not every id is drawn; most are.
        let drawn = ids[1..].iter().filter(|&&count| count > 0).count();
        assert!(drawn > 2000, "drawn={drawn}");
    }

    /// Exact: with C = 0 and x = 0, NURand(A, 0, y) for y + 1 a power of two above A is
    /// `random(0, A) | random(0, y)`; its mean is computable by counting bits.
    #[test]
    fn nurand_is_the_or_of_two_uniform_draws_shifted_by_c() {
        let mut rng = rng();
        let draws = 400_000;
        // Each bit of a | b with a in 0..=3 and b in 0..=15 is set with probability 3/4 for
        // bits 0-1 and 1/2 for bits 2-3: mean = 0.75 * 3 + 0.5 * 12 = 8.25.
        let sum: u64 = (0..draws)
            .map(|_| u64::from(nurand(&mut rng, 3, 0, 0, 15)))
            .sum();
        let mean = sum as f64 / draws as f64;
        assert!((mean - 8.25).abs() < 0.03, "mean={mean}");
        // C shifts the result modulo the range.
        let mut a = Rng::from_seed(5);
        let mut b = Rng::from_seed(5);
        for _ in 0..100 {
            assert_eq!(
                (nurand(&mut a, 3, 0, 0, 15) + 5) % 16,
                nurand(&mut b, 3, 5, 0, 15)
            );
        }
    }

    #[test]
    fn last_names_are_three_syllables() {
        assert_eq!(last_name(0), "BARBARBAR");
        assert_eq!(last_name(371), "PRICALLYOUGHT");
        assert_eq!(last_name(999), "EINGEINGEING");
    }

    #[test]
    fn strings_have_their_lengths_and_alphabets_and_a_tenth_say_original() {
        let mut rng = rng();
        let mut lengths = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let text = a_string(&mut rng, 8, 16);
            assert!((8..=16).contains(&text.len()), "{text}");
            assert!(text.bytes().all(|b| b.is_ascii_alphanumeric()), "{text}");
            lengths.insert(text.len());
            let digits = n_string(&mut rng, 16, 16);
            assert!(digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_digit()));
            let zip = zip(&mut rng);
            assert!(zip.len() == 9 && zip.ends_with("11111"), "{zip}");
        }
        assert_eq!(lengths.len(), 9, "every length 8..=16 appears");
        let marked = (0..20_000)
            .filter(|_| {
                let data = data_with_original(&mut rng);
                assert!((26..=50).contains(&data.len()), "{data}");
                data.contains("ORIGINAL")
            })
            .count();
        assert!((1700..2300).contains(&marked), "marked={marked} of 20000");
    }

    /// The mix of choices a terminal makes: 1% rollbacks, 1% remote lines, 15% remote
    /// payments, 60% by last name, 5-15 lines.
    #[test]
    fn terminal_inputs_follow_the_spec_percentages() {
        let mut rng = rng();
        let constants = Constants::draw(&mut rng);
        let terminal = Terminal::new(1, 4, constants);
        assert_eq!((terminal.w_id, terminal.d_id), (2, 1));
        let count = 50_000;
        let (mut rollbacks, mut lines, mut remote_lines) = (0, 0, 0);
        for _ in 0..count {
            let input = terminal.new_order(&mut rng, 0);
            assert!((5..=15).contains(&input.lines.len()));
            assert_eq!(input.w_id, 2);
            rollbacks += usize::from(input.rolls_back());
            if input.rolls_back() {
                let last = input.lines.last().unwrap();
                assert_eq!(last.i_id, UNUSED_ITEM_ID);
            }
            for line in &input.lines {
                lines += 1;
                remote_lines += usize::from(line.supply_w_id != 2);
                assert!((1..=10).contains(&line.quantity));
                assert!((1..=4).contains(&line.supply_w_id));
            }
        }
        assert!((350..650).contains(&rollbacks), "rollbacks={rollbacks}");
        let remote_share = remote_lines as f64 / lines as f64;
        assert!((0.007..0.013).contains(&remote_share), "{remote_share}");
        let (mut remote, mut by_name) = (0, 0);
        for _ in 0..count {
            let input = terminal.payment(&mut rng, 0);
            remote += usize::from(input.c_w_id != input.w_id);
            by_name += usize::from(matches!(input.customer, CustomerChoice::LastName(_)));
            assert!((100..=500_000).contains(&input.h_amount));
        }
        assert!((7000..8000).contains(&remote), "remote={remote}");
        assert!((29_000..31_000).contains(&by_name), "by_name={by_name}");
        // One warehouse: nothing is remote.
        let alone = Terminal::new(0, 1, constants);
        for _ in 0..1000 {
            assert_eq!(alone.payment(&mut rng, 0).c_w_id, 1);
            assert!(alone.new_order(&mut rng, 0).all_local());
        }
    }
}
