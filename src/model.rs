//! The domain's values, shared by the modules that own them and the ones that show them. Plain
//! data: no locks, no IO, no wire format (a product's serialized form is cached beside it by the
//! HTTP views, in a slot this module does not read).

use std::sync::{Arc, OnceLock};

use darkstore_geoinv::Millis;
use darkstore_geoinv::order::{OrderStatus, PaymentStatus};
use darkstore_geoinv::stock::{LineTotals, LotDelta};

#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub sku: Arc<str>,
    pub name: String,
    pub category: String,
    pub price_minor: i64,
    pub low_stock_threshold: i64,
    /// Filled once by whoever serializes this product (the views); products are replaced, never
    /// changed, so it never goes stale.
    pub wire: OnceLock<Box<str>>,
}

impl Product {
    pub fn new(sku: &str, name: String, category: String, price_minor: i64, low_stock_threshold: i64) -> Product {
        Product { sku: Arc::from(sku), name, category, price_minor, low_stock_threshold, wire: OnceLock::new() }
    }
}

/// A stock line as staff see it.
#[derive(Debug, Clone, PartialEq)]
pub struct LineView {
    pub sku: String,
    pub totals: LineTotals,
    pub low_stock: bool,
    pub next_expiry: Option<Millis>,
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
    pub payment_status: PaymentStatus,
    /// What the customer pays: the lines' prices times quantities, plus the delivery fee.
    pub total_minor: i64,
    /// What is owed back, once the payment is `refund_due` (or was refunded).
    pub refund_minor: Option<i64>,
    /// The 4-digit code the customer gives the rider at the door (None for orders placed before
    /// codes existed). Shown to the order's customer only.
    pub delivery_code: Option<String>,
    pub rider_id: Option<String>,
    pub eta_minutes: i64,
    /// Placement time plus the quote it was placed under.
    pub promised_by: Millis,
    /// The quote it was placed under (in memory only: orders read back from the database have
    /// none, and calibration skips them).
    pub quoted: Option<darkstore_geoinv::quote::Quote>,
    /// The delivery fee it was quoted, surge included (part of `total_minor`).
    pub delivery_fee_minor: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub hold_expires_at: Option<Millis>,
    pub lines: Vec<OrderLine>,
    /// The reservations the order holds while its status holds stock.
    pub holds: Vec<LotDelta>,
    /// When staff marked it packed (kept when a rider hands it back, so it returns to `packed`).
    pub packed_at: Option<Millis>,
}

impl Order {
    pub fn total_of(lines: &[OrderLine]) -> i64 {
        lines.iter().map(|l| l.qty * l.price_minor).sum()
    }
}

/// What the order was before a change.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderBefore {
    pub status: OrderStatus,
    pub payment_status: PaymentStatus,
    pub rider_id: Option<String>,
}

/// What a rider is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RiderStatus {
    Idle,
    ToStore,
    AtStore,
    Delivering,
}

impl RiderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RiderStatus::Idle => "idle",
            RiderStatus::ToStore => "to_store",
            RiderStatus::AtStore => "at_store",
            RiderStatus::Delivering => "delivering",
        }
    }
}

/// A drop-off of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOrder {
    pub id: String,
    pub lat: f64,
    pub lng: f64,
}

/// The work a rider has been given.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub store_id: String,
    /// Where the orders are picked up (lat, lng).
    pub pickup: (f64, f64),
    /// Orders still on the task, in delivery sequence.
    pub orders: Vec<TaskOrder>,
    /// Orders of the task already picked up.
    pub picked: Vec<String>,
    pub assigned_at: Millis,
    /// When the optimizer expects the rider at the store.
    pub pickup_eta: Millis,
    /// Predicted end of the task, and where (lat, lng).
    pub free_at: Millis,
    pub end: (f64, f64),
    /// Whether the rider was told of it: only a task the rider knows is published again when an
    /// order leaves it.
    pub sent: bool,
}

impl Task {
    pub fn holds(&self, order_id: &str) -> bool {
        self.orders.iter().any(|o| o.id == order_id)
    }

    pub fn order_ids(&self) -> impl Iterator<Item = &str> {
        self.orders.iter().map(|o| o.id.as_str())
    }
}

/// A registered rider and its live state (position, shift, status, task). Registration is
/// durable; the rest is re-sent by the rider within seconds after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct Rider {
    pub id: String,
    pub name: String,
    pub store_id: Option<String>,
    pub pos: Option<(f64, f64)>,
    /// The rider's own clock on its last position.
    pub ts: i64,
    /// Server time of the last message from the rider.
    pub seen_at: Millis,
    pub on_shift: bool,
    pub status: RiderStatus,
    /// Boxed: most riders have none, and an inline task would cost every rider its size.
    pub task: Option<Box<Task>>,
}

/// A store area's surge level, its smoothed pressure (demand over supply) and the delivery fee it
/// sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AreaState {
    pub level: usize,
    pub pressure: f64,
    pub fee_minor: i64,
}

/// Whether a store takes orders now.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenState {
    Open,
    /// Outside its hours; opens then (None: no opening hour in the coming week).
    Closed {
        opens_at: Option<Millis>,
    },
    Paused {
        reason: String,
    },
}
