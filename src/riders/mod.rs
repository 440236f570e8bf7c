//! Riders: the one owner of everything about them. Registration (durable, committed before it
//! takes effect), live state (position, shift, status, task: not stored, re-sent by the rider
//! within seconds after a restart) and the spatial index of riders who can take work.
//!
//! Position updates are the hottest write path of the server: a few checks, a write into the
//! rider's slot and an O(1) write into the index (see `darkstore_dispatch::index`). Every change
//! is told to the [`Changes`] hub as `Change::Rider`; a task given, changed or withdrawn as
//! `Change::Task`. As an [`Observer`], the riders take an order off a rider's task the moment it
//! leaves the rider before pickup (cancelled, handed back), so the rider is free for the next
//! tick and is told at once.

mod index;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use darkstore_db::{Committer, RiderRow, Write};
use darkstore_geoinv::Millis;
use darkstore_geoinv::order::OrderStatus;
use darkstore_geoinv::travel::{distance_m, valid_coordinates};
use dashmap::DashMap;

use crate::changes::{Change, Changes, Observer};
use crate::model::{Order, Rider, RiderStatus, Task, TaskOrder};

/// Why a message from a rider was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Malformed,
    UnknownRider,
    /// Older than the last position (out of order).
    Stale,
    /// Out of range, from the future, or a physically impossible speed or jump.
    Implausible,
    /// A `delivered` event with neither the order's delivery code nor a position at the door.
    Unproven,
}

impl Dropped {
    pub const ALL: [Dropped; 5] =
        [Dropped::Malformed, Dropped::UnknownRider, Dropped::Stale, Dropped::Implausible, Dropped::Unproven];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Malformed => "malformed",
            Dropped::UnknownRider => "unknown_rider",
            Dropped::Stale => "stale",
            Dropped::Implausible => "implausible",
            Dropped::Unproven => "unproven_delivery",
        }
    }
}

/// A position report, whatever wire it came on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    pub lat: f64,
    pub lng: f64,
    /// The rider's own clock, unix ms.
    pub ts: i64,
    pub speed_mps: Option<f64>,
}

/// What a rider says happened to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    ArrivedStore,
    PickedUp,
    Delivered,
}

/// Fastest plausible rider, metres per second (about 250 km/h: anything faster is a bad fix).
pub const MAX_SPEED_MPS: f64 = 70.0;
/// How far ahead of the server's clock a rider's timestamp may be.
pub const MAX_CLOCK_AHEAD_MS: i64 = 5 * 60_000;

#[derive(Debug, Default)]
pub struct RiderCounters {
    pub positions: AtomicU64,
    pub drops: [AtomicU64; Dropped::ALL.len()],
    pub shed: AtomicU64,
    pub events: AtomicU64,
    pub events_ignored: AtomicU64,
    /// Orders taken off a task before pickup (cancelled, handed back).
    pub left_tasks: AtomicU64,
}

/// A rider and the index's bookkeeping for it.
struct Slot {
    rider: Rider,
    /// Dense id, for the index.
    idx: u32,
    /// The index partition, and the position it was computed at.
    part: Option<(index::PartitionKey, (f64, f64))>,
}

pub struct Riders {
    slots: DashMap<String, Slot, ahash::RandomState>,
    index: index::Available,
    committer: Option<Committer>,
    changes: Arc<Changes>,
    pub silence_ms: Millis,
    pub counters: RiderCounters,
}

fn new_rider(id: &str, name: &str, store_id: Option<&str>) -> Rider {
    Rider {
        id: id.to_owned(),
        name: name.to_owned(),
        store_id: store_id.map(str::to_owned),
        pos: None,
        ts: i64::MIN,
        seen_at: 0,
        on_shift: false,
        status: RiderStatus::Idle,
        task: None,
    }
}

impl Riders {
    /// Riders whose registrations are committed through `committer` (None: in memory only, for
    /// tests and benches).
    pub fn new(silence_ms: Millis, committer: Option<Committer>, changes: Arc<Changes>) -> Riders {
        Riders {
            slots: DashMap::default(),
            index: index::Available::default(),
            committer,
            changes,
            silence_ms,
            counters: RiderCounters::default(),
        }
    }

    pub fn count(&self, d: Dropped) {
        self.counters.drops[d as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Registers or updates a rider, durably: the rider exists for ingest from the moment the
    /// commit returns, in the same operation. True when created.
    pub async fn register(&self, id: &str, name: &str, store_id: Option<&str>, now: Millis) -> Result<bool, String> {
        let committer = self.committer.as_ref().ok_or("riders are kept in memory only")?;
        let write = Write::Rider { id: id.into(), name: name.into(), store_id: store_id.map(str::to_owned), ts: now };
        committer.commit(vec![write]).await.map_err(|e| e.to_string())?;
        Ok(self.upsert(id, name, store_id))
    }

    /// Makes a rider known in memory (registration already durable); true when new.
    pub fn upsert(&self, id: &str, name: &str, store_id: Option<&str>) -> bool {
        if let Some(mut slot) = self.slots.get_mut(id) {
            slot.rider.name = name.to_owned();
            slot.rider.store_id = store_id.map(str::to_owned);
            return false;
        }
        let idx = self.index.new_id(id);
        match self.slots.entry(id.to_owned()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(Slot { rider: new_rider(id, name, store_id), idx, part: None });
                true
            }
        }
    }

    /// Riders as stored, at start-up.
    pub fn restore(&self, rows: Vec<RiderRow>) {
        for r in rows {
            self.upsert(&r.id, &r.name, r.store_id.as_deref());
        }
    }

    /// Rebuilds, at start-up, a task from an order the database says the rider holds. The rider
    /// counts as just heard from, so if it never comes back the silence sweep hands the order
    /// back. The rider had the task before the restart: it counts as sent.
    pub fn restore_task(&self, rider: &str, order: &Order, picked_up: bool, pickup: (f64, f64), now: Millis) {
        if !self.slots.contains_key(rider) {
            self.upsert(rider, rider, None);
        }
        let Some(mut slot) = self.slots.get_mut(rider) else { return };
        let r = &mut slot.rider;
        r.on_shift = true;
        r.seen_at = now;
        let task = r.task.get_or_insert_with(|| {
            Box::new(Task {
                id: format!("restored-{rider}"),
                store_id: order.store_id.clone(),
                pickup,
                orders: Vec::new(),
                picked: Vec::new(),
                assigned_at: now,
                pickup_eta: now,
                free_at: now,
                end: pickup,
                sent: true,
            })
        });
        task.orders.push(TaskOrder { id: order.id.clone(), lat: order.lat, lng: order.lng });
        if picked_up {
            task.picked.push(order.id.clone());
        }
        r.status = if task.picked.is_empty() { RiderStatus::ToStore } else { RiderStatus::Delivering };
    }

    pub fn get(&self, id: &str) -> Option<Rider> {
        self.slots.get(id).map(|s| s.rider.clone())
    }

    pub fn exists(&self, id: &str) -> bool {
        self.slots.contains_key(id)
    }

    /// Every rider (of one store, when given).
    pub fn all(&self, store_id: Option<&str>) -> Vec<Rider> {
        self.slots
            .iter()
            .filter(|s| store_id.is_none() || s.rider.store_id.as_deref() == store_id)
            .map(|s| s.rider.clone())
            .collect()
    }

    pub fn n_indexed(&self) -> usize {
        self.index.len()
    }

    fn available(r: &Rider, now: Millis, silence_ms: Millis) -> bool {
        r.on_shift && r.status == RiderStatus::Idle && r.pos.is_some() && now - r.seen_at <= silence_ms
    }

    /// Puts the rider in the index, or takes it out, as its state says.
    fn reindex(&self, slot: &mut Slot, now: Millis) {
        let available = Self::available(&slot.rider, now, self.silence_ms);
        self.index.place(slot.idx, &mut slot.part, slot.rider.pos.filter(|_| available));
    }

    /// Tells the observers a rider changed (outside any lock on it).
    fn emit_rider(&self, rider: &Rider) {
        self.changes.emit(&Change::Rider { rider });
    }

    /// Applies a position report. `now` is the server's clock.
    pub fn location(&self, rider: &str, fix: Fix, now: Millis) -> Result<(), Dropped> {
        if !valid_coordinates(fix.lat, fix.lng) || fix.ts > now + MAX_CLOCK_AHEAD_MS {
            return Err(Dropped::Implausible);
        }
        if fix.speed_mps.is_some_and(|s| !s.is_finite() || !(0.0..=MAX_SPEED_MPS).contains(&s)) {
            return Err(Dropped::Implausible);
        }
        let mut slot = self.slots.get_mut(rider).ok_or(Dropped::UnknownRider)?;
        let r = &slot.rider;
        if fix.ts <= r.ts {
            return Err(Dropped::Stale);
        }
        if let Some((lat, lng)) = r.pos {
            let seconds = fix.ts.saturating_sub(r.ts) as f64 / 1000.0;
            let metres = distance_m(lat, lng, fix.lat, fix.lng);
            // A jump is judged with a little slack for GPS noise.
            if metres > 200.0 && metres > MAX_SPEED_MPS * seconds {
                return Err(Dropped::Implausible);
            }
        }
        slot.rider.pos = Some((fix.lat, fix.lng));
        slot.rider.ts = fix.ts;
        slot.rider.seen_at = now;
        self.reindex(&mut slot, now);
        self.counters.positions.fetch_add(1, Ordering::Relaxed);
        // The hottest path: told under the rider's entry lock, without a copy (see `Change::Rider`).
        self.changes.emit(&Change::Rider { rider: &slot.rider });
        Ok(())
    }

    /// Applies a shift change. Returns the orders of its task the rider had not picked up: an
    /// off-shift rider must hand them back (they leave the task as they do).
    pub fn shift(&self, rider: &str, on_shift: bool, now: Millis) -> Result<Vec<String>, Dropped> {
        let mut slot = self.slots.get_mut(rider).ok_or(Dropped::UnknownRider)?;
        slot.rider.on_shift = on_shift;
        slot.rider.seen_at = now;
        let unpicked = if on_shift { Vec::new() } else { unpicked(&slot.rider) };
        self.reindex(&mut slot, now);
        let snapshot = slot.rider.clone();
        drop(slot);
        self.emit_rider(&snapshot);
        Ok(unpicked)
    }

    /// Marks a rider heard from (any message counts).
    pub fn seen(&self, rider: &str, now: Millis) {
        if let Some(mut slot) = self.slots.get_mut(rider) {
            slot.rider.seen_at = now;
        }
    }

    /// Gives a task to an idle rider; false if the rider is no longer available. The rider is
    /// told once its orders are durably assigned ([`Riders::send_task`]).
    pub fn assign(&self, rider: &str, task: Task, now: Millis) -> bool {
        let Some(mut slot) = self.slots.get_mut(rider) else { return false };
        if !Self::available(&slot.rider, now, self.silence_ms) {
            return false;
        }
        slot.rider.task = Some(Box::new(task));
        slot.rider.status = RiderStatus::ToStore;
        self.reindex(&mut slot, now);
        true
    }

    /// Sends the rider its task as it stands now (its orders durably assigned; some may already
    /// have left it). Returns the task sent, if any is left.
    pub fn send_task(&self, rider: &str, task_id: &str) -> Option<Task> {
        let mut slot = self.slots.get_mut(rider)?;
        let task = slot.rider.task.as_mut().filter(|t| t.id == task_id && !t.orders.is_empty())?;
        task.sent = true;
        let (task, snapshot) = (Task::clone(task), slot.rider.clone());
        drop(slot);
        self.changes.emit(&Change::Task { rider, task: &task });
        self.emit_rider(&snapshot);
        Some(task)
    }

    /// Takes an order off a rider's task (it will not be picked up by this rider): the rider is
    /// idle again when nothing is left, and a rider that knew of the task is sent it again (an
    /// empty task withdraws it). False when the rider did not hold the order.
    pub fn leave_task(&self, rider: &str, order_id: &str, now: Millis) -> bool {
        let Some(mut slot) = self.slots.get_mut(rider) else { return false };
        let Some(task) = slot.rider.task.as_mut().filter(|t| t.holds(order_id)) else { return false };
        task.orders.retain(|o| o.id != order_id);
        task.picked.retain(|o| o != order_id);
        let withdrawn = task.orders.is_empty();
        let resend = task.sent.then(|| task.clone());
        if withdrawn {
            slot.rider.task = None;
            slot.rider.status = RiderStatus::Idle;
        }
        self.reindex(&mut slot, now);
        let snapshot = slot.rider.clone();
        drop(slot);
        self.counters.left_tasks.fetch_add(1, Ordering::Relaxed);
        if let Some(task) = &resend {
            self.changes.emit(&Change::Task { rider, task });
        }
        self.emit_rider(&snapshot);
        true
    }

    /// Cluster mode: this node no longer holds these orders (their region moved). They leave the
    /// riders' tasks here without a word to anyone: the region's new owner rebuilds the tasks
    /// from the database and speaks for the riders from now on.
    pub fn forget_orders(&self, orders: &std::collections::HashSet<String>, now: Millis) {
        for mut slot in self.slots.iter_mut() {
            let Some(task) = slot.rider.task.as_mut() else { continue };
            if !task.orders.iter().any(|o| orders.contains(&o.id)) {
                continue;
            }
            task.orders.retain(|o| !orders.contains(&o.id));
            task.picked.retain(|o| !orders.contains(o));
            if task.orders.is_empty() {
                slot.rider.task = None;
                slot.rider.status = RiderStatus::Idle;
            }
            self.reindex(&mut slot, now);
        }
    }

    /// Records an event's effect on the rider: arrival, pickup, delivery.
    pub fn progress(&self, rider: &str, what: Progress, order_id: &str, now: Millis) {
        let Some(mut slot) = self.slots.get_mut(rider) else { return };
        let r = &mut slot.rider;
        r.seen_at = now;
        match what {
            Progress::ArrivedStore => r.status = RiderStatus::AtStore,
            Progress::PickedUp => {
                if let Some(task) = r.task.as_mut()
                    && !task.picked.iter().any(|o| o == order_id)
                {
                    task.picked.push(order_id.to_owned());
                }
                r.status = RiderStatus::Delivering;
            }
            Progress::Delivered => {
                if let Some(task) = r.task.as_mut() {
                    task.orders.retain(|o| o.id != order_id);
                    task.picked.retain(|o| o != order_id);
                    if task.orders.is_empty() {
                        r.task = None;
                        r.status = RiderStatus::Idle;
                    }
                }
            }
        }
        self.reindex(&mut slot, now);
        let snapshot = slot.rider.clone();
        drop(slot);
        self.emit_rider(&snapshot);
    }

    /// Riders silent for longer than the silence limit: they leave the index, and the orders they
    /// had not picked up must go back for reassignment, as (rider, orders).
    /// Riders on shift who have been silent past the limit (for `/metrics`).
    pub fn n_silent(&self, now: Millis) -> usize {
        self.slots.iter().filter(|s| s.rider.on_shift && now - s.rider.seen_at > self.silence_ms).count()
    }

    pub fn sweep_silent(&self, now: Millis) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for mut slot in self.slots.iter_mut() {
            if slot.rider.on_shift && now - slot.rider.seen_at > self.silence_ms {
                let back = unpicked(&slot.rider);
                if !back.is_empty() {
                    out.push((slot.rider.id.clone(), back));
                }
                let slot = &mut *slot;
                self.index.place(slot.idx, &mut slot.part, None);
            }
        }
        out
    }

    /// Idle, available riders near the given stores' partitions, and busy riders who will be free
    /// within `horizon_ms`: (rider id, position (lat, lng), free at).
    pub fn candidates(
        &self,
        near: &[(f64, f64)],
        now: Millis,
        horizon_ms: Millis,
    ) -> Vec<(String, (f64, f64), Millis)> {
        let mut out: Vec<(String, (f64, f64), Millis)> =
            self.index.around(near).into_iter().map(|(id, at)| (id, at, now)).collect();
        for s in self.slots.iter() {
            let r = &s.rider;
            if let Some(task) = &r.task
                && r.on_shift
                && now - r.seen_at <= self.silence_ms
                && task.free_at <= now + horizon_ms
            {
                out.push((r.id.clone(), task.end, task.free_at.max(now)));
            }
        }
        out
    }

    /// The `n` available riders nearest to (lat, lng).
    pub fn nearest(&self, lat: f64, lng: f64, n: usize) -> Vec<String> {
        self.index.nearest(lat, lng, n)
    }
}

/// Orders of a rider's task not picked up yet.
fn unpicked(r: &Rider) -> Vec<String> {
    let Some(task) = &r.task else { return Vec::new() };
    task.orders.iter().filter(|o| !task.picked.contains(&o.id)).map(|o| o.id.clone()).collect()
}

impl Observer for Riders {
    /// An order that leaves a rider before pickup (cancelled, handed back, reassigned) leaves the
    /// rider's task.
    fn observe(&self, change: &Change<'_>, _hub: &Changes) {
        let Change::Order { order, before: Some(before) } = change else { return };
        let Some(rider) = before.rider_id.as_deref() else { return };
        let still_held = order.rider_id.as_deref() == Some(rider)
            && matches!(order.status, OrderStatus::Assigned | OrderStatus::PickedUp);
        if before.status == OrderStatus::Assigned && !still_held {
            self.leave_task(rider, &order.id, order.updated_at);
        }
    }
}
