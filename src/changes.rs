//! Typed changes, and the hub that hands them to whoever reacts.
//!
//! The state and the riders say *what* changed, in domain terms; they never know who listens or
//! how it is shown. Observers attached at start-up, in order: the riders (an order that leaves a
//! rider's task before pickup is taken off the task, and the task is sent again), the geofences
//! (`geofence.rs`: arrivals at stores and doors, emitted as `Arrival`), the promises
//! (`promises.rs`: calibration and live ETAs, which it emits as `Eta` changes), the top picks and
//! the publisher (`publish.rs`, the one module that knows WebSocket topics, MQTT topics and their
//! JSON). Observers run synchronously, in the order attached, on the task that made the change,
//! after the change is durable: by the time a request is answered, every reaction to it has run.
//! Observers may emit further changes through the hub they are handed.

use std::sync::{OnceLock, Weak};

use darkstore_geoinv::Millis;
use darkstore_geoinv::area::StoreIdx;

use crate::model::{AreaState, LineView, Order, OrderBefore, Product, Rider, Task};

/// A SKU that became available or unavailable at a store.
#[derive(Debug, Clone)]
pub struct Crossing {
    pub product: Option<std::sync::Arc<Product>>,
    pub sku: String,
    pub available: i64,
    pub now_available: bool,
}

/// Something that changed.
#[derive(Debug)]
pub enum Change<'a> {
    /// An order was placed (`before` is None) or changed.
    Order { order: &'a Order, before: Option<OrderBefore> },
    /// Stock lines of a store changed.
    Stock { store_id: &'a str, store: StoreIdx, lines: &'a [LineView], crossings: &'a [Crossing], now: Millis },
    /// A rider's live state changed (position, shift, status or task). For a position (the
    /// hottest path) it is emitted while the rider's entry is locked, without a copy: observers
    /// of it must not call back into `Riders`.
    Rider { rider: &'a Rider },
    /// A rider's task was given or changed: the rider must be told. A task with no orders left
    /// is withdrawn.
    Task { rider: &'a str, task: &'a Task },
    /// A rider entered or left the fence of its store or of a door.
    Arrival(Arrival<'a>),
    /// A store area's surge level changed.
    Area { store_id: &'a str, area: AreaState },
    /// An order's estimated arrival changed and is due to be told.
    Eta { order_id: &'a str, store_id: &'a str, eta_at: Millis, promised_by: Millis, reason: EtaReason },
}

/// Where a fence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Store,
    Door,
}

impl Place {
    pub fn as_str(self) -> &'static str {
        match self {
            Place::Store => "store",
            Place::Door => "door",
        }
    }
}

/// A rider entering or leaving a fence: its store's (for the orders it is to pick up there) or an
/// order's door.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub rider: &'a str,
    /// The rider's task.
    pub rider_task: &'a str,
    pub store_id: &'a str,
    pub orders: &'a [String],
    pub place: Place,
    pub entered: bool,
    /// When (the rider's clock on the fix).
    pub at: Millis,
}

/// Why an estimate is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtaReason {
    Assigned,
    PickedUp,
    Moving,
}

impl EtaReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EtaReason::Assigned => "assigned",
            EtaReason::PickedUp => "picked_up",
            EtaReason::Moving => "moving",
        }
    }
}

/// Reacts to changes.
pub trait Observer: Send + Sync {
    fn observe(&self, change: &Change<'_>, hub: &Changes);
}

/// Hands every change to the observers. Holds them weakly: their owners keep them alive, and no
/// reference cycle keeps the state alive past shutdown.
#[derive(Default)]
pub struct Changes {
    observers: OnceLock<Vec<Weak<dyn Observer>>>,
}

impl Changes {
    pub fn new() -> Changes {
        Changes::default()
    }

    /// Attaches the observers, once, in the order they run.
    pub fn attach(&self, observers: Vec<Weak<dyn Observer>>) {
        if self.observers.set(observers).is_err() {
            tracing::error!("observers attached twice; the second set is ignored");
        }
    }

    pub fn emit(&self, change: &Change<'_>) {
        for o in self.observers.get().into_iter().flatten() {
            if let Some(o) = o.upgrade() {
                o.observe(change, self);
            }
        }
    }
}
