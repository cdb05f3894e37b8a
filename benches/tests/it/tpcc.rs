//! The TPC-C driver: each transaction's logic against a small hand-checked database (the same
//! test for every backend), the consistency checker catching each condition broken on purpose
//! in the in-memory model, short loads and runs that pass every check, and the PostgreSQL
//! backend against a server each test starts (skipped, with the reason printed, where
//! PostgreSQL is not installed).

use acre_benches::tpcc::backend::{
    Attempt, Backend, Client, DeliveryOutput, LineOutput, NewOrderOutcome, NewOrderOutput,
    OrderStatusOutput, OrderSummary, PaymentOutput,
};
use acre_benches::tpcc::input::{
    CustomerChoice, DeliveryInput, LineInput, NewOrderInput, OrderStatusInput, PaymentInput,
    StockLevelInput, UNUSED_ITEM_ID,
};
use acre_benches::tpcc::memory::MemoryBackend;
use acre_benches::tpcc::rows::{
    Address, Customer, District, DistrictRows, History, Item, Order, OrderLine, Stock, Warehouse,
};
use acre_benches::tpcc::{self, Options, check};
use acre_nvm_log::random::ConcurrentSeed;
use std::time::Duration;

fn address() -> Address {
    Address {
        street_1: "street one".into(),
        street_2: "street two".into(),
        city: "city".into(),
        state: "ST".into(),
        zip: "123411111".into(),
    }
}

fn customer(c_id: u32, first: &str, last: &str, discount: u32) -> Customer {
    Customer {
        w_id: 1,
        d_id: 1,
        c_id,
        first: first.into(),
        middle: "OE".into(),
        last: last.into(),
        address: address(),
        phone: "0123456789012345".into(),
        since: 1_000,
        credit: if c_id == 2 { "BC" } else { "GC" }.into(),
        credit_lim: 5_000_000,
        discount,
        balance: -1000,
        ytd_payment: 1000,
        payment_cnt: 1,
        delivery_cnt: 0,
        // Bob (2) has bad credit and a long C_DATA, which his payments make longer (up to
        // the 500 characters it is cut to).
        data: if c_id == 2 {
            "d".repeat(490)
        } else {
            "customer data".into()
        },
    }
}

fn line(o_id: u32, i_id: u32, delivered: bool, amount: i64) -> OrderLine {
    OrderLine {
        w_id: 1,
        d_id: 1,
        o_id,
        number: 1,
        i_id,
        supply_w_id: 1,
        delivery_d: delivered.then_some(1_000),
        quantity: 5,
        amount,
        dist_info: "d".repeat(24),
    }
}

/// One warehouse, one district (and nine empty ones), three items and four customers, three of them named
/// BARBARBAR (Alice, Bob, Carol). Order 1 of Alice is delivered, order 2 of Bob is not.
/// W_TAX 10%, D_TAX 5%, Alice's discount 10%; prices 10.00, 3.00, 2.50; stock 50, 12, 20;
/// item 3's data and stock data both say ORIGINAL.
fn load_hand_checked(backend: &mut dyn Backend) -> Box<dyn Client> {
    backend.create(1).expect("create the tables");
    let mut client = backend.client().expect("a client");
    let item = |i_id, price, data: &str| Item {
        i_id,
        im_id: 1,
        name: format!("item {i_id}"),
        price,
        data: data.into(),
    };
    client
        .load_items(&[
            item(1, 1000, "plain item data here 1234"),
            item(2, 300, "plain item data here 5678"),
            item(3, 250, "an ORIGINAL item data here"),
        ])
        .expect("load items");
    client
        .load_warehouse(&Warehouse {
            w_id: 1,
            name: "wname".into(),
            address: address(),
            tax: 1000,
            ytd: 4000,
        })
        .expect("load the warehouse");
    let stock = |i_id, quantity, data: &str| Stock {
        i_id,
        w_id: 1,
        quantity,
        dist: std::array::from_fn(|d| format!("{:0>24}", d + 1)),
        ytd: 0,
        order_cnt: 0,
        remote_cnt: 0,
        data: data.into(),
    };
    client
        .load_stock(&[
            stock(1, 50, "plain stock data here 123"),
            stock(2, 12, "plain stock data here 456"),
            stock(3, 20, "stock data ORIGINAL here 1"),
        ])
        .expect("load stock");
    let customers = vec![
        customer(1, "Alice", "BARBARBAR", 1000),
        customer(2, "Bob", "BARBARBAR", 0),
        customer(3, "Carol", "BARBARBAR", 0),
        customer(4, "Dan", "OUGHTBARBAR", 0),
    ];
    let history = customers
        .iter()
        .map(|c| History {
            c_id: c.c_id,
            c_d_id: 1,
            c_w_id: 1,
            d_id: 1,
            w_id: 1,
            date: 1_000,
            amount: 1000,
            data: "history".into(),
        })
        .collect();
    let order = |o_id, c_id, carrier_id| Order {
        w_id: 1,
        d_id: 1,
        o_id,
        c_id,
        entry_d: 1_000,
        carrier_id,
        ol_cnt: 1,
        all_local: true,
    };
    client
        .load_district(&DistrictRows {
            district: District {
                w_id: 1,
                d_id: 1,
                name: "dname".into(),
                address: address(),
                tax: 500,
                ytd: 4000,
                next_o_id: 3,
            },
            customers,
            history,
            orders: vec![order(1, 1, Some(3)), order(2, 2, None)],
            order_lines: vec![line(1, 2, true, 0), line(2, 2, false, 500)],
        })
        .expect("load the district");
    // The other nine districts are empty, so the checks (which read all ten) pass.
    for d_id in 2..=10 {
        client
            .load_district(&DistrictRows {
                district: District {
                    w_id: 1,
                    d_id,
                    name: "empty".into(),
                    address: address(),
                    tax: 0,
                    ytd: 0,
                    next_o_id: 1,
                },
                customers: vec![],
                history: vec![],
                orders: vec![],
                order_lines: vec![],
            })
            .expect("load an empty district");
    }
    client
}

fn committed<T: std::fmt::Debug>(attempt: anyhow::Result<Attempt<T>>) -> T {
    match attempt.expect("the transaction runs") {
        Attempt::Committed(value) => value,
        Attempt::Aborted => panic!("aborted with nothing else running"),
    }
}

/// Checks each transaction's answer and the state it leaves against numbers worked out by
/// hand, then all the consistency conditions.
fn hand_checked(backend: &mut dyn Backend) {
    let mut client = load_hand_checked(backend);
    let report = check(client.as_mut(), 1, false).expect("check");
    assert!(report.holds(), "{report:?}");

    // New-Order by Alice: 5 x 10.00 of item 1 (50 -> 45) and 10 x 2.50 of item 3 (20 -> 10,
    // still >= 10 + 10 before: no restock). 75.00 * 0.9 * 1.15 = 77.625, rounded down.
    let new_order = NewOrderInput {
        w_id: 1,
        d_id: 1,
        c_id: 1,
        lines: vec![
            LineInput {
                i_id: 1,
                supply_w_id: 1,
                quantity: 5,
            },
            LineInput {
                i_id: 3,
                supply_w_id: 1,
                quantity: 10,
            },
        ],
        entry_d: 2_000,
    };
    assert_eq!(
        committed(client.new_order(&new_order)),
        NewOrderOutcome::Placed(NewOrderOutput {
            o_id: 3,
            lines: vec![
                LineOutput {
                    i_price: 1000,
                    s_quantity: 45,
                    brand_generic: 'G',
                    amount: 5000,
                },
                LineOutput {
                    i_price: 250,
                    s_quantity: 10,
                    brand_generic: 'B',
                    amount: 2500,
                },
            ],
            total: 7762,
        })
    );
    // The 1%: an unused item rolls the whole order back, and its id is not used up.
    let mut rolled_back = new_order.clone();
    rolled_back.lines[1].i_id = UNUSED_ITEM_ID;
    assert_eq!(
        committed(client.new_order(&rolled_back)),
        NewOrderOutcome::RolledBack
    );
    // Item 2's stock (12) is below 3 + 10: restocked, 12 - 3 + 91 = 100.
    let mut restock = new_order.clone();
    restock.lines = vec![LineInput {
        i_id: 2,
        supply_w_id: 1,
        quantity: 3,
    }];
    match committed(client.new_order(&restock)) {
        NewOrderOutcome::Placed(output) => {
            assert_eq!(output.o_id, 4, "the rolled back order used no id");
            assert_eq!(output.lines[0].s_quantity, 100);
        }
        other => panic!("{other:?}"),
    }

    // Payment by last name: Alice, Bob, Carol share it; ceil(3 / 2) = the 2nd, Bob.
    let payment = PaymentInput {
        w_id: 1,
        d_id: 1,
        c_w_id: 1,
        c_d_id: 1,
        customer: CustomerChoice::LastName("BARBARBAR".into()),
        h_amount: 300,
        h_date: 2_000,
    };
    assert_eq!(
        committed(client.payment(&payment)),
        PaymentOutput {
            c_id: 2,
            balance: -1300
        }
    );
    let by_id = PaymentInput {
        customer: CustomerChoice::Id(4),
        h_amount: 12_345,
        ..payment
    };
    assert_eq!(
        committed(client.payment(&by_id)),
        PaymentOutput {
            c_id: 4,
            balance: -13_345
        }
    );

    // Order-Status by name is Bob again: his latest order is 2, undelivered.
    let status = committed(client.order_status(&OrderStatusInput {
        w_id: 1,
        d_id: 1,
        customer: CustomerChoice::LastName("BARBARBAR".into()),
    }));
    assert_eq!(
        status,
        OrderStatusOutput {
            c_id: 2,
            balance: -1300,
            order: Some(OrderSummary {
                o_id: 2,
                carrier_id: None,
                lines: vec![(2, 1, 5, 500, None)],
            }),
        }
    );
    // Alice's latest is the order she just placed (4 is hers too: restock copied c_id 1).
    let status = committed(client.order_status(&OrderStatusInput {
        w_id: 1,
        d_id: 1,
        customer: CustomerChoice::Id(1),
    }));
    assert_eq!(status.order.as_ref().map(|o| o.o_id), Some(4));
    assert_eq!(status.order.map(|o| o.lines.len()), Some(1));
    let status = committed(client.order_status(&OrderStatusInput {
        w_id: 1,
        d_id: 1,
        customer: CustomerChoice::Id(4),
    }));
    assert_eq!(status.order, None, "Dan has no order");

    // Stock-Level over orders 1..=4 (next is 5): items 2 (100), 1 (45), 3 (10).
    let mut level = |threshold| {
        committed(client.stock_level(&StockLevelInput {
            w_id: 1,
            d_id: 1,
            threshold,
        }))
    };
    assert_eq!(level(11), 1, "item 3");
    assert_eq!(level(46), 2, "items 1 and 3");
    assert_eq!(level(200), 3);

    // Delivery: the oldest new order is 2 (Bob's 5.00), then 3, then 4; then none.
    let delivery = DeliveryInput {
        w_id: 1,
        carrier_id: 7,
        delivery_d: 3_000,
    };
    for o_id in 2..=4 {
        assert_eq!(
            committed(client.delivery(&delivery)),
            DeliveryOutput {
                delivered: vec![(1, o_id)]
            }
        );
    }
    assert_eq!(
        committed(client.delivery(&delivery)),
        DeliveryOutput { delivered: vec![] }
    );
    let status = committed(client.order_status(&OrderStatusInput {
        w_id: 1,
        d_id: 1,
        customer: CustomerChoice::Id(2),
    }));
    assert_eq!(status.balance, -1300 + 500, "Bob was charged his delivery");
    assert_eq!(
        status.order,
        Some(OrderSummary {
            o_id: 2,
            carrier_id: Some(7),
            lines: vec![(2, 1, 5, 500, Some(3_000))],
        })
    );
    let report = check(client.as_mut(), 1, false).expect("check");
    assert!(report.holds(), "{report:?}");
}

#[test]
fn the_memory_backend_computes_what_the_spec_says() {
    let mut backend = MemoryBackend::new();
    hand_checked(&mut backend);
    // Bob's bad credit put the payment in front of his C_DATA, cut to 500 characters.
    let data = backend.tables().customers[&(1, 1, 2)].data.clone();
    assert!(data.starts_with("2 1 1 1 1 3.00 ddd"), "{data}");
    assert_eq!(data.len(), 500);
}

/// Every condition, broken on purpose in a database that passes them all, is reported as
/// violated with the row that breaks it.
#[test]
fn the_checker_catches_each_condition_broken_on_purpose() {
    type Break = fn(&mut acre_benches::tpcc::memory::Tables);
    let cases: [(u8, Break); 11] = [
        (1, |t| t.warehouses.get_mut(&1).unwrap().ytd += 1),
        (2, |t| t.districts.get_mut(&(1, 1)).unwrap().next_o_id += 1),
        (3, |t| {
            t.new_orders.insert((1, 1, 0));
        }),
        (4, |t| {
            t.order_lines.remove(&(1, 1, 2, 1));
        }),
        (5, |t| {
            t.orders.get_mut(&(1, 1, 2)).unwrap().carrier_id = Some(1)
        }),
        (6, |t| t.orders.get_mut(&(1, 1, 1)).unwrap().ol_cnt = 2),
        (7, |t| {
            t.order_lines.get_mut(&(1, 1, 1, 1)).unwrap().delivery_d = None;
        }),
        (8, |t| t.history[0].w_id = 2),
        (9, |t| t.districts.get_mut(&(1, 1)).unwrap().ytd -= 1),
        (10, |t| {
            t.customers.get_mut(&(1, 1, 3)).unwrap().balance += 1
        }),
        (12, |t| {
            t.customers.get_mut(&(1, 1, 3)).unwrap().ytd_payment += 1;
        }),
    ];
    for (number, break_it) in cases {
        let mut backend = MemoryBackend::new();
        let mut client = load_hand_checked(&mut backend);
        break_it(&mut backend.tables());
        let report = check(client.as_mut(), 1, false).expect("check");
        let row = report
            .violation(number)
            .unwrap_or_else(|| panic!("condition {number} not caught: {report:?}"));
        let mut printed = Vec::new();
        report.print(&mut printed).unwrap();
        let printed = String::from_utf8(printed).unwrap();
        assert!(
            printed.contains(&format!("condition {number:>2} VIOLATED")) && printed.contains(row),
            "{printed}"
        );
    }
    // Condition 11 holds only for the initial population, which this database is not.
    let mut backend = MemoryBackend::new();
    let mut client = load_hand_checked(&mut backend);
    let report = check(client.as_mut(), 1, true).expect("check");
    assert!(report.violation(11).is_some(), "{report:?}");
    assert!(
        !check(client.as_mut(), 1, false)
            .unwrap()
            .checked
            .contains(&11)
    );
}

fn options(warehouses: u32, threads: usize, seed: u64, duration: Duration) -> Options {
    Options {
        warehouses,
        threads,
        duration,
        warmup: Duration::from_millis(100),
        seed: Some(seed),
        progress: false,
        termination: None,
    }
}

/// The whole driver on the reference model: the spec's population passes every condition
/// (11 included), and so does the database after a run of the full mix on two warehouses.
#[test]
fn a_load_and_a_run_on_the_memory_backend_pass_every_check() {
    let seed = ConcurrentSeed::new("tpcc_memory_run");
    let mut backend = MemoryBackend::new();
    let options = options(2, 3, seed.value(), Duration::from_millis(1500));
    backend.create(options.warehouses).expect("create");
    let loaded = tpcc::load(&backend, &options).expect("load");
    {
        let tables = backend.tables();
        assert_eq!(tables.items.len(), 100_000);
        assert_eq!(tables.stock.len(), 200_000);
        assert_eq!(tables.customers.len(), 60_000);
        assert_eq!(tables.new_orders.len(), 2 * 10 * 900);
    }
    let mut client = backend.client().expect("client");
    let report = check(client.as_mut(), options.warehouses, true).expect("check");
    assert!(report.holds(), "after the load: {report:?}");
    let run = tpcc::run(&backend, &options, &loaded.constants).expect("run");
    let new_orders = run.kind(tpcc::Kind::NewOrder).committed_count();
    let payments = run.kind(tpcc::Kind::Payment).committed_count();
    assert!(new_orders > 100, "{new_orders}");
    assert!(payments > 80, "{payments}");
    for kind in tpcc::Kind::ALL {
        assert!(run.kind(kind).committed_count() > 0, "{kind:?}");
        // Latencies are recorded as they were (a transaction takes well over 100 ns).
        let latency = &run.kind(kind).latency_ns;
        let p50 = latency.value_at_quantile(0.5);
        assert!(p50 >= 100 && latency.max() >= p50, "{kind:?}: p50={p50}");
    }
    let report = check(client.as_mut(), options.warehouses, false).expect("check");
    assert!(report.holds(), "after the run: {report:?}");
    let mut text = Vec::new();
    run.print_text(&mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("new-order/s") && text.contains("stock-level"),
        "{text}"
    );
    let json = run.to_json(Some(&loaded));
    assert_eq!(
        json["transactions"]["new-order"]["committed"],
        serde_json::json!(new_orders)
    );
}

/// The same seed loads the same data, whatever the number of load threads.
#[test]
fn a_seeded_load_is_the_same_with_any_thread_count() {
    let load = |threads| {
        let mut backend = MemoryBackend::new();
        backend.create(1).unwrap();
        let loaded =
            tpcc::load(&backend, &options(1, threads, 42, Duration::from_secs(1))).expect("load");
        let tables = backend.tables();
        // Everything but the load's clock.
        let mut customer = tables.customers[&(1, 4, 2500)].clone();
        customer.since = 0;
        (
            loaded.constants,
            customer,
            tables.stock[&(1, 777)].clone(),
            tables.order_lines[&(1, 9, 2999, 3)].clone(),
        )
    };
    assert_eq!(load(1), load(3));
}

mod postgres {
    //! A PostgreSQL server started for each test: initdb in a temporary directory (as the
    //! postgres user when the tests run as root, which PostgreSQL refuses to run as), trust
    //! authentication, a free loopback port; stopped and removed when the test ends.

    use super::*;
    use acre_benches::tpcc::postgres::{Isolation, PgTpcc};
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    pub struct PgServer {
        bin: PathBuf,
        dir: PathBuf,
        as_postgres: bool,
        pub url: String,
    }

    /// Where `initdb` and `pg_ctl` are, or why there are none.
    fn binaries() -> Result<PathBuf, String> {
        let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .collect();
        candidates.sort();
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        candidates
            .into_iter()
            .rev()
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
            .ok_or_else(|| {
                "PostgreSQL is not installed (no initdb and pg_ctl in /usr/lib/postgresql/*/bin \
                 or on PATH): install it (apt-get install postgresql) to test the TPC-C \
                 PostgreSQL backend"
                    .into()
            })
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
    }

    impl PgServer {
        /// A started server, or None (with the reason printed) if PostgreSQL is missing.
        pub fn start(test: &str) -> Option<PgServer> {
            let bin = match binaries() {
                Ok(bin) => bin,
                Err(reason) => {
                    eprintln!("{test}: skipped: {reason}");
                    return None;
                }
            };
            let as_postgres = is_root();
            let dir =
                std::env::temp_dir().join(format!("acre-tpcc-pg-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the server's directory");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let server = PgServer {
                bin,
                dir,
                as_postgres,
                url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            };
            if as_postgres {
                let status = Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(&server.dir)
                    .status()
                    .expect("chown");
                assert!(status.success(), "chown the server's directory to postgres");
            }
            let data = server.dir.join("data");
            server.run(
                &server.bin.join("initdb"),
                &[
                    "-D",
                    path(&data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                ],
            );
            let options = format!(
                "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off \
                 -c max_connections=40",
                path(&server.dir)
            );
            let log = server.dir.join("postgres.log");
            server.run(
                &server.bin.join("pg_ctl"),
                &[
                    "-D",
                    path(&data),
                    "-l",
                    path(&log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    &options,
                    "start",
                ],
            );
            Some(server)
        }

        fn run(&self, program: &Path, args: &[&str]) {
            let mut command = if self.as_postgres {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(program);
                command
            } else {
                Command::new(program)
            };
            let output = command
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|error| panic!("run {}: {error}", program.display()));
            assert!(
                output.status.success(),
                "{} {args:?}: {}{}",
                program.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    fn path(path: &Path) -> &str {
        path.to_str().expect("a UTF-8 temporary path")
    }

    impl Drop for PgServer {
        fn drop(&mut self) {
            let data = self.dir.join("data");
            let mut command = if self.as_postgres {
                let mut command = Command::new("runuser");
                command
                    .args(["-u", "postgres", "--"])
                    .arg(self.bin.join("pg_ctl"));
                command
            } else {
                Command::new(self.bin.join("pg_ctl"))
            };
            // Stopping is best effort: a failure leaves a server in a temporary directory.
            let _ = command
                .args(["-D", path(&data), "-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn the_postgres_backend_computes_what_the_spec_says() {
        let Some(server) = PgServer::start("hand") else {
            return;
        };
        let mut backend =
            PgTpcc::connect(&server.url, Isolation::Serializable, false).expect("connect");
        hand_checked(&mut backend);
        // The tables exist now: a second connect refuses them unless told to drop them.
        let error = PgTpcc::connect(&server.url, Isolation::Serializable, false)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("--flush"), "{error}");
        let mut backend =
            PgTpcc::connect(&server.url, Isolation::ReadCommitted, true).expect("flushed");
        hand_checked(&mut backend);
    }

    #[test]
    fn a_load_and_a_run_on_postgres_pass_every_check() {
        let Some(server) = PgServer::start("run") else {
            return;
        };
        let seed = ConcurrentSeed::new("tpcc_postgres_run");
        for isolation in [Isolation::Serializable, Isolation::ReadCommitted] {
            let mut backend = PgTpcc::connect(&server.url, isolation, true).expect("connect");
            let options = options(1, 2, seed.value(), Duration::from_secs(2));
            backend.create(1).expect("create");
            let loaded = tpcc::load(&backend, &options).expect("load");
            let mut client = backend.client().expect("client");
            let report = check(client.as_mut(), 1, true).expect("check");
            assert!(report.holds(), "after the load: {report:?}");
            let run = tpcc::run(&backend, &options, &loaded.constants).expect("run");
            for kind in tpcc::Kind::ALL {
                assert!(
                    run.kind(kind).committed_count() > 0,
                    "{isolation:?} {kind:?}"
                );
            }
            let report = check(client.as_mut(), 1, false).expect("check");
            assert!(report.holds(), "{isolation:?} after the run: {report:?}");
        }
    }
}

mod acre {
    //! The Acre backend on an embedded cluster of three nodes with three replicas.

    use super::*;
    use acre_benches::tpcc::acre::AcreTpcc;
    use acre_replication::db::{Db, EmbeddedOptions};

    fn embedded(regions_per_node: usize, region_bytes: u64) -> AcreTpcc {
        let db = Db::embedded(&EmbeddedOptions {
            regions_per_node,
            region_bytes,
            ring_bytes: 4 << 20,
            ..EmbeddedOptions::default()
        })
        .expect("start an embedded cluster");
        AcreTpcc::new(db, "an embedded cluster".into())
    }

    #[test]
    fn the_acre_backend_computes_what_the_spec_says() {
        hand_checked(&mut embedded(1, 16 << 20));
    }

    /// The spec's population of one warehouse, checked; the full mix from two threads; every
    /// condition checked again.
    #[test]
    fn a_load_and_a_run_on_an_embedded_cluster_pass_every_check() {
        let seed = ConcurrentSeed::new("tpcc_acre_run");
        let mut backend = embedded(2, 256 << 20);
        let options = options(1, 2, seed.value(), Duration::from_secs(2));
        backend.create(1).expect("create");
        let loaded = tpcc::load(&backend, &options).expect("load");
        eprintln!("loaded one warehouse in {:?}", loaded.elapsed);
        let mut client = backend.client().expect("client");
        let report = check(client.as_mut(), 1, true).expect("check");
        assert!(report.holds(), "after the load: {report:?}");
        let run = tpcc::run(&backend, &options, &loaded.constants).expect("run");
        for kind in tpcc::Kind::ALL {
            assert!(run.kind(kind).committed_count() > 0, "{kind:?}");
        }
        let report = check(client.as_mut(), 1, false).expect("check");
        assert!(report.holds(), "after the run: {report:?}");
    }
}
