//! Promises: what the server learns from finished legs, and the live ETA of every assigned order.
//!
//! An observer of the typed changes. From each order it sees:
//! - placed: what it was quoted (the estimate, the picking time by the priors, when it should be
//!   packed), and one more arrival at its store (the surge rule's demand);
//! - packed: the observed picking time against the priors' → the store's picking ratio;
//! - picked up: a rider's leg starts at the store;
//! - delivered: the leg from the store (or the rider's previous drop) to this door against the
//!   priors' ride plus hand-over → the store's riding ratio; the whole order's time against its
//!   estimate → the relative error whose 98th percentile is the promise's margin (orders
//!   delivered first on their route only: a bundle's later drops are the optimizer's to keep
//!   within their promises, see `dispatch.rs`; quotes made before the model was warm only until
//!   warm ones are delivered); on a route of two or more, its arrival against the one estimated
//!   at its assignment → the bundle slack the dispatcher keeps of every promise.
//!
//! The estimators are `darkstore_geoinv::calibrate` (bounded log-space means, a store shrunk
//! toward the city while it has few observations; an online quantile). The dispatch tick reads
//! [`Promises::calibrated`] into each store's load, so quotes, the optimizer's travel times and the
//! surge rule all use what was learned.
//!
//! Live ETA (`eta.rs`): on each position of a rider with a task, every order of the task gets
//! its `eta_at`, told on the order's feed where due.
//!
//! Runs on the task that made the change, under the rider's entry lock for positions: it never
//! calls back into `Riders`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, Weak};

use darkstore_geoinv::Millis;
use darkstore_geoinv::calibrate::{Bounds, LogEwma, RecentQuantile};
use darkstore_geoinv::order::OrderStatus;
use darkstore_geoinv::quote::Calibrated;
use darkstore_geoinv::travel::{TravelModel, distance_m};
use dashmap::DashMap;

use crate::changes::{Change, Changes, EtaReason, Observer};
use crate::model::{Order, Rider};
use crate::state::State;

type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
/// By rider: (when, where).
type Stamped = Mutex<FastMap<String, (Millis, (f64, f64))>>;

/// The share of promises to keep: the margin is this quantile of the estimate's relative error
/// over the last [`MARGIN_WINDOW`] orders delivered first on their route (at least
/// [`MARGIN_MIN`] of them), and a bundle's slack this quantile of its plans' slips. Above the
/// 95% target: a peak's errors grow faster than the last hundred deliveries show.
const PROMISE_QUANTILE: f64 = 0.98;
const MARGIN_WINDOW: usize = 100;
const MARGIN_MIN: usize = 10;
/// The margin before enough is observed (a server that has not seen a delivery promises twice
/// its estimate), and its bounds.
const MARGIN_PRIOR: f64 = 1.0;
const MARGIN_BOUNDS: (f64, f64) = (0.0, 3.0);
/// Observations of each of the city's ratios (picking, first mile, door) before its quotes count
/// toward the margin: a quote made from the priors says nothing about the model's error, and a
/// city that is ten times faster than configured would otherwise make the margin negative.
const WARM: u32 = 20;
/// Speed observations whose median starts the city's speed ratio: the estimator follows its first
/// observations closely (a city twice as slow is learned from its first legs), so a single one
/// from a device whose clock jumped would otherwise set every estimate in the city.
const GPS_START: usize = 5;

/// The city's ratios (observed ÷ modelled) and margin, and the observations behind each
/// (picking, riding, door, speed, first mile).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub pick: f64,
    pub ride: f64,
    pub door: f64,
    pub speed: f64,
    pub margin: f64,
    pub first: f64,
    pub observed: [u32; 5],
}

#[derive(Debug, Default)]
pub struct PromiseCounters {
    pub eta_messages: AtomicU64,
    pub delivered_on_time: AtomicU64,
    pub delivered_late: AtomicU64,
}

/// An open order, as the promises need it.
#[derive(Debug, Clone)]
struct Open {
    store_id: String,
    /// When picking could start (placement, or the payment's confirmation).
    start: Millis,
    /// The picking time by the priors alone, and as estimated.
    pick_prior_ms: Millis,
    pick_ms: Millis,
    /// The quote's wait for a rider, which rider to come free it counted on and how many
    /// riders served the store.
    rider_ms: Millis,
    rider_rank: u32,
    riders: u32,
    /// The first mile as quoted before its own ratio.
    first_base_ms: Millis,
    /// The door leg as quoted.
    door_ms: Millis,
    /// Quoted with a warm model (see [`WARM`]): such quotes' errors make the margin once there
    /// are enough of them.
    warm: bool,
    /// Its place in its rider's task and the task's size (0, 0 before a task).
    in_task: (usize, usize),
    /// When it was packed, assigned and picked up (for the log of a broken promise).
    packed_at: Option<Millis>,
    assigned_at: Option<Millis>,
    picked_at: Option<Millis>,
    /// When the optimizer expected its rider at the store, by the first task it was on.
    planned_pickup_at: Option<Millis>,
    /// Its arrival as estimated at its last assignment.
    planned_at: Option<Millis>,
    /// The estimate at placement (no margin), from `start`.
    estimate_ms: Millis,
    promised_by: Millis,
    /// Packed, or when it should be.
    ready_by: Millis,
    /// The current estimate of arrival, and what was last told.
    eta_at: Millis,
    told: Option<(Millis, Millis)>,
    /// Assigned to a rider (estimates are told only then).
    assigned: bool,
    /// A reason to tell the next estimate at once.
    pending: Option<EtaReason>,
}

#[derive(Debug, Default)]
struct StoreLearned {
    pick: LogEwma,
    ride: LogEwma,
    door: LogEwma,
    first: LogEwma,
}

#[derive(Debug)]
struct Learned {
    city_pick: LogEwma,
    city_ride: LogEwma,
    /// Riders' moving speed from consecutive positions, as a ratio of time to the priors' (the
    /// first thing learned: the city's riding ratio leans on it until legs are finished).
    city_gps: LogEwma,
    /// The first [`GPS_START`] speed observations, held until their median starts `city_gps`.
    gps_start: Vec<f64>,
    /// Pickup to door against the direct ride and hand-over (the quote's door leg).
    city_door: LogEwma,
    /// Placement to pickup against the quote's first mile.
    city_first: LogEwma,
    /// store id → what was learned there
    stores: FastMap<String, StoreLearned>,
    margin: RecentQuantile,
    /// The same, of quotes made before the model was warm: the margin until enough warm quotes
    /// are delivered. Over the last [`WARM`] of them only: cold quotes grow less wrong as the
    /// ratios learn, and the first ones (the worst) would otherwise pad every promise until the
    /// model is warm.
    margin_cold: RecentQuantile,
    /// The margin as of the last delivery (kept, not sorted again on every read).
    margin_now: f64,
    /// Orders on routes of two or more: delivered − arrival planned at assignment, ms.
    plan: RecentQuantile,
}

pub struct Promises {
    travel: TravelModel,
    handover_ms: Millis,
    bounds: Bounds,
    state: OnceLock<Weak<State>>,
    learned: Mutex<Learned>,
    open: DashMap<String, Open>,
    /// rider → (when its current leg started, where)
    legs: Stamped,
    /// rider → its last position while on a task (rider's clock, where)
    fixes: Stamped,
    /// rider → (task, when it entered the store's fence), while it is there
    at_store: Mutex<FastMap<String, (String, Millis)>>,
    /// store id → orders placed since the last [`Promises::take_arrivals`]
    arrivals: Mutex<FastMap<String, u32>>,
    pub counters: PromiseCounters,
}

impl Promises {
    pub fn new(travel: TravelModel, handover_ms: Millis) -> Promises {
        Promises {
            travel,
            handover_ms: handover_ms.max(0),
            bounds: Bounds::default(),
            state: OnceLock::new(),
            learned: Mutex::new(Learned {
                city_pick: LogEwma::default(),
                city_ride: LogEwma::default(),
                city_gps: LogEwma::default(),
                gps_start: Vec::with_capacity(GPS_START),
                city_door: LogEwma::default(),
                city_first: LogEwma::default(),
                stores: FastMap::default(),
                margin: RecentQuantile::new(MARGIN_WINDOW),
                margin_cold: RecentQuantile::new(WARM as usize),
                margin_now: MARGIN_PRIOR,
                plan: RecentQuantile::new(MARGIN_WINDOW),
            }),
            open: DashMap::new(),
            legs: Mutex::new(FastMap::default()),
            fixes: Mutex::new(FastMap::default()),
            at_store: Mutex::new(FastMap::default()),
            arrivals: Mutex::new(FastMap::default()),
            counters: PromiseCounters::default(),
        }
    }

    /// The state, for where stores are.
    pub fn set_state(&self, state: Weak<State>) {
        let _ = self.state.set(state);
    }

    fn store_at(&self, store_id: &str) -> Option<(f64, f64)> {
        let state = self.state.get()?.upgrade()?;
        state.store(store_id).map(|s| (s.lat, s.lng))
    }

    /// Riding time by the priors (no hand-over), ms.
    fn ride_prior(&self, from: (f64, f64), to: (f64, f64)) -> Millis {
        (self.travel.ride_minutes(distance_m(from.0, from.1, to.0, to.1)) * 60_000.0) as Millis
    }

    /// What has been learned for a store (`bundle` is the dispatcher's, left at 1 here).
    pub fn calibrated(&self, store_id: &str) -> Calibrated {
        let l = self.learned.lock().expect("learned lock");
        let city_ride = l.city_ride_log();
        // The door ratio leans on the riding ratio until pickups have been followed to doors.
        let city_door = l.city_door.shrunk_toward_log(city_ride, &self.bounds).ln();
        let b = &self.bounds;
        let (pick, ride, door, first) = match l.stores.get(store_id) {
            Some(s) => (
                s.pick.shrunk_toward(&l.city_pick, b),
                s.ride.shrunk_toward_log(city_ride, b),
                s.door.shrunk_toward_log(city_door, b),
                s.first.shrunk_toward(&l.city_first, b),
            ),
            None => (l.city_pick.factor(), city_ride.exp(), city_door.exp(), l.city_first.factor()),
        };
        // Never below 1: the first mile is learned at pickups 10–15 minutes after their quotes,
        // and a queue that filled since (a peak) makes it look shorter than modelled just as the
        // model's own queue and rider terms grow; a ratio below 1 would cut the peak's estimates.
        let first = first.max(1.0);
        Calibrated { pick, ride, door, first, margin: l.margin(), bundle: 1.0 }
    }

    /// What a bundle must leave of each of its orders' promises, ms: the [`PROMISE_QUANTILE`] of
    /// how much later than planned at their last assignment the last [`MARGIN_WINDOW`] orders
    /// delivered on routes of two or more arrived, once [`MARGIN_MIN`] are observed; never
    /// negative. None before: the dispatcher then keeps half the quote's margin.
    pub fn bundle_slack_ms(&self) -> Option<Millis> {
        let l = self.learned.lock().expect("learned lock");
        l.plan.value(PROMISE_QUANTILE, MARGIN_MIN).map(|q| q.max(0.0) as Millis)
    }

    /// Once a tick: the margin counts the orders still open that are already later than it. An
    /// open order first on its route (or waiting for one), quoted warm, whose time so far is
    /// further past its estimate than the delivered orders' quantile is certainly in the tail;
    /// left out, the margin would learn of a peak only from the orders delivered in it, a whole
    /// promise late.
    pub fn refresh_margin(&self, now: Millis) {
        let running: Vec<f64> = self
            .open
            .iter()
            .filter(|o| o.warm && o.in_task.0 <= 1 && o.estimate_ms > 0 && now > o.start)
            .map(|o| (now - o.start) as f64 / o.estimate_ms as f64 - 1.0)
            .collect();
        let mut l = self.learned.lock().expect("learned lock");
        let Some(base) = l.margin.value(PROMISE_QUANTILE, MARGIN_MIN) else { return };
        let tail: Vec<f64> = running.into_iter().filter(|&e| e > base).collect();
        let q = l.margin.value_with(PROMISE_QUANTILE, MARGIN_MIN, &tail).unwrap_or(base);
        l.margin_now = q.clamp(MARGIN_BOUNDS.0, MARGIN_BOUNDS.1);
    }

    /// The city's riding ratio (the optimizer's travel times are scaled by it).
    pub fn city_ride(&self) -> f64 {
        self.learned.lock().expect("learned lock").city_ride_log().exp()
    }

    /// What the city has learned, for `/metrics`.
    pub fn summary(&self) -> Summary {
        let l = self.learned.lock().expect("learned lock");
        let ride = l.city_ride_log();
        Summary {
            pick: l.city_pick.factor(),
            ride: ride.exp(),
            door: l.city_door.shrunk_toward_log(ride, &self.bounds),
            speed: l.city_gps.factor(),
            margin: l.margin(),
            first: l.city_first.factor(),
            observed: [
                l.city_pick.count(),
                l.city_ride.count(),
                l.city_door.count(),
                l.city_gps.count(),
                l.city_first.count(),
            ],
        }
    }

    /// Orders placed per store since the last call.
    pub fn take_arrivals(&self) -> FastMap<String, u32> {
        std::mem::take(&mut *self.arrivals.lock().expect("arrivals lock"))
    }

    /// When an open order should be packed (as quoted, or when it was).
    pub fn ready_by(&self, order_id: &str) -> Option<Millis> {
        self.open.get(order_id).map(|o| o.ready_by)
    }

    /// The current estimate of an open order's arrival.
    pub fn eta_at(&self, order_id: &str) -> Option<Millis> {
        self.open.get(order_id).map(|o| o.eta_at)
    }

    fn placed(&self, o: &Order) {
        let Some(q) = o.quoted else { return };
        self.open.insert(
            o.id.clone(),
            Open {
                store_id: o.store_id.clone(),
                start: o.created_at,
                pick_prior_ms: q.pick_prior_ms,
                pick_ms: q.pick_ms,
                rider_ms: q.rider_ms,
                rider_rank: q.rider_rank,
                riders: q.riders,
                first_base_ms: q.first_base_ms,
                door_ms: q.door_ms,
                warm: self.learned.lock().expect("learned lock").warm(),
                in_task: (0, 0),
                packed_at: None,
                assigned_at: None,
                planned_pickup_at: None,
                planned_at: None,
                picked_at: None,
                estimate_ms: q.estimate_ms,
                promised_by: o.promised_by,
                ready_by: o.created_at.saturating_add(q.pick_ms),
                eta_at: o.created_at.saturating_add(q.estimate_ms),
                told: None,
                assigned: false,
                pending: None,
            },
        );
        *self.arrivals.lock().expect("arrivals lock").entry(o.store_id.clone()).or_default() += 1;
    }

    /// Packed (staff may pack an order already assigned: its status stays, `packed_at` is set):
    /// the picking time observed against the priors'.
    fn packed(&self, o: &Order) {
        let Some(at) = o.packed_at else { return };
        let Some(mut open) = self.open.get_mut(&o.id) else { return };
        if open.packed_at.is_some() {
            return;
        }
        open.ready_by = at;
        open.packed_at = Some(at);
        if open.pick_prior_ms > 0 && at >= open.start {
            let ratio = (at - open.start) as f64 / open.pick_prior_ms as f64;
            let mut l = self.learned.lock().expect("learned lock");
            let b = self.bounds;
            l.city_pick.observe(ratio, &b);
            l.stores.entry(open.store_id.clone()).or_default().pick.observe(ratio, &b);
        }
    }

    fn changed(&self, o: &Order, from: OrderStatus) {
        let now = o.updated_at;
        self.packed(o);
        if o.status == from {
            return;
        }
        match o.status {
            OrderStatus::Confirmed if from == OrderStatus::PendingPayment => {
                if let Some(mut open) = self.open.get_mut(&o.id) {
                    // Picking starts now; the quote moves with it.
                    open.start = now;
                    open.ready_by = now.saturating_add(open.pick_ms);
                    open.eta_at = now.saturating_add(open.estimate_ms);
                }
            }
            OrderStatus::Confirmed | OrderStatus::Packed if from == OrderStatus::Assigned => {
                // Handed back: no rider, no live estimate and no place on a route until the next.
                if let Some(mut open) = self.open.get_mut(&o.id) {
                    open.assigned = false;
                    open.in_task = (0, 0);
                    open.told = None;
                    open.pending = None;
                }
            }
            OrderStatus::Assigned => {
                if let Some(mut open) = self.open.get_mut(&o.id) {
                    open.assigned = true;
                    open.assigned_at = Some(now);
                    open.pending = Some(EtaReason::Assigned);
                }
            }
            OrderStatus::PickedUp => {
                if let Some(mut open) = self.open.get_mut(&o.id) {
                    open.picked_at = Some(now);
                    open.pending = Some(EtaReason::PickedUp);
                    if open.first_base_ms > 0 && now >= open.start {
                        let ratio = (now - open.start) as f64 / open.first_base_ms as f64;
                        let b = self.bounds;
                        let mut l = self.learned.lock().expect("learned lock");
                        l.city_first.observe(ratio, &b);
                        l.stores.entry(open.store_id.clone()).or_default().first.observe(ratio, &b);
                    }
                }
                if let (Some(rider), Some(store)) = (&o.rider_id, self.store_at(&o.store_id)) {
                    self.legs.lock().expect("legs lock").insert(rider.clone(), (now, store));
                }
            }
            OrderStatus::Delivered => self.delivered(o, now),
            OrderStatus::Cancelled | OrderStatus::Expired => {
                self.open.remove(&o.id);
            }
            _ => {}
        }
    }

    fn delivered(&self, o: &Order, now: Millis) {
        let Some((_, open)) = self.open.remove(&o.id) else { return };
        let drop = (o.lat, o.lng);
        if let (Some(picked), Some(store)) = (open.picked_at, self.store_at(&open.store_id)) {
            let prior = self.ride_prior(store, drop).saturating_add(self.handover_ms);
            if prior > 0 && now >= picked {
                let ratio = (now - picked) as f64 / prior as f64;
                let b = self.bounds;
                let mut l = self.learned.lock().expect("learned lock");
                l.city_door.observe(ratio, &b);
                l.stores.entry(open.store_id.clone()).or_default().door.observe(ratio, &b);
            }
        }
        let leg = o.rider_id.as_ref().and_then(|r| {
            let mut legs = self.legs.lock().expect("legs lock");
            let leg = legs.get(r).copied();
            legs.insert(r.clone(), (now, drop));
            leg
        });
        let b = self.bounds;
        let mut l = self.learned.lock().expect("learned lock");
        if let Some((t0, from)) = leg {
            let prior = self.ride_prior(from, drop).saturating_add(self.handover_ms);
            if prior > 0 && now >= t0 {
                let ratio = (now - t0) as f64 / prior as f64;
                l.city_ride.observe(ratio, &b);
                l.stores.entry(open.store_id.clone()).or_default().ride.observe(ratio, &b);
            }
        }
        if let (Some(planned), true) = (open.planned_at, open.in_task.1 >= 2) {
            l.plan.observe((now - planned) as f64);
        }
        // The margin covers the model's error, not a bundle's earlier drops: the optimizer
        // bundles an order behind others only when its promise still holds.
        if open.estimate_ms > 0 && open.in_task.0 <= 1 {
            let e = (now - open.start) as f64 / open.estimate_ms as f64 - 1.0;
            if open.warm {
                l.margin.observe(e)
            } else {
                l.margin_cold.observe(e)
            }
            let q = l
                .margin
                .value(PROMISE_QUANTILE, MARGIN_MIN)
                .or_else(|| l.margin_cold.value(PROMISE_QUANTILE, MARGIN_MIN))
                .unwrap_or(MARGIN_PRIOR);
            l.margin_now = q.clamp(MARGIN_BOUNDS.0, MARGIN_BOUNDS.1);
        }
        let since = |t: Option<Millis>| t.map(|t| t - open.start);
        tracing::debug!(
            order = %o.id,
            store = %open.store_id,
            late_ms = now - open.promised_by,
            actual_ms = now - open.start,
            estimate_ms = open.estimate_ms,
            quoted_pick_ms = open.pick_ms,
            quoted_rider_ms = open.rider_ms,
            quoted_rider_rank = open.rider_rank,
            quoted_riders = open.riders,
            quoted_door_ms = open.door_ms,
            task_pos = open.in_task.0,
            task_size = open.in_task.1,
            warm = open.warm,
            packed_ms = ?since(open.packed_at),
            assigned_ms = ?since(open.assigned_at),
            picked_ms = ?since(open.picked_at),
            planned_pickup_ms = ?since(open.planned_pickup_at),
            "delivered"
        );
        let counter =
            if now <= open.promised_by { &self.counters.delivered_on_time } else { &self.counters.delivered_late };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A busy rider's moving speed, from its last two positions.
    fn observe_speed(&self, rider: &Rider) {
        let Some(pos) = rider.pos else { return };
        let prev = self.fixes.lock().expect("fixes lock").insert(rider.id.clone(), (rider.ts, pos));
        let Some((ts, from)) = prev else { return };
        let (dt, metres) = (rider.ts - ts, distance_m(from.0, from.1, pos.0, pos.1));
        // Moving (not waiting at a door), between fixes close enough to be one straight stretch.
        if !(1..=30_000).contains(&dt) || !(5.0..=2_000.0).contains(&metres) {
            return;
        }
        let prior = self.travel.ride_minutes(metres) * 60_000.0;
        if prior > 0.0 {
            let mut l = self.learned.lock().expect("learned lock");
            let ratio = dt as f64 / prior;
            if l.city_gps.count() > 0 {
                l.city_gps.observe(ratio, &self.bounds);
            } else {
                l.gps_start.push(ratio);
                if l.gps_start.len() >= GPS_START {
                    let mut start = std::mem::take(&mut l.gps_start);
                    start.sort_unstable_by(f64::total_cmp);
                    l.city_gps.observe(start[start.len() / 2], &self.bounds);
                }
            }
        }
    }
}

impl Learned {
    fn margin(&self) -> f64 {
        self.margin_now
    }

    /// Every ratio of the quote has been observed [`WARM`] times.
    fn warm(&self) -> bool {
        [&self.city_pick, &self.city_first, &self.city_door].iter().all(|e| e.count() >= WARM)
    }

    /// The city's riding ratio (log): finished legs, shrunk toward the riders' moving speed while
    /// there are few of them.
    fn city_ride_log(&self) -> f64 {
        self.city_ride.shrunk_toward(&self.city_gps, &Bounds::default()).ln()
    }
}

impl Observer for Promises {
    fn observe(&self, change: &Change<'_>, hub: &Changes) {
        match change {
            Change::Order { order, before: None } => self.placed(order),
            Change::Order { order, before: Some(b) } => self.changed(order, b.status),
            Change::Rider { rider } => self.rider(rider, hub),
            Change::Arrival(a) if a.place == crate::changes::Place::Store => {
                let mut at_store = self.at_store.lock().expect("at-store lock");
                if a.entered {
                    at_store.insert(a.rider.to_owned(), (a.rider_task.to_owned(), a.at));
                } else {
                    at_store.remove(a.rider);
                }
            }
            _ => {}
        }
    }
}

mod eta;
#[cfg(test)]
mod tests;
