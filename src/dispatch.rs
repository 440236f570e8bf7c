//! The real-time side of dispatch: the tick that runs the optimizer on live state, and the
//! workers that turn rider messages (MQTT or HTTP) into state changes.
//!
//! Positions and shifts are applied inline by the ingest worker (no IO). Events change orders
//! durably, so they go through a second, sequential worker: a rider's `picked_up` is applied before
//! its `delivered`, and a slow commit never delays positions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use darkstore_dispatch::{GeoTravel, OrderIn, Params, Pt, RiderIn, plan_tick};
use darkstore_geoinv::Millis;
use darkstore_geoinv::area::{PartitionKey, cell_of};
use darkstore_geoinv::order::OrderStatus;
use rumqttc::QoS;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::fleet::{Drop, Event, Fleet, Location, Shift, Task};
use crate::mqtt::{Incoming, Mqtt};
use crate::state::{State, TransitionError, now_ms};

#[derive(Debug, Default)]
pub struct DispatchCounters {
    pub ticks: AtomicU64,
    pub tick_micros: AtomicU64,
    pub last_tick_micros: AtomicU64,
    pub tasks: AtomicU64,
    pub orders_assigned: AtomicU64,
    pub orders_bundled: AtomicU64,
    pub handed_back: AtomicU64,
}

pub struct Dispatcher {
    pub state: Arc<State>,
    pub fleet: Arc<Fleet>,
    pub mqtt: Option<Mqtt>,
    pub params: Params,
    pub travel: GeoTravel,
    /// Busy riders free within this long are offered to the optimizer.
    pub horizon_ms: Millis,
    pub picking_ms: Millis,
    pub promise_ms: Millis,
    pub counters: DispatchCounters,
    next_task: AtomicU64,
}

impl Dispatcher {
    pub fn new(state: Arc<State>, fleet: Arc<Fleet>, mqtt: Option<Mqtt>, tick_ms: Millis) -> Dispatcher {
        let travel_model = state.config.travel;
        Dispatcher {
            params: Params { tick_ms, ..Params::default() },
            travel: GeoTravel { speed_mps: travel_model.rider_speed_mps, detour: travel_model.detour_factor },
            horizon_ms: 10 * 60_000,
            picking_ms: (travel_model.picking_minutes * 60_000.0) as Millis,
            promise_ms: (travel_model.promise_minutes * 60_000.0) as Millis,
            state,
            fleet,
            mqtt,
            counters: DispatchCounters::default(),
            next_task: AtomicU64::new(1),
        }
    }

    /// Publishes a rider's state to whoever watches it: `riders` (admins), its store's
    /// `store/{id}`, and `order/{id}` for the orders it carries. Positions coalesce per rider.
    pub fn rider_update(&self, rider: &str) {
        let feeds = &self.state.feeds;
        let to_riders = feeds.has_subscribers("riders");
        let store_id = self.state.rider(rider).and_then(|r| r.store_id);
        let store_topic = store_id.as_ref().map(|s| format!("store/{s}")).filter(|t| feeds.has_subscribers(t));
        let Some(live) = self.fleet.get(rider) else { return };
        let order_topics: Vec<String> = live
            .task
            .iter()
            .flat_map(|t| t.orders.iter())
            .map(|o| format!("order/{o}"))
            .filter(|t| feeds.has_subscribers(t))
            .collect();
        if !to_riders && store_topic.is_none() && order_topics.is_empty() {
            return;
        }
        let json = crate::views::rider_json(rider, store_id.as_deref(), &live);
        if to_riders {
            feeds.publish_latest("riders", "rider", rider, &json);
        }
        if let Some(t) = store_topic {
            feeds.publish_latest(&t, "rider", rider, &json);
        }
        for t in order_topics {
            feeds.publish_latest(&t, "rider_position", rider, &json);
        }
    }

    /// Puts an order a rider will not deliver back for reassignment.
    async fn hand_back(&self, order_id: &str, rider: &str) {
        let Some(order) = self.state.order(order_id) else { return };
        let back = if order.lock().await.packed_at.is_some() { OrderStatus::Packed } else { OrderStatus::Confirmed };
        let rider_owned = rider.to_owned();
        match self.state.transition(order_id, back, None, |o| o.rider_id.as_deref() == Some(&rider_owned)).await {
            Ok(_) => {
                self.counters.handed_back.fetch_add(1, Ordering::Relaxed);
                tracing::info!(order = %order_id, %rider, "order handed back for reassignment");
            }
            Err(e) => tracing::debug!(order = %order_id, %rider, ?e, "hand-back not applied"),
        }
        self.fleet.unassign(rider, order_id, now_ms());
        self.rider_update(rider);
    }

    /// One tick: hand back orders of silent riders, plan, commit and publish tasks.
    pub async fn tick(&self) {
        let started = Instant::now();
        let now = now_ms();
        for (rider, orders) in self.fleet.sweep_silent(now) {
            for o in orders {
                self.hand_back(&o, &rider).await;
            }
        }
        let ids = self.state.dispatchable();
        if ids.is_empty() {
            return;
        }
        let mut orders_in = Vec::with_capacity(ids.len());
        let mut meta: Vec<(String, String, (f64, f64))> = Vec::with_capacity(ids.len());
        let mut partitions: Vec<PartitionKey> = Vec::new();
        for id in &ids {
            let Some(order) = self.state.order(id) else { continue };
            let o = order.lock().await.clone();
            if !matches!(o.status, OrderStatus::Confirmed | OrderStatus::Packed) {
                continue;
            }
            let Some(store) = self.state.store(&o.store_id) else { continue };
            if let Ok(cell) = cell_of(store.lat, store.lng) {
                partitions.push(PartitionKey::of(cell));
            }
            orders_in.push(OrderIn {
                key: meta.len(),
                store: store.idx.0,
                pickup: Pt::new(store.lng, store.lat),
                drop: Pt::new(o.lng, o.lat),
                placed_at: o.created_at,
                ready_at: o.packed_at.unwrap_or(o.created_at + self.picking_ms),
                deadline: o.created_at + self.promise_ms,
            });
            meta.push((o.id.clone(), store.id.clone(), (store.lat, store.lng)));
        }
        partitions.sort_by_key(|p| u64::from(p.0));
        partitions.dedup();
        let candidates = self.fleet.candidates(&partitions, now, self.horizon_ms);
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
        let plans = plan_tick(now, &orders_in, &riders_in, &self.params, &self.travel);
        for plan in plans {
            let rider = candidates[plan.rider].0.clone();
            let order_ids: Vec<String> = plan.orders.iter().map(|&k| meta[k].0.clone()).collect();
            let (store_id, pickup) = (meta[plan.orders[0]].1.clone(), meta[plan.orders[0]].2);
            let task_id = format!("t{}-{}", now, self.next_task.fetch_add(1, Ordering::Relaxed));
            let task = Task {
                id: task_id.clone(),
                store_id: store_id.clone(),
                orders: order_ids.clone(),
                picked: Vec::new(),
                free_at: plan.free_at,
                end: (plan.end.y, plan.end.x),
            };
            if !self.fleet.assign(&rider, task, now) {
                continue;
            }
            // All orders of the task move to `assigned` together (one group commit).
            let mut commits = JoinSet::new();
            for id in order_ids.clone() {
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
            let mut assigned: Vec<(String, f64, f64)> = Vec::new();
            while let Some(Ok((id, r))) = commits.join_next().await {
                match r {
                    Ok(o) => assigned.push((id, o.lat, o.lng)),
                    Err(e) => {
                        tracing::debug!(order = %id, ?e, "assignment not applied");
                        self.fleet.unassign(&rider, &id, now);
                    }
                }
            }
            if assigned.is_empty() {
                continue;
            }
            // Deliver in the planned sequence.
            assigned.sort_by_key(|(id, _, _)| order_ids.iter().position(|o| o == id));
            self.counters.tasks.fetch_add(1, Ordering::Relaxed);
            self.counters.orders_assigned.fetch_add(assigned.len() as u64, Ordering::Relaxed);
            if assigned.len() > 1 {
                self.counters.orders_bundled.fetch_add(assigned.len() as u64, Ordering::Relaxed);
            }
            let payload = json!({
                "task_id": task_id,
                "store_id": store_id,
                "pickup": {"lat": pickup.0, "lng": pickup.1},
                "orders": assigned.iter().map(|(id, lat, lng)| json!({"id": id, "lat": lat, "lng": lng})).collect::<Vec<_>>(),
                "assigned_at": now,
                "pickup_eta": plan.pickup_at,
            });
            if let Some(mqtt) = &self.mqtt {
                mqtt.publish(format!("riders/{rider}/tasks"), payload.to_string().into_bytes(), QoS::AtLeastOnce);
            }
            tracing::info!(%rider, task = %task_id, orders = assigned.len(), "task assigned");
            self.rider_update(&rider);
        }
        let micros = started.elapsed().as_micros() as u64;
        self.counters.ticks.fetch_add(1, Ordering::Relaxed);
        self.counters.tick_micros.fetch_add(micros, Ordering::Relaxed);
        self.counters.last_tick_micros.store(micros, Ordering::Relaxed);
    }

    /// Applies a shift change and hands back what an off-shift rider had not picked up.
    pub async fn shift(&self, rider: &str, shift: &Shift) -> Result<(), Drop> {
        let back = self.fleet.shift(rider, shift.on_shift, now_ms())?;
        for o in back {
            self.hand_back(&o, rider).await;
        }
        self.rider_update(rider);
        Ok(())
    }

    /// Applies a rider event. Events for orders the rider does not hold are ignored (and counted).
    pub async fn event(&self, rider: &str, event: &Event) -> Result<(), Drop> {
        if self.fleet.get(rider).is_none() {
            return Err(Drop::UnknownRider);
        }
        self.fleet.counters.events.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        self.fleet.seen(rider, now);
        let holds = |o: &crate::state::Order| o.rider_id.as_deref() == Some(rider);
        let held = match self.state.order(&event.order_id) {
            Some(o) => holds(&*o.lock().await),
            None => false,
        };
        let result = match event.kind.as_str() {
            "arrived_store" if held => Ok(()),
            "arrived_store" => Err(TransitionError::Forbidden),
            "picked_up" => self
                .state
                .transition(&event.order_id, OrderStatus::PickedUp, Some(rider.to_owned()), holds)
                .await
                .map(|_| ()),
            "delivered" => self
                .state
                .transition(&event.order_id, OrderStatus::Delivered, Some(rider.to_owned()), holds)
                .await
                .map(|_| ()),
            "rejected" if held => {
                self.hand_back(&event.order_id, rider).await;
                return Ok(());
            }
            "rejected" => Err(TransitionError::Forbidden),
            _ => return Err(Drop::Malformed),
        };
        match result {
            Ok(()) => {
                self.fleet.progress(rider, &event.kind, &event.order_id, now);
                self.rider_update(rider);
            }
            Err(TransitionError::Unavailable(e)) => tracing::warn!(%rider, error = %e, "rider event not stored"),
            Err(e) => {
                // Not this rider's order, or a duplicate of an event already applied.
                self.fleet.counters.events_ignored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%rider, order = %event.order_id, kind = %event.kind, ?e, "rider event ignored");
            }
        }
        Ok(())
    }
}

/// Splits `riders/{id}/{kind}`; None for any other topic or an invalid id.
fn rider_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("riders/")?;
    let (id, kind) = rest.split_once('/')?;
    darkstore_geoinv::ids::valid_id(id).then_some((id, kind))
}

/// Runs the ingest workers and the tick until `stop` turns true.
pub fn spawn(
    dispatcher: Arc<Dispatcher>,
    mut incoming: mpsc::Receiver<Incoming>,
    tick: Duration,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (events_tx, mut events_rx) = mpsc::channel::<(String, Event)>(16_384);
    let mut handles = Vec::new();
    // Positions and shifts inline; events to the sequential worker.
    let d = dispatcher.clone();
    let mut stop_ingest = stop.clone();
    handles.push(tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = incoming.recv() => match m { Some(m) => m, None => break },
                _ = stop_ingest.changed() => break,
            };
            let Some((rider, kind)) = rider_topic(&msg.topic) else {
                d.fleet.count(Drop::Malformed);
                continue;
            };
            let result = match kind {
                "location" => match serde_json::from_slice::<Location>(&msg.payload) {
                    Ok(loc) => {
                        let now = now_ms();
                        d.fleet.location(rider, &loc, now).map(|()| {
                            d.state.metrics.position_age.observe((now - loc.ts).max(0) as f64 / 1000.0);
                            d.rider_update(rider)
                        })
                    }
                    Err(_) => Err(Drop::Malformed),
                },
                "shift" => match serde_json::from_slice::<Shift>(&msg.payload) {
                    Ok(s) => d.shift(rider, &s).await,
                    Err(_) => Err(Drop::Malformed),
                },
                "events" => match serde_json::from_slice::<Event>(&msg.payload) {
                    Ok(e) => {
                        if events_tx.try_send((rider.to_owned(), e)).is_err() {
                            d.fleet.counters.shed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    }
                    Err(_) => Err(Drop::Malformed),
                },
                // The server's own task messages, or anything else under riders/.
                _ => Ok(()),
            };
            if let Err(drop) = result {
                d.fleet.count(drop);
            }
        }
    }));
    let d = dispatcher.clone();
    let mut stop_events = stop.clone();
    handles.push(tokio::spawn(async move {
        loop {
            let (rider, event) = tokio::select! {
                m = events_rx.recv() => match m { Some(m) => m, None => break },
                _ = stop_events.changed() => break,
            };
            if let Err(drop) = d.event(&rider, &event).await {
                d.fleet.count(drop);
            }
        }
    }));
    let d = dispatcher;
    let mut stop_tick = stop;
    handles.push(tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => d.tick().await,
                _ = stop_tick.changed() => break,
            }
        }
    }));
    handles
}

#[cfg(test)]
mod tests {
    use super::rider_topic;

    #[test]
    fn topics() {
        assert_eq!(rider_topic("riders/r-1/location"), Some(("r-1", "location")));
        assert_eq!(rider_topic("riders/r-1/events"), Some(("r-1", "events")));
        assert_eq!(rider_topic("riders/bad id/location"), None);
        assert_eq!(rider_topic("stores/s1/stock"), None);
        assert_eq!(rider_topic("riders/"), None);
    }
}
