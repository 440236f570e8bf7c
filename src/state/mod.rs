//! The server's in-memory state of stores, catalog, stock and orders, and every operation on it.
//! The pure rules come from `darkstore-geoinv`, durability from `darkstore-db`; what changed is
//! told to the [`Changes`] hub as typed changes, never as a wire format.
//!
//! By concern: [`catalog`] (stores and products), [`stock`] (stock lines, adjustments, lot
//! expiry), [`availability`] (what a point can buy), [`orders`] (placement, idempotency, reads,
//! retention), [`lifecycle`] (transitions, packing, payment holds and webhooks), [`restore`]
//! (rebuilding from a database snapshot).
//!
//! Ownership and locking:
//! - the service-area map and the store list change rarely: each behind a `std::sync::RwLock`;
//! - each store's stock is behind its own `std::sync::Mutex`, so a reservation is atomic per store
//!   and never awaits while holding it; it is taken before the catalog's `RwLock` when both are
//!   needed, everywhere (std's `RwLock` queues new readers behind a waiting writer);
//! - each order is behind a `tokio::sync::Mutex`, held across the commit of its transition, so two
//!   transitions of one order never interleave.
//!
//! Durability rule: a change that takes units away (a reservation, a write-off) is applied in
//! memory first, so nothing can be sold twice, then committed, and undone if the commit fails; a
//! change that gives units back (a restock, a release) is committed first and applied after, so
//! nothing not yet durable can be sold. Every caller hears back only after the commit.
//!
//! Time: every operation reads the [`Clock`] handed in at start, never the system clock.

pub mod availability;
pub mod catalog;
pub mod lifecycle;
pub mod orders;
pub mod quote;
pub mod restore;
pub mod stock;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use darkstore_db::{Committer, Db, LedgerRow, Write};
use darkstore_geoinv::Millis;
use darkstore_geoinv::area::ServiceAreaMap;
use darkstore_geoinv::order::OrderStatus;
use darkstore_geoinv::stock::{AdjustError, LotDelta, Shortfall};
use darkstore_geoinv::travel::TravelModel;
use dashmap::DashMap;

pub use availability::{Availability, AvailableItem, PageNow, PagePatch, PageStamp};
pub use catalog::Store;
pub use orders::{PlaceOrder, Placed};

use crate::changes::{Change, Changes};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::model::{Order, OrderBefore, Product};

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// An order in memory: one lock per order.
pub type OrderRef = Arc<tokio::sync::Mutex<Order>>;

/// Why placing an order failed.
#[derive(Debug)]
pub enum PlaceError {
    InvalidPoint,
    NotServiceable,
    UnknownSku(String),
    Insufficient(Vec<Shortfall>),
    /// The idempotency key was used with another body.
    KeyReused,
    /// The idempotency key was used for an order placed before the keys the server remembers.
    KeyExpired,
    /// The store's quote is past `--max-eta-minutes`.
    Busy,
    /// The serving store is outside its opening hours (and no open store reaches the point).
    Closed {
        opens_at: Option<Millis>,
    },
    /// The serving store is paused (and no open store reaches the point).
    Paused,
    Unavailable(String),
}

/// Why an order transition failed.
#[derive(Debug)]
pub enum TransitionError {
    NotFound,
    /// The caller's guard refused (for a rider: the order is not, or no longer, its own).
    Forbidden,
    NotAllowed {
        from: OrderStatus,
        to: OrderStatus,
    },
    Unavailable(String),
}

/// Why a stock adjustment failed.
#[derive(Debug)]
pub enum StockError {
    UnknownStore,
    UnknownSku,
    Refused(AdjustError),
    Unavailable(String),
}

/// Settings of the state that come from the command line.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub travel: TravelModel,
    /// Set: orders start `pending_payment` with their stock held this long.
    pub payment_hold_ms: Option<Millis>,
    /// How long a finished order stays in memory after its last change.
    pub order_retention_ms: Millis,
    /// How long an idempotency key is remembered after its order was placed.
    pub key_retention_ms: Millis,
    /// The quote's settings (picking time and pickers, hand-over, bundling, trip cycle).
    pub quote: darkstore_geoinv::quote::QuoteParams,
    /// Set: a store whose quote is past this takes no orders (`busy`).
    pub max_eta_minutes: Option<f64>,
    /// The base delivery fee (before the dispatch tick has set a store's surge).
    pub delivery_fee_minor: i64,
}

pub struct State {
    pub config: StateConfig,
    pub db: Db,
    committer: Committer,
    pub metrics: Metrics,
    clock: Arc<dyn Clock>,
    changes: Arc<Changes>,
    area: RwLock<ServiceAreaMap>,
    /// Indexed by `StoreIdx`.
    stores: RwLock<Vec<Arc<Store>>>,
    catalog: RwLock<FastMap<Arc<str>, Arc<Product>>>,
    /// Bumped (under the catalog's write lock) by every catalog change.
    catalog_version: AtomicU64,
    orders: DashMap<String, OrderRef>,
    /// (customer, key) → state of the placement with that key.
    idempotency: DashMap<(String, String), orders::IdemState>,
    /// Payment holds by deadline: (hold_expires_at, order id).
    holds: Mutex<BTreeSet<(Millis, String)>>,
    next_lot: AtomicI64,
    /// Orders waiting for a rider (confirmed or packed), for the dispatcher.
    dispatchable: Mutex<BTreeSet<String>>,
    /// The product search index, for the catalog version it was built from.
    search: RwLock<Option<(u64, Arc<darkstore_geoinv::search::SearchIndex>)>>,
    /// Whether any store has opening hours or a pause (else serving skips asking).
    any_restricted: std::sync::atomic::AtomicBool,
    /// Each store's load, by store index, as the last dispatch tick saw it.
    loads: RwLock<FastMap<u32, Arc<quote::LiveLoad>>>,
    /// Called after a catalog change commits (cluster mode: tells the other nodes).
    catalog_hook: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

fn ledger_writes(
    store_id: &str,
    kind: &'static str,
    deltas: &[LotDelta],
    order_id: Option<&str>,
    ts: Millis,
) -> Vec<Write> {
    deltas
        .iter()
        .map(|d| {
            Write::Ledger(LedgerRow {
                store_id: store_id.to_owned(),
                sku: d.sku.to_string(),
                lot_id: d.lot.0,
                expires_at: d.expires_at,
                kind,
                d_on_hand: d.d_on_hand,
                d_reserved: d.d_reserved,
                order_id: order_id.map(str::to_owned),
                ts,
            })
        })
        .collect()
}

impl State {
    /// An empty state; [`State::from_snapshot`] fills one from the database.
    pub fn new(
        config: StateConfig,
        db: Db,
        committer: Committer,
        clock: Arc<dyn Clock>,
        changes: Arc<Changes>,
    ) -> State {
        State {
            area: RwLock::new(ServiceAreaMap::new(config.travel)),
            config,
            db,
            committer,
            metrics: Metrics::default(),
            clock,
            changes,
            stores: RwLock::new(Vec::new()),
            catalog: RwLock::new(FastMap::default()),
            catalog_version: AtomicU64::new(0),
            orders: DashMap::new(),
            idempotency: DashMap::new(),
            holds: Mutex::new(BTreeSet::new()),
            next_lot: AtomicI64::new(1),
            dispatchable: Mutex::new(BTreeSet::new()),
            loads: RwLock::new(FastMap::default()),
            any_restricted: std::sync::atomic::AtomicBool::new(false),
            search: RwLock::new(None),
            catalog_hook: std::sync::OnceLock::new(),
        }
    }

    /// Now, by the clock the state was given.
    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    /// The delivery promise, in milliseconds.
    pub fn promise_ms(&self) -> Millis {
        (self.config.travel.promise_minutes * 60_000.0) as Millis
    }

    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// Tells the observers that an order changed.
    fn order_changed(&self, order: &Order, before: Option<OrderBefore>) {
        self.changes.emit(&Change::Order { order, before });
    }
}
