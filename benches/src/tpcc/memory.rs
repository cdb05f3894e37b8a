//! An in-memory TPC-C database: the nine tables as ordered maps behind one mutex. It is the
//! reference the tests hold the real backends to (each transaction written as plainly as the
//! spec words it), the backend the driver's and the checker's own tests run against, and the
//! model whose tables a test can break on purpose to see a check catch it.

use super::backend::{
    Attempt, Backend, Client, CustomerState, DeliveryOutput, DistrictState, HistoryState,
    LineOutput, LineState, NewOrderOutcome, NewOrderOutput, OrderState, OrderStatusOutput,
    OrderSummary, PaymentOutput, bad_credit_data, brand_generic, history_data, middle_index,
    new_order_total, stock_after,
};
use super::input::{
    CustomerChoice, DISTRICTS_PER_WAREHOUSE, DeliveryInput, NewOrderInput, OrderStatusInput,
    PaymentInput, StockLevelInput,
};
use super::rows::{
    Customer, District, DistrictRows, History, Item, Order, OrderLine, Stock, Warehouse,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// The tables.
#[derive(Debug, Default)]
pub struct Tables {
    pub items: HashMap<u32, Item>,
    pub warehouses: BTreeMap<u32, Warehouse>,
    pub stock: HashMap<(u32, u32), Stock>,
    pub districts: BTreeMap<(u32, u32), District>,
    pub customers: BTreeMap<(u32, u32, u32), Customer>,
    pub history: Vec<History>,
    pub orders: BTreeMap<(u32, u32, u32), Order>,
    pub new_orders: BTreeSet<(u32, u32, u32)>,
    pub order_lines: BTreeMap<(u32, u32, u32, u32), OrderLine>,
}

/// The in-memory database; clones share the tables.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    tables: Arc<Mutex<Tables>>,
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// The tables, for a test to look at or break.
    pub fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .expect("a thread panicked holding the tables")
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn describe(&self) -> String {
        "in-memory tables behind one mutex (the reference model)".into()
    }

    fn create(&mut self, _warehouse_count: u32) -> anyhow::Result<()> {
        *self.tables() = Tables::default();
        Ok(())
    }

    fn client(&self) -> anyhow::Result<Box<dyn Client>> {
        Ok(Box::new(self.clone()))
    }
}

impl Tables {
    fn customer_id(&self, w_id: u32, d_id: u32, choice: &CustomerChoice) -> anyhow::Result<u32> {
        match choice {
            CustomerChoice::Id(c_id) => Ok(*c_id),
            CustomerChoice::LastName(last) => {
                let mut named: Vec<&Customer> = self
                    .customers
                    .range((w_id, d_id, 0)..=(w_id, d_id, u32::MAX))
                    .map(|(_, customer)| customer)
                    .filter(|customer| &customer.last == last)
                    .collect();
                named.sort_by(|a, b| a.first.cmp(&b.first));
                let index = middle_index(named.len()).ok_or_else(|| {
                    anyhow::anyhow!("no customer named {last} in district {w_id}/{d_id}")
                })?;
                Ok(named[index].c_id)
            }
        }
    }
}

fn missing(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what} is missing")
}

impl Client for MemoryBackend {
    fn load_items(&mut self, items: &[Item]) -> anyhow::Result<()> {
        let mut tables = self.tables();
        for item in items {
            tables.items.insert(item.i_id, item.clone());
        }
        Ok(())
    }

    fn load_warehouse(&mut self, warehouse: &Warehouse) -> anyhow::Result<()> {
        self.tables()
            .warehouses
            .insert(warehouse.w_id, warehouse.clone());
        Ok(())
    }

    fn load_stock(&mut self, stock: &[Stock]) -> anyhow::Result<()> {
        let mut tables = self.tables();
        for row in stock {
            tables.stock.insert((row.w_id, row.i_id), row.clone());
        }
        Ok(())
    }

    fn load_district(&mut self, rows: &DistrictRows) -> anyhow::Result<()> {
        let mut tables = self.tables();
        let (w_id, d_id) = (rows.district.w_id, rows.district.d_id);
        tables.districts.insert((w_id, d_id), rows.district.clone());
        for customer in &rows.customers {
            tables
                .customers
                .insert((w_id, d_id, customer.c_id), customer.clone());
        }
        tables.history.extend(rows.history.iter().cloned());
        for order in &rows.orders {
            tables
                .orders
                .insert((w_id, d_id, order.o_id), order.clone());
        }
        for o_id in rows.new_orders() {
            tables.new_orders.insert((w_id, d_id, o_id));
        }
        for line in &rows.order_lines {
            tables
                .order_lines
                .insert((w_id, d_id, line.o_id, line.number), line.clone());
        }
        Ok(())
    }

    fn new_order(&mut self, input: &NewOrderInput) -> anyhow::Result<Attempt<NewOrderOutcome>> {
        let mut tables = self.tables();
        let tables = &mut *tables;
        // Rolling back changes nothing, so the unused item is looked for first.
        if input
            .lines
            .iter()
            .any(|line| !tables.items.contains_key(&line.i_id))
        {
            return Ok(Attempt::Committed(NewOrderOutcome::RolledBack));
        }
        let (w_id, d_id) = (input.w_id, input.d_id);
        let w_tax = tables
            .warehouses
            .get(&w_id)
            .ok_or_else(|| missing("the warehouse"))?
            .tax;
        let district = tables
            .districts
            .get_mut(&(w_id, d_id))
            .ok_or_else(|| missing("the district"))?;
        let d_tax = district.tax;
        let o_id = district.next_o_id;
        district.next_o_id += 1;
        let discount = tables
            .customers
            .get(&(w_id, d_id, input.c_id))
            .ok_or_else(|| missing("the customer"))?
            .discount;
        tables.orders.insert(
            (w_id, d_id, o_id),
            Order {
                w_id,
                d_id,
                o_id,
                c_id: input.c_id,
                entry_d: input.entry_d,
                carrier_id: None,
                ol_cnt: input.lines.len() as u32,
                all_local: input.all_local(),
            },
        );
        tables.new_orders.insert((w_id, d_id, o_id));
        let mut lines = Vec::with_capacity(input.lines.len());
        for (index, line) in input.lines.iter().enumerate() {
            let item = &tables.items[&line.i_id];
            let stock = tables
                .stock
                .get_mut(&(line.supply_w_id, line.i_id))
                .ok_or_else(|| missing("a stock row"))?;
            stock.quantity = stock_after(stock.quantity, line.quantity);
            stock.ytd += line.quantity;
            stock.order_cnt += 1;
            if line.supply_w_id != w_id {
                stock.remote_cnt += 1;
            }
            let amount = i64::from(line.quantity) * item.price;
            lines.push(LineOutput {
                i_price: item.price,
                s_quantity: stock.quantity,
                brand_generic: brand_generic(&item.data, &stock.data),
                amount,
            });
            let number = index as u32 + 1;
            tables.order_lines.insert(
                (w_id, d_id, o_id, number),
                OrderLine {
                    w_id,
                    d_id,
                    o_id,
                    number,
                    i_id: line.i_id,
                    supply_w_id: line.supply_w_id,
                    delivery_d: None,
                    quantity: line.quantity,
                    amount,
                    dist_info: stock.dist[d_id as usize - 1].clone(),
                },
            );
        }
        let sum = lines.iter().map(|line| line.amount).sum();
        Ok(Attempt::Committed(NewOrderOutcome::Placed(
            NewOrderOutput {
                o_id,
                total: new_order_total(sum, discount, w_tax, d_tax),
                lines,
            },
        )))
    }

    fn payment(&mut self, input: &PaymentInput) -> anyhow::Result<Attempt<PaymentOutput>> {
        let mut tables = self.tables();
        let tables = &mut *tables;
        let warehouse = tables
            .warehouses
            .get_mut(&input.w_id)
            .ok_or_else(|| missing("the warehouse"))?;
        warehouse.ytd += input.h_amount;
        let w_name = warehouse.name.clone();
        let district = tables
            .districts
            .get_mut(&(input.w_id, input.d_id))
            .ok_or_else(|| missing("the district"))?;
        district.ytd += input.h_amount;
        let d_name = district.name.clone();
        let c_id = tables.customer_id(input.c_w_id, input.c_d_id, &input.customer)?;
        let customer = tables
            .customers
            .get_mut(&(input.c_w_id, input.c_d_id, c_id))
            .ok_or_else(|| missing("the customer"))?;
        customer.balance -= input.h_amount;
        customer.ytd_payment += input.h_amount;
        customer.payment_cnt += 1;
        if customer.credit == "BC" {
            customer.data = bad_credit_data(input, c_id, &customer.data);
        }
        let balance = customer.balance;
        tables.history.push(History {
            c_id,
            c_d_id: input.c_d_id,
            c_w_id: input.c_w_id,
            d_id: input.d_id,
            w_id: input.w_id,
            date: input.h_date,
            amount: input.h_amount,
            data: history_data(&w_name, &d_name),
        });
        Ok(Attempt::Committed(PaymentOutput { c_id, balance }))
    }

    fn order_status(
        &mut self,
        input: &OrderStatusInput,
    ) -> anyhow::Result<Attempt<OrderStatusOutput>> {
        let tables = self.tables();
        let (w_id, d_id) = (input.w_id, input.d_id);
        let c_id = tables.customer_id(w_id, d_id, &input.customer)?;
        let balance = tables
            .customers
            .get(&(w_id, d_id, c_id))
            .ok_or_else(|| missing("the customer"))?
            .balance;
        let order = tables
            .orders
            .range((w_id, d_id, 0)..=(w_id, d_id, u32::MAX))
            .rev()
            .map(|(_, order)| order)
            .find(|order| order.c_id == c_id)
            .map(|order| OrderSummary {
                o_id: order.o_id,
                carrier_id: order.carrier_id,
                lines: tables
                    .order_lines
                    .range((w_id, d_id, order.o_id, 0)..=(w_id, d_id, order.o_id, u32::MAX))
                    .map(|(_, l)| (l.i_id, l.supply_w_id, l.quantity, l.amount, l.delivery_d))
                    .collect(),
            });
        Ok(Attempt::Committed(OrderStatusOutput {
            c_id,
            balance,
            order,
        }))
    }

    fn delivery(&mut self, input: &DeliveryInput) -> anyhow::Result<Attempt<DeliveryOutput>> {
        let mut tables = self.tables();
        let tables = &mut *tables;
        let w_id = input.w_id;
        let mut delivered = Vec::new();
        for d_id in 1..=DISTRICTS_PER_WAREHOUSE {
            let Some(&oldest) = tables
                .new_orders
                .range((w_id, d_id, 0)..=(w_id, d_id, u32::MAX))
                .next()
            else {
                continue;
            };
            tables.new_orders.remove(&oldest);
            let o_id = oldest.2;
            let order = tables
                .orders
                .get_mut(&oldest)
                .ok_or_else(|| missing("a new order's order"))?;
            order.carrier_id = Some(input.carrier_id);
            let c_id = order.c_id;
            let mut sum = 0;
            for (_, line) in tables
                .order_lines
                .range_mut((w_id, d_id, o_id, 0)..=(w_id, d_id, o_id, u32::MAX))
            {
                line.delivery_d = Some(input.delivery_d);
                sum += line.amount;
            }
            let customer = tables
                .customers
                .get_mut(&(w_id, d_id, c_id))
                .ok_or_else(|| missing("an order's customer"))?;
            customer.balance += sum;
            customer.delivery_cnt += 1;
            delivered.push((d_id, o_id));
        }
        Ok(Attempt::Committed(DeliveryOutput { delivered }))
    }

    fn stock_level(&mut self, input: &StockLevelInput) -> anyhow::Result<Attempt<u32>> {
        let tables = self.tables();
        let (w_id, d_id) = (input.w_id, input.d_id);
        let next = tables
            .districts
            .get(&(w_id, d_id))
            .ok_or_else(|| missing("the district"))?
            .next_o_id;
        let items: BTreeSet<u32> = tables
            .order_lines
            .range((w_id, d_id, next.saturating_sub(20), 0)..(w_id, d_id, next, 0))
            .map(|(_, line)| line.i_id)
            .filter(|i_id| {
                tables
                    .stock
                    .get(&(w_id, *i_id))
                    .is_some_and(|stock| stock.quantity < input.threshold)
            })
            .collect();
        Ok(Attempt::Committed(items.len() as u32))
    }

    fn read_warehouse_ytd(&mut self, w_id: u32) -> anyhow::Result<i64> {
        Ok(self
            .tables()
            .warehouses
            .get(&w_id)
            .ok_or_else(|| missing("the warehouse"))?
            .ytd)
    }

    fn read_district(&mut self, w_id: u32, d_id: u32) -> anyhow::Result<DistrictState> {
        let tables = self.tables();
        let district = tables
            .districts
            .get(&(w_id, d_id))
            .ok_or_else(|| missing("the district"))?;
        Ok(DistrictState {
            ytd: district.ytd,
            next_o_id: district.next_o_id,
            orders: tables
                .orders
                .range((w_id, d_id, 0)..=(w_id, d_id, u32::MAX))
                .map(|(_, o)| OrderState {
                    o_id: o.o_id,
                    c_id: o.c_id,
                    carrier_id: o.carrier_id,
                    ol_cnt: o.ol_cnt,
                })
                .collect(),
            new_orders: tables
                .new_orders
                .range((w_id, d_id, 0)..=(w_id, d_id, u32::MAX))
                .map(|key| key.2)
                .collect(),
            order_lines: tables
                .order_lines
                .range((w_id, d_id, 0, 0)..=(w_id, d_id, u32::MAX, u32::MAX))
                .map(|(_, l)| LineState {
                    o_id: l.o_id,
                    number: l.number,
                    delivery_d: l.delivery_d,
                    amount: l.amount,
                })
                .collect(),
            customers: tables
                .customers
                .range((w_id, d_id, 0)..=(w_id, d_id, u32::MAX))
                .map(|(_, c)| CustomerState {
                    c_id: c.c_id,
                    balance: c.balance,
                    ytd_payment: c.ytd_payment,
                })
                .collect(),
            history: tables
                .history
                .iter()
                .filter(|h| (h.w_id, h.d_id) == (w_id, d_id))
                .map(|h| HistoryState {
                    c_w_id: h.c_w_id,
                    c_d_id: h.c_d_id,
                    c_id: h.c_id,
                    amount: h.amount,
                })
                .collect(),
        })
    }
}
