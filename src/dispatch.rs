//! The dispatch tick: every `--dispatch-tick-ms`, silent riders' unpicked orders go back, open
//! orders and candidate riders go to `darkstore_dispatch::plan_tick`, each plan's orders move to
//! `assigned` together (one group commit), and the rider is sent its task.
//!
//! The tick also refreshes every store's load for the quote: its queues, when each of its riders
//! can be there, what has been learned of it (`promises.rs`), and its surge fee
//! (`darkstore_geoinv::surge`). The optimizer's travel and service times are scaled by the city's
//! observed riding ratio; an order is ready when packed or when its quote said it would be. Its
//! deadline stays the service goal (`--promise-minutes` after placement), not its padded promise
//! (a long promise must not make dispatch lazier); its promise, less what bundles' plans have been
//! seen to slip (`Promises::bundle_slack_ms`; half the quote's margin until enough bundles are
//! delivered), is what a bundle must keep and what lateness is weighed against on top
//! (`promise_weight`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use darkstore_dispatch::{GeoTravel, OrderIn, Params, Pt, RiderIn, plan_tick};
use darkstore_geoinv::Millis;
use darkstore_geoinv::order::OrderStatus;
use darkstore_geoinv::quote::StoreLoad;
use darkstore_geoinv::surge::{Demand, Surge, SurgeRule};
use darkstore_geoinv::travel::distance_m;
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::changes::Change;
use crate::ingest::Ingest;
use crate::model::{Task, TaskOrder};
use crate::promises::Promises;
use crate::riders::Riders;
use crate::state::State;

type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

#[derive(Debug, Default)]
pub struct DispatchCounters {
    pub ticks: AtomicU64,
    pub tick_micros: AtomicU64,
    pub last_tick_micros: AtomicU64,
    pub tasks: AtomicU64,
    pub orders_assigned: AtomicU64,
    pub orders_bundled: AtomicU64,
    pub surge_changes: AtomicU64,
}

/// What the tick keeps between ticks for the quote and the surge rule.
#[derive(Debug, Default)]
struct Between {
    last_tick: Option<Millis>,
    /// Orders per trip, smoothed over ticks that assigned something.
    bundle: Option<f64>,
    /// Orders placed per ms, smoothed, by store index.
    arrival_rate: FastMap<u32, f64>,
    surge: FastMap<u32, Surge>,
}

pub use crate::model::AreaState;

/// How a node may use a rider (cluster mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// Its own: the rider's home store is in a region held here, or its task is from here.
    Home,
    /// Another region's (or no region's) idle rider: usable within the border distance of a
    /// store with orders here.
    Border,
    /// Not here: another node gives it tasks.
    No,
}

/// Cluster mode: which riders a node may give tasks to, and the claim that makes a task its own
/// (`cluster::claims`).
pub trait RiderArbiter: Send + Sync {
    fn usable(&self, rider: &crate::model::Rider) -> Usable;
    /// How far from a store with orders here a border rider may be (m).
    fn border_m(&self) -> f64;
    /// Claims the rider for a task of `store_id`: false when another node has it.
    fn claim<'a>(&'a self, rider: &'a str, store_id: &'a str) -> BoxFuture<'a, bool>;
    /// Lets a claim go (its assignment did not happen).
    fn release<'a>(&'a self, rider: &'a str) -> BoxFuture<'a, ()>;
    /// Lets go the claims of riders whose tasks have ended.
    fn release_idle<'a>(&'a self, riders: &'a Riders) -> BoxFuture<'a, ()>;
}

pub struct Dispatcher {
    pub state: Arc<State>,
    pub riders: Arc<Riders>,
    pub ingest: Arc<Ingest>,
    pub promises: Arc<Promises>,
    pub surge_rule: SurgeRule,
    between: Mutex<Between>,
    pub params: Params,
    pub travel: GeoTravel,
    /// Busy riders free within this long are offered to the optimizer.
    pub horizon_ms: Millis,
    pub picking_ms: Millis,
    pub promise_ms: Millis,
    pub counters: DispatchCounters,
    next_task: AtomicU64,
    /// Cluster mode: the riders this node may give tasks to, and their claims.
    arbiter: std::sync::OnceLock<Arc<dyn RiderArbiter>>,
}

/// An order the tick considers, with what the task needs of it.
struct Candidate {
    order: TaskOrder,
    store_id: String,
    pickup: (f64, f64),
}

impl Dispatcher {
    pub fn new(ingest: Arc<Ingest>, promises: Arc<Promises>, surge_rule: SurgeRule, tick_ms: Millis) -> Dispatcher {
        let state = ingest.state.clone();
        let travel_model = state.config.travel;
        Dispatcher {
            params: Params {
                tick_ms,
                promise_weight: 8.0,
                urgency_weight: 6.0,
                // A city-scale tick's stores and plans on every core (the same plans as on one).
                threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                ..Params::default()
            },
            travel: GeoTravel { speed_mps: travel_model.rider_speed_mps, detour: travel_model.detour_factor },
            horizon_ms: 10 * 60_000,
            picking_ms: (travel_model.picking_minutes * 60_000.0) as Millis,
            promise_ms: (travel_model.promise_minutes * 60_000.0) as Millis,
            riders: ingest.riders.clone(),
            state,
            ingest,
            promises,
            surge_rule,
            between: Mutex::new(Between::default()),
            counters: DispatchCounters::default(),
            next_task: AtomicU64::new(1),
            arbiter: std::sync::OnceLock::new(),
        }
    }

    /// Cluster mode: riders are given tasks here as `arbiter` says (set once).
    pub fn set_arbiter(&self, arbiter: Arc<dyn RiderArbiter>) {
        let _ = self.arbiter.set(arbiter);
    }

    fn usable(&self, rider: &crate::model::Rider) -> Usable {
        self.arbiter.get().map_or(Usable::Home, |a| a.usable(rider))
    }

    /// One tick: hand back orders of silent riders, plan, commit and send tasks.
    pub async fn tick(&self) {
        let started = Instant::now();
        let now = self.state.now();
        self.ingest.retry_hand_backs().await;
        if let Some(arbiter) = self.arbiter.get() {
            // Events heard while an order's region had no owner here, now that it has.
            self.ingest.replay_parked().await;
            arbiter.release_idle(&self.riders).await;
        }
        for (rider, orders) in self.riders.sweep_silent(now) {
            for o in orders {
                self.ingest.hand_back(&o, &rider).await;
            }
        }
        let ids = self.state.dispatchable();
        // Every store has a load, so every quote reads what was learned.
        self.promises.refresh_margin(now);
        let slack = self.promises.bundle_slack_ms();
        let mut loads: FastMap<u32, StoreLoad> = FastMap::default();
        for store in self.state.stores() {
            let load = loads.entry(store.idx.0).or_default();
            load.calibrated = self.promises.calibrated(&store.id);
        }
        let ride_f = self.promises.city_ride();
        let scaled = |ms: Millis| (ms as f64 * ride_f) as Millis;
        let travel = GeoTravel { speed_mps: self.travel.speed_mps / ride_f, detour: self.travel.detour };
        let params = Params {
            pickup_service_ms: scaled(self.params.pickup_service_ms),
            dropoff_service_ms: scaled(self.params.dropoff_service_ms),
            ..self.params.clone()
        };
        let mut orders_in = Vec::with_capacity(ids.len());
        let mut meta: Vec<Candidate> = Vec::with_capacity(ids.len());
        let mut stores: Vec<(f64, f64)> = Vec::new();
        for id in &ids {
            let Some(order) = self.state.order(id) else { continue };
            let o = order.lock().await.clone();
            if !matches!(o.status, OrderStatus::Confirmed | OrderStatus::Packed) {
                continue;
            }
            let Some(store) = self.state.store(&o.store_id) else { continue };
            let load = loads.entry(store.idx.0).or_default();
            load.awaiting_rider += 1;
            if o.status == OrderStatus::Confirmed && o.packed_at.is_none() {
                load.to_pick += 1;
            }
            stores.push((store.lat, store.lng));
            orders_in.push(OrderIn {
                key: meta.len(),
                store: store.idx.0,
                pickup: Pt::new(store.lng, store.lat),
                drop: Pt::new(o.lng, o.lat),
                placed_at: o.created_at,
                ready_at: o
                    .packed_at
                    .or_else(|| self.promises.ready_by(&o.id))
                    .unwrap_or(o.created_at + self.picking_ms),
                // The service goal, not the (padded) promise: a promise quoted long must not make
                // the optimizer lazier, or promises would feed on themselves.
                deadline: o.created_at + self.promise_ms,
                // What the customer was told, less what a bundle's plan has been seen to slip
                // (half the quote's margin until enough bundles are delivered): a bundle keeps
                // every order within that.
                promise: o.promised_by
                    - slack.unwrap_or_else(|| o.quoted.map_or(0, |q| (q.eta_ms - q.estimate_ms).max(0) / 2)),
            });
            meta.push(Candidate {
                order: TaskOrder { id: o.id.clone(), lat: o.lat, lng: o.lng },
                store_id: store.id.clone(),
                pickup: (store.lat, store.lng),
            });
        }
        self.riders_at_stores(&mut loads, now);
        self.surge(&mut loads, now);
        self.state.set_loads(loads);
        if orders_in.is_empty() {
            return;
        }
        let mut candidates = self.riders.candidates(&stores, now, self.horizon_ms);
        if let Some(arbiter) = self.arbiter.get() {
            let mut pickups = stores.clone();
            pickups.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            pickups.dedup();
            let border_m = arbiter.border_m();
            candidates.retain(|(id, pos, _)| match self.riders.get(id).map(|r| arbiter.usable(&r)) {
                Some(Usable::Home) => true,
                Some(Usable::Border) => pickups.iter().any(|s| distance_m(s.0, s.1, pos.0, pos.1) <= border_m),
                Some(Usable::No) | None => false,
            });
        }
        let riders_in: Vec<RiderIn> = candidates
            .iter()
            .enumerate()
            .map(|(i, (_, (lat, lng), free_at))| RiderIn {
                key: i,
                pos: Pt::new(*lng, *lat),
                free_at: *free_at,
                off_at: Millis::MAX,
            })
            .collect();
        // A city-scale tick is tens of milliseconds of CPU (on every core): off the async
        // workers, so the requests and feeds they carry do not wait behind it.
        let plans = tokio::task::spawn_blocking(move || plan_tick(now, &orders_in, &riders_in, &params, &travel))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "planning the tick failed; nothing assigned this tick");
                Vec::new()
            });
        if !plans.is_empty() {
            let per_trip = plans.iter().map(|p| p.orders.len()).sum::<usize>() as f64 / plans.len() as f64;
            let mut b = self.between.lock().expect("between lock");
            b.bundle = Some(b.bundle.map_or(per_trip, |x| x + 0.1 * (per_trip - x)));
        }
        // Cluster mode: each plan's rider is claimed first (one node's task at a time), all the
        // tick's claims at once (a claim is a NATS round trip or two).
        let claimed: Vec<bool> = match self.arbiter.get() {
            None => vec![true; plans.len()],
            Some(arbiter) => {
                let claims = plans.iter().map(|plan| {
                    let (rider, store) = (&candidates[plan.rider].0, &meta[plan.orders[0]].store_id);
                    async move {
                        // Busy here (a plan for when it is free): not now.
                        if self.riders.get(rider).is_none_or(|r| r.task.is_some()) {
                            return false;
                        }
                        arbiter.claim(rider, store).await
                    }
                });
                futures_util::future::join_all(claims).await
            }
        };
        for (plan, claimed) in plans.into_iter().zip(claimed) {
            if !claimed {
                continue;
            }
            let rider = candidates[plan.rider].0.clone();
            let first = &meta[plan.orders[0]];
            let task = Task {
                id: format!("t{}-{}", now, self.next_task.fetch_add(1, Ordering::Relaxed)),
                store_id: first.store_id.clone(),
                pickup: first.pickup,
                orders: plan.orders.iter().map(|&k| meta[k].order.clone()).collect(),
                picked: Vec::new(),
                assigned_at: now,
                pickup_eta: plan.pickup_at,
                free_at: plan.free_at,
                end: (plan.end.y, plan.end.x),
                sent: false,
            };
            let task_id = task.id.clone();
            let order_ids: Vec<String> = task.order_ids().map(str::to_owned).collect();
            if !self.riders.assign(&rider, task, now) {
                if let Some(arbiter) = self.arbiter.get() {
                    arbiter.release(&rider).await;
                }
                continue;
            }
            // All orders of the task move to `assigned` together (one group commit).
            let mut commits = JoinSet::new();
            for id in order_ids {
                let state = self.state.clone();
                let rider = rider.clone();
                commits.spawn(async move {
                    let r = state
                        .transition(&id, OrderStatus::Assigned, Some(rider), |o| {
                            matches!(o.status, OrderStatus::Confirmed | OrderStatus::Packed)
                        })
                        .await;
                    (id, r)
                });
            }
            while let Some(Ok((id, r))) = commits.join_next().await {
                if let Err(e) = r {
                    tracing::debug!(order = %id, ?e, "assignment not applied");
                    self.riders.leave_task(&rider, &id, now);
                }
            }
            // What is left of the task (an order may also have been cancelled meanwhile).
            let Some(sent) = self.riders.send_task(&rider, &task_id) else {
                if let Some(arbiter) = self.arbiter.get() {
                    arbiter.release(&rider).await;
                }
                continue;
            };
            let n = sent.orders.len() as u64;
            self.counters.tasks.fetch_add(1, Ordering::Relaxed);
            self.counters.orders_assigned.fetch_add(n, Ordering::Relaxed);
            if n > 1 {
                self.counters.orders_bundled.fetch_add(n, Ordering::Relaxed);
            }
            tracing::info!(%rider, task = %task_id, orders = n, "task assigned");
        }
        let micros = started.elapsed().as_micros() as u64;
        self.counters.ticks.fetch_add(1, Ordering::Relaxed);
        self.counters.tick_micros.fetch_add(micros, Ordering::Relaxed);
        self.counters.last_tick_micros.store(micros, Ordering::Relaxed);
    }
}

impl Dispatcher {
    /// For every store, when each rider serving it can be there: a rider idle now plus the ride
    /// from where it is; a busy one at the end of its task plus the ride back. A rider serves the
    /// store it is registered with, else the store of its task, else the store serving where it is.
    fn riders_at_stores(&self, loads: &mut FastMap<u32, StoreLoad>, now: Millis) {
        for r in self.riders.all(None) {
            if !r.on_shift || now - r.seen_at > self.riders.silence_ms || self.usable(&r) == Usable::No {
                continue;
            }
            let (from, free_at) = match (&r.task, r.pos) {
                // The task's end as planned, or later if its last order's live estimate says so
                // (a rider running late in a peak comes back late).
                (Some(t), _) => {
                    let live = t.orders.last().and_then(|o| self.promises.eta_at(&o.id)).unwrap_or(0);
                    (t.end, t.free_at.max(live).max(now))
                }
                (None, Some(pos)) => (pos, now),
                (None, None) => continue,
            };
            let store = r
                .store_id
                .as_deref()
                .and_then(|s| self.state.store(s))
                .or_else(|| r.task.as_ref().and_then(|t| self.state.store(&t.store_id)))
                .or_else(|| self.state.serving(from.0, from.1).ok().flatten().map(|(s, _)| s));
            let Some(store) = store else { continue };
            let load = loads.entry(store.idx.0).or_default();
            let back = (self.state.ride_ms(from, (store.lat, store.lng)) as f64 * load.calibrated.ride) as Millis;
            load.riders_at_store.push(free_at.saturating_add(back));
        }
        for load in loads.values_mut() {
            load.riders_at_store.sort_unstable();
        }
    }
}

impl Dispatcher {
    /// Each store's bundling, arrival rate and surge level: `pressure = (waiting + arrivals
    /// expected over a trip cycle) ÷ (bundle × riders who can be at the store within a cycle)`,
    /// a cycle being the quote's round trip as calibrated.
    fn surge(&self, loads: &mut FastMap<u32, StoreLoad>, now: Millis) {
        let arrivals = self.promises.take_arrivals();
        let mut b = self.between.lock().expect("between lock");
        let dt = b.last_tick.map_or(0, |t| now - t);
        b.last_tick = Some(now);
        let bundle = b.bundle.unwrap_or(1.0).max(1.0);
        for store in self.state.stores() {
            let Some(load) = loads.get_mut(&store.idx.0) else { continue };
            load.calibrated.bundle = bundle;
            let rate = b.arrival_rate.entry(store.idx.0).or_insert(0.0);
            if dt > 0 {
                let placed = f64::from(arrivals.get(&store.id).copied().unwrap_or(0));
                *rate += 0.1 * (placed / dt as f64 - *rate);
            }
            let cycle = self.state.config.quote.cycle_ms as f64 * load.calibrated.ride;
            let within = now.saturating_add(cycle as Millis);
            let demand = Demand {
                waiting: f64::from(load.awaiting_rider),
                expected: *rate * cycle,
                riders: load.riders_at_store.iter().filter(|t| **t <= within).count() as f64,
                bundle,
            };
            let surge = b.surge.entry(store.idx.0).or_default();
            if let Some(level) = surge.step(demand.pressure(), now, &self.surge_rule) {
                self.counters.surge_changes.fetch_add(1, Ordering::Relaxed);
                let area = AreaState { level, pressure: surge.smoothed, fee_minor: self.surge_rule.fee(level) };
                tracing::info!(
                    store = %store.id,
                    level,
                    fee_minor = area.fee_minor,
                    pressure = area.pressure,
                    "delivery fee changed"
                );
                self.state.changes().emit(&Change::Area { store_id: &store.id, area });
            }
            load.delivery_fee_minor = self.surge_rule.fee(surge.level);
        }
    }

    /// Orders per trip, as the optimizer has been bundling them (1 before any trip).
    pub fn bundle(&self) -> f64 {
        self.between.lock().expect("between lock").bundle.unwrap_or(1.0)
    }

    /// A store's surge state (None before the first tick).
    pub fn area_of(&self, store: u32) -> Option<AreaState> {
        let b = self.between.lock().expect("between lock");
        b.surge.get(&store).map(|s| AreaState {
            level: s.level,
            pressure: s.smoothed,
            fee_minor: self.surge_rule.fee(s.level),
        })
    }

    /// Each store's surge state, by store index.
    pub fn areas(&self) -> Vec<(u32, AreaState)> {
        let b = self.between.lock().expect("between lock");
        let mut out: Vec<(u32, AreaState)> = b
            .surge
            .iter()
            .map(|(idx, s)| {
                (*idx, AreaState { level: s.level, pressure: s.smoothed, fee_minor: self.surge_rule.fee(s.level) })
            })
            .collect();
        out.sort_unstable_by_key(|(idx, _)| *idx);
        out
    }
}

/// Runs the tick every `period` until `stop` turns true.
pub fn spawn(
    dispatcher: Arc<Dispatcher>,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => dispatcher.tick().await,
                _ = stop.changed() => break,
            }
        }
    })
}
