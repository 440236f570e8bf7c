//! Orders: placement with all-or-nothing reservations and idempotency keys, reads (from memory
//! or, past the retention window, from the database), and letting finished orders go.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use darkstore_db::{NewOrder, Write};
use darkstore_geoinv::Millis;
use darkstore_geoinv::order::{OrderStatus, PaymentStatus};
use darkstore_geoinv::stock::Want;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;

use super::{OrderRef, PlaceError, State, ledger_writes};
use crate::model::{Order, OrderLine};

/// A placement request, validated by the HTTP layer.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    pub customer_id: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub lat: f64,
    pub lng: f64,
    pub lines: Vec<(String, i64)>,
}

/// The result of a placement: the order, and whether it is a replay of an earlier request.
#[derive(Debug, Clone)]
pub struct Placed {
    pub order: Order,
    pub replayed: bool,
}

pub(super) enum IdemState {
    /// A request with this key is being placed; waiters watch for it to finish.
    Pending(watch::Receiver<()>),
    Done {
        request_hash: String,
        order_id: String,
        /// When the order was placed: keys are remembered for `StateConfig::key_retention_ms`.
        placed_at: Millis,
    },
}

/// An open order a rider holds.
#[derive(Debug, Clone)]
pub struct HeldOrder {
    pub order: Order,
    pub rider_id: String,
    pub picked_up: bool,
}

impl State {
    pub(super) fn insert_order(&self, order: Order) {
        self.orders.insert(order.id.clone(), Arc::new(tokio::sync::Mutex::new(order)));
    }

    /// Places an order: reserves every line or none, commits, and answers once durable. A replay
    /// of a key already used with the same body answers with the same order.
    pub async fn place_order(&self, req: PlaceOrder) -> Result<Placed, PlaceError> {
        let key = (req.customer_id.clone(), req.idempotency_key.clone());
        // Claim the key, or wait for whoever holds it, or replay.
        let mut claim = loop {
            let mut wait = match self.idempotency.entry(key.clone()) {
                Entry::Occupied(e) => match e.get() {
                    IdemState::Done { request_hash, order_id, .. } => {
                        if *request_hash != req.request_hash {
                            return Err(PlaceError::KeyReused);
                        }
                        let order_id = order_id.clone();
                        drop(e);
                        let order = self
                            .find_order(&order_id)
                            .await
                            .map_err(PlaceError::Unavailable)?
                            .ok_or_else(|| PlaceError::Unavailable("replayed order missing".into()))?;
                        let order = order.lock().await.clone();
                        return Ok(Placed { order, replayed: true });
                    }
                    IdemState::Pending(rx) => rx.clone(),
                },
                Entry::Vacant(v) => {
                    let (tx, rx) = watch::channel(());
                    v.insert(IdemState::Pending(rx));
                    break KeyClaim { state: self, key: key.clone(), _tx: tx, done: false };
                }
            };
            // The holder finishes (or fails) and drops its sender.
            let _ = wait.changed().await;
        };

        let now = self.now();
        // The order is promised what it was quoted: placement time plus the quote.
        let Some((store, quoted)) = self.serving(req.lat, req.lng).map_err(|_| PlaceError::InvalidPoint)? else {
            return Err(PlaceError::NotServiceable);
        };
        match self.open_state(&store) {
            crate::model::OpenState::Open => {}
            crate::model::OpenState::Closed { opens_at } => return Err(PlaceError::Closed { opens_at }),
            crate::model::OpenState::Paused { .. } => return Err(PlaceError::Paused),
        }
        if !self.accepting(&quoted) {
            return Err(PlaceError::Busy);
        }
        let eta_minutes = quoted.eta_minutes();
        let delivery_fee_minor = self.delivery_fee(&store);
        let mut lines = Vec::with_capacity(req.lines.len());
        for (sku, qty) in &req.lines {
            let product = self.product(sku).ok_or_else(|| PlaceError::UnknownSku(sku.clone()))?;
            lines.push(OrderLine { sku: sku.clone(), qty: *qty, price_minor: product.price_minor });
        }
        let wants: Vec<Want> = req.lines.iter().map(|(sku, qty)| Want { sku, qty: *qty }).collect();
        let reserved = store.stock.lock().expect("stock lock").reserve(&wants, now);
        let holds = match reserved {
            Ok(holds) => holds,
            Err(short) => {
                self.metrics.reservations_short.fetch_add(1, Ordering::Relaxed);
                return Err(PlaceError::Insufficient(short));
            }
        };
        let id = new_order_id(now);
        let (status, payment_status, hold_expires_at) = match self.config.payment_hold_ms {
            Some(hold) => (OrderStatus::PendingPayment, PaymentStatus::Held, Some(now + hold)),
            None => (OrderStatus::Confirmed, PaymentStatus::None, None),
        };
        let order = Order {
            id: id.clone(),
            customer_id: req.customer_id.clone(),
            idempotency_key: req.idempotency_key.clone(),
            request_hash: req.request_hash.clone(),
            store_id: store.id.clone(),
            lat: req.lat,
            lng: req.lng,
            status,
            payment_status,
            total_minor: Order::total_of(&lines).saturating_add(delivery_fee_minor),
            refund_minor: None,
            delivery_code: Some(new_delivery_code()),
            rider_id: None,
            eta_minutes,
            promised_by: now.saturating_add(quoted.eta_ms),
            quoted: Some(quoted),
            delivery_fee_minor,
            created_at: now,
            updated_at: now,
            hold_expires_at,
            lines,
            holds,
            packed_at: None,
        };
        let mut writes = Vec::with_capacity(1 + order.holds.len());
        writes.push(Write::Order(NewOrder {
            id: id.clone(),
            customer_id: order.customer_id.clone(),
            idempotency_key: order.idempotency_key.clone(),
            request_hash: order.request_hash.clone(),
            store_id: order.store_id.clone(),
            lat: order.lat,
            lng: order.lng,
            status: status.as_str(),
            payment_status: payment_status.as_str(),
            total_minor: order.total_minor,
            delivery_code: order.delivery_code.clone(),
            eta_minutes: order.eta_minutes,
            promised_by: order.promised_by,
            delivery_fee_minor,
            created_at: now,
            hold_expires_at,
            lines: order.lines.iter().map(|l| (l.sku.clone(), l.qty, l.price_minor)).collect(),
        }));
        writes.extend(ledger_writes(&store.id, "reserve", &order.holds, Some(&id), now));
        if let Err(e) = self.committer.commit(writes).await {
            let mut stock = store.stock.lock().expect("stock lock");
            order.holds.iter().for_each(|d| stock.apply(&d.negated()));
            return Err(match e {
                // The key's order is older than the keys kept in memory.
                darkstore_db::DbError::Conflict(_) => PlaceError::KeyExpired,
                e => PlaceError::Unavailable(e.to_string()),
            });
        }
        self.metrics.reservations_ok.fetch_add(1, Ordering::Relaxed);
        let units: i64 = order.holds.iter().map(|h| h.d_reserved).sum();
        self.metrics.reserved_units.fetch_add(units as u64, Ordering::Relaxed);
        if let Some(deadline) = hold_expires_at {
            self.holds.lock().expect("holds lock").insert((deadline, id.clone()));
        }
        self.insert_order(order.clone());
        if status == OrderStatus::Confirmed {
            self.dispatchable.lock().expect("dispatchable lock").insert(id.clone());
            self.confirmed_at(store.idx.0);
        }
        claim.finish(req.request_hash.clone(), id, now);
        self.order_changed(&order, None);
        let skus: Vec<&str> = order.lines.iter().map(|l| l.sku.as_str()).collect();
        self.stock_changed(&store, &skus, now);
        Ok(Placed { order, replayed: false })
    }

    /// An order in memory: every open order, and finished ones for the retention window.
    pub fn order(&self, id: &str) -> Option<OrderRef> {
        self.orders.get(id).map(|o| o.clone())
    }

    /// An order in memory or, past the retention window, as stored. Only finished orders leave
    /// memory, so one read back holds no stock and can no longer change; it is not kept.
    pub async fn find_order(&self, id: &str) -> Result<Option<OrderRef>, String> {
        if let Some(o) = self.order(id) {
            return Ok(Some(o));
        }
        if !darkstore_geoinv::ids::valid_id(id) {
            return Ok(None);
        }
        let Some(row) = self.db.order(id).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let order = super::restore::order_from_row(row, None, Vec::new())?;
        if !order.status.is_final() {
            // Only finished orders leave memory. An open one stored but not in memory is being
            // placed right now (committed, not yet in memory): never hand out a detached copy
            // that a transition could change.
            return Ok(self.order(id));
        }
        self.metrics.orders_read_back.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Arc::new(tokio::sync::Mutex::new(order))))
    }

    /// Orders newest first as the database holds them (an order in memory as it is there), at
    /// most `limit`, filtered as `filter` says.
    pub async fn list_orders(&self, filter: &darkstore_db::OrderFilter<'_>, limit: i64) -> Result<Vec<Order>, String> {
        let rows = self.db.list_orders(filter, limit).await.map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match self.order(&row.id) {
                Some(o) => out.push(o.lock().await.clone()),
                None => out.push(super::restore::order_from_row(row, None, Vec::new())?),
            }
        }
        Ok(out)
    }

    /// What a load from the database reads of finished orders: whole, those last changed within
    /// the orders' retention (older ones have left memory); their idempotency keys only, those
    /// placed within the keys' retention (older keys have been forgotten too).
    pub fn history_since(&self) -> darkstore_db::Since {
        let now = self.now();
        darkstore_db::Since {
            orders: now.saturating_sub(self.config.order_retention_ms),
            keys: now.saturating_sub(self.config.key_retention_ms),
        }
    }

    /// Lets go of finished orders whose last change is older than the retention window (they stay
    /// in the database, and [`State::find_order`] reads them back), and of idempotency keys older
    /// than theirs (a retried placement within it still answers with its order; past it, the
    /// database refuses the key and the client gets 409). Returns how many orders were let go.
    pub fn evict_finished_orders(&self) -> usize {
        let now = self.now();
        let key_cutoff = now.saturating_sub(self.config.key_retention_ms);
        self.idempotency.retain(|_, v| !matches!(v, IdemState::Done { placed_at, .. } if *placed_at < key_cutoff));
        let cutoff = now.saturating_sub(self.config.order_retention_ms);
        let old: Vec<String> = self
            .orders
            .iter()
            .filter_map(|e| {
                // An order being changed right now is not finished yet, or not for long.
                let o = e.value().try_lock().ok()?;
                (o.status.is_final() && o.updated_at < cutoff).then(|| o.id.clone())
            })
            .collect();
        let mut evicted = 0;
        for id in old {
            if self.orders.remove(&id).is_some() {
                evicted += 1;
            }
        }
        self.metrics.orders_evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// Open orders a rider holds (assigned or picked up).
    pub async fn orders_with_riders(&self) -> Vec<HeldOrder> {
        let orders: Vec<_> = self.orders.iter().map(|e| e.value().clone()).collect();
        let mut out = Vec::new();
        for o in orders {
            let o = o.lock().await;
            if let (Some(rider), OrderStatus::Assigned | OrderStatus::PickedUp) = (&o.rider_id, o.status) {
                out.push(HeldOrder {
                    rider_id: rider.clone(),
                    picked_up: o.status == OrderStatus::PickedUp,
                    order: o.clone(),
                });
            }
        }
        out
    }

    /// Every order of a store in memory (oldest first).
    pub async fn orders_of_store(&self, store_id: &str) -> Vec<Order> {
        let orders: Vec<_> = self.orders.iter().map(|e| e.value().clone()).collect();
        let mut out = Vec::new();
        for o in orders {
            let o = o.lock().await;
            if o.store_id == store_id {
                out.push(o.clone());
            }
        }
        out.sort_by_key(|o| (o.created_at, o.id.clone()));
        out
    }

    /// Ids of the orders waiting for a rider.
    pub fn dispatchable(&self) -> Vec<String> {
        self.dispatchable.lock().expect("dispatchable lock").iter().cloned().collect()
    }

    pub fn n_orders(&self) -> usize {
        self.orders.len()
    }
}

/// A 4-digit delivery code, uniformly random.
fn new_delivery_code() -> String {
    let mut b = [0u8; 4];
    let n = match getrandom::fill(&mut b) {
        Ok(()) => u32::from_le_bytes(b),
        Err(_) => std::hash::BuildHasher::hash_one(&ahash::RandomState::new(), 0u8) as u32,
    };
    format!("{:04}", n % 10_000)
}

/// Crockford's base32 alphabet, lower case (no i, l, o, u).
const BASE32: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new order id: `o`, the placement time (unix ms, 10 base32 digits, so ids sort by time) and
/// 40 random bits (8 digits), so ids can be neither guessed nor counted. Databases written before
/// keep their sequential ids (`o1`, `o2`, …); both forms are valid ids.
pub fn new_order_id(now: Millis) -> String {
    let mut random = [0u8; 5];
    if getrandom::fill(&mut random).is_err() {
        // No randomness from the OS: fall back to a hash of the time and a counter, still unique.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let h = std::hash::BuildHasher::hash_one(&ahash::RandomState::new(), (now, n));
        random.copy_from_slice(&h.to_le_bytes()[..5]);
    }
    let r = random.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut id = String::with_capacity(19);
    id.push('o');
    let t = now.max(0) as u64;
    for i in (0..10).rev() {
        id.push(BASE32[((t >> (i * 5)) & 31) as usize] as char);
    }
    for i in (0..8).rev() {
        id.push(BASE32[((r >> (i * 5)) & 31) as usize] as char);
    }
    id
}

/// A claimed idempotency key: finished with an order id, or released when dropped (failure,
/// panic or cancellation), which wakes anyone waiting on the key.
struct KeyClaim<'a> {
    state: &'a State,
    key: (String, String),
    _tx: watch::Sender<()>,
    done: bool,
}

impl KeyClaim<'_> {
    fn finish(&mut self, request_hash: String, order_id: String, placed_at: Millis) {
        let done = IdemState::Done { request_hash, order_id, placed_at };
        self.state.idempotency.insert(self.key.clone(), done);
        self.done = true;
    }
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state.idempotency.remove(&self.key);
        }
    }
}
