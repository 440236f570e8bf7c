//! Rebuilding the state from what the database holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use darkstore_db::{Committer, Db, OrderRow, Snapshot};
use darkstore_geoinv::Millis;
use darkstore_geoinv::area::InvalidPoint;
use darkstore_geoinv::order::{OrderStatus, PaymentStatus};
use darkstore_geoinv::stock::{Lot, LotDelta, LotId, Sku};

use super::orders::IdemState;
use super::{OrderRef, State, StateConfig};
use crate::changes::Changes;
use crate::clock::Clock;
use crate::model::{Order, OrderLine, Product};

/// An order as stored, back in memory.
pub(super) fn order_from_row(o: OrderRow, packed_at: Option<Millis>, holds: Vec<LotDelta>) -> Result<Order, String> {
    let status = OrderStatus::parse(&o.status)
        .ok_or_else(|| format!("stored order {} has an unknown status {:?}", o.id, o.status))?;
    let payment_status = PaymentStatus::parse(&o.payment_status)
        .ok_or_else(|| format!("stored order {} has an unknown payment status {:?}", o.id, o.payment_status))?;
    Ok(Order {
        packed_at,
        holds,
        id: o.id,
        customer_id: o.customer_id,
        idempotency_key: o.idempotency_key,
        request_hash: o.request_hash,
        store_id: o.store_id,
        lat: o.lat,
        lng: o.lng,
        status,
        payment_status,
        total_minor: o.total_minor,
        refund_minor: o.refund_minor,
        delivery_code: o.delivery_code,
        rider_id: o.rider_id,
        eta_minutes: o.eta_minutes,
        promised_by: o.promised_by.unwrap_or(o.created_at.saturating_add(o.eta_minutes.saturating_mul(60_000))),
        quoted: None,
        delivery_fee_minor: o.delivery_fee_minor,
        created_at: o.created_at,
        updated_at: o.updated_at,
        hold_expires_at: o.hold_expires_at,
        lines: o.lines.into_iter().map(|l| OrderLine { sku: l.sku, qty: l.qty, price_minor: l.price_minor }).collect(),
    })
}

impl State {
    /// Rebuilds the state from what the database holds. Riders are rebuilt by their own owner.
    pub fn from_snapshot(
        config: StateConfig,
        db: Db,
        committer: Committer,
        mut snap: Snapshot,
        clock: Arc<dyn Clock>,
        changes: Arc<Changes>,
    ) -> State {
        let state = State::new(config, db, committer, clock, changes);
        for s in std::mem::take(&mut snap.stores) {
            let hours = s.hours.as_deref().map(darkstore_geoinv::hours::from_spec).transpose().unwrap_or_else(|e| {
                tracing::warn!(store = %s.id, error = %e, "stored store hours unreadable; treated as always open");
                None
            });
            let settings = super::catalog::StoreSettings { timezone: s.timezone, hours, paused: s.paused };
            if let Err(InvalidPoint) = state.put_store_in_memory(&s.id, &s.name, s.lat, s.lng, settings) {
                tracing::warn!(store = %s.id, "stored store has invalid coordinates; skipped");
            }
        }
        for p in std::mem::take(&mut snap.products) {
            state.insert_product(Product::new(&p.sku, p.name, p.category, p.price_minor, p.low_stock_threshold));
        }
        state.load_region(snap);
        state
    }

    /// Loads the stock and the orders of `snap` (the whole city at start, or, in cluster mode,
    /// the stores of a region this node just took over, after `Snapshot::retain_stores`).
    pub fn load_region(&self, snap: Snapshot) {
        self.next_lot.fetch_max(snap.max_lot_id + 1, Ordering::Relaxed);
        // Each store's lots at once (a store sorts its lines once, not once a lot).
        let mut by_store: HashMap<String, Vec<(Sku, Lot)>> = HashMap::new();
        for lot in snap.lots {
            let l = Lot::new(LotId(lot.lot_id), lot.expires_at, lot.on_hand, lot.reserved);
            by_store.entry(lot.store_id).or_default().push((Sku::new(&lot.sku), l));
        }
        let now = self.now();
        for (store_id, lots) in by_store {
            match self.store(&store_id) {
                Some(store) => {
                    let mut stock = store.stock.lock().expect("stock lock");
                    stock.restore(lots);
                    stock.announce_all(now);
                }
                None => tracing::warn!(store = %store_id, "ledger rows for an unknown store; skipped"),
            }
        }
        let mut holds: HashMap<String, Vec<LotDelta>> = HashMap::new();
        for h in snap.holds {
            holds.entry(h.order_id).or_default().push(LotDelta {
                sku: Sku::new(&h.sku),
                lot: LotId(h.lot_id),
                expires_at: h.expires_at,
                d_on_hand: 0,
                d_reserved: h.reserved,
            });
        }
        for row in snap.orders {
            let packed_at = snap.packed_at.get(&row.id).copied();
            let order_holds = holds.remove(&row.id).unwrap_or_default();
            let mut order = match order_from_row(row, packed_at, order_holds) {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "stored order skipped");
                    continue;
                }
            };
            if !order.status.holds_stock() {
                order.holds.clear();
            }
            if order.status == OrderStatus::PendingPayment
                && let Some(deadline) = order.hold_expires_at
            {
                self.holds.lock().expect("holds lock").insert((deadline, order.id.clone()));
            }
            self.idempotency.insert(
                (order.customer_id.clone(), order.idempotency_key.clone()),
                IdemState::Done {
                    request_hash: order.request_hash.clone(),
                    order_id: order.id.clone(),
                    placed_at: order.created_at,
                },
            );
            if matches!(order.status, OrderStatus::Confirmed | OrderStatus::Packed) {
                self.dispatchable.lock().expect("dispatchable lock").insert(order.id.clone());
            }
            self.insert_order(order);
        }
        // Finished orders not read back whole still answer a retried placement.
        for k in snap.keys {
            self.idempotency.insert(
                (k.customer_id, k.idempotency_key),
                IdemState::Done { request_hash: k.request_hash, order_id: k.order_id, placed_at: k.created_at },
            );
        }
        // Pages built before are stale now.
        self.catalog_version.fetch_add(1, Ordering::Relaxed);
    }

    /// Cluster mode: forgets the stock and the orders of `stores` (a region this node no longer
    /// owns). What was committed is in the database for the next owner; nothing is written here.
    pub async fn unload_stores(&self, stores: &std::collections::HashSet<String>) {
        for store in self.stores() {
            if stores.contains(&store.id) {
                *store.stock.lock().expect("stock lock") = darkstore_geoinv::stock::StoreStock::new();
            }
        }
        // Every order is looked at under its own lock: one in the middle of a change finishes it
        // first (its commit is fenced, since the region is no longer held).
        let all: Vec<(String, OrderRef)> = self.orders.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        let mut gone = Vec::new();
        for (id, order) in all {
            let o = order.lock().await;
            if stores.contains(&o.store_id) {
                self.orders.remove(&id);
                self.idempotency.remove(&(o.customer_id.clone(), o.idempotency_key.clone()));
                gone.push(id);
            }
        }
        let gone: std::collections::HashSet<&String> = gone.iter().collect();
        self.holds.lock().expect("holds lock").retain(|(_, id)| !gone.contains(id));
        self.dispatchable.lock().expect("dispatchable lock").retain(|id| !gone.contains(id));
        self.catalog_version.fetch_add(1, Ordering::Relaxed);
    }
}
