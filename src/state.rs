//! The server's in-memory state and the operations on it: stores, catalog, stock, orders.
//!
//! Ownership and locking:
//! - the service-area map and the store list change rarely: each behind a `std::sync::RwLock`;
//! - each store's stock is behind its own `std::sync::Mutex`, so a reservation is atomic per
//!   store and never awaits while holding it;
//! - each order is behind a `tokio::sync::Mutex`, held across the commit of its transition, so two
//!   transitions of one order never interleave.
//!
//! Durability rule: a change that takes units away (a reservation, a write-off) is applied in
//! memory first, so nothing can be sold twice, then committed, and undone if the commit fails; a
//! change that gives units back (a restock, a release) is committed first and applied after, so
//! nothing not yet durable can be sold. Every caller hears back only after the commit.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use darkstore_db::{Committer, Db, LedgerRow, NewOrder, OrderStatusChange, Snapshot, Write};
use darkstore_geoinv::Millis;
use darkstore_geoinv::area::{InvalidPoint, ServiceAreaMap, StoreIdx};
use darkstore_geoinv::order::OrderStatus;
use darkstore_geoinv::stock::{AdjustError, LineTotals, LotDelta, LotId, Shortfall, StoreStock, Want};
use darkstore_geoinv::travel::TravelModel;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;

use crate::metrics::Metrics;

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// Unix milliseconds now.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub sku: Arc<str>,
    pub name: String,
    pub category: String,
    pub price_minor: i64,
    pub low_stock_threshold: i64,
    /// The product's availability item up to its `available` value, serialized once:
    /// `{"sku":…,"name":…,"category":…,"price_minor":…,"available":`. Pages are built from these.
    json_head: Box<str>,
}

impl Product {
    pub fn new(sku: &str, name: String, category: String, price_minor: i64, low_stock_threshold: i64) -> Product {
        let head =
            serde_json::json!({"sku": sku, "name": name, "category": category, "price_minor": price_minor}).to_string();
        // `{…}` becomes `{…,"available":`, ready for the number and the closing brace.
        let json_head = format!("{},\"available\":", &head[..head.len() - 1]).into_boxed_str();
        Product { sku: Arc::from(sku), name, category, price_minor, low_stock_threshold, json_head }
    }

    /// Appends this product's availability item, with `available` units, to `out`.
    pub fn write_item(&self, out: &mut String, available: i64) {
        use std::fmt::Write as _;
        out.push_str(&self.json_head);
        let _ = write!(out, "{available}}}");
    }
}

#[derive(Debug)]
pub struct Store {
    pub idx: StoreIdx,
    pub id: String,
    pub name: String,
    pub lat: f64,
    pub lng: f64,
    pub stock: Mutex<StoreStock>,
    /// Per SKU, whether it was last announced as available (for `availability/{cell}` feeds).
    shown: Mutex<HashMap<Arc<str>, bool>>,
    /// First pages of availability as JSON, by (category, limit). Locked after `stock`.
    pages: Mutex<HashMap<PageKey, Arc<CachedPage>>>,
}

/// (category, limit) of a first page.
type PageKey = (Option<Box<str>>, usize);

/// Most availability pages kept per store; the store's pages are dropped when it is full.
const PAGES_PER_STORE: usize = 16;

/// A page of availability as JSON, valid while the store's stock and the catalog are unchanged and
/// none of its lots has expired.
#[derive(Debug)]
struct CachedPage {
    stock_version: u64,
    catalog_version: u64,
    /// The page is stale from this time on (a lot on it expires).
    valid_until: Millis,
    page: PageJson,
}

/// A page of available items, serialized: what `GET /v1/availability` returns for the items.
#[derive(Debug, Clone)]
pub struct PageJson {
    /// The items, comma-separated JSON objects (without the enclosing brackets).
    pub items: Arc<str>,
    pub n_items: usize,
    /// The cursor for the next page, when there is one.
    pub next: Option<String>,
}

/// `GET /v1/availability`: the serving store and a page of its items, serialized.
#[derive(Debug, Clone)]
pub struct AvailabilityJson {
    pub store_id: Option<String>,
    pub eta_minutes: Option<i64>,
    pub page: PageJson,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rider {
    pub id: String,
    pub name: String,
    pub store_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderLine {
    pub sku: String,
    pub qty: i64,
    pub price_minor: i64,
}

#[derive(Debug, Clone)]
pub struct Order {
    pub id: String,
    pub customer_id: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub store_id: String,
    pub lat: f64,
    pub lng: f64,
    pub status: OrderStatus,
    pub rider_id: Option<String>,
    pub eta_minutes: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub hold_expires_at: Option<Millis>,
    pub lines: Vec<OrderLine>,
    /// The reservations the order holds while its status holds stock.
    pub holds: Vec<LotDelta>,
    /// When staff marked it packed (kept when a rider hands it back, so it returns to `packed`).
    pub packed_at: Option<Millis>,
}

/// A stock line as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LineView {
    pub sku: String,
    pub totals: LineTotals,
    pub low_stock: bool,
    pub next_expiry: Option<Millis>,
}

/// One item of an availability page.
#[derive(Debug, Clone)]
pub struct AvailableItem {
    pub product: Arc<Product>,
    pub available: i64,
}

/// The answer to "what can I get here?".
#[derive(Debug, Clone)]
pub struct Availability {
    pub store_id: Option<String>,
    pub eta_minutes: Option<i64>,
    pub items: Vec<AvailableItem>,
    pub next: Option<String>,
}

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
    Unavailable(String),
}

/// Why an order transition failed.
#[derive(Debug)]
pub enum TransitionError {
    NotFound,
    Forbidden,
    NotAllowed { from: OrderStatus, to: OrderStatus },
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

enum IdemState {
    /// A request with this key is being placed; waiters watch for it to finish.
    Pending(watch::Receiver<()>),
    Done {
        request_hash: String,
        order_id: String,
        /// When the order was placed: keys are remembered for `StateConfig::key_retention_ms`.
        placed_at: Millis,
    },
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
}

pub struct State {
    pub config: StateConfig,
    pub db: Db,
    committer: Committer,
    pub metrics: Metrics,
    /// Where changes are published (WebSocket and MQTT).
    pub feeds: Arc<crate::feeds::Feeds>,
    area: RwLock<ServiceAreaMap>,
    /// Indexed by `StoreIdx`.
    stores: RwLock<Vec<Arc<Store>>>,
    catalog: RwLock<FastMap<Arc<str>, Arc<Product>>>,
    /// Bumped (under the catalog's write lock) by every catalog change.
    catalog_version: AtomicU64,
    riders: DashMap<String, Rider>,
    orders: DashMap<String, Arc<tokio::sync::Mutex<Order>>>,
    /// (customer, key) → state of the placement with that key.
    idempotency: DashMap<(String, String), IdemState>,
    /// Payment holds by deadline: (hold_expires_at, order id).
    holds: Mutex<BTreeSet<(Millis, String)>>,
    next_lot: AtomicI64,
    next_order: AtomicI64,
    /// Orders waiting for a rider (confirmed or packed), for the dispatcher.
    dispatchable: Mutex<BTreeSet<String>>,
}

/// An order as stored, back in memory.
fn order_from_row(
    o: darkstore_db::OrderRow,
    status: OrderStatus,
    packed_at: Option<Millis>,
    holds: Vec<LotDelta>,
) -> Order {
    Order {
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
        rider_id: o.rider_id,
        eta_minutes: o.eta_minutes,
        created_at: o.created_at,
        updated_at: o.updated_at,
        hold_expires_at: o.hold_expires_at,
        lines: o.lines.into_iter().map(|l| OrderLine { sku: l.sku, qty: l.qty, price_minor: l.price_minor }).collect(),
    }
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
    /// Rebuilds the state from what the database holds.
    pub fn from_snapshot(config: StateConfig, db: Db, committer: Committer, snap: Snapshot) -> State {
        let state = State {
            area: RwLock::new(ServiceAreaMap::new(config.travel)),
            config,
            db,
            committer,
            metrics: Metrics::default(),
            feeds: Arc::new(crate::feeds::Feeds::new()),
            stores: RwLock::new(Vec::new()),
            catalog: RwLock::new(FastMap::default()),
            catalog_version: AtomicU64::new(0),
            riders: DashMap::new(),
            orders: DashMap::new(),
            idempotency: DashMap::new(),
            holds: Mutex::new(BTreeSet::new()),
            next_lot: AtomicI64::new(snap.max_lot_id + 1),
            next_order: AtomicI64::new(1),
            dispatchable: Mutex::new(BTreeSet::new()),
        };
        for s in snap.stores {
            if let Err(InvalidPoint) = state.put_store_in_memory(&s.id, &s.name, s.lat, s.lng) {
                tracing::warn!(store = %s.id, "stored store has invalid coordinates; skipped");
            }
        }
        {
            let mut catalog = state.catalog.write().expect("catalog lock");
            for p in snap.products {
                let product = Product::new(&p.sku, p.name, p.category, p.price_minor, p.low_stock_threshold);
                catalog.insert(product.sku.clone(), Arc::new(product));
            }
        }
        for r in snap.riders {
            state.riders.insert(r.id.clone(), Rider { id: r.id, name: r.name, store_id: r.store_id });
        }
        for lot in snap.lots {
            match state.store(&lot.store_id) {
                Some(store) => store.stock.lock().expect("stock lock").restore_lot(
                    &lot.sku,
                    LotId(lot.lot_id),
                    lot.expires_at,
                    lot.on_hand,
                    lot.reserved,
                ),
                None => {
                    tracing::warn!(store = %lot.store_id, "ledger rows for an unknown store; skipped")
                }
            }
        }
        let now = now_ms();
        for store in state.stores() {
            let stock = store.stock.lock().expect("stock lock");
            let mut shown = store.shown.lock().expect("shown lock");
            for (sku, line) in stock.lines() {
                shown.insert(sku.clone(), line.available(now) > 0);
            }
        }
        let mut holds: HashMap<String, Vec<LotDelta>> = HashMap::new();
        for h in snap.holds {
            holds.entry(h.order_id).or_default().push(LotDelta {
                sku: Arc::from(h.sku.as_str()),
                lot: LotId(h.lot_id),
                expires_at: h.expires_at,
                d_on_hand: 0,
                d_reserved: h.reserved,
            });
        }
        let mut max_seq = 0;
        for o in snap.orders {
            let Some(status) = OrderStatus::parse(&o.status) else {
                tracing::warn!(order = %o.id, status = %o.status, "stored order has an unknown status; skipped");
                continue;
            };
            if let Some(seq) = o.id.strip_prefix('o').and_then(|n| n.parse::<i64>().ok()) {
                max_seq = max_seq.max(seq);
            }
            if status == OrderStatus::PendingPayment
                && let Some(deadline) = o.hold_expires_at
            {
                state.holds.lock().expect("holds lock").insert((deadline, o.id.clone()));
            }
            state.idempotency.insert(
                (o.customer_id.clone(), o.idempotency_key.clone()),
                IdemState::Done {
                    request_hash: o.request_hash.clone(),
                    order_id: o.id.clone(),
                    placed_at: o.created_at,
                },
            );
            if matches!(status, OrderStatus::Confirmed | OrderStatus::Packed) {
                state.dispatchable.lock().expect("dispatchable lock").insert(o.id.clone());
            }
            let packed_at = snap.packed_at.get(&o.id).copied();
            let holds = if status.holds_stock() { holds.remove(&o.id).unwrap_or_default() } else { Vec::new() };
            let id = o.id.clone();
            let order = order_from_row(o, status, packed_at, holds);
            state.orders.insert(id, Arc::new(tokio::sync::Mutex::new(order)));
        }
        state.next_order.store(max_seq + 1, Ordering::Relaxed);
        state
    }

    /// The delivery promise, in milliseconds.
    pub fn promise_ms(&self) -> Millis {
        (self.config.travel.promise_minutes * 60_000.0) as Millis
    }

    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    fn put_store_in_memory(&self, id: &str, name: &str, lat: f64, lng: f64) -> Result<bool, InvalidPoint> {
        let mut area = self.area.write().expect("area lock");
        let idx = area.upsert_store(id, lat, lng)?;
        let mut stores = self.stores.write().expect("stores lock");
        let created = idx.0 as usize == stores.len();
        let stock = match stores.get(idx.0 as usize) {
            // The stock stays with the store when it is renamed or moved.
            Some(old) => std::mem::take(&mut *old.stock.lock().expect("stock lock")),
            None => StoreStock::new(),
        };
        let shown = match stores.get(idx.0 as usize) {
            Some(old) => std::mem::take(&mut *old.shown.lock().expect("shown lock")),
            None => HashMap::new(),
        };
        let store = Arc::new(Store {
            idx,
            id: id.to_owned(),
            name: name.to_owned(),
            lat,
            lng,
            stock: Mutex::new(stock),
            shown: Mutex::new(shown),
            pages: Mutex::new(HashMap::new()),
        });
        if created {
            stores.push(store);
        } else {
            stores[idx.0 as usize] = store;
        }
        Ok(created)
    }

    // ----- stores, catalog, riders -----

    pub fn store(&self, id: &str) -> Option<Arc<Store>> {
        let idx = self.area.read().expect("area lock").store_idx(id)?;
        self.stores.read().expect("stores lock").get(idx.0 as usize).cloned()
    }

    pub fn stores(&self) -> Vec<Arc<Store>> {
        self.stores.read().expect("stores lock").clone()
    }

    /// The number of H3 cells a store covers.
    pub fn store_cells(&self, idx: StoreIdx) -> usize {
        self.area.read().expect("area lock").cells_of(idx).len()
    }

    /// Creates or updates a store; true when created.
    pub async fn put_store(&self, id: &str, name: &str, lat: f64, lng: f64) -> Result<bool, PlaceError> {
        let ts = now_ms();
        self.committer
            .commit(vec![Write::Store { id: id.into(), name: name.into(), lat, lng, ts }])
            .await
            .map_err(|e| PlaceError::Unavailable(e.to_string()))?;
        self.put_store_in_memory(id, name, lat, lng).map_err(|_| PlaceError::InvalidPoint)
    }

    pub fn product(&self, sku: &str) -> Option<Arc<Product>> {
        self.catalog.read().expect("catalog lock").get(sku).cloned()
    }

    pub fn n_products(&self) -> usize {
        self.catalog.read().expect("catalog lock").len()
    }

    /// Creates or updates a product; true when created.
    pub async fn put_product(&self, product: Product) -> Result<bool, String> {
        self.committer
            .commit(vec![Write::Product {
                sku: product.sku.to_string(),
                name: product.name.clone(),
                category: product.category.clone(),
                price_minor: product.price_minor,
                low_stock_threshold: product.low_stock_threshold,
                ts: now_ms(),
            }])
            .await
            .map_err(|e| e.to_string())?;
        let mut catalog = self.catalog.write().expect("catalog lock");
        self.catalog_version.fetch_add(1, Ordering::Relaxed);
        Ok(catalog.insert(product.sku.clone(), Arc::new(product)).is_none())
    }

    pub fn riders(&self) -> Vec<(String, Rider)> {
        self.riders.iter().map(|e| (e.key().clone(), e.value().clone())).collect()
    }

    pub fn rider(&self, id: &str) -> Option<Rider> {
        self.riders.get(id).map(|r| r.clone())
    }

    /// Registers or updates a rider; true when created.
    pub async fn put_rider(&self, rider: Rider) -> Result<bool, String> {
        self.committer
            .commit(vec![Write::Rider {
                id: rider.id.clone(),
                name: rider.name.clone(),
                store_id: rider.store_id.clone(),
                ts: now_ms(),
            }])
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.riders.insert(rider.id.clone(), rider).is_none())
    }

    // ----- stock -----

    fn line_view(&self, sku: &str, stock: &StoreStock, now: Millis) -> LineView {
        let line = stock.line(sku);
        let totals = line.map_or(LineTotals { on_hand: 0, reserved: 0, available: 0 }, |l| l.totals(now));
        let threshold = self.product(sku).map_or(0, |p| p.low_stock_threshold);
        LineView {
            sku: sku.to_owned(),
            totals,
            low_stock: totals.available <= threshold,
            next_expiry: line.and_then(|l| l.next_expiry()),
        }
    }

    /// Every stock line of a store, by SKU.
    pub fn stock_lines(&self, store: &Store, now: Millis) -> Vec<LineView> {
        let stock = store.stock.lock().expect("stock lock");
        let skus: Vec<Arc<str>> = stock.lines().map(|(sku, _)| sku.clone()).collect();
        skus.iter().map(|sku| self.line_view(sku, &stock, now)).collect()
    }

    /// Changes on-hand stock of one SKU in one store, durably.
    pub async fn adjust_stock(
        &self,
        store_id: &str,
        sku: &str,
        delta: i64,
        reason: &'static str,
        expires_at: Option<Millis>,
    ) -> Result<LineView, StockError> {
        let store = self.store(store_id).ok_or(StockError::UnknownStore)?;
        if self.product(sku).is_none() {
            return Err(StockError::UnknownSku);
        }
        let now = now_ms();
        if delta > 0 {
            // Units arrive: durable first, sellable after.
            let lot = LotId(self.next_lot.fetch_add(1, Ordering::Relaxed));
            let arrival = LotDelta { sku: Arc::from(sku), lot, expires_at, d_on_hand: delta, d_reserved: 0 };
            self.committer
                .commit(ledger_writes(store_id, reason, std::slice::from_ref(&arrival), None, now))
                .await
                .map_err(|e| StockError::Unavailable(e.to_string()))?;
            store.stock.lock().expect("stock lock").apply(&arrival);
            return Ok(self.stock_changed(&store, &[sku], now).remove(0));
        }
        // Units leave: taken now, given back if the commit fails.
        let deltas = {
            let mut stock = store.stock.lock().expect("stock lock");
            stock.adjust(sku, delta, LotId(0), None, now).map_err(StockError::Refused)?
        };
        if let Err(e) = self.committer.commit(ledger_writes(store_id, reason, &deltas, None, now)).await {
            let mut stock = store.stock.lock().expect("stock lock");
            deltas.iter().for_each(|d| stock.apply(&d.negated()));
            return Err(StockError::Unavailable(e.to_string()));
        }
        Ok(self.stock_changed(&store, &[sku], now).remove(0))
    }

    /// Publishes the new state of stock lines: to `store/{id}` and MQTT `stores/{id}/stock`, and
    /// to `availability/{cell}` for SKUs that appeared or disappeared. Returns the lines.
    pub fn stock_changed(&self, store: &Store, skus: &[&str], now: Millis) -> Vec<LineView> {
        let lines: Vec<LineView> = {
            let stock = store.stock.lock().expect("stock lock");
            skus.iter().map(|sku| self.line_view(sku, &stock, now)).collect()
        };
        let store_topic = format!("store/{}", store.id);
        let mut crossings = Vec::new();
        for line in &lines {
            let product = self.product(&line.sku);
            let json = crate::views::line_json(line, product.as_deref());
            self.feeds.publish(&store_topic, "stock", &json);
            let mut payload = json.clone();
            payload["ts"] = serde_json::json!(now);
            self.feeds.mqtt(format!("stores/{}/stock", store.id), &payload);
            let now_shown = line.totals.available > 0;
            let was = store.shown.lock().expect("shown lock").insert(Arc::from(line.sku.as_str()), now_shown);
            if was.unwrap_or(false) != now_shown {
                crossings.push((line.sku.clone(), now_shown, line.totals.available, product));
            }
        }
        if !crossings.is_empty() {
            for topic in self.feeds.topics_with_prefix("availability/") {
                let Some(cell) = topic.strip_prefix("availability/") else { continue };
                if self.store_for_cell(cell).map(|s| s.idx) != Some(store.idx) {
                    continue;
                }
                for (sku, shown, available, product) in &crossings {
                    if *shown {
                        let item = serde_json::json!({
                            "sku": sku,
                            "name": product.as_ref().map(|p| p.name.clone()),
                            "category": product.as_ref().map(|p| p.category.clone()),
                            "price_minor": product.as_ref().map(|p| p.price_minor),
                            "available": available,
                        });
                        self.feeds.publish(&topic, "item_available", &item);
                    } else {
                        self.feeds.publish(&topic, "item_unavailable", &serde_json::json!({"sku": sku}));
                    }
                }
            }
        }
        lines
    }

    /// The store serving the centre of an H3 cell (given as its string form), if any.
    pub fn store_for_cell(&self, cell: &str) -> Option<Arc<Store>> {
        let cell: h3o::CellIndex = cell.parse().ok()?;
        let centre = h3o::LatLng::from(cell);
        let serving = self.area.read().expect("area lock").best_store(centre.lat(), centre.lng()).ok()??;
        self.store_at(serving.store)
    }

    /// Publishes an order's new state: `order/{id}`, `store/{store}` and MQTT `orders/{id}/status`.
    pub fn order_changed(&self, order: &Order) {
        let json = crate::views::order_json(order, self.promise_ms());
        self.feeds.publish(&format!("order/{}", order.id), "status", &json);
        self.feeds.publish(&format!("store/{}", order.store_id), "order", &json);
        let payload = serde_json::json!({
            "order_id": order.id,
            "status": order.status.as_str(),
            "store_id": order.store_id,
            "rider_id": order.rider_id,
            "ts": order.updated_at,
        });
        self.feeds.mqtt(format!("orders/{}/status", order.id), &payload);
    }

    /// Writes off the free units of expired lots in every store.
    pub async fn expire_lots(&self, now: Millis) {
        for store in self.stores() {
            let deltas = store.stock.lock().expect("stock lock").expire(now);
            if deltas.is_empty() {
                continue;
            }
            match self.committer.commit(ledger_writes(&store.id, "expiry", &deltas, None, now)).await {
                Ok(()) => {
                    let skus: Vec<&str> = deltas.iter().map(|d| &*d.sku).collect();
                    self.stock_changed(&store, &skus, now);
                    self.metrics.lots_expired.fetch_add(deltas.len() as u64, Ordering::Relaxed);
                    tracing::info!(store = %store.id, lots = deltas.len(), "expired lots written off");
                }
                Err(e) => {
                    let mut stock = store.stock.lock().expect("stock lock");
                    deltas.iter().for_each(|d| stock.apply(&d.negated()));
                    tracing::warn!(store = %store.id, error = %e, "writing off expired lots failed; will retry");
                }
            }
        }
    }

    // ----- availability -----

    /// What the store serving (lat, lng) can sell now, a page at a time.
    pub fn availability(
        &self,
        lat: f64,
        lng: f64,
        category: Option<&str>,
        after: Option<&str>,
        limit: usize,
        now: Millis,
    ) -> Result<Availability, InvalidPoint> {
        let Some((store, eta_minutes)) = self.serving(lat, lng)? else {
            return Ok(Availability { store_id: None, eta_minutes: None, items: Vec::new(), next: None });
        };
        let mut items = Vec::with_capacity(limit.min(256));
        let mut next = None;
        {
            // Lock order everywhere: a store's stock, then the catalog.
            let stock = store.stock.lock().expect("stock lock");
            let catalog = self.catalog.read().expect("catalog lock");
            for (sku, available) in stock.available_after(after, now) {
                let Some(product) = catalog.get(sku) else {
                    continue;
                };
                if category.is_some_and(|c| c != product.category) {
                    continue;
                }
                if items.len() == limit {
                    next = items.last().map(|i: &AvailableItem| i.product.sku.to_string());
                    break;
                }
                items.push(AvailableItem { product: product.clone(), available });
            }
        }
        Ok(Availability { store_id: Some(store.id.clone()), eta_minutes: Some(eta_minutes), items, next })
    }

    /// The store that serves (lat, lng) within the promise, with its ETA in whole minutes.
    fn serving(&self, lat: f64, lng: f64) -> Result<Option<(Arc<Store>, i64)>, InvalidPoint> {
        let serving = self.area.read().expect("area lock").best_store(lat, lng)?;
        Ok(serving.map(|s| {
            let store = self.stores.read().expect("stores lock")[s.store.0 as usize].clone();
            (store, s.eta_minutes.ceil() as i64)
        }))
    }

    /// What `GET /v1/availability` serves: like [`State::availability`], with the page already
    /// serialized. First pages (no `after`) are kept per store and served again while the store's
    /// stock and the catalog are unchanged and none of the page's lots has expired, so a busy area
    /// builds its page once per change instead of once per request.
    pub fn availability_json(
        &self,
        lat: f64,
        lng: f64,
        category: Option<&str>,
        after: Option<&str>,
        limit: usize,
        now: Millis,
    ) -> Result<AvailabilityJson, InvalidPoint> {
        let Some((store, eta)) = self.serving(lat, lng)? else {
            let page = PageJson { items: Arc::from(""), n_items: 0, next: None };
            return Ok(AvailabilityJson { store_id: None, eta_minutes: None, page });
        };
        let eta_minutes = Some(eta);
        // Lock order everywhere: a store's stock, then the catalog (a reader queued behind a
        // waiting writer would otherwise deadlock against `stock_lines`, which reads the catalog
        // under the stock lock); the page cache is a leaf lock.
        let stock = store.stock.lock().expect("stock lock");
        let catalog = self.catalog.read().expect("catalog lock");
        let catalog_version = self.catalog_version.load(Ordering::Relaxed);
        let key = (category.map(Box::from), limit);
        if after.is_none()
            && let Some(hit) = store.pages.lock().expect("pages lock").get(&key)
            && hit.stock_version == stock.version()
            && hit.catalog_version == catalog_version
            && now < hit.valid_until
        {
            return Ok(AvailabilityJson { store_id: Some(store.id.clone()), eta_minutes, page: hit.page.clone() });
        }
        let mut items = String::with_capacity(limit.min(256) * 120);
        let mut n_items = 0;
        let mut last: Option<&Arc<str>> = None;
        let mut next = None;
        let mut valid_until = Millis::MAX;
        for (sku, available, line) in stock.available_lines_after(after, now) {
            let Some(product) = catalog.get(sku) else {
                continue;
            };
            if category.is_some_and(|c| c != product.category) {
                continue;
            }
            // Every line that decides the page (including the one that says there is a next
            // page) bounds how long it stays true.
            if let Some(t) = line.available_until(now) {
                valid_until = valid_until.min(t);
            }
            if n_items == limit {
                next = last.map(|s| s.to_string());
                break;
            }
            if n_items > 0 {
                items.push(',');
            }
            product.write_item(&mut items, available);
            n_items += 1;
            last = Some(sku);
        }
        let page = PageJson { items: Arc::from(items), n_items, next };
        if after.is_none() {
            let mut pages = store.pages.lock().expect("pages lock");
            if pages.len() >= PAGES_PER_STORE && !pages.contains_key(&key) {
                pages.clear();
            }
            let cached =
                CachedPage { stock_version: stock.version(), catalog_version, valid_until, page: page.clone() };
            pages.insert(key, Arc::new(cached));
        }
        Ok(AvailabilityJson { store_id: Some(store.id.clone()), eta_minutes, page })
    }

    // ----- orders -----

    /// An order in memory: every open order, and finished ones for the retention window.
    pub fn order(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<Order>>> {
        self.orders.get(id).map(|o| o.clone())
    }

    /// An order in memory or, past the retention window, as stored. Only finished orders leave
    /// memory, so one read back holds no stock and can no longer change; it is not kept.
    pub async fn find_order(&self, id: &str) -> Result<Option<Arc<tokio::sync::Mutex<Order>>>, String> {
        if let Some(o) = self.order(id) {
            return Ok(Some(o));
        }
        if !darkstore_geoinv::ids::valid_id(id) {
            return Ok(None);
        }
        let Some(row) = self.db.order(id).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let Some(status) = OrderStatus::parse(&row.status) else {
            return Err(format!("stored order {id} has an unknown status {:?}", row.status));
        };
        if !status.is_final() {
            // Only finished orders leave memory. An open one stored but not in memory is being
            // placed right now (committed, not yet in memory): never hand out a detached copy
            // that a transition could change.
            return Ok(self.order(id));
        }
        self.metrics.orders_read_back.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Arc::new(tokio::sync::Mutex::new(order_from_row(row, status, None, Vec::new())))))
    }

    /// Lets go of finished orders whose last change is older than the retention window (they stay
    /// in the database, and [`State::find_order`] reads them back), and of idempotency keys older
    /// than theirs (a retried placement within it still answers with its order; past it, the
    /// database refuses the key and the client gets 409). Returns how many orders were let go.
    pub fn evict_finished_orders(&self, now: Millis) -> usize {
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

    /// Orders a rider holds (assigned or picked up): (order, store, rider, picked up).
    pub async fn orders_with_riders(&self) -> Vec<(String, String, String, bool)> {
        let orders: Vec<_> = self.orders.iter().map(|e| e.value().clone()).collect();
        let mut out = Vec::new();
        for o in orders {
            let o = o.lock().await;
            if let (Some(rider), OrderStatus::Assigned | OrderStatus::PickedUp) = (&o.rider_id, o.status) {
                out.push((o.id.clone(), o.store_id.clone(), rider.clone(), o.status == OrderStatus::PickedUp));
            }
        }
        out
    }

    /// Every order of a store (oldest first).
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

    /// The H3 cells a store covers, as strings.
    pub fn store_cell_ids(&self, idx: StoreIdx) -> Vec<h3o::CellIndex> {
        self.area.read().expect("area lock").cells_of(idx).to_vec()
    }

    /// Ids of the orders waiting for a rider.
    pub fn dispatchable(&self) -> Vec<String> {
        self.dispatchable.lock().expect("dispatchable lock").iter().cloned().collect()
    }

    /// The store with this index.
    pub fn store_at(&self, idx: StoreIdx) -> Option<Arc<Store>> {
        self.stores.read().expect("stores lock").get(idx.0 as usize).cloned()
    }

    pub fn n_orders(&self) -> usize {
        self.orders.len()
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

        let now = now_ms();
        let serving =
            self.area.read().expect("area lock").best_store(req.lat, req.lng).map_err(|_| PlaceError::InvalidPoint)?;
        let Some(serving) = serving else {
            return Err(PlaceError::NotServiceable);
        };
        let store = self.stores.read().expect("stores lock")[serving.store.0 as usize].clone();
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
        let id = format!("o{}", self.next_order.fetch_add(1, Ordering::Relaxed));
        let (status, hold_expires_at) = match self.config.payment_hold_ms {
            Some(hold) => (OrderStatus::PendingPayment, Some(now + hold)),
            None => (OrderStatus::Confirmed, None),
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
            rider_id: None,
            eta_minutes: serving.eta_minutes.ceil() as i64,
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
            eta_minutes: order.eta_minutes,
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
        self.orders.insert(id.clone(), Arc::new(tokio::sync::Mutex::new(order.clone())));
        if status == OrderStatus::Confirmed {
            self.dispatchable.lock().expect("dispatchable lock").insert(id.clone());
        }
        claim.finish(req.request_hash.clone(), id, now);
        self.order_changed(&order);
        let skus: Vec<&str> = order.lines.iter().map(|l| l.sku.as_str()).collect();
        self.stock_changed(&store, &skus, now);
        Ok(Placed { order, replayed: false })
    }

    /// Moves an order to `to` if the lifecycle allows it and `allowed` accepts the caller,
    /// releasing or selling its stock as the new status requires; durable before it returns.
    pub async fn transition(
        &self,
        order_id: &str,
        to: OrderStatus,
        rider_id: Option<String>,
        allowed: impl FnOnce(&Order) -> bool,
    ) -> Result<Order, TransitionError> {
        let order =
            self.find_order(order_id).await.map_err(TransitionError::Unavailable)?.ok_or(TransitionError::NotFound)?;
        let mut order = order.lock().await;
        if !allowed(&order) {
            return Err(TransitionError::Forbidden);
        }
        if !order.status.can_become(to) {
            return Err(TransitionError::NotAllowed { from: order.status, to });
        }
        let now = now_ms();
        let (kind, settle): (&'static str, Vec<LotDelta>) = match to {
            OrderStatus::Cancelled | OrderStatus::Expired => {
                ("release", order.holds.iter().map(LotDelta::release).collect())
            }
            OrderStatus::PickedUp => ("sale", order.holds.iter().map(LotDelta::sale).collect()),
            _ => ("", Vec::new()),
        };
        let rider_id = match to {
            OrderStatus::Assigned | OrderStatus::PickedUp | OrderStatus::Delivered => {
                rider_id.or(order.rider_id.clone())
            }
            _ => None,
        };
        let mut writes = vec![Write::Status(OrderStatusChange {
            order_id: order.id.clone(),
            status: to.as_str(),
            rider_id: rider_id.clone(),
            ts: now,
        })];
        writes.extend(ledger_writes(&order.store_id, kind, &settle, Some(&order.id), now));
        self.committer.commit(writes).await.map_err(|e| TransitionError::Unavailable(e.to_string()))?;
        if !settle.is_empty() {
            if let Some(store) = self.store(&order.store_id) {
                let mut stock = store.stock.lock().expect("stock lock");
                settle.iter().for_each(|d| stock.apply(d));
            }
            if kind == "release" {
                let units: i64 = settle.iter().map(|d| -d.d_reserved).sum();
                self.metrics.released_units.fetch_add(units as u64, Ordering::Relaxed);
            }
            order.holds.clear();
        }
        if order.status == OrderStatus::PendingPayment
            && let Some(deadline) = order.hold_expires_at
        {
            self.holds.lock().expect("holds lock").remove(&(deadline, order.id.clone()));
        }
        if to == OrderStatus::Packed {
            order.packed_at = Some(now);
        }
        {
            let mut dispatchable = self.dispatchable.lock().expect("dispatchable lock");
            if matches!(to, OrderStatus::Confirmed | OrderStatus::Packed) {
                dispatchable.insert(order.id.clone());
            } else {
                dispatchable.remove(&order.id);
            }
        }
        order.status = to;
        order.rider_id = rider_id;
        order.updated_at = now;
        self.metrics.order_transitions.fetch_add(1, Ordering::Relaxed);
        self.order_changed(&order);
        if !settle.is_empty()
            && let Some(store) = self.store(&order.store_id)
        {
            let skus: Vec<&str> = settle.iter().map(|d| &*d.sku).collect();
            self.stock_changed(&store, &skus, now);
        }
        Ok(order.clone())
    }

    /// Staff packed an order. A confirmed order becomes `packed`; an order a rider was already
    /// sent for stays `assigned` (the rider is on the way) and only remembers when it was packed.
    /// Packing twice, or after pickup, is a conflict.
    pub async fn pack(&self, order_id: &str, allowed: impl FnOnce(&Order) -> bool) -> Result<Order, TransitionError> {
        let order =
            self.find_order(order_id).await.map_err(TransitionError::Unavailable)?.ok_or(TransitionError::NotFound)?;
        let mut o = order.lock().await;
        if !allowed(&o) {
            return Err(TransitionError::Forbidden);
        }
        match (o.status, o.packed_at) {
            (OrderStatus::Assigned, None) => {
                o.packed_at = Some(now_ms());
                self.order_changed(&o);
                Ok(o.clone())
            }
            (OrderStatus::Confirmed, _) => {
                drop(o);
                // If a rider was assigned in between, packing now would hand the order back: refuse.
                self.transition(order_id, OrderStatus::Packed, None, |o| o.status == OrderStatus::Confirmed)
                    .await
                    .map_err(|e| match e {
                        TransitionError::Forbidden => {
                            TransitionError::NotAllowed { from: OrderStatus::Assigned, to: OrderStatus::Packed }
                        }
                        other => other,
                    })
            }
            (from, _) => Err(TransitionError::NotAllowed { from, to: OrderStatus::Packed }),
        }
    }

    /// Expires the payment holds whose deadline has passed.
    pub async fn expire_holds(&self, now: Millis) {
        let due: Vec<(Millis, String)> = {
            let holds = self.holds.lock().expect("holds lock");
            holds.range(..(now + 1, String::new())).cloned().collect()
        };
        for (deadline, order_id) in due {
            match self.transition(&order_id, OrderStatus::Expired, None, |_| true).await {
                Ok(_) => {
                    self.metrics.holds_expired.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(order = %order_id, "payment hold expired; stock released");
                }
                Err(TransitionError::Unavailable(e)) => {
                    tracing::warn!(order = %order_id, error = %e, "expiring a hold failed; will retry");
                }
                Err(_) => {
                    // Paid or cancelled meanwhile: nothing to expire.
                    self.holds.lock().expect("holds lock").remove(&(deadline, order_id));
                }
            }
        }
    }
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
