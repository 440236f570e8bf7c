//! Rider ingest: what riders say (over MQTT, or HTTP as a fallback) becomes changes of the riders
//! and of orders. This module alone reads the riders' MQTT payloads.
//!
//! Positions and shifts are applied inline by one worker (no IO). Events change orders durably,
//! so they go through a second, sequential worker: a rider's `picked_up` is applied before its
//! `delivered`, and a slow commit never delays positions. Events for orders the rider does not
//! hold (never did, or no longer: cancelled, handed back, delivered) are ignored and counted.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use darkstore_geoinv::order::OrderStatus;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::model::Order;
use crate::mqtt::Incoming;
use crate::riders::{Dropped, Fix, Progress, Riders};
use crate::state::{State, TransitionError};
use crate::topics::{self, RiderInbox, RiderTopic};

/// A position report (MQTT `riders/{id}/location` or HTTP).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
    pub ts: i64,
    #[serde(default)]
    pub speed_mps: Option<f64>,
    #[serde(default)]
    pub heading_deg: Option<f64>,
    #[serde(default)]
    pub accuracy_m: Option<f64>,
}

impl Location {
    pub fn fix(&self) -> Fix {
        Fix { lat: self.lat, lng: self.lng, ts: self.ts, speed_mps: self.speed_mps }
    }
}

/// A shift change.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Shift {
    pub on_shift: bool,
}

/// A rider event on an order.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub order_id: String,
    #[serde(default)]
    pub ts: Option<i64>,
    #[serde(default)]
    pub code: Option<String>,
}

/// What a rider event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    ArrivedStore,
    PickedUp,
    Delivered,
    Rejected,
}

impl EventKind {
    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "arrived_store" => EventKind::ArrivedStore,
            "picked_up" => EventKind::PickedUp,
            "delivered" => EventKind::Delivered,
            "rejected" => EventKind::Rejected,
            _ => return None,
        })
    }
}

/// Riders' messages, applied.
pub struct Ingest {
    pub state: Arc<State>,
    pub riders: Arc<Riders>,
    /// How close to the drop point a rider must be to deliver without the code, metres.
    pub delivery_radius_m: f64,
    /// Hand-backs whose commit failed (the database was away): (order, rider), retried each tick.
    retry: Mutex<Vec<(String, String)>>,
    pub handed_back: std::sync::atomic::AtomicU64,
    /// Cluster mode: every node hears every rider; an event about an order this node does not
    /// hold is for its owner, and is let be here.
    pub cluster_mode: std::sync::atomic::AtomicBool,
    /// Cluster mode: events about orders this node did not hold, kept for [`PARK_MS`] (at most
    /// [`PARK_MAX`]): if the order's region comes to this node meanwhile (a hand-off, a
    /// failover), they are applied then. An event that arrives while a region has no owner is
    /// so applied by the next one, instead of being lost.
    parked: Mutex<ParkedEvents>,
    pub replayed: std::sync::atomic::AtomicU64,
}

/// A rider event this node let be (cluster mode): (heard at, rider, kind, code).
type Parked = (darkstore_geoinv::Millis, String, EventKind, Option<String>);

/// Events about orders this node does not hold, by order, in the order they were heard.
#[derive(Default)]
struct ParkedEvents {
    by_order: std::collections::HashMap<String, Vec<Parked>>,
    /// (heard at, order) for each event kept, oldest first: what expires next.
    heard: std::collections::VecDeque<(darkstore_geoinv::Millis, String)>,
}

impl ParkedEvents {
    fn park(&mut self, now: darkstore_geoinv::Millis, rider: &str, kind: EventKind, order: &str, code: Option<&str>) {
        let kept = self.by_order.entry(order.to_owned()).or_default();
        // Every node hears an event once from its broker and again relayed by the others.
        if kept.iter().any(|p| p.1 == rider && p.2 == kind && p.3.as_deref() == code) {
            return;
        }
        kept.push((now, rider.to_owned(), kind, code.map(str::to_owned)));
        self.heard.push_back((now, order.to_owned()));
        while self.heard.len() > PARK_MAX {
            self.expire_front();
        }
    }

    /// Forgets events heard before `cutoff`.
    fn expire(&mut self, cutoff: darkstore_geoinv::Millis) {
        while self.heard.front().is_some_and(|(t, _)| *t < cutoff) {
            self.expire_front();
        }
    }

    fn expire_front(&mut self) {
        let Some((t, order)) = self.heard.pop_front() else { return };
        if let Some(kept) = self.by_order.get_mut(&order) {
            kept.retain(|p| p.0 > t);
            if kept.is_empty() {
                self.by_order.remove(&order);
            }
        }
    }
}

/// How long an event about an order held elsewhere (or nowhere) is kept for a new owner: longer
/// than a failover (the lease TTL and the load).
pub const PARK_MS: darkstore_geoinv::Millis = 60_000;
/// The most such events kept (the oldest go first).
const PARK_MAX: usize = 100_000;

impl Ingest {
    pub fn new(state: Arc<State>, riders: Arc<Riders>, delivery_radius_m: f64) -> Ingest {
        Ingest {
            state,
            riders,
            delivery_radius_m,
            retry: Mutex::new(Vec::new()),
            handed_back: Default::default(),
            cluster_mode: Default::default(),
            parked: Mutex::new(ParkedEvents::default()),
            replayed: Default::default(),
        }
    }

    /// Proof that `rider` is handing `order` over: the order's delivery code, or the rider's last
    /// position (heard within the silence limit) within the delivery radius of the drop point.
    /// Orders placed before codes existed need the position only.
    fn delivery_proven(&self, order: &Order, rider: &str, code: Option<&str>) -> bool {
        if let (Some(expected), Some(given)) = (order.delivery_code.as_deref(), code)
            && darkstore_auth::constant_time_eq(expected.as_bytes(), given.trim().as_bytes())
        {
            return true;
        }
        let now = self.state.now();
        self.riders.get(rider).is_some_and(|r| {
            let fresh = now - r.seen_at <= self.riders.silence_ms;
            r.pos.is_some_and(|(lat, lng)| {
                fresh && darkstore_geoinv::travel::distance_m(lat, lng, order.lat, order.lng) <= self.delivery_radius_m
            })
        })
    }

    pub fn location(&self, rider: &str, loc: &Location) -> Result<(), Dropped> {
        let now = self.state.now();
        self.riders.location(rider, loc.fix(), now)?;
        self.state.metrics.position_age.observe(now.saturating_sub(loc.ts).max(0) as f64 / 1000.0);
        Ok(())
    }

    /// Applies a shift change; an off-shift rider hands back what it had not picked up.
    pub async fn shift(&self, rider: &str, on_shift: bool) -> Result<(), Dropped> {
        let back = self.riders.shift(rider, on_shift, self.state.now())?;
        for order in back {
            self.hand_back(&order, rider).await;
        }
        Ok(())
    }

    /// Puts an order a rider will not deliver back for reassignment. The order leaves the rider's
    /// task whatever happens; if the database is away, the order's own move back is retried on
    /// every tick until it lands.
    pub async fn hand_back(&self, order_id: &str, rider: &str) {
        let back = match self.state.order(order_id) {
            Some(o) if o.lock().await.packed_at.is_some() => OrderStatus::Packed,
            Some(_) => OrderStatus::Confirmed,
            None => {
                self.riders.leave_task(rider, order_id, self.state.now());
                return;
            }
        };
        let holds = |o: &Order| o.rider_id.as_deref() == Some(rider);
        match self.state.transition(order_id, back, None, holds).await {
            Ok(_) => {
                self.handed_back.fetch_add(1, Ordering::Relaxed);
                tracing::info!(order = %order_id, %rider, "order handed back for reassignment");
            }
            Err(TransitionError::Unavailable(e)) => {
                tracing::warn!(order = %order_id, %rider, error = %e, "hand-back not stored; will retry");
                self.retry.lock().expect("retry lock").push((order_id.to_owned(), rider.to_owned()));
            }
            Err(e) => tracing::debug!(order = %order_id, %rider, ?e, "hand-back not applied"),
        }
        // Already done by the riders' observer when the order moved; needed when it did not.
        self.riders.leave_task(rider, order_id, self.state.now());
    }

    /// Cluster mode: applies the kept events whose orders this node now holds (in the order they
    /// were heard) and forgets those past [`PARK_MS`]. Events the previous owner had already
    /// applied are ignored again (the order has moved past them).
    pub async fn replay_parked(&self) {
        let due: Vec<(String, Vec<Parked>)> = {
            let mut parked = self.parked.lock().expect("parked lock");
            parked.expire(self.state.now() - PARK_MS);
            let held: Vec<String> = parked.by_order.keys().filter(|o| self.state.order(o).is_some()).cloned().collect();
            held.into_iter().filter_map(|o| parked.by_order.remove(&o).map(|events| (o, events))).collect()
        };
        for (order, events) in due {
            self.replay(&order, events).await;
        }
    }

    /// Retries hand-backs that could not be stored.
    pub async fn retry_hand_backs(&self) {
        let due = std::mem::take(&mut *self.retry.lock().expect("retry lock"));
        for (order, rider) in due {
            self.hand_back(&order, &rider).await;
        }
    }

    /// Applies a rider event. Events for orders the rider does not hold are ignored (and counted).
    pub async fn event(&self, rider: &str, kind: EventKind, order_id: &str, code: Option<&str>) -> Result<(), Dropped> {
        if !self.riders.exists(rider) {
            return Err(Dropped::UnknownRider);
        }
        if self.cluster_mode.load(Ordering::Relaxed) && self.state.order(order_id).is_none() {
            // Another node holds the order (it hears this event too), or none does (its region is
            // changing owner): kept in case the region comes here. A rejection is not kept: applied
            // late it could hand back an order given to the same rider again since.
            if kind != EventKind::Rejected {
                self.parked.lock().expect("parked lock").park(self.state.now(), rider, kind, order_id, code);
            }
            return Ok(());
        }
        if self.cluster_mode.load(Ordering::Relaxed) {
            // What was heard of this order before it was held here goes first.
            let earlier = self.parked.lock().expect("parked lock").by_order.remove(order_id);
            if let Some(earlier) = earlier {
                self.replay(order_id, earlier).await;
            }
        }
        self.apply(rider, kind, order_id, code).await
    }

    /// Applies events heard before this node held `order_id` (arrival only while the order still
    /// waits at the store: replayed later it would put a riding rider back at the store).
    async fn replay(&self, order_id: &str, events: Vec<Parked>) {
        for (_, rider, kind, code) in events {
            if kind == EventKind::ArrivedStore {
                let Some(o) = self.state.order(order_id) else { continue };
                if o.lock().await.status != OrderStatus::Assigned {
                    continue;
                }
            }
            self.replayed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%rider, order = %order_id, ?kind, "applying a rider event heard before this node held its order");
            let _ = self.apply(&rider, kind, order_id, code.as_deref()).await;
        }
    }

    /// Applies an event about an order this node holds (or that none holds, on one node).
    async fn apply(&self, rider: &str, kind: EventKind, order_id: &str, code: Option<&str>) -> Result<(), Dropped> {
        self.riders.counters.events.fetch_add(1, Ordering::Relaxed);
        self.riders.seen(rider, self.state.now());
        let holds = |o: &Order| o.rider_id.as_deref() == Some(rider);
        let (held, proven) = match self.state.order(order_id) {
            Some(o) => {
                let o = o.lock().await;
                (holds(&o), kind != EventKind::Delivered || self.delivery_proven(&o, rider, code))
            }
            None => (false, true),
        };
        if held && !proven {
            // Refused: the order stays picked up until the rider proves the hand-over.
            tracing::info!(%rider, order = %order_id, "delivered refused: no delivery code and not at the door");
            return Err(Dropped::Unproven);
        }
        let result = match kind {
            EventKind::ArrivedStore if held => Ok(Progress::ArrivedStore),
            EventKind::PickedUp => self
                .state
                .transition(order_id, OrderStatus::PickedUp, Some(rider.to_owned()), holds)
                .await
                .map(|_| Progress::PickedUp),
            EventKind::Delivered => self
                .state
                .transition(order_id, OrderStatus::Delivered, Some(rider.to_owned()), holds)
                .await
                .map(|_| Progress::Delivered),
            EventKind::Rejected if held => {
                self.hand_back(order_id, rider).await;
                return Ok(());
            }
            EventKind::ArrivedStore | EventKind::Rejected => Err(TransitionError::Forbidden),
        };
        match result {
            Ok(progress) => self.riders.progress(rider, progress, order_id, self.state.now()),
            Err(TransitionError::Unavailable(e)) => tracing::warn!(%rider, error = %e, "rider event not stored"),
            Err(e) => {
                // Not this rider's order (any more), or a duplicate of an event already applied.
                self.riders.counters.events_ignored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%rider, order = %order_id, ?kind, ?e, "rider event ignored");
            }
        }
        Ok(())
    }
}

/// Runs the ingest workers until `stop` turns true.
pub fn spawn(
    ingest: Arc<Ingest>,
    mut incoming: mpsc::Receiver<Incoming>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (events_tx, mut events_rx) = mpsc::channel::<(String, EventKind, String, Option<String>)>(16_384);
    let mut handles = Vec::new();
    // Positions and shifts inline; events to the sequential worker.
    let d = ingest.clone();
    let mut stop_ingest = stop.clone();
    handles.push(tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = incoming.recv() => match m { Some(m) => m, None => break },
                _ = stop_ingest.changed() => break,
            };
            let (rider, inbox) = match topics::parse_rider_topic(&msg.topic) {
                RiderTopic::Inbox(rider, inbox) => (rider, inbox),
                // The server's own task messages, or anything else under a rider.
                RiderTopic::Other => continue,
                RiderTopic::Invalid => {
                    d.riders.count(Dropped::Malformed);
                    continue;
                }
            };
            let result = match inbox {
                RiderInbox::Location => match serde_json::from_slice::<Location>(&msg.payload) {
                    Ok(loc) => d.location(rider, &loc),
                    Err(_) => Err(Dropped::Malformed),
                },
                RiderInbox::Shift => match serde_json::from_slice::<Shift>(&msg.payload) {
                    Ok(s) => d.shift(rider, s.on_shift).await,
                    Err(_) => Err(Dropped::Malformed),
                },
                RiderInbox::Events => match serde_json::from_slice::<Event>(&msg.payload)
                    .ok()
                    .and_then(|e| Some((EventKind::parse(&e.kind)?, e.order_id, e.code)))
                {
                    Some((kind, order_id, code)) => {
                        if events_tx.try_send((rider.to_owned(), kind, order_id, code)).is_err() {
                            d.riders.counters.shed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    }
                    None => Err(Dropped::Malformed),
                },
            };
            if let Err(drop) = result {
                d.riders.count(drop);
            }
        }
    }));
    let d = ingest;
    let mut stop_events = stop;
    handles.push(tokio::spawn(async move {
        loop {
            let (rider, kind, order_id, code) = tokio::select! {
                m = events_rx.recv() => match m { Some(m) => m, None => break },
                _ = stop_events.changed() => break,
            };
            if let Err(drop) = d.event(&rider, kind, &order_id, code.as_deref()).await {
                d.riders.count(drop);
            }
        }
    }));
    handles
}

#[cfg(test)]
mod tests {
    use super::{EventKind, ParkedEvents};

    #[test]
    fn parked_events_keep_their_order_drop_repeats_and_expire() {
        let mut p = ParkedEvents::default();
        p.park(1_000, "r1", EventKind::PickedUp, "o1", None);
        p.park(1_001, "r1", EventKind::PickedUp, "o1", None); // the same event, relayed
        p.park(1_002, "r1", EventKind::Delivered, "o1", Some("1234"));
        p.park(5_000, "r2", EventKind::PickedUp, "o2", None);
        let kinds: Vec<EventKind> = p.by_order["o1"].iter().map(|e| e.2).collect();
        assert_eq!(kinds, [EventKind::PickedUp, EventKind::Delivered]);
        p.expire(1_002);
        assert_eq!(p.by_order["o1"].len(), 1, "the pickup expired, the delivery not yet");
        p.expire(4_000);
        assert!(!p.by_order.contains_key("o1"));
        assert_eq!(p.by_order["o2"].len(), 1);
        assert_eq!(p.heard.len(), 1);
    }
}
