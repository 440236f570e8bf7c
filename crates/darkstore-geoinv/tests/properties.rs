//! Property tests of the stock core and the order lifecycle together: random sequences of
//! restocks, write-offs, counts, reservations, releases, sales, lot expiry, transitions and
//! payment events, driven the way the server drives them (reserve on placement, release on
//! cancel or expiry, sale on pickup, the payment table for webhooks). After every step:
//! - every lot has `0 ≤ reserved ≤ on_hand`;
//! - the ledger (every delta ever applied) sums, per lot, to the stock exactly;
//! - every order is in a state the lifecycle can reach, holds stock exactly while its status
//!   says so, and its payment agrees with its status.

use std::collections::HashMap;

use darkstore_geoinv::Millis;
use darkstore_geoinv::order::{OrderStatus, PaymentEvent, PaymentOutcome, PaymentStatus};
use darkstore_geoinv::stock::{LotDelta, LotId, StoreStock, Want};
use proptest::prelude::*;

const SKUS: [&str; 3] = ["milk", "bread", "eggs"];
const T0: Millis = 1_800_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    Restock { sku: usize, qty: i64, shelf_min: Option<i64> },
    WriteOff { sku: usize, qty: i64 },
    Place { lines: Vec<(usize, i64)>, with_payment: bool },
    Move { order: usize, to: usize },
    Pay { order: usize, event: usize },
    Tick { minutes: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 1..20i64, proptest::option::of(1..60i64)).prop_map(|(sku, qty, shelf_min)| Op::Restock {
            sku,
            qty,
            shelf_min
        }),
        (0..3usize, 1..15i64).prop_map(|(sku, qty)| Op::WriteOff { sku, qty }),
        (proptest::collection::vec((0..3usize, 1..6i64), 1..3), any::<bool>())
            .prop_map(|(lines, with_payment)| Op::Place { lines, with_payment }),
        (0..8usize, 0..8usize).prop_map(|(order, to)| Op::Move { order, to }),
        (0..8usize, 0..3usize).prop_map(|(order, event)| Op::Pay { order, event }),
        (1..30i64).prop_map(|minutes| Op::Tick { minutes }),
    ]
}

struct Order {
    status: OrderStatus,
    payment: PaymentStatus,
    holds: Vec<LotDelta>,
    history: Vec<OrderStatus>,
}

struct World {
    stock: StoreStock,
    ledger: Vec<LotDelta>,
    orders: Vec<Order>,
    now: Millis,
    next_lot: i64,
}

impl World {
    fn record(&mut self, deltas: &[LotDelta]) {
        self.ledger.extend_from_slice(deltas);
    }

    /// What the server's `commit_change` does to stock when an order moves.
    fn settle(&mut self, i: usize, to: OrderStatus) {
        let settle: Vec<LotDelta> = match to {
            OrderStatus::Cancelled | OrderStatus::Expired => {
                self.orders[i].holds.iter().map(LotDelta::release).collect()
            }
            OrderStatus::PickedUp => self.orders[i].holds.iter().map(LotDelta::sale).collect(),
            _ => return,
        };
        for d in &settle {
            self.stock.apply(d);
        }
        self.record(&settle);
        self.orders[i].holds.clear();
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Restock { sku, qty, shelf_min } => {
                self.next_lot += 1;
                let expires = shelf_min.map(|m| self.now + m * 60_000);
                let d = self.stock.adjust(SKUS[sku], qty, LotId(self.next_lot), expires, self.now).unwrap();
                self.record(&d);
            }
            Op::WriteOff { sku, qty } => {
                if let Ok(d) = self.stock.adjust(SKUS[sku], -qty, LotId(0), None, self.now) {
                    self.record(&d);
                }
            }
            Op::Place { lines, with_payment } => {
                let mut lines = lines;
                lines.sort();
                lines.dedup_by_key(|l| l.0);
                let wants: Vec<Want> = lines.iter().map(|&(s, qty)| Want { sku: SKUS[s], qty }).collect();
                if let Ok(holds) = self.stock.reserve(&wants, self.now) {
                    self.record(&holds);
                    let (status, payment) = if with_payment {
                        (OrderStatus::PendingPayment, PaymentStatus::Held)
                    } else {
                        (OrderStatus::Confirmed, PaymentStatus::None)
                    };
                    self.orders.push(Order { status, payment, holds, history: vec![status] });
                }
            }
            Op::Move { order, to } => {
                let to = OrderStatus::ALL[to];
                let Some(o) = self.orders.get(order) else { return };
                // What `State::transition` allows: everything but a payment's own move.
                if !o.status.can_become_unpaid(to) {
                    return;
                }
                let payment = if to == OrderStatus::Cancelled { o.payment.on_cancel() } else { o.payment };
                self.settle(order, to);
                let o = &mut self.orders[order];
                o.status = to;
                o.payment = payment;
                o.history.push(to);
            }
            Op::Pay { order, event } => {
                let event = [PaymentEvent::Succeeded, PaymentEvent::Failed, PaymentEvent::Refunded][event];
                let Some(o) = self.orders.get(order) else { return };
                if let PaymentOutcome::Apply { payment, order: to, .. } = o.payment.on_event(o.status, event) {
                    if let Some(to) = to {
                        assert!(o.status.can_become(to), "a payment event moved {:?} to {to:?}", o.status);
                        self.settle(order, to);
                        self.orders[order].status = to;
                        self.orders[order].history.push(to);
                    }
                    self.orders[order].payment = payment;
                }
            }
            Op::Tick { minutes } => {
                self.now += minutes * 60_000;
                let d = self.stock.expire(self.now);
                self.record(&d);
            }
        }
    }

    fn check(&self) {
        // Per lot: the ledger's sums, and the stock.
        let mut sums: HashMap<(String, i64), (i64, i64)> = HashMap::new();
        for d in &self.ledger {
            let e = sums.entry((d.sku.to_string(), d.lot.0)).or_default();
            e.0 += d.d_on_hand;
            e.1 += d.d_reserved;
        }
        let mut seen = 0;
        for (sku, line) in self.stock.lines() {
            for lot in line.lots() {
                assert!(0 <= lot.reserved && lot.reserved <= lot.on_hand, "{sku} {lot:?}");
                let ledger = sums.get(&(sku.to_string(), lot.id.0)).copied().unwrap_or_default();
                assert_eq!(ledger, (lot.on_hand, lot.reserved), "ledger and stock of {sku} lot {:?}", lot.id);
                seen += 1;
            }
        }
        // Lots the stock no longer lists must sum to nothing.
        let listed: usize = sums.values().filter(|s| **s != (0, 0)).count();
        assert!(listed <= seen, "the ledger has stock the lines do not");
        let held: i64 = self.orders.iter().flat_map(|o| &o.holds).map(|h| h.d_reserved).sum();
        let reserved: i64 = self.stock.lines().flat_map(|(_, l)| l.lots()).map(|l| l.reserved).sum();
        assert_eq!(held, reserved, "what orders hold is what is reserved");
        for o in &self.orders {
            assert!(o.history.windows(2).all(|w| w[0].can_become(w[1])), "{:?}", o.history);
            assert_eq!(!o.holds.is_empty(), o.status.holds_stock(), "{:?} holds {:?}", o.status, o.holds);
            let ok = match o.payment {
                PaymentStatus::None => o.status != OrderStatus::PendingPayment,
                PaymentStatus::Held => {
                    matches!(o.status, OrderStatus::PendingPayment | OrderStatus::Cancelled | OrderStatus::Expired)
                }
                PaymentStatus::Paid => !matches!(o.status, OrderStatus::PendingPayment | OrderStatus::Cancelled),
                PaymentStatus::Failed | PaymentStatus::RefundDue | PaymentStatus::Refunded => {
                    matches!(o.status, OrderStatus::Cancelled | OrderStatus::Expired)
                }
            };
            assert!(ok, "payment {:?} with status {:?} ({:?})", o.payment, o.status, o.history);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn stock_ledger_and_lifecycle_hold_together(ops in proptest::collection::vec(op(), 1..120)) {
        let mut w = World { stock: StoreStock::new(), ledger: Vec::new(), orders: Vec::new(), now: T0, next_lot: 0 };
        for op in ops {
            w.step(op);
            w.check();
        }
    }
}
